"""Loss values against hand-computed cases."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch

from bundle.losses import FixedWeightGeneralizedDiceLoss, Vox2VoxLoss, balanced_class_weights


def two_class_case() -> tuple[torch.Tensor, torch.Tensor]:
    p1 = torch.tensor([0.2, 0.9, 0.6, 0.1])
    pred = torch.stack([1 - p1, p1]).reshape(1, 2, 4, 1, 1)
    label = torch.tensor([0, 1, 1, 0]).reshape(1, 1, 4, 1, 1)
    return pred, label


def test_generalized_dice_by_hand() -> None:
    pred, label = two_class_case()
    # class 0: intersection 0.8 + 0.9 = 1.7, sum(y + p) = 2 + 2.2 = 4.2; class 1: 1.5 and 2 + 1.8 = 3.8
    # loss = 1 - 2 * (1 * 1.7 + 3 * 1.5) / (1 * 4.2 + 3 * 3.8 + 1e-5)
    expected = 1 - 2 * (1 * 1.7 + 3 * 1.5) / (1 * 4.2 + 3 * 3.8 + 1e-5)
    loss = FixedWeightGeneralizedDiceLoss([1.0, 3.0])(pred, label)
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_generalized_dice_sums_over_batch_before_dividing() -> None:
    pred, label = two_class_case()
    loss_fn = FixedWeightGeneralizedDiceLoss([1.0, 3.0])
    # two copies of the case in one batch: both sums double, the ratio stays (up to the 1e-5 in the denominator)
    expected = 1 - 2 * 2 * (1 * 1.7 + 3 * 1.5) / (2 * (1 * 4.2 + 3 * 3.8) + 1e-5)
    assert loss_fn(torch.cat([pred, pred]), torch.cat([label, label])).item() == pytest.approx(expected, rel=1e-6)


def test_lsgan_terms_by_hand() -> None:
    pred, label = two_class_case()
    loss = Vox2VoxLoss(class_weights=[1.0, 3.0], alpha=5.0)
    real, fake = torch.tensor([0.5, 1.5]), torch.tensor([0.2, -0.4])
    # L_D = 0.5 * (mean((1 - real)^2) + mean(fake^2)) = 0.5 * (0.25 + 0.1)
    assert loss.discriminator(real, fake).item() == pytest.approx(0.175, rel=1e-6)
    total, adv, dice = loss.generator(fake, pred, label)
    # L_G = mean((1 - fake)^2) + 5 * GDL = (0.64 + 1.96) / 2 + 5 * GDL
    assert adv.item() == pytest.approx(1.3, rel=1e-6)
    assert total.item() == pytest.approx(1.3 + 5 * dice.item(), rel=1e-6)


@pytest.mark.parametrize("weights", [[1.0], [1.0, float("nan")], [1.0, -2.0]])
def test_rejects_bad_class_weights(weights: list[float]) -> None:
    with pytest.raises(ValueError, match="class_weights"):
        FixedWeightGeneralizedDiceLoss(weights)


def test_balanced_class_weights_from_label_files(tmp_path) -> None:
    label = np.zeros((10, 10, 2), dtype=np.uint8)  # 200 voxels: 150 background, 20 NCR, 20 ED, 10 ET (label 4)
    label.flat[:20] = 1
    label.flat[20:40] = 2
    label.flat[40:50] = 4
    path = tmp_path / "seg.nii.gz"
    nib.save(nib.Nifti1Image(label, np.eye(4)), path)
    weights = balanced_class_weights([str(path)], "brats2021")
    assert weights == pytest.approx([200 / (4 * 150), 200 / (4 * 20), 200 / (4 * 20), 200 / (4 * 10)])
    with pytest.raises(ValueError, match=r"seg.nii.gz: label values \[4\]"):
        balanced_class_weights([str(path)], "brats2023")
