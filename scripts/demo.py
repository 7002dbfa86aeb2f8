"""The CPU demo behind ``make demo``: demo data, training, evaluation and inference, each a plain bundle command.

Every step is printed before it runs, so the demo doubles as a walk-through of the commands a user runs on real
data. Everything is written under ``--output-dir`` (default ``demo/``), a folder the demo marks as its own: a
rerun reuses its data and replaces its earlier results; a folder the demo did not make is never touched.

    python scripts/demo.py [--output-dir demo] [--num-cases 20] [--num-test-cases 5] [--seed 0]
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import fire

ROOT = Path(__file__).resolve().parents[1]
MARKER = ".vox2vox-demo"  # marks a folder made by this script, whose results it may replace
RESULTS = ("models", "logs", "eval", "predictions")  # what a rerun replaces; the data is kept
DEMO_SPACING_MM = 2.0  # the demo's data grid: 120 x 120 x 78 voxels, 8x fewer than BraTS' 1 mm
TARGETS = {"WT": 0.85, "mean": 0.75}  # held-out Dice the demo is expected to reach


def _step(number: int, title: str, cmd: list[str]) -> float:
    """Runs one step, echoing its command; stops the demo with the step's exit status if it fails."""
    print(f"\n[{number}/5] {title}\n$ {' '.join(cmd)}", flush=True)
    start = time.monotonic()
    result = subprocess.run(cmd, cwd=ROOT)
    if result.returncode != 0:
        print(f"demo: step {number} ({title}) failed with exit status {result.returncode}", file=sys.stderr)
        raise SystemExit(result.returncode)
    return time.monotonic() - start


def _prepare_output_dir(out: Path) -> None:
    if out.exists() and any(out.iterdir()) and not (out / MARKER).exists():
        raise SystemExit(f"demo: {out} exists and was not made by the demo; choose another --output-dir")
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).touch()
    for name in RESULTS:
        shutil.rmtree(out / name, ignore_errors=True)


def main(output_dir: str = "demo", num_cases: int = 20, num_test_cases: int = 5, seed: int = 0) -> None:
    """Makes demo data, trains a small Vox2Vox on the CPU, evaluates and segments held-out cases."""
    out = Path(output_dir).resolve()
    _prepare_output_dir(out)
    py = sys.executable
    bundle = [py, "-m", "monai.bundle", "run"]
    common = [
        "--meta_file",
        "configs/metadata.json",
        "--logging_file",
        "configs/logging.conf",
        "--bundle_root",
        str(out),
    ]
    train_configs = "['configs/train.yaml','configs/demo.yaml']"
    data, test = out / "data", out / "test"
    timings = {}

    if not data.exists():
        timings["data"] = _step(1, "demo data: training cases and held-out test cases on real MNI152 anatomy", [
            py, "scripts/make_demo_data.py", "--output-dir", str(data), "--num-cases", str(num_cases),
            "--seed", str(seed), "--spacing", str(DEMO_SPACING_MM)])  # fmt: skip
        _step(1, "demo data: held-out test cases (another seed)", [
            py, "scripts/make_demo_data.py", "--output-dir", str(test), "--num-cases", str(num_test_cases),
            "--seed", str(seed + 1), "--spacing", str(DEMO_SPACING_MM)])  # fmt: skip
        timings["datalist"] = _step(2, "datalist with 5 cross-validation folds", [
            py, "scripts/prepare_datalist.py", "--dataset-dir", str(data), "--output", str(out / "datalist.json"),
            "--num-folds", "5", "--seed", str(seed)])  # fmt: skip
    else:
        print(f"\n[1/5] and [2/5]: reusing the demo data in {data} and {test}")
    timings["training"] = _step(3, "training: generator and discriminator, fold 0 held out for validation", [
        *bundle, "training", "--config_file", train_configs, *common, "--dataset_dir", str(data),
        "--datalist_file", str(out / "datalist.json")])  # fmt: skip
    timings["evaluating"] = _step(4, "evaluating models/model.pt on the held-out test cases", [
        *bundle, "evaluating", "--config_file", "['configs/train.yaml','configs/demo.yaml','configs/evaluate.yaml']",
        *common, "--dataset_dir", str(test), "--num_folds", "1", "--eval_split", "all"])  # fmt: skip
    timings["inference"] = _step(5, "inference: segmentations of the held-out test cases", [
        *bundle, "inference", "--config_file", "['configs/inference.yaml','configs/demo.yaml']", *common,
        "--dataset_dir", str(test), "--output_dir", str(out / "predictions")])  # fmt: skip

    summary = json.loads((out / "eval" / "summary.json").read_text())
    dice = {region: summary[region]["dice"] for region in ("ET", "TC", "WT")}
    dice["mean"] = sum(dice.values()) / 3
    print(f"\nDice on {num_test_cases} held-out demo cases (per case: {out / 'eval' / 'metrics.csv'}):")
    for name, value in dice.items():
        target = f"  (target >= {TARGETS[name]})" if name in TARGETS else ""
        print(f"  {name:>4}: {value:.4f}{target}")
    print("time per step (s): " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()))
    print(f"segmentations: {out / 'predictions'}; TensorBoard: tensorboard --logdir {out / 'logs'}")
    missed = [name for name, target in TARGETS.items() if dice[name] < target]
    if missed:
        print(f"demo: Dice below target for {', '.join(missed)}", file=sys.stderr)
        raise SystemExit(1)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    fire.Fire(main)
