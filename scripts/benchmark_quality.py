"""Benchmark of the quality check (docs/quality.md): do its scores rank segmentations by their true Dice?

On held-out demo cases that share nothing with the training data (made with another seed), it scores, per case,
the trained model's prediction, the reference and graded corruptions of the reference (bundle.quality.corruptions)
with the bundle's own ``calibrating`` run (``--fit_calibration false``: rows only), then reports for each score
the Spearman correlation with the true Dice and how many of the truly worst 10 % of segmentations are among the
worst-scored 10 %. The calibration is fitted beforehand, never on the test cases: by default with the bundle's
``calibrating`` run on ``--calibration-cases`` fresh validation cases (another seed, never used for training),
written to ``<output-dir>/quality_calibration.json``; with ``--calibration-cases 0``, the demo's own calibration on
its validation fold (``<bundle-root>/models/quality_calibration.json``, fitted here if missing; the demo's fold
holds 4 cases). Further calibrations on the same validation rows, from other scores, show what each adds.

    python scripts/benchmark_quality.py --bundle-root demo [--num-cases 10] [--seed 100] [--calibration-cases 10]

Writes ``<output-dir>/rows.csv`` (every scored segmentation), ``results.json`` and ``table.md``.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import math
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from scipy.stats import spearmanr

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # make `bundle` importable

from bundle.quality import apply_calibration, fit_calibration, load_calibration, top_fraction_recall  # noqa: E402

DEMO_SPACING_MM = 2.0  # the demo's grid (scripts/demo.py)
TEST_SEED = 100  # demo.py makes training data with seed 0 and test data with seed 1: 100 shares no case with them
CALIBRATION_SEED = 200  # the fresh validation cases of the calibration: none shared with training or test
WORST_FRACTION = 0.1
#: each score, the true Dice it is compared with, and whether a higher score means a better segmentation
SCORES: dict[str, tuple[str, bool, str]] = {
    "est_dice_mean": ("dice_mean", True, "the bundle's calibrated estimate of the mean Dice (its features)"),
    "est_dice_WT": ("dice_WT", True, "the bundle's calibrated estimate of the WT Dice"),
    "d_score": ("dice_mean", True, "raw discriminator score (mean D over the brain)"),
    "d_score_low": ("dice_mean", True, "raw discriminator score (5th percentile of D)"),
    "d_score_tumour": ("dice_mean", True, "raw discriminator score (mean D over the tumour and possible tumour)"),
    "uncertainty": ("dice_mean", False, "TTA mutual information over the possible tumour"),
    "volume_ml": ("dice_mean", True, "baseline: whole-tumour volume of the segmentation"),
    "confidence": ("dice_mean", True, "baseline: model's mean softmax probability of the segmentation's classes"),
    "confidence_wt": ("dice_WT", True, "baseline: model's mean probability of tumour / background as segmented"),
}


def bundle_run(bundle_root: Path, configs: Sequence[str], *overrides: str) -> None:
    """``python -m monai.bundle run calibrating`` with ``configs``; stops the benchmark if it fails."""
    config_list = "[" + ",".join(f"'{c}'" for c in configs) + "]"
    cmd = [sys.executable, "-m", "monai.bundle", "run", "calibrating", "--config_file", config_list,
           "--meta_file", str(ROOT / "configs/metadata.json"), "--logging_file", str(ROOT / "configs/logging.conf"),
           "--bundle_root", str(bundle_root), *overrides]  # fmt: skip
    print("$ " + " ".join(cmd), flush=True)
    result = subprocess.run(cmd, cwd=ROOT)
    if result.returncode != 0:
        raise SystemExit(f"benchmark_quality: {' '.join(cmd[:5])} failed with exit status {result.returncode}")


def read_rows(path: Path) -> list[dict[str, Any]]:
    """The scored rows of a ``calibrating`` run, numbers as floats (empty cells NaN)."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    text = ("case_id", "source")
    return [{k: (v if k in text else float(v) if v != "" else math.nan) for k, v in row.items()} for row in rows]


#: further calibrations fitted, like the bundle's, on the validation rows only: the discriminator's scores with
#: the uncertainty (the quality check as the discriminator's), the confidence baselines alone, and the bundle's
#: features with the discriminator's scores added
D_SCORES = ("d_score", "d_score_low", "d_score_tumour")
D_AND_UNCERTAINTY = (*D_SCORES, "uncertainty")
CONFIDENCE_ONLY = ("confidence", "confidence_wt")
WITH_D = (*D_SCORES, "uncertainty", "confidence", "confidence_wt")
COMPARISONS: dict[str, tuple[tuple[str, ...], str]] = {
    f"est_{short}_{name}": (features, target)
    for name, features in (("d_and_uncertainty", D_AND_UNCERTAINTY), ("confidence_only", CONFIDENCE_ONLY),
                           ("with_d", WITH_D))
    for short, target in (("mean", "dice_mean"), ("WT", "dice_WT"))
}  # fmt: skip


def summarise(
    rows: Sequence[dict[str, Any]], calibration: dict[str, Any] | None, calibration_rows: Sequence[dict[str, Any]] = ()
) -> dict[str, Any]:
    """Spearman and worst-10 % recall of every score over ``rows`` (and over the model's predictions alone), with
    the calibrated estimates added to each row from ``calibration``; with ``calibration_rows`` (the validation rows
    the bundle's calibration was fitted on), also the :data:`COMPARISONS` fitted on them."""
    rows = [{**row, **apply_calibration(calibration, row)} for row in rows]
    scores = dict(SCORES)
    for name, (features, target) in COMPARISONS.items() if calibration_rows else ():
        fitted = fit_calibration(calibration_rows, features, targets=[target])
        for row in rows:
            row[name] = apply_calibration(fitted, row)[f"est_{target}"]
        scores[name] = (target, True, f"calibration of the {target} on {', '.join(features)} alone")
    groups = {"all": rows, "predictions": [r for r in rows if r["source"] == "prediction"]}
    results: dict[str, Any] = {"num_rows": len(rows), "num_cases": len({r["case_id"] for r in rows}), "scores": {}}
    for name, (truth, higher_is_better, description) in scores.items():
        entry = {"truth": truth, "description": description}
        for group, members in groups.items():
            pairs = [(r[name], r[truth]) for r in members if math.isfinite(r.get(name, math.nan))]
            if len(pairs) < 3 or np.ptp([p[0] for p in pairs]) == 0:
                entry[group] = {"n": len(pairs), "spearman": math.nan, "worst10_recall": math.nan}
                continue
            score, dice = np.array(pairs).T
            oriented = score if higher_is_better else -score
            entry[group] = {"n": len(pairs), "spearman": float(spearmanr(oriented, dice).statistic),
                            "worst10_recall": top_fraction_recall(oriented, dice, WORST_FRACTION)}  # fmt: skip
        results["scores"][name] = entry
    # what D makes of each kind of input: references (one-hot), predictions one-hot, predictions as probabilities
    by_source = {
        "reference (one-hot)": [r["d_score"] for r in rows if r["source"] == "reference"],
        "prediction (one-hot argmax)": [r["d_score"] for r in rows if r["source"] == "prediction"],
        "prediction (G's probabilities)": [
            r.get("d_score_probabilities", math.nan) for r in rows if r["source"] == "prediction"
        ],
        "corrupted references (one-hot)": [
            r["d_score"] for r in rows if r["source"] not in ("prediction", "reference")
        ],
    }
    results["d_by_input"] = {k: float(np.nanmean(v)) if v else math.nan for k, v in by_source.items()}
    preds = groups["predictions"]
    if len(preds) >= 3:
        probs = [r.get("d_score_probabilities", math.nan) for r in preds]
        results["probabilities_input_spearman"] = float(spearmanr(probs, [r["dice_mean"] for r in preds]).statistic)
    return results


def markdown_table(results: dict[str, Any]) -> str:
    """The results as Markdown tables."""
    lines = ["| score | vs true | Spearman (all) | worst-10 % recall (all) | Spearman (model's predictions) | what |",
             "| --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for name, entry in results["scores"].items():
        a, p = entry["all"], entry["predictions"]
        lines.append(f"| `{name}` | {entry['truth']} | {a['spearman']:.3f} | {a['worst10_recall']:.2f} | "
                     f"{p['spearman']:.3f} | {entry['description']} |")  # fmt: skip
    lines += ["", "| D's input | mean D (1 = looks like a reference) |", "| --- | --- |"]
    lines += [f"| {k} | {v:.3f} |" for k, v in results["d_by_input"].items()]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> None:
    """Calibrate if needed, make the held-out cases, score them, summarise."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle-root", default="demo", help="a trained demo (scripts/demo.py): models/, data/")
    parser.add_argument("--num-cases", type=int, default=10, help="held-out test cases to make and score")
    parser.add_argument("--seed", type=int, default=TEST_SEED, help="seed of the held-out cases (not 0 or 1)")
    parser.add_argument("--output-dir", help="results folder (default <bundle-root>/quality_benchmark)")
    parser.add_argument("--tta-flip-axes", default="[0,1,2]", help="flip TTA axes, the same for calibration")
    parser.add_argument(
        "--calibration-cases",
        type=int,
        default=10,
        help="fresh validation cases to calibrate on; 0: the demo's own calibration (its fold)",
    )
    parser.add_argument("--calibration-seed", type=int, default=CALIBRATION_SEED, help="their seed")
    args = parser.parse_args(argv)
    if args.calibration_cases < 0:
        raise SystemExit(f"benchmark_quality: --calibration-cases must be >= 0, got {args.calibration_cases}")
    seeds = {"test": args.seed, "calibration": args.calibration_seed} if args.calibration_cases else {"test": args.seed}
    for name, seed in seeds.items():
        if seed in (0, 1):
            raise SystemExit(f"benchmark_quality: seeds 0 and 1 made the demo's training and test data: choose "
                             f"another {name} seed")  # fmt: skip
    if args.calibration_cases and args.seed == args.calibration_seed:
        raise SystemExit("benchmark_quality: the test and calibration seeds must differ")
    root = Path(args.bundle_root).resolve()
    out = Path(args.output_dir).resolve() if args.output_dir else root / "quality_benchmark"
    for needed in (root / "models/model.pt", root / "models/discriminator.pt", root / "datalist.json"):
        if not needed.is_file():
            raise SystemExit(f"benchmark_quality: {needed} not found: train the demo first (make demo)")
    configs = [str(ROOT / f"configs/{c}.yaml") for c in ("train", "demo", "evaluate", "quality")]
    flips = ["--tta_flip_axes", args.tta_flip_axes]
    from bundle.demo_data import make_dataset

    if args.calibration_cases:  # fresh validation cases, never seen in training: fitted anew on every run
        calibration_file, calibration_rows_csv = out / "quality_calibration.json", out / "calibration_rows.csv"
        calibration_dir = out / f"calibration_seed{args.calibration_seed}_{args.calibration_cases}cases"
        if not calibration_dir.is_dir():
            make_dataset(calibration_dir, num_cases=args.calibration_cases, seed=args.calibration_seed,
                         spacing=DEMO_SPACING_MM)  # fmt: skip
        bundle_run(root, configs, "--dataset_dir", str(calibration_dir), "--num_folds", "1", "--eval_split", "all",
                   "--calibration_file", str(calibration_file), "--overwrite_calibration", "true",
                   "--calibration_rows_csv", str(calibration_rows_csv), "--eval_dir", str(out / "calibration"),
                   *flips)  # fmt: skip
    else:  # the demo's own: fitted on the validation fold of its training data, never on test cases
        calibration_file = root / "models/quality_calibration.json"
        calibration_rows_csv = root / "eval/quality_calibration_rows.csv"
        if calibration_file.is_file() and not calibration_rows_csv.is_file():
            raise SystemExit(
                f"benchmark_quality: {calibration_file} exists but not its rows {calibration_rows_csv}: "
                "rerun `calibrating` with --overwrite_calibration true, or pass --calibration-cases N"
            )
        if not calibration_file.is_file():
            bundle_run(root, configs, "--dataset_dir", str(root / "data"), "--datalist_file",
                       str(root / "datalist.json"), *flips)  # fmt: skip
    test_dir = out / f"test_seed{args.seed}_{args.num_cases}cases"  # by seed and count: a rerun reuses only its own
    if not test_dir.is_dir():
        make_dataset(test_dir, num_cases=args.num_cases, seed=args.seed, spacing=DEMO_SPACING_MM)
    rows_csv = out / "rows.csv"
    bundle_run(root, configs, "--dataset_dir", str(test_dir), "--num_folds", "1",
               "--eval_split", "all", "--fit_calibration", "false", "--calibration_rows_csv", str(rows_csv),
               "--eval_dir", str(out), *flips)  # fmt: skip
    calibration = load_calibration(calibration_file, required=True)
    calibration_rows = read_rows(calibration_rows_csv)
    results = summarise(read_rows(rows_csv), calibration, calibration_rows)
    results.update({
        "machine": f"{platform.node()} ({platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores)",
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, "scripts/benchmark_quality.py", *(argv or sys.argv[1:])]),
        "calibration": {"file": str(calibration_file), "cases": calibration.get("cases"),
                        "num_rows": calibration["num_rows"], "fit_date": calibration["fit_date"]},
        "test_cases": str(test_dir),
    })  # fmt: skip
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    table = markdown_table(results)
    (out / "table.md").write_text(table)
    print(f"\n{results['num_cases']} held-out cases, {results['num_rows']} scored segmentations\n\n{table}")


if __name__ == "__main__":
    main()
