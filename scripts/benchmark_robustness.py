"""Robustness benchmark: the demo recipe trained with each augmentation set, scored in and out of distribution.

Makes the demo's data once (training cases, held-out cases of the same generator, and the shifted set: another
brain, other contrasts and acquisitions; ``make_demo_data.py --shifted true``), trains the demo model once per
augmentation set (``--augmentation paper`` and ``robust``) with the same seed and data, scores each with the bundle's
own ``evaluating`` workflow on both test sets, and appends a section with the machine, date and the per-region Dice
side by side to docs/robustness.md (earlier sections are never changed):

    python scripts/benchmark_robustness.py [--work-dir runs/robustness] [--augmentations paper,robust]
        [--train-args "--max_epochs 40"]

Every step is a plain bundle command, printed before it runs, as in ``scripts/demo.py``.
"""

from __future__ import annotations

import argparse
import datetime
import os
import shlex
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import monai  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402

from bundle.benchmark import append_section, machine  # noqa: E402
from scripts.demo import (  # noqa: E402
    DEMO_SPACING_MM,
    EVALUATIONS,
    NUM_CASES,
    NUM_SHIFTED_CASES,
    NUM_TEST_CASES,
    dice,
    evaluate,
    make_data,
    prepare_output_dir,
    train,
)

PROGRAM = "benchmark_robustness"
DEFAULT_OUTPUT = ROOT / "docs" / "robustness.md"
HEADER = (
    "# Robustness to domain shift\n\nSections appended by `scripts/benchmark_robustness.py`, newest last: the demo "
    "recipe trained once per augmentation set on the same data and seed, scored by the bundle's `evaluating` "
    "workflow on held-out cases of the training cases' generator and on the shifted set (another brain, other "
    "contrasts and acquisitions).\n"
)
REGIONS = ("ET", "TC", "WT", "mean")


def augmentation_sets() -> tuple[str, ...]:
    """The augmentation sets ``configs/train.yaml`` offers (the keys of ``train#random_transforms``)."""
    config = yaml.safe_load((ROOT / "configs" / "train.yaml").read_text())
    return tuple(config["train"]["random_transforms"])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--work-dir",
        default=str(ROOT / "runs" / "robustness"),
        help="data and one bundle_root per augmentation set; a rerun reuses the data",
    )
    p.add_argument("--augmentations", default="paper,robust", help="comma-separated sets to compare")
    p.add_argument("--num-cases", type=int, default=NUM_CASES, help="training cases (as make demo)")
    p.add_argument("--num-test-cases", type=int, default=NUM_TEST_CASES, help="held-out cases (as make demo)")
    p.add_argument("--num-shifted-cases", type=int, default=NUM_SHIFTED_CASES, help="shifted cases (as make demo)")
    p.add_argument("--seed", type=int, default=0, help="data seed; training uses the configs' random_seed")
    p.add_argument("--spacing", type=float, default=DEMO_SPACING_MM, help="demo data voxel size, mm")
    p.add_argument(
        "--train-args", default="", help="more overrides for training and evaluation, e.g. '--max_epochs 40'"
    )
    p.add_argument("--output", default=str(DEFAULT_OUTPUT), help="markdown file the section is appended to")
    p.add_argument("--note", default="", help="a remark printed with the section")
    args = p.parse_args(argv)
    known = augmentation_sets()
    args.augmentations = [a.strip() for a in args.augmentations.split(",") if a.strip()]
    unknown = [a for a in args.augmentations if a not in known]
    if unknown or not args.augmentations:
        p.error(f"--augmentations: unknown set(s) {unknown or args.augmentations!r}; choose from {', '.join(known)}")
    for name in ("num_cases", "num_test_cases", "num_shifted_cases"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.num_cases < 5:
        p.error(f"--num-cases must be at least 5 (the datalist's 5 folds), got {args.num_cases}")
    if "--augmentation" in shlex.split(args.train_args):
        p.error("--train-args must not set --augmentation: name the sets with --augmentations")
    return args


def table(results: dict[str, dict]) -> str:
    heading = "| augmentation | training (s) | " + " | ".join(
        f"{name} {region}" for name, _, _ in EVALUATIONS for region in REGIONS) + " |"  # fmt: skip
    rows = [heading, "|" + " --- |" * (2 + len(EVALUATIONS) * len(REGIONS))]
    for augmentation, result in results.items():
        scores = [f"{result[name][region]:.3f}" for name, _, _ in EVALUATIONS for region in REGIONS]
        rows.append(f"| {augmentation} | {result['training_s']:.0f} | " + " | ".join(scores) + " |")
    return "\n".join(rows)


def verdict(results: dict[str, dict]) -> str:
    """Which set scores the higher mean Dice on the shifted set, by how much, and at what cost in distribution."""
    if not {"paper", "robust"} <= set(results):
        return ""
    paper, robust = results["paper"], results["robust"]
    gain = robust["shifted"]["mean"] - paper["shifted"]["mean"]
    held_out = robust["held-out"]["mean"] - paper["held-out"]["mean"]
    which = "beats" if gain > 0 else "does not beat"
    return (
        f"The robust set {which} the paper's on the shifted set: mean Dice {gain:+.3f} "
        f"(ET {robust['shifted']['ET'] - paper['shifted']['ET']:+.3f}); on the held-out cases {held_out:+.3f}."
    )


def main(argv: list[str] | None = None) -> str:
    args = parse_args(argv)
    work = Path(args.work_dir).resolve()
    prepare_output_dir(work, tuple(args.augmentations), program=PROGRAM)
    started, load_start = time.monotonic(), os.getloadavg()[0]
    make_data(
        work, (args.num_cases, args.num_test_cases, args.num_shifted_cases), args.seed, args.spacing, program=PROGRAM
    )
    overrides = shlex.split(args.train_args)
    results = {}
    for augmentation in args.augmentations:
        root = work / augmentation
        run_overrides = ["--augmentation", augmentation, *overrides]
        seconds = train(work, root, run_overrides, program=PROGRAM)
        evaluate(work, root, run_overrides, program=PROGRAM)
        results[augmentation] = {"training_s": seconds, **{name: dice(root / d) for name, _, d in EVALUATIONS}}

    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    given = list(sys.argv[1:] if argv is None else argv)
    if "--note" in given:  # the note is printed as a remark, not as part of the command
        del given[given.index("--note") : given.index("--note") + 2]
    given = [arg for arg in given if not arg.startswith("--note=")]
    argv_text = shlex.join(["python", "scripts/benchmark_robustness.py", *given])
    text = "\n".join([
        f"## {now}: {machine(torch.device('cpu'))}",
        "",
        f"- `{argv_text}`" + (f" ({args.note})" if args.note else ""),
        f"- torch {torch.__version__}, monai {monai.__version__}, Python {sys.version.split()[0]}; load average "
        f"(1 min) {load_start:.1f} at the start; took {time.monotonic() - started:.0f} s",
        f"- data: {args.num_cases} training cases (fold 0 validates), {args.num_test_cases} held-out and "
        f"{args.num_shifted_cases} shifted cases at {args.spacing:g} mm, data seed {args.seed}; recipe "
        "`configs/train.yaml` + `configs/demo.yaml`" + (f" with `{args.train_args}`" if args.train_args else ""),
        "",
        table(results),
        "",
        verdict(results),
        "",
    ])  # fmt: skip
    print("\n" + text)
    append_section(Path(args.output), text, HEADER)
    print(f"{PROGRAM}: appended to {args.output}")
    return text


if __name__ == "__main__":
    main()
