"""BraTS label conventions and the model's internal classes.

The generator predicts four classes: 0 background, 1 necrotic / non-enhancing tumour core (NCR/NET),
2 peritumoural oedema (ED), 3 enhancing tumour (ET). Each data set stores these under its own label values.
"""

from __future__ import annotations

#: label value in the files for each internal class 0..3, by convention name
LABEL_CONVENTIONS: dict[str, tuple[int, int, int, int]] = {
    "brats2021": (0, 1, 2, 4),  # BraTS 2018-2021: 1 NCR/NET, 2 ED, 4 ET
    "brats2023": (0, 1, 2, 3),  # BraTS 2023+: 1 NETC, 2 SNFH, 3 ET
    "msd": (0, 2, 1, 3),  # MSD Task01: 1 oedema, 2 non-enhancing tumour, 3 enhancing tumour
}

#: internal class names, in class order
CLASS_NAMES: tuple[str, ...] = ("background", "necrotic tumour core", "peritumoural oedema", "enhancing tumour")

#: BraTS regions as sets of internal classes, in the order the bundle reports them
REGIONS: dict[str, tuple[int, ...]] = {"ET": (3,), "TC": (1, 3), "WT": (1, 2, 3)}


def label_values(convention: str) -> tuple[int, int, int, int]:
    """Label values of classes 0..3 in ``convention``; raises ``ValueError`` naming an unknown convention."""
    if convention not in LABEL_CONVENTIONS:
        raise ValueError(f"unknown label convention {convention!r}; choose one of {sorted(LABEL_CONVENTIONS)}")
    return LABEL_CONVENTIONS[convention]
