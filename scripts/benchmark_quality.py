"""Benchmark of the quality check (docs/quality.md): do its scores rank segmentations by their true Dice?

On two sets of test cases that share nothing with the training data, held-out demo cases (another seed) and
shifted cases (``make_demo_data.py --shifted true``: another brain, other contrasts and acquisitions, where the
model's own predictions fail as they do on another scanner's images), it scores, per case, the trained model's
prediction, the reference and graded corruptions of the reference (bundle.quality.corruptions) with the bundle's
own ``calibrating`` run (``--fit_calibration false``: rows only). For each score, side by side: predicted volume,
confidence, uncertainty, the GAN's discriminator, the quality critic (``models/critic.pt``, trained here with the
bundle's ``training_critic`` if missing) and the calibrated combinations, it reports the Spearman correlation with
the true Dice (over all rows and over the model's own predictions), how many of the truly worst 10 % of
segmentations are among the worst-scored 10 %, and the voxel AUROC of the error maps against the true error map.
The calibration is fitted beforehand, never on the test cases: by default with the bundle's ``calibrating`` run
on ``--calibration-cases`` fresh validation cases (another seed, never used for training), written to
``<output-dir>/quality_calibration.json``; with ``--calibration-cases 0``, the demo's own calibration on its
validation fold (``<bundle-root>/models/quality_calibration.json``, fitted here if missing; the demo's fold holds
4 cases). Further calibrations on the same validation rows, from other scores, show what each adds.

    python scripts/benchmark_quality.py --bundle-root demo [--num-cases 10] [--num-shifted-cases 80]
        [--critic other_critic.pt --output-dir demo/quality_benchmark_other]

``--critic`` benchmarks another trained critic file (an ablation's ``training_critic --critic_ckpt_path ...``) in
place of ``<bundle-root>/models/critic.pt``, with a calibration fitted anew on its scores.

Writes ``<output-dir>/rows_<set>.csv`` (every scored segmentation), ``results.json`` and ``table.md``.
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
TEST_SEED = 100  # demo.py makes training data with seed 0, test data with 1, shifted 2: 100 shares no case with them
SHIFTED_SEED = 300  # the shifted test cases (demo_data's shifted appearance)
#: 80, not 20 (until 0.2.5): the 95 % bootstrap interval of the expected Dice's Spearman on the model's shifted
#: predictions spans 0.61-0.97 on 20 of them, 0.82-0.94 on 80 (docs/quality.md). Case k is the same whatever the
#: count, so the first 20 are the earlier runs' cases.
NUM_SHIFTED_CASES = 80
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
    "expected_dice": ("dice_mean", True, "baseline: the mean Dice the model's probabilities expect (ET, TC, WT)"),
    "expected_dice_wt": ("dice_WT", True, "baseline: the WT Dice the model's probabilities expect"),
    "critic_dice_mean": ("dice_mean", True, "the quality critic's estimated mean Dice (alone, uncalibrated)"),
    "critic_dice_WT": ("dice_WT", True, "the quality critic's estimated WT Dice"),
    "critic_dice_TC": ("dice_TC", True, "the quality critic's estimated TC Dice"),
    "critic_dice_ET": ("dice_ET", True, "the quality critic's estimated ET Dice"),
}
#: the voxel maps whose AUROC against the true error map (segmentation != reference, in the brain) is reported
MAPS: dict[str, str] = {
    "critic_auroc": "the critic's error map",
    "d_auroc": "the discriminator's 1 - D",
    "model_error_auroc": "baseline: the model's probability that a voxel is not of its class",
}


def bundle_run(bundle_root: Path, configs: Sequence[str], *overrides: str, workflow: str = "calibrating") -> None:
    """``python -m monai.bundle run <workflow>`` with ``configs``; stops the benchmark if it fails."""
    config_list = "[" + ",".join(f"'{c}'" for c in configs) + "]"
    cmd = [sys.executable, "-m", "monai.bundle", "run", workflow, "--config_file", config_list,
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
WITHOUT_CRITIC = ("uncertainty", "confidence", "confidence_wt", "expected_dice", "expected_dice_wt")  # all but it
WITH_D = (*D_SCORES, *WITHOUT_CRITIC)
CRITIC_ONLY = ("critic_dice_mean", "critic_dice_WT")
WITH_CRITIC = (*WITHOUT_CRITIC, *CRITIC_ONLY)
COMPARISONS: dict[str, tuple[tuple[str, ...], str]] = {
    f"est_{short}_{name}": (features, target)
    for name, features in (("d_and_uncertainty", D_AND_UNCERTAINTY), ("confidence_only", CONFIDENCE_ONLY),
                           ("without_critic", WITHOUT_CRITIC), ("with_d", WITH_D), ("critic_only", CRITIC_ONLY),
                           ("with_critic", WITH_CRITIC))
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
    results["maps"] = {}
    for name, description in MAPS.items():  # mean voxel AUROC per segmentation (NaN where nothing is wrong)
        entry = {"description": description}
        for group, members in groups.items():
            values = [r[name] for r in members if math.isfinite(r.get(name, math.nan))]
            entry[group] = {"n": len(values), "auroc": float(np.mean(values)) if values else math.nan}
        results["maps"][name] = entry
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
    lines += ["", "| voxel map | mean AUROC (all) | mean AUROC (model's predictions) |", "| --- | --- | --- |"]
    lines += [f"| {e['description']} (`{name}`) | {e['all']['auroc']:.3f} | {e['predictions']['auroc']:.3f} |"
              for name, e in results.get("maps", {}).items()]  # fmt: skip
    lines += ["", "| D's input | mean D (1 = looks like a reference) |", "| --- | --- |"]
    lines += [f"| {k} | {v:.3f} |" for k, v in results["d_by_input"].items()]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> None:
    """Train the critic and calibrate if needed, make the held-out and shifted cases, score them, summarise."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle-root", default="demo", help="a trained demo (scripts/demo.py): models/, data/")
    parser.add_argument("--num-cases", type=int, default=10, help="held-out test cases to make and score")
    parser.add_argument("--seed", type=int, default=TEST_SEED, help="seed of the held-out cases (not 0, 1 or 2)")
    parser.add_argument("--num-shifted-cases", type=int, default=NUM_SHIFTED_CASES, help="shifted test cases (0: none)")
    parser.add_argument("--shifted-seed", type=int, default=SHIFTED_SEED, help="their seed (not 0, 1 or 2)")
    parser.add_argument("--output-dir", help="results folder (default <bundle-root>/quality_benchmark)")
    parser.add_argument("--tta-flip-axes", default="[0,1,2]", help="flip TTA axes, the same for calibration")
    parser.add_argument(
        "--calibration-cases",
        type=int,
        default=10,
        help="fresh validation cases to calibrate on; 0: the demo's own calibration (its fold)",
    )
    parser.add_argument("--calibration-seed", type=int, default=CALIBRATION_SEED, help="their seed")
    parser.add_argument("--critic-epochs", type=int, help="epochs of training_critic where models/critic.pt is "
                        "missing (default: configs/critic.yaml's)")  # fmt: skip
    parser.add_argument("--critic", help="a trained critic file to benchmark instead of <bundle-root>/models/critic.pt "
                        "(never trained or replaced here)")  # fmt: skip
    args = parser.parse_args(argv)
    for name in ("calibration_cases", "num_shifted_cases"):
        if getattr(args, name) < 0:
            raise SystemExit(f"benchmark_quality: --{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}")
    if args.num_cases < 1 or (args.critic_epochs is not None and args.critic_epochs < 1):
        raise SystemExit("benchmark_quality: --num-cases and --critic-epochs must be >= 1")
    seeds = {"test": args.seed}
    seeds.update({"shifted": args.shifted_seed} if args.num_shifted_cases else {})
    seeds.update({"calibration": args.calibration_seed} if args.calibration_cases else {})
    for name, seed in seeds.items():
        if seed in (0, 1, 2):
            raise SystemExit(f"benchmark_quality: seeds 0, 1 and 2 made the demo's training, test and shifted data: "
                             f"choose another {name} seed")  # fmt: skip
    if len(set(seeds.values())) < len(seeds):
        raise SystemExit(f"benchmark_quality: the test, shifted and calibration seeds must differ, got {seeds}")
    if args.critic is not None and not args.calibration_cases:
        raise SystemExit("benchmark_quality: --critic needs --calibration-cases >= 1: the demo's own calibration was "
                         "fitted on models/critic.pt's scores")  # fmt: skip
    if args.critic is not None and args.critic_epochs is not None:
        raise SystemExit("benchmark_quality: --critic-epochs trains a missing models/critic.pt; with --critic "
                         "no critic is trained")  # fmt: skip
    if args.critic is not None and not Path(args.critic).is_file():
        raise SystemExit(f"benchmark_quality: critic {args.critic} not found: train it with training_critic "
                         "--critic_ckpt_path ...")  # fmt: skip
    root = Path(args.bundle_root).resolve()
    out = Path(args.output_dir).resolve() if args.output_dir else root / "quality_benchmark"
    for needed in (root / "models/model.pt", root / "models/discriminator.pt", root / "datalist.json"):
        if not needed.is_file():
            raise SystemExit(f"benchmark_quality: {needed} not found: train the demo first (make demo)")
    data = ["--dataset_dir", str(root / "data"), "--datalist_file", str(root / "datalist.json")]
    # demo.yaml last in both lists below, as scripts/demo.py merges it: its settings override every other config's
    critic_file = Path(args.critic).resolve() if args.critic else root / "models/critic.pt"
    if not critic_file.is_file():  # the demo's own critic, on its training cases, as a user would train it
        epochs = ["--critic_max_epochs", str(args.critic_epochs)] if args.critic_epochs else []
        critic_configs = [str(ROOT / f"configs/{c}.yaml") for c in ("train", "evaluate", "critic", "demo")]
        bundle_run(root, critic_configs, *data, *epochs, workflow="training_critic")
    configs = [str(ROOT / f"configs/{c}.yaml") for c in ("train", "evaluate", "quality", "demo")]
    scoring = ["--tta_flip_axes", args.tta_flip_axes, "--critic_ckpt_path", str(critic_file)]
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
                   *scoring)  # fmt: skip
    else:  # the demo's own: fitted on the validation fold of its training data, never on test cases
        calibration_file = root / "models/quality_calibration.json"
        calibration_rows_csv = root / "eval/quality_calibration_rows.csv"
        if calibration_file.is_file() and not calibration_rows_csv.is_file():
            raise SystemExit(
                f"benchmark_quality: {calibration_file} exists but not its rows {calibration_rows_csv}: "
                "rerun `calibrating` with --overwrite_calibration true, or pass --calibration-cases N"
            )
        if not calibration_file.is_file():
            bundle_run(root, configs, *data, *scoring)
    calibration = load_calibration(calibration_file, required=True)
    calibration_rows = read_rows(calibration_rows_csv)
    test_sets = {"held-out": (args.num_cases, args.seed, False), "shifted": (args.num_shifted_cases,
                                                                           args.shifted_seed, True)}  # fmt: skip
    results: dict[str, Any] = {"sets": {}}
    tables = []
    for name, (count, seed, shifted) in test_sets.items():
        if not count:
            continue
        # by kind, seed and count: a rerun reuses only its own cases
        test_dir = out / f"{'shifted' if shifted else 'test'}_seed{seed}_{count}cases"
        if not test_dir.is_dir():
            make_dataset(test_dir, num_cases=count, seed=seed, spacing=DEMO_SPACING_MM, shifted=shifted)
        rows_csv = out / f"rows_{name}.csv"
        bundle_run(root, configs, "--dataset_dir", str(test_dir), "--num_folds", "1",
                   "--eval_split", "all", "--fit_calibration", "false", "--calibration_rows_csv", str(rows_csv),
                   "--eval_dir", str(out / f"eval_{name}"), *scoring)  # fmt: skip
        results["sets"][name] = {"test_cases": str(test_dir),
                                 **summarise(read_rows(rows_csv), calibration, calibration_rows)}  # fmt: skip
        summary = results["sets"][name]
        tables.append(f"### {name} cases ({summary['num_cases']} cases, {summary['num_rows']} segmentations)\n\n"
                      + markdown_table(summary))  # fmt: skip
    results.update({
        "machine": f"{platform.node()} ({platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores)",
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, "scripts/benchmark_quality.py", *(argv or sys.argv[1:])]),
        "critic": str(critic_file),
        "calibration": {"file": str(calibration_file), "cases": calibration.get("cases"),
                        "num_rows": calibration["num_rows"], "fit_date": calibration["fit_date"]},
    })  # fmt: skip
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    table = "\n".join(tables)
    (out / "table.md").write_text(table)
    print(f"\n{table}")


if __name__ == "__main__":
    main()
