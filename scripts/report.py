"""Render a visual report of a segmentation run: per-case overlays, training curves and one HTML page.

Usage (from the repository root):
    python scripts/report.py --dataset-dir D --predictions-dir P --output-dir R [--logs-dir L] [--cases ID,ID]
        [--metrics-csv eval/metrics.csv] [--overwrite] [--quiet]

Writes R/cases/<case_id>.png for each case of D with a prediction P/<case_id>.nii.gz, R/training_curves.png from
the TensorBoard event files under L, and R/index.html. See ``bundle/report.py``. User errors print one line on
stderr and exit with status 1.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # make `bundle` importable

from bundle.report import make_report  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options; argparse keeps every value a string (case ids such as ``00001`` stay as written)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset-dir", required=True, help="data set folder (BraTS 2021, BraTS 2023+ or MSD layout)")
    parser.add_argument("--predictions-dir", required=True, help="folder of <case_id>.nii.gz predictions")
    parser.add_argument("--output-dir", required=True, help="report folder to write")
    parser.add_argument("--logs-dir", help="TensorBoard logs of the training run (<bundle_root>/logs)")
    parser.add_argument("--cases", help="comma-separated case ids to render (default: every case with a prediction)")
    parser.add_argument("--metrics-csv", help="per-case Dice table of the evaluation (<bundle_root>/eval/metrics.csv)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    parser.add_argument("--quiet", action="store_true", help="no progress bar nor summary (also with env CI=true)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Parse the options, render the report and print where it is."""
    args = parse_args(argv)
    case_ids = [c.strip() for c in args.cases.split(",") if c.strip()] if args.cases is not None else None
    if case_ids is not None and not case_ids:
        print("error: --cases is empty", file=sys.stderr)
        sys.exit(1)
    try:
        index = make_report(args.dataset_dir, args.predictions_dir, args.output_dir, logs_dir=args.logs_dir,
                            case_ids=case_ids, metrics_csv=args.metrics_csv, overwrite=args.overwrite,
                            quiet=args.quiet)  # fmt: skip
    except (OSError, ValueError) as exc:  # user mistakes: one line, no traceback
        print(f"error: {str(exc).replace(os.linesep, ' ')}", file=sys.stderr)
        sys.exit(1)
    if not args.quiet:
        print(f"wrote {index}")


if __name__ == "__main__":
    main()
