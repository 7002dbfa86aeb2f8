"""Vox2Vox losses: class-weighted generalized Dice (fixed weights) and the LSGAN objective.

Generator loss ``L_G = mean((1 - D(x, G(x)))^2) + alpha * GDL``; discriminator loss
``L_D = 0.5 * [mean((1 - D(x, y))^2) + mean(D(x, G(x))^2)]`` (Cirillo et al., authors' ``losses.py``).
"""

from __future__ import annotations

from collections.abc import Sequence

import nibabel as nib
import numpy as np
import torch
from monai.losses import GeneralizedDiceLoss, PatchAdversarialLoss

from bundle.labels import label_values

__all__ = ["FixedWeightGeneralizedDiceLoss", "Vox2VoxLoss", "balanced_class_weights", "AUTHORS_BRATS_CLASS_WEIGHTS"]

#: the authors' balanced weights from BraTS 2020 training labels (background, NCR/NET, ED, ET)
AUTHORS_BRATS_CLASS_WEIGHTS: tuple[float, float, float, float] = (0.2566, 45.47, 16.54, 49.11)


class FixedWeightGeneralizedDiceLoss(GeneralizedDiceLoss):
    """``1 - 2 * sum_c w_c sum(y p) / (sum_c w_c sum(y + p) + 1e-5)`` with fixed class weights ``w_c``.

    MONAI's ``GeneralizedDiceLoss`` recomputes weights from each batch's label volumes; Vox2Vox uses weights fixed
    from the training set's class frequencies, so only the weight function changes. Sums run over the batch and
    space together (``batch=True``); the input is probabilities (the generator ends in a softmax) and the target a
    class-index map, one-hot encoded here.
    """

    def __init__(self, class_weights: Sequence[float], smooth_dr: float = 1e-5) -> None:
        super().__init__(to_onehot_y=True, batch=True, smooth_nr=0.0, smooth_dr=smooth_dr)
        weights = torch.as_tensor(class_weights, dtype=torch.float32).flatten()
        if weights.numel() < 2 or not torch.all(torch.isfinite(weights)) or torch.any(weights < 0):
            raise ValueError(f"class_weights must be at least two finite non-negative numbers, got {class_weights}.")
        self.register_buffer("class_weights", weights)

    def w_func(self, grnd: torch.Tensor) -> torch.Tensor:
        if grnd.shape != self.class_weights.shape:
            raise ValueError(f"{self.class_weights.numel()} class weights for {grnd.shape[-1]} classes.")
        return self.class_weights.to(grnd).clone()  # the caller edits the returned tensor in place


class Vox2VoxLoss(torch.nn.Module):
    """The generator's and the discriminator's losses for Vox2Vox.

    Args:
        class_weights: generalized Dice weight of each class.
        alpha: weight of the generalized Dice term in the generator loss (5 in the paper).
    """

    def __init__(self, class_weights: Sequence[float] = AUTHORS_BRATS_CLASS_WEIGHTS, alpha: float = 5.0) -> None:
        super().__init__()
        if alpha < 0:
            raise ValueError(f"alpha must be non-negative, got {alpha}.")
        self.alpha = float(alpha)
        self.dice = FixedWeightGeneralizedDiceLoss(class_weights)
        # plain LSGAN on the logits: MONAI otherwise puts a LeakyReLU(0.05) on them first
        self.adversarial = PatchAdversarialLoss(criterion="least_squares", no_activation_leastsq=True)

    def generator(
        self, fake_logits: torch.Tensor, pred: torch.Tensor, label: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Total generator loss, its adversarial term and its Dice term, for D's logits on ``(image, pred)``."""
        adv = self.adversarial(fake_logits, target_is_real=True, for_discriminator=False)
        dice = self.dice(pred, label)
        return adv + self.alpha * dice, adv, dice

    def discriminator(self, real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
        """LSGAN discriminator loss: real pairs towards 1, generated pairs towards 0, halved."""
        real = self.adversarial(real_logits, target_is_real=True, for_discriminator=True)
        fake = self.adversarial(fake_logits, target_is_real=False, for_discriminator=True)
        return 0.5 * (real + fake)


def balanced_class_weights(label_files: Sequence[str], label_convention: str = "brats2021") -> list[float]:
    """sklearn-style "balanced" weights ``n_voxels / (n_classes * n_voxels_c)`` from label files' voxel counts.

    A class absent from every file would get an infinite weight: that is an error naming the class.
    """
    if not label_files:
        raise ValueError("balanced_class_weights needs at least one label file.")
    values = label_values(label_convention)
    counts = np.zeros(len(values), dtype=np.int64)
    for path in label_files:
        label = np.asarray(nib.load(str(path)).dataobj)
        found, found_counts = np.unique(label, return_counts=True)
        unknown = sorted(set(found.tolist()) - set(values))
        if unknown:
            raise ValueError(f"{path}: label values {unknown} are not in the {label_convention} convention {values}.")
        for value, count in zip(found.tolist(), found_counts.tolist()):
            counts[values.index(value)] += count
    if np.any(counts == 0):
        missing = [values[i] for i in np.flatnonzero(counts == 0)]
        raise ValueError(f"label values {missing} occur in none of the {len(label_files)} training label files.")
    return (counts.sum() / (len(values) * counts)).tolist()
