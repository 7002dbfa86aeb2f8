"""Write the datalist JSON (cases and cross-validation folds) of a BraTS or MSD brain-tumour data set.

Usage (from the repository root):
    python scripts/prepare_datalist.py --dataset-dir D --output F [--num-folds 5] [--seed 0] [--overwrite]
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from collections import Counter  # noqa: E402

import fire  # noqa: E402

from bundle.datalist import make_datalist, save_datalist  # noqa: E402


def main(dataset_dir: str, output: str, num_folds: int = 5, seed: int = 0, overwrite: bool = False) -> None:
    """Find the labelled cases of ``dataset_dir``, assign ``num_folds`` folds with ``seed``, write ``output``."""
    try:
        datalist = make_datalist(str(dataset_dir), num_folds=num_folds, seed=seed)
        written = save_datalist(datalist, str(output), overwrite=overwrite)
    except (OSError, ValueError) as exc:  # user mistakes: one line, no traceback
        print(f"error: {str(exc).replace(os.linesep, ' ')}", file=sys.stderr)
        sys.exit(1)
    folds = Counter(case["fold"] for case in datalist["training"])
    print(f"layout: {datalist['layout']} (label convention {datalist['label_convention']})")
    print(f"cases: {len(datalist['training'])}")
    print("cases per fold: " + ", ".join(f"{k}: {folds[k]}" for k in range(datalist["num_folds"])))
    print(f"wrote {written}")


if __name__ == "__main__":
    fire.Fire(main)
