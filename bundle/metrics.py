"""Per-case BraTS region metrics.

Dice follows the BraTS 2018-2021 rules for empty regions: reference and prediction both empty -> 1, exactly one
empty -> 0.
"""

from __future__ import annotations

import numpy as np
import torch

from bundle.labels import REGIONS

__all__ = ["dice", "region_metrics"]


def dice(pred: np.ndarray, ref: np.ndarray) -> float:
    """Dice of two boolean masks, 1.0 when both are empty (BraTS rule)."""
    pred, ref = np.asarray(pred, dtype=bool), np.asarray(ref, dtype=bool)
    if pred.shape != ref.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from reference shape {ref.shape}.")
    total = pred.sum() + ref.sum()
    return 1.0 if total == 0 else float(2.0 * np.logical_and(pred, ref).sum() / total)


def region_metrics(pred_regions: np.ndarray | torch.Tensor, ref_regions: np.ndarray | torch.Tensor) -> dict:
    """Metrics per region for ``(3, *spatial)`` masks in the order ET, TC, WT: ``{"ET": {"dice": ...}, ...}``."""
    pred = torch.as_tensor(pred_regions).detach().cpu().numpy() > 0.5
    ref = torch.as_tensor(ref_regions).detach().cpu().numpy() > 0.5
    if pred.shape[0] != len(REGIONS) or ref.shape[0] != len(REGIONS):
        raise ValueError(f"expected {len(REGIONS)} region channels, got {pred.shape[0]} and {ref.shape[0]}.")
    return {name: {"dice": dice(pred[i], ref[i])} for i, name in enumerate(REGIONS)}
