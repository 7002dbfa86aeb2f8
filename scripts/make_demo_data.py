"""Write synthetic BraTS-layout demo cases (real brain anatomy from PyPI packages + synthetic gliomas).

    python scripts/make_demo_data.py --output-dir demo/data --num-cases 20 --seed 0 [--spacing 2] [--shifted true]
        [--overwrite] [--quiet]

``--shifted true`` writes the robustness test set instead: another brain (the SRI24 atlas), other contrasts and
acquisitions (SHIFTED_00000, ...).
See ``bundle/demo_data.py`` for what is generated and why.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # make `bundle` importable when run from anywhere

import fire  # noqa: E402

from bundle.demo_data import make_dataset  # noqa: E402
from bundle.flags import as_flag  # noqa: E402


def main(
    output_dir: str,
    num_cases: int = 20,
    seed: int = 0,
    spacing: float = 1.0,
    shifted: bool | str = False,
    overwrite: bool | str = False,
    quiet: bool | str = False,
) -> None:
    """Write NUM_CASES demo cases (DEMO_00000, ...; SHIFTED_00000, ... with --shifted true) to OUTPUT_DIR at SPACING
    mm; refuses a non-empty OUTPUT_DIR unless --overwrite. User errors print one line to stderr and exit with
    status 1."""
    try:
        shifted, overwrite, quiet = (as_flag(v, n) for v, n in ((shifted, "shifted"), (overwrite, "overwrite"),
                                                                 (quiet, "quiet")))  # fmt: skip
        ids = make_dataset(
            str(output_dir), num_cases, seed, spacing=spacing, overwrite=overwrite, quiet=quiet, shifted=shifted
        )
    except (ValueError, OSError) as err:
        print(f"make_demo_data: error: {err}", file=sys.stderr)
        sys.exit(1)
    if not quiet:
        print(f"wrote {len(ids)} demo cases to {output_dir}")


if __name__ == "__main__":
    fire.Fire(main)
