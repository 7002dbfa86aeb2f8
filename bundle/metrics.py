"""Per-case BraTS region metrics: Dice, HD95, sensitivity, specificity, volumes and lesion-wise Dice and HD95.

Region-level metrics follow the BraTS 2018-2021 rules:

- HD95 is medpy's ``medpy.metric.binary.hd95``: the 95th percentile (``numpy.percentile``, linear) of the pooled
  surface distances in both directions, prediction -> reference and reference -> prediction, in mm. A surface is
  ``mask XOR binary_erosion(mask)`` with the 6-connected structuring element; distances come from
  ``scipy.ndimage.distance_transform_edt(..., sampling=spacing)``. MONAI's ``compute_hausdorff_distance(...,
  percentile=95)`` takes the larger of the two directed percentiles instead, which can differ.
- Reference and prediction both empty: Dice 1, HD95 0; exactly one empty: Dice 0, HD95 ``HD95_ONE_EMPTY_MM``.
- Sensitivity and specificity as the BraTS 2023 code computes them (``get_tpr_tnr_ppv_voxel_wise`` of
  ``rachitsaluja/BraTS-2023-Metrics``, from GaNDLF): sensitivity is 1 when both masks are empty and 0 when only the
  reference is; specificity is 0 when the reference has no background voxel.

Lesion-wise scores follow the BraTS 2023 metrics code (``brats_2023_metrics/surface_distance/brats_metrics.py``,
``get_lesion_wise_score`` and ``get_lesion_wise_results``, BraTS-GLI parameters); see :func:`lesion_wise_scores`.
A lesion's HD95 is computed as that code does, with DeepMind's ``surface_distance`` package, which it vendors
(:func:`lesion_hd95`).

One pair of label files from the command line (spacing from the NIfTI header)::

    python -m bundle.metrics PRED.nii.gz REF.nii.gz --labels brats2021
"""

from __future__ import annotations

import argparse
import json
import sys
import zlib
from collections.abc import Sequence
from typing import TYPE_CHECKING

import nibabel as nib
import numpy as np
import surface_distance  # DeepMind's surface distances: what the BraTS 2023 lesion-wise evaluation measures with
from scipy import ndimage

from bundle.datalist import AFFINE_TOLERANCE_MM
from bundle.labels import LABEL_CONVENTIONS, REGIONS, label_values

if TYPE_CHECKING:  # tensors are accepted, but torch is not imported: the command line starts faster without it
    import torch

__all__ = [
    "HD95_ONE_EMPTY_MM",
    "LESION_DILATION_ITERATIONS",
    "LESION_VOLUME_THRESHOLD_MM3",
    "LESION_HD95_PENALTY_MM",
    "METRIC_NAMES",
    "dice",
    "hd95",
    "sensitivity",
    "specificity",
    "volume_mm3",
    "lesion_wise_scores",
    "mask_metrics",
    "region_metrics",
    "labels_to_regions",
    "score_files",
    "main",
]

#: HD95 when exactly one of reference and prediction is empty (BraTS 2018-2021): the diagonal of BraTS'
#: 240 x 240 x 155 mm volume, sqrt(240^2 + 240^2 + 155^2) = 373.13 mm
HD95_ONE_EMPTY_MM = 373.13
#: structuring element of the surface erosion: scipy ``generate_binary_structure(ndim, 1)``, 6-connected (medpy)
SURFACE_CONNECTIVITY = 1
#: lesions are 26-connected components (the BraTS 2023 code's ``cc3d.connected_components(..., connectivity=26)``)
LESION_CONNECTIVITY = 3
#: structuring element of the lesion dilation: ``generate_binary_structure(3, 2)``, 18-connected (BraTS 2023)
LESION_DILATION_CONNECTIVITY = 2
#: dilation iterations that merge nearby reference lesions and match predicted components to them (BraTS-GLI,
#: -SSA, -PED: 3; -MEN, -MET: 1)
LESION_DILATION_ITERATIONS = 3
#: reference lesions of at most this volume are left out of the lesion-wise scores (BraTS-GLI: 50 mm^3; -MET: 2)
LESION_VOLUME_THRESHOLD_MM3 = 50.0
#: lesion-wise HD95 of a missed reference lesion and of each false-positive component (BraTS 2023)
LESION_HD95_PENALTY_MM = 374.0

#: per-region metrics of :func:`mask_metrics`, in column order
METRIC_NAMES: tuple[str, ...] = (
    "dice", "hd95", "sensitivity", "specificity", "volume_ref_mm3", "volume_pred_mm3", "lesion_dice", "lesion_hd95",
)  # fmt: skip


def _masks(pred: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both as boolean arrays (non-zero is foreground) of one shape."""
    pred, ref = np.asarray(pred, dtype=bool), np.asarray(ref, dtype=bool)
    if pred.shape != ref.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from reference shape {ref.shape}.")
    return pred, ref


def _spacing(spacing: Sequence[float], ndim: int) -> np.ndarray:
    """``spacing`` as ``ndim`` positive finite voxel sizes in mm."""
    values = np.asarray(spacing, dtype=float)
    if values.shape != (ndim,) or not np.all(np.isfinite(values) & (values > 0)):
        raise ValueError(f"spacing {spacing!r} must be {ndim} positive voxel sizes in mm, one per spatial axis.")
    return values


def _bounding_box(mask: np.ndarray, margin: int) -> tuple[slice, ...]:
    """Slices of the non-empty ``mask``'s bounding box, widened by ``margin`` voxels within the array."""
    (box,) = ndimage.find_objects(mask.astype(np.uint8))
    return tuple(slice(max(s.start - margin, 0), s.stop + margin) for s in box)


def _surface(mask: np.ndarray) -> np.ndarray:
    """Surface voxels: the mask XOR its erosion by the 6-connected element (voxels on the array edge included)."""
    structure = ndimage.generate_binary_structure(mask.ndim, SURFACE_CONNECTIVITY)
    return mask ^ ndimage.binary_erosion(mask, structure=structure)


def dice(pred: np.ndarray, ref: np.ndarray) -> float:
    """Dice ``2 |P & R| / (|P| + |R|)`` of two masks; 1 when both are empty (BraTS rule)."""
    pred, ref = _masks(pred, ref)
    total = pred.sum() + ref.sum()
    return 1.0 if total == 0 else float(2.0 * np.logical_and(pred, ref).sum() / total)


def hd95(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float]) -> float:
    """HD95 in mm: 95th percentile of the pooled surface distances pred -> ref and ref -> pred (medpy ``hd95``).

    Both empty: 0; exactly one empty: ``HD95_ONE_EMPTY_MM`` (BraTS 2018-2021). ``spacing`` is the voxel size per
    array axis in mm.
    """
    pred, ref = _masks(pred, ref)
    spacing = _spacing(spacing, pred.ndim)
    if not (pred.any() and ref.any()):
        return 0.0 if pred.any() == ref.any() else HD95_ONE_EMPTY_MM
    # a one-voxel margin around both masks leaves surfaces and distances as in the whole array
    box = _bounding_box(pred | ref, margin=1)
    pred_surface, ref_surface = _surface(pred[box]), _surface(ref[box])
    to_ref = ndimage.distance_transform_edt(~ref_surface, sampling=spacing)[pred_surface]
    to_pred = ndimage.distance_transform_edt(~pred_surface, sampling=spacing)[ref_surface]
    return float(np.percentile(np.concatenate([to_ref, to_pred]), 95))


def lesion_hd95(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float]) -> float:
    """A lesion's HD95 in mm as the BraTS 2023 lesion-wise code computes it, both masks non-empty:
    ``compute_robust_hausdorff(compute_surface_distances(ref, pred, spacing), 95)`` of DeepMind's
    ``surface_distance`` (surface elements weighted by area, the larger of the two directed 95th percentiles).
    Not :func:`hd95`, the pooled distances of the BraTS 2018-2021 region metric: the two can differ."""
    distances = surface_distance.compute_surface_distances(ref.astype(bool), pred.astype(bool), tuple(spacing))
    return float(surface_distance.compute_robust_hausdorff(distances, 95))


def sensitivity(pred: np.ndarray, ref: np.ndarray) -> float:
    """``TP / (TP + FN)``; with an empty reference 1 if the prediction is empty too, else 0 (BraTS 2023 code)."""
    pred, ref = _masks(pred, ref)
    positives = ref.sum()
    if positives == 0:
        return 0.0 if pred.any() else 1.0
    return float(np.logical_and(pred, ref).sum() / positives)


def specificity(pred: np.ndarray, ref: np.ndarray) -> float:
    """``TN / (TN + FP)``; 0 when the reference has no background voxel (as the BraTS 2023 code's formula gives)."""
    pred, ref = _masks(pred, ref)
    negatives = (~ref).sum()
    return 0.0 if negatives == 0 else float(np.logical_and(~pred, ~ref).sum() / negatives)


def volume_mm3(mask: np.ndarray, spacing: Sequence[float]) -> float:
    """Volume of a mask in mm^3: its voxel count times the voxel volume."""
    mask = np.asarray(mask, dtype=bool)
    return float(mask.sum() * np.prod(_spacing(spacing, mask.ndim)))


def _reference_lesions(ref: np.ndarray, iterations: int) -> tuple[np.ndarray, int]:
    """Reference lesions labelled 1..n: 26-connected components, merged where their dilations touch (BraTS 2023)."""
    dilation = ndimage.generate_binary_structure(ref.ndim, LESION_DILATION_CONNECTIVITY)
    grown = ndimage.binary_dilation(ref, structure=dilation, iterations=iterations)
    groups, count = ndimage.label(grown, structure=ndimage.generate_binary_structure(ref.ndim, LESION_CONNECTIVITY))
    return np.where(ref, groups, 0), count


def lesion_wise_scores(
    pred: np.ndarray,
    ref: np.ndarray,
    spacing: Sequence[float],
    dilation_iterations: int = LESION_DILATION_ITERATIONS,
    volume_threshold_mm3: float = LESION_VOLUME_THRESHOLD_MM3,
) -> dict[str, float]:
    """BraTS 2023 lesion-wise Dice and HD95 of one region: ``{"lesion_dice": ..., "lesion_hd95": ...}``.

    Reference lesions are 26-connected components, merged where their dilations (``dilation_iterations`` of the
    18-connected element) connect. A lesion's predicted counterpart is the union of the 26-connected predicted
    components that touch the lesion's dilation; without one the lesion scores Dice 0, HD95
    ``LESION_HD95_PENALTY_MM``. Lesions of at most ``volume_threshold_mm3`` are left out (their matched components
    are not false positives). Each predicted component that matches no lesion is a false positive scoring 0 and
    ``LESION_HD95_PENALTY_MM``. Scores are the sums over kept lesions and false positives divided by their number;
    with neither, Dice 1 and HD95 0. A lesion's HD95 is :func:`lesion_hd95`, as in the BraTS 2023 code.
    """
    pred, ref = _masks(pred, ref)
    spacing = _spacing(spacing, pred.ndim)
    if isinstance(dilation_iterations, bool) or not isinstance(dilation_iterations, int) or dilation_iterations < 1:
        raise ValueError(f"dilation_iterations {dilation_iterations!r} must be a positive integer.")
    if not np.isfinite(volume_threshold_mm3) or volume_threshold_mm3 < 0:
        raise ValueError(f"volume_threshold_mm3 {volume_threshold_mm3!r} must be a finite volume >= 0.")
    if not (pred.any() or ref.any()):
        return {"lesion_dice": 1.0, "lesion_hd95": 0.0}
    # a margin of the dilation around both masks leaves components and dilations as in the whole array
    box = _bounding_box(pred | ref, margin=dilation_iterations)
    pred, ref = pred[box], ref[box]
    lesions, num_lesions = _reference_lesions(ref, dilation_iterations)
    components, num_components = ndimage.label(
        pred, structure=ndimage.generate_binary_structure(pred.ndim, LESION_CONNECTIVITY)
    )
    dilation = ndimage.generate_binary_structure(pred.ndim, LESION_DILATION_CONNECTIVITY)
    matched_any = np.zeros(num_components + 1, dtype=bool)
    dices, distances = [], []
    for index in range(1, num_lesions + 1):
        lesion = lesions == index
        near = ndimage.binary_dilation(lesion, structure=dilation, iterations=dilation_iterations)
        matched = np.setdiff1d(np.unique(components[near]), [0])
        matched_any[matched] = True
        if lesion.sum() * np.prod(spacing) <= volume_threshold_mm3:
            continue
        counterpart = np.isin(components, matched)
        dices.append(dice(counterpart, lesion))
        distances.append(lesion_hd95(counterpart, lesion, spacing) if matched.size else LESION_HD95_PENALTY_MM)
    false_positives = num_components - int(matched_any[1:].sum())
    count = len(dices) + false_positives
    if count == 0:
        return {"lesion_dice": 1.0, "lesion_hd95": 0.0}
    return {
        "lesion_dice": float(sum(dices) / count),
        "lesion_hd95": float((sum(distances) + false_positives * LESION_HD95_PENALTY_MM) / count),
    }


def _to_numpy(data: np.ndarray | torch.Tensor) -> np.ndarray:
    """An array, or a tensor (on any device, MetaTensors included) copied to a numpy array."""
    return data.detach().cpu().numpy() if hasattr(data, "detach") else np.asarray(data)


def mask_metrics(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float]) -> dict[str, float]:
    """Every metric of ``METRIC_NAMES`` for one region's masks, ``spacing`` in mm per array axis."""
    pred, ref = _masks(pred, ref)
    return {
        "dice": dice(pred, ref),
        "hd95": hd95(pred, ref, spacing),
        "sensitivity": sensitivity(pred, ref),
        "specificity": specificity(pred, ref),
        "volume_ref_mm3": volume_mm3(ref, spacing),
        "volume_pred_mm3": volume_mm3(pred, spacing),
        **lesion_wise_scores(pred, ref, spacing),
    }


def region_metrics(
    pred_regions: np.ndarray | torch.Tensor, ref_regions: np.ndarray | torch.Tensor, spacing: Sequence[float]
) -> dict[str, dict[str, float]]:
    """Metrics per region for ``(3, *spatial)`` masks in the order ET, TC, WT: ``{"ET": {"dice": ...}, ...}``.

    Values above 0.5 are foreground; ``spacing`` is the voxel size in mm of each spatial axis.
    """
    pred, ref = _to_numpy(pred_regions) > 0.5, _to_numpy(ref_regions) > 0.5
    if pred.shape[0] != len(REGIONS) or ref.shape[0] != len(REGIONS):
        raise ValueError(f"expected {len(REGIONS)} region channels, got {pred.shape[0]} and {ref.shape[0]}.")
    return {name: mask_metrics(pred[i], ref[i], spacing) for i, name in enumerate(REGIONS)}


def labels_to_regions(labels: np.ndarray, convention: str, source: str = "<array>") -> np.ndarray:
    """Label volume in ``convention``'s values (e.g. BraTS 2021's 0, 1, 2, 4) -> ``(3, *spatial)`` masks ET, TC, WT.

    A value outside the convention is a ``ValueError`` naming ``source`` (the file) and the values.
    """
    values = label_values(convention)
    labels = np.asarray(labels)
    found = np.unique(labels)
    unknown = found[~np.isin(found, values)]
    if unknown.size:
        shown = [int(v) if float(v).is_integer() else float(v) for v in unknown]
        raise ValueError(f"{source}: label values {shown} are not in the {convention} convention {values}.")
    return np.stack([np.isin(labels, [values[c] for c in classes]) for classes in REGIONS.values()])


def _load_label_file(path: str) -> nib.Nifti1Image:
    """The 3-D NIfTI label file at ``path``; every failure is a ``ValueError`` naming the file."""
    try:
        image = nib.load(path)
    except FileNotFoundError as error:
        raise ValueError(f"{path}: no such file.") from error
    except (nib.filebasedimages.ImageFileError, OSError, EOFError, ValueError, zlib.error) as error:
        raise ValueError(f"{path}: not a readable NIfTI file ({error}).") from error
    if len(image.shape) != 3:
        raise ValueError(f"{path}: expected a 3-D label volume, got shape {image.shape}.")
    return image


def _label_data(image: nib.Nifti1Image, path: str) -> np.ndarray:
    """Voxels of ``image``; a truncated or corrupt file is a ``ValueError`` naming it."""
    try:
        return np.asanyarray(image.dataobj)
    except (OSError, EOFError, ValueError, zlib.error) as error:
        raise ValueError(f"{path}: voxel data cannot be read ({error}).") from error


def score_files(pred_path: str, ref_path: str, convention: str = "brats2021") -> dict[str, dict[str, float]]:
    """Region metrics of the label files ``pred_path`` against ``ref_path``, spacing from the reference header.

    The files must share shape and affine (within ``AFFINE_TOLERANCE_MM``); errors are ``ValueError`` naming a file.
    """
    label_values(convention)  # an unknown convention fails before any file is read
    pred_image, ref_image = _load_label_file(pred_path), _load_label_file(ref_path)
    if pred_image.shape != ref_image.shape:
        raise ValueError(f"{pred_path}: shape {pred_image.shape} differs from shape {ref_image.shape} of {ref_path}.")
    deviation = float(np.abs(pred_image.affine - ref_image.affine).max())
    if deviation > AFFINE_TOLERANCE_MM:
        raise ValueError(
            f"{pred_path}: affine differs from that of {ref_path} by up to {deviation:.4g} "
            f"(tolerance {AFFINE_TOLERANCE_MM} mm): not on one grid."
        )
    pred = labels_to_regions(_label_data(pred_image, pred_path), convention, source=pred_path)
    ref = labels_to_regions(_label_data(ref_image, ref_path), convention, source=ref_path)
    return region_metrics(pred, ref, spacing=ref_image.header.get_zooms()[:3])


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: prints the region metrics of one prediction file as JSON; exit status 1 on bad input."""
    parser = argparse.ArgumentParser(
        prog="python -m bundle.metrics", description="BraTS region metrics (ET, TC, WT) of one prediction file."
    )
    parser.add_argument("pred", help="predicted label map (NIfTI)")
    parser.add_argument("ref", help="reference label map (NIfTI) on the same grid")
    parser.add_argument(
        "--labels", choices=sorted(LABEL_CONVENTIONS), default="brats2021", help="label values of both files"
    )
    args = parser.parse_args(argv)
    try:
        result = score_files(args.pred, args.ref, args.labels)
    except ValueError as error:
        print(f"error: {' '.join(str(error).split())}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
