"""Robustness to domain shift (issue 11): the shifted demo cases and the robust augmentation the configs build."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from monai.bundle import ConfigParser, ConfigWorkflow
from monai.transforms import (
    Compose,
    RandAdjustContrastd,
    RandBiasFieldd,
    RandCropByLabelClassesd,
    RandGaussianNoised,
    RandGaussianSmoothd,
    RandHistogramShiftd,
    RandScaleIntensityd,
    RandShiftIntensityd,
    RandSimulateLowResolutiond,
    RandSpatialCropd,
)
from scipy import ndimage as ndi

from bundle.demo_data import APPEARANCES, MODALITIES, make_case, make_dataset
from helpers import TINY_MODEL, error_text

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
SPACING = 4.0
#: the per-modality augmentations of the robust set, each drawn once per modality
MODALITY_AUGMENTATIONS = (
    RandAdjustContrastd,
    RandHistogramShiftd,
    RandBiasFieldd,
    RandScaleIntensityd,
    RandShiftIntensityd,
    RandGaussianSmoothd,
    RandSimulateLowResolutiond,
    RandGaussianNoised,
)


def _flatten(transform: object) -> list[object]:
    """Every transform inside ``transform``, through nested ``Compose`` and ``OneOf`` (a subclass of Compose)."""
    if isinstance(transform, Compose):
        return [t for child in transform.transforms for t in _flatten(child)]
    return [transform]


def _training_transforms(**overrides: object) -> list[object]:
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "train.yaml"))
    parser.update({"datalist": {"label_convention": "brats2021", "channel_order": [0, 1, 2, 3]}, **overrides})
    return _flatten(parser.get_parsed_content("train#preprocessing"))


def _region_contrasts(case: dict[str, np.ndarray]) -> np.ndarray:
    """Mean of ED and of ET over the mean of normal brain, per modality: the case's contrast table, as measured."""
    seg, brain = case["seg"], case["t1"] > 0
    normal = brain & ~ndi.binary_dilation(seg > 0, iterations=2)
    return np.array([[case[m][seg == label].mean() / case[m][normal].mean() for label in (2, 4)] for m in MODALITIES])


def test_robust_set_is_the_default_and_draws_every_augmentation_per_modality() -> None:
    transforms = _training_transforms()
    assert sum(isinstance(t, RandCropByLabelClassesd) for t in transforms) == 1
    assert not any(isinstance(t, RandSpatialCropd) for t in transforms)
    crop = next(t for t in transforms if isinstance(t, RandCropByLabelClassesd))
    assert crop.cropper.ratios == [1, 1, 1, 1] and crop.cropper.num_classes == 4  # ET and NCR/NET centres as often
    for kind in MODALITY_AUGMENTATIONS:
        keys = sorted(key for t in transforms if type(t) is kind for key in t.keys)
        assert keys == sorted(f"image_{m}" for m in ("t1", "t1ce", "t2", "flair")), (kind.__name__, keys)


def test_paper_set_is_the_papers() -> None:
    transforms = _training_transforms(augmentation="paper")
    assert any(isinstance(t, RandSpatialCropd) for t in transforms)
    assert not any(isinstance(t, (RandCropByLabelClassesd, *MODALITY_AUGMENTATIONS[1:3])) for t in transforms)
    assert not any(key.startswith("image_") for t in transforms for key in getattr(t, "keys", ()))  # whole image


def test_unknown_augmentation_is_refused_naming_the_choices() -> None:
    with pytest.raises(Exception) as caught:
        _training_transforms(augmentation="bogus")
    assert "'bogus'" in error_text(caught.value) and "paper" in error_text(caught.value)


def test_robust_patch_keeps_the_four_modalities_in_order(tmp_path: Path) -> None:
    """The split into modalities and the concatenation back give the image its shape and channel order again."""
    make_dataset(tmp_path / "data", 3, seed=0, spacing=SPACING, quiet=True)
    workflow = ConfigWorkflow(config_file=str(CONFIGS / "train.yaml"), workflow_type="train",
                              dataset_dir=str(tmp_path / "data"), bundle_root=str(tmp_path), num_folds=3,
                              cache_rate=0.0, modality_augmentation_prob=0.0, augmentation_prob=0.0,
                              **TINY_MODEL)  # fmt: skip
    workflow.initialize()
    (patch,) = workflow.parser.get_parsed_content("train#dataset")[0]  # one patch per volume, as a list
    assert patch["image"].shape == (4, 32, 32, 32) and set(patch) >= {"image", "label"}
    assert not any(key.startswith("image_") for key in patch)
    # no augmentation: each channel is still its own z-scored modality, FLAIR brightest in the oedema
    image, label = patch["image"].numpy(), patch["label"].numpy()[0]
    if (label == 2).sum() >= 5:
        assert image[3][label == 2].mean() > image[0][label == 2].mean()


def test_shifted_cases_are_deterministic_for_a_seed() -> None:
    a, b = (make_case(2, seed=7, spacing=SPACING, shifted=True) for _ in range(2))
    for key in (*MODALITIES, "seg", "affine"):
        assert np.array_equal(a[key], b[key]), key


def test_shifted_contrasts_differ_between_seeds_and_from_the_standard_cases() -> None:
    shifted = [make_case(0, seed=seed, spacing=SPACING, shifted=True) for seed in (1, 2)]
    standard = make_case(0, seed=1, spacing=SPACING)
    first, second = (_region_contrasts(case) for case in shifted)
    assert np.abs(first - second).max() > 0.1, (first, second)  # another contrast table, not only another tumour
    assert not np.array_equal(shifted[0]["t1"], make_case(0, seed=1, spacing=SPACING, shifted=False)["t1"])
    # another brain: the brains' masks differ by more than the per-case deformation could make them
    overlap = ((shifted[0]["t1"] > 0) & (standard["t1"] > 0)).sum() / (standard["t1"] > 0).sum()
    assert overlap < 0.9, overlap  # seen here: 0.75 (two standard cases: 0.995)


def test_shifted_appearance_is_wider_than_the_training_one() -> None:
    standard, shifted = APPEARANCES["standard"], APPEARANCES["shifted"]
    for name in ("et_enhancement", "ed_flair", "ed_t2", "level_jitter"):
        lo, hi = getattr(shifted, name)
        assert lo < getattr(standard, name)[0] and hi > getattr(standard, name)[1], name
    assert shifted.anatomy != standard.anatomy and shifted.thick_slices > 0 and shifted.noise[1] > standard.noise[1]


@pytest.mark.parametrize("appearance", ["standard", "shifted"])
def test_oedema_is_never_darker_than_the_floor_over_grey_matter(appearance: str) -> None:
    from bundle.demo_data import ED, GM, _contrast_table

    look = APPEARANCES[appearance]
    for seed in range(200):
        table = _contrast_table(np.random.default_rng(seed), look)
        for name in ("t2", "flair"):
            assert table[name][ED] >= look.ed_over_gm * table[name][GM] - 1e-12, (seed, name)
    assert APPEARANCES["shifted"].ed_over_gm < APPEARANCES["standard"].ed_over_gm  # fainter oedema when shifted


def test_make_dataset_refuses_a_non_boolean_shifted(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="shifted must be True or False, got 'yes'"):
        make_dataset(tmp_path / "data", 1, seed=0, spacing=SPACING, shifted="yes")  # type: ignore[arg-type]
    assert not (tmp_path / "data").exists()
