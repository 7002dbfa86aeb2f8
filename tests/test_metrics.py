"""BraTS region metrics against hand-computed cases, the empty-case rules, medpy and MONAI, and the command line.

Surfaces are mask XOR its 6-connected erosion: a 3x3x3 cube has 26 surface voxels (all but its centre), a
4x4x4 cube 56 (all but its 2x2x2 core).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.metrics import compute_hausdorff_distance
from scipy import ndimage

from bundle.labels import REGIONS
from bundle.metrics import (
    HD95_ONE_EMPTY_MM,
    LESION_HD95_PENALTY_MM,
    METRIC_NAMES,
    dice,
    hd95,
    labels_to_regions,
    lesion_wise_scores,
    main,
    mask_metrics,
    region_metrics,
    sensitivity,
    specificity,
    volume_mm3,
)

ROOT = Path(__file__).resolve().parents[1]
SHAPE = (16, 16, 16)


def box(*ranges: tuple[int, int], shape: tuple[int, ...] = SHAPE) -> np.ndarray:
    """A mask that is true on the half-open index ranges, one per axis."""
    mask = np.zeros(shape, dtype=bool)
    mask[tuple(slice(a, b) for a, b in ranges)] = True
    return mask


# two 3x3x3 cubes, the prediction shifted by two voxels along axis 0: they share the slice x = 4 (9 voxels)
REF_CUBE = box((2, 5), (2, 5), (2, 5))
SHIFTED_CUBE = box((4, 7), (2, 5), (2, 5))


def test_dice_sensitivity_specificity_of_shifted_cubes() -> None:
    # |P & R| = 9, |P| = |R| = 27; background of the reference: 16^3 - 27 = 4069 voxels, of which 18 predicted
    assert dice(SHIFTED_CUBE, REF_CUBE) == pytest.approx(2 * 9 / 54)
    assert sensitivity(SHIFTED_CUBE, REF_CUBE) == pytest.approx(9 / 27)
    assert specificity(SHIFTED_CUBE, REF_CUBE) == pytest.approx((4069 - 18) / 4069)


def test_hd95_of_shifted_cubes_pools_both_directions() -> None:
    # prediction surface -> reference surface: slice x=4 (9 voxels, on the reference's face) 0, slice x=5 (8 surface
    # voxels, not the centre) 1, slice x=6 (9) 2; by symmetry the same back. Pooled: 18 x 0, 16 x 1, 18 x 2 (52);
    # the 95th percentile sits at index 0.95 * 51 = 48.45, among the 2s (indices 34..51): 2.0
    assert hd95(SHIFTED_CUBE, REF_CUBE, spacing=(1.0, 1.0, 1.0)) == pytest.approx(2.0)
    assert hd95(REF_CUBE, REF_CUBE, spacing=(1.0, 1.0, 1.0)) == 0.0


def test_anisotropic_spacing_scales_distances_along_its_axis() -> None:
    shifted_along_z = box((2, 5), (2, 5), (4, 7))
    # shifted along axis 2 of 3 mm voxels: distances 0, 3, 6 mm in the counts above -> 6.0
    assert hd95(shifted_along_z, REF_CUBE, spacing=(1.0, 1.0, 3.0)) == pytest.approx(6.0)
    # shifted along axis 0 of 1 mm voxels: every nearest surface voxel still lies along axis 0 -> 2.0
    assert hd95(SHIFTED_CUBE, REF_CUBE, spacing=(1.0, 1.0, 3.0)) == pytest.approx(2.0)
    assert volume_mm3(REF_CUBE, (1.0, 1.0, 3.0)) == pytest.approx(81.0)
    assert volume_mm3(REF_CUBE, (2.0, 2.0, 2.0)) == pytest.approx(216.0)


def test_pooled_hd95_differs_from_monai_max_of_directed_percentiles() -> None:
    # the prediction is the reference cube plus a line of 3 voxels at x = 8, 4 voxels from its face x = 4.
    # prediction -> reference: 26 x 0 and 3 x 4 (29); reference -> prediction: 26 x 0.
    # MONAI: max of the directed 95th percentiles; pred -> ref at index 0.95 * 28 = 26.6, among the 4s -> 4.0.
    # BraTS pooled: 52 x 0 and 3 x 4 (55); index 0.95 * 54 = 51.3, between 0 (51) and 4 (52) -> 0.3 * 4 = 1.2.
    pred = REF_CUBE | box((8, 9), (2, 5), (3, 4))
    assert hd95(pred, REF_CUBE, spacing=(1.0, 1.0, 1.0)) == pytest.approx(1.2)
    monai = compute_hausdorff_distance(
        torch.as_tensor(pred[None, None]), torch.as_tensor(REF_CUBE[None, None]), include_background=True, percentile=95
    )
    assert float(monai) == pytest.approx(4.0)
    assert dice(pred, REF_CUBE) == pytest.approx(54 / 57)


@pytest.mark.parametrize(
    ("pred", "ref", "expected"),
    [
        pytest.param(np.zeros(SHAPE), np.zeros(SHAPE),
                     {"dice": 1.0, "hd95": 0.0, "sensitivity": 1.0, "specificity": 1.0, "lesion_dice": 1.0,
                      "lesion_hd95": 0.0}, id="both empty"),
        # the reference's single 64 mm^3 lesion is missed
        pytest.param(np.zeros(SHAPE), box((2, 6), (2, 6), (2, 6)),
                     {"dice": 0.0, "hd95": HD95_ONE_EMPTY_MM, "sensitivity": 0.0, "specificity": 1.0,
                      "lesion_dice": 0.0, "lesion_hd95": LESION_HD95_PENALTY_MM}, id="prediction empty"),
        # BraTS: sensitivity 0 when only the reference is empty; one false-positive component
        pytest.param(box((2, 6), (2, 6), (2, 6)), np.zeros(SHAPE),
                     {"dice": 0.0, "hd95": HD95_ONE_EMPTY_MM, "sensitivity": 0.0, "specificity": (4096 - 64) / 4096,
                      "lesion_dice": 0.0, "lesion_hd95": LESION_HD95_PENALTY_MM}, id="reference empty"),
    ],
)  # fmt: skip
def test_empty_rules(pred: np.ndarray, ref: np.ndarray, expected: dict[str, float]) -> None:
    metrics = mask_metrics(pred, ref, spacing=(1.0, 1.0, 1.0))
    assert HD95_ONE_EMPTY_MM == 373.13
    assert {k: metrics[k] for k in expected} == pytest.approx(expected)


def test_lesion_wise_missed_lesion_and_false_positive() -> None:
    # reference: lesions A (4^3 = 64 mm^3) and B (64 mm^3, missed), and a 2^3 = 8 mm^3 lesion (missed, left out:
    # at most 50 mm^3); prediction: A exactly and a false-positive 4^3 cube far from any lesion.
    # Dice (1 + 0 + 0) / (2 lesions + 1 FP) = 1/3; HD95 (0 + 374 + 374) / 3
    shape = (32, 32, 32)
    lesion_a, lesion_b = box((2, 6), (2, 6), (2, 6), shape=shape), box((20, 24), (2, 6), (2, 6), shape=shape)
    tiny = box((2, 4), (2, 4), (20, 22), shape=shape)
    false_positive = box((2, 6), (20, 24), (2, 6), shape=shape)
    scores = lesion_wise_scores(lesion_a | false_positive, lesion_a | lesion_b | tiny, spacing=(1.0, 1.0, 1.0))
    assert scores == pytest.approx({"lesion_dice": 1 / 3, "lesion_hd95": 2 * 374 / 3})


def test_lesion_wise_matches_a_component_within_the_dilation() -> None:
    # reference 4^3 cube at x 2..5; prediction the same cube at x 8..11: no overlap, but within 3 dilations (x <= 8).
    # Matched: Dice 0; HD95 6.0: the faces 6 voxels apart bound the distances from the far side of each cube, and
    # carry over 5 % of either cube's surface (for the pooled voxel distances as for the area-weighted ones)
    ref, pred = box((2, 6), (2, 6), (2, 6)), box((8, 12), (2, 6), (2, 6))
    assert lesion_wise_scores(pred, ref, (1.0, 1.0, 1.0)) == pytest.approx({"lesion_dice": 0.0, "lesion_hd95": 6.0})
    # one dilation reaches x = 6 only: a missed lesion and a false positive, 374 each
    assert lesion_wise_scores(pred, ref, (1.0, 1.0, 1.0), dilation_iterations=1) == pytest.approx(
        {"lesion_dice": 0.0, "lesion_hd95": 374.0}
    )


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (1.0, 1.0, 2.0)])
def test_a_lesions_hd95_is_the_brats_2023_one_not_the_pooled_one(spacing: tuple[float, float, float]) -> None:
    # a 6^3 lesion, predicted shifted by one voxel with a 3-voxel protrusion: the pooled HD95 (BraTS 2018-2021)
    # hardly sees the protrusion (1.19 mm), the larger of the directed 95th percentiles of area-weighted surface
    # distances (BraTS 2023, DeepMind's surface_distance) does
    import surface_distance

    ref = box((3, 9), (3, 9), (3, 9))
    pred = box((4, 10), (3, 9), (3, 9)) | box((10, 13), (5, 7), (5, 7))
    distances = surface_distance.compute_surface_distances(ref, pred, spacing)
    official = surface_distance.compute_robust_hausdorff(distances, 95)
    scores = lesion_wise_scores(pred, ref, spacing)
    assert scores["lesion_hd95"] == pytest.approx(official) and official == pytest.approx(3.0)
    assert hd95(pred, ref, spacing) == pytest.approx(1.1864, abs=1e-4)
    assert scores["lesion_dice"] == pytest.approx(dice(pred, ref))


def test_lesion_wise_merges_reference_lesions_whose_dilations_touch() -> None:
    # reference 4^3 cubes at x 2..5 and 10..13 (gap of 4): 3 dilations reach x 8 and 7, so one lesion of 128 voxels;
    # the prediction is the first cube: Dice 2 * 64 / 192. HD95 8.0: the second cube's far face (x = 13) lies 8
    # voxels from the prediction's face x = 5 and carries over 5 % of the reference's surface
    first, second = box((2, 6), (2, 6), (2, 6)), box((10, 14), (2, 6), (2, 6))
    assert lesion_wise_scores(first, first | second, (1.0, 1.0, 1.0)) == pytest.approx(
        {"lesion_dice": 2 / 3, "lesion_hd95": 8.0}
    )
    # one dilation (x 6 and 9) does not join them: (1 + 0) / 2 and (0 + 374) / 2
    assert lesion_wise_scores(first, first | second, (1.0, 1.0, 1.0), dilation_iterations=1) == pytest.approx(
        {"lesion_dice": 0.5, "lesion_hd95": 187.0}
    )


def test_lesion_volume_threshold_is_in_mm3() -> None:
    # a missed 3^3 lesion: 27 mm^3 at 1 mm is left out (no lesion, no FP: 1 and 0); 54 mm^3 at 1 x 1 x 2 mm counts
    assert lesion_wise_scores(np.zeros(SHAPE), REF_CUBE, (1.0, 1.0, 1.0)) == {"lesion_dice": 1.0, "lesion_hd95": 0.0}
    assert lesion_wise_scores(np.zeros(SHAPE), REF_CUBE, (1.0, 1.0, 2.0)) == {"lesion_dice": 0.0, "lesion_hd95": 374.0}


def test_region_metrics_has_every_metric_per_region() -> None:
    regions = torch.stack([torch.as_tensor(REF_CUBE)] * 3).float()
    metrics = region_metrics(regions, regions, spacing=(1.0, 1.0, 1.0))
    assert list(metrics) == list(REGIONS) == ["ET", "TC", "WT"]
    assert all(list(values) == list(METRIC_NAMES) for values in metrics.values())
    assert metrics["WT"]["dice"] == 1.0 and metrics["WT"]["volume_pred_mm3"] == 27.0


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: hd95(REF_CUBE, REF_CUBE, spacing=(1.0, 1.0)), r"spacing \(1\.0, 1\.0\) must be 3 positive"),
        (lambda: hd95(REF_CUBE, REF_CUBE, spacing=(1.0, 0.0, 1.0)), r"spacing \(1\.0, 0\.0, 1\.0\)"),
        (lambda: dice(REF_CUBE, REF_CUBE[:-1]), r"shape \(15, 16, 16\)"),
        (lambda: lesion_wise_scores(REF_CUBE, REF_CUBE, (1, 1, 1), dilation_iterations=0), "dilation_iterations 0"),
        (lambda: region_metrics(REF_CUBE[None], REF_CUBE[None], (1, 1, 1)), "expected 3 region channels, got 1"),
    ],
)
def test_bad_arguments_are_named(call, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()


@pytest.mark.parametrize(
    ("convention", "values"), [("brats2021", (0, 1, 2, 4)), ("brats2023", (0, 1, 2, 3)), ("msd", (0, 2, 1, 3))]
)
def test_labels_to_regions(convention: str, values: tuple[int, int, int, int]) -> None:
    background, ncr, ed, et = values  # the file's value of each internal class
    labels = np.array([background, ncr, ed, et], dtype=np.float64)  # as nibabel's get_fdata reads them
    regions = labels_to_regions(labels, convention)
    np.testing.assert_array_equal(regions, [[0, 0, 0, 1], [0, 1, 0, 1], [0, 1, 1, 1]])  # ET, TC, WT


def test_label_value_outside_the_convention_names_file_and_value() -> None:
    with pytest.raises(ValueError, match=r"BraTS_001_seg\.nii\.gz: label values \[3, 7\] are not in the brats2021"):
        labels_to_regions(np.array([0, 1, 3, 7, 4]), "brats2021", source="BraTS_001_seg.nii.gz")


def random_blob(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    return ndimage.gaussian_filter(rng.random(shape), sigma=2.0) > 0.52


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dice_and_hd95_agree_with_medpy(seed: int) -> None:
    binary = pytest.importorskip("medpy.metric.binary")
    rng = np.random.default_rng(seed)
    pred, ref = random_blob(rng, (40, 36, 24)), random_blob(rng, (40, 36, 24))
    spacing = (1.0, 0.8, 2.5)
    assert pred.any() and ref.any()
    assert dice(pred, ref) == pytest.approx(binary.dc(pred, ref), abs=1e-12)
    assert hd95(pred, ref, spacing) == pytest.approx(binary.hd95(pred, ref, voxelspacing=spacing), abs=1e-9)


def save_labels(path: Path, labels: np.ndarray, zooms: tuple[float, float, float] = (1.0, 1.0, 3.0)) -> Path:
    nib.save(nib.Nifti1Image(labels.astype(np.uint8), np.diag([*zooms, 1.0])), path)
    return path


def test_command_line_prints_json_with_spacing_from_the_header(tmp_path: Path) -> None:
    # ET (label 3 in brats2023) cubes shifted along the 3 mm axis: HD95 6.0 mm as above; NCR (1) alone elsewhere
    ref_labels = np.where(REF_CUBE, 3, 0) + np.where(box((8, 12), (8, 12), (8, 12)), 1, 0)
    pred_labels = np.where(box((2, 5), (2, 5), (4, 7)), 3, 0) + np.where(box((8, 12), (8, 12), (8, 12)), 1, 0)
    pred, ref = save_labels(tmp_path / "pred.nii.gz", pred_labels), save_labels(tmp_path / "ref.nii.gz", ref_labels)
    result = subprocess.run(
        [sys.executable, "-m", "bundle.metrics", str(pred), str(ref), "--labels", "brats2023"],
        cwd=ROOT, capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    metrics = json.loads(result.stdout)
    assert list(metrics) == ["ET", "TC", "WT"] and list(metrics["ET"]) == list(METRIC_NAMES)
    assert metrics["ET"]["dice"] == pytest.approx(1 / 3)
    assert metrics["ET"]["hd95"] == pytest.approx(6.0)
    assert metrics["ET"]["volume_ref_mm3"] == pytest.approx(81.0)
    assert metrics["WT"]["volume_ref_mm3"] == pytest.approx((27 + 64) * 3.0)


def test_command_line_error_is_one_line_naming_the_file(tmp_path: Path) -> None:
    ref = save_labels(tmp_path / "ref.nii.gz", np.zeros(SHAPE))
    missing = tmp_path / "missing.nii.gz"
    result = subprocess.run(
        [sys.executable, "-m", "bundle.metrics", str(missing), str(ref)], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1 and str(missing) in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("pred_labels", "pred_zooms", "message"),
    [
        (np.zeros((16, 16, 15)), (1.0, 1.0, 3.0), "pred.nii.gz: shape (16, 16, 15) differs from shape (16, 16, 16)"),
        (np.zeros(SHAPE), (1.0, 1.0, 2.0), "pred.nii.gz: affine differs from that of"),
        (np.full(SHAPE, 3), (1.0, 1.0, 3.0), "pred.nii.gz: label values [3] are not in the brats2021 convention"),
    ],
)
def test_command_line_bad_input(
    pred_labels: np.ndarray, pred_zooms: tuple, message: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    pred = save_labels(tmp_path / "pred.nii.gz", pred_labels, pred_zooms)
    ref = save_labels(tmp_path / "ref.nii.gz", np.zeros(SHAPE))
    assert main([str(pred), str(ref)]) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and message in captured.err and captured.err.count("\n") == 1


def test_command_line_names_a_file_that_is_not_nifti(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bad = tmp_path / "pred.nii.gz"
    bad.write_text("not an image")
    ref = save_labels(tmp_path / "ref.nii.gz", np.zeros(SHAPE))
    assert main([str(bad), str(ref)]) == 1
    assert f"{bad}: not a readable NIfTI file" in capsys.readouterr().err
