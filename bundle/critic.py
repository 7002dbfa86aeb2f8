"""The quality critic: the discriminator's architecture trained to say where a segmentation is wrong, and how wrong.

The GAN's discriminator was trained to tell references from generated segmentations; at the LSGAN equilibrium it
tells nothing apart (docs/quality.md). The critic keeps its architecture (``discriminator_def``), with its
one-channel output convolution replaced by one with two channels per BraTS region, and is trained from scratch: a
critic started from the discriminator's trained weights ranked the demo's shifted predictions worse (0.69-0.71
against 0.67-0.79 on the benchmark's 20, 0.52-0.62 against 0.56-0.66 on 60 more; :func:`new_critic` can still start
from them). ``training_critic`` (configs/critic.yaml) trains it after the GAN, which stays as the paper trains it,
on (image, segmentation) pairs whose errors are known (:class:`CriticTrainer`):

- the reference;
- the trained generator's prediction of an intensity-augmented copy of the training image (each modality's
  contrast, bias field, noise, blur and resolution drawn anew, as the robust augmentation does): the failures a
  model makes on another scanner's images;
- a graded corruption (:func:`bundle.quality.corruptions`) of the reference and one of that prediction.

Its output, per patch of the discriminator's grid and per region r (ET, TC, WT), is two probabilities: ``p_fp``
that a voxel the segmentation puts in r is not in r, and ``p_fn`` that a voxel it leaves out of r is in r. With the
segmentation's own share ``s`` of each patch, ``s p_fp`` and ``(1 - s) p_fn`` are the expected false-positive and
false-negative shares of the patch: summed over the patches they give each region's estimated Dice
(:func:`critic_dice`), so the Dice and the map agree by construction. Voxel-wise (:func:`error_map`), the map is the
probability that the segmentation is wrong at the voxel: the larger of its regions' error probabilities there.
The quality check (:func:`criticise`) averages both over the flips of the model's flip TTA.

Why our own module: MONAI has segmentation quality metrics against a reference, but no reference-free critic.
"""

from __future__ import annotations

import copy
import io
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.engines import SupervisedTrainer
from monai.engines.utils import IterationEvents
from monai.utils import CommonKeys as Keys
from torch.optim import Optimizer

from bundle.checkpoints import check_writable_folder
from bundle.handlers import write_atomically
from bundle.inference import flip_dims, load_generator_weights
from bundle.labels import REGIONS
from bundle.networks import as_network
from bundle.trainer import autocast_kwargs, stop_if_not_finite
from bundle.transforms import class_map_to_regions

__all__ = [
    "CRITIC_SCORE_NAMES",
    "CriticLoss",
    "CriticTrainer",
    "QualityCritic",
    "check_corruptions",
    "check_critic_path",
    "critic_dice",
    "criticise",
    "error_map",
    "load_critic",
    "new_critic",
    "patch_shares",
    "region_masks",
    "save_critic",
]

logger = logging.getLogger(__name__)

REGION_NAMES: tuple[str, ...] = tuple(REGIONS)  # ET, TC, WT
NUM_REGIONS = len(REGION_NAMES)
NUM_CLASSES = 4  # background, NCR/NET, ED, ET
#: the critic's scores, as columns of the quality tables: each region's estimated Dice and their mean
CRITIC_SCORE_NAMES: tuple[str, ...] = (*(f"critic_dice_{r}" for r in REGION_NAMES), "critic_dice_mean")
#: the error probability the new output layer starts at (its bias): a segmentation starts out as "mostly right", so
#: that the false negatives summed over the many patches far from the tumour start small
PRIOR_ERROR = 0.01
#: the discriminator's output grid: three stride-2 stages make one output patch per CELL^3 voxels, and its two
#: stride-1 convolutions of kernel 4 (padding 1) each lose one patch of the border. The critic pads its input by
#: one cell on each side (and up to a whole cell at the end) so that patch i covers exactly voxels
#: [CELL i, CELL (i + 1)) of each axis: the patches partition the image, and the error shares are exact counts
CELL = 8
MARGIN = CELL  # voxels of zero padding before and after each axis: one patch lost at each border
OUTPUT_INIT_STD = 1e-3  # the new output layer's weights start near zero: its first outputs are the prior


def region_masks(classes: torch.Tensor) -> torch.Tensor:
    """``(B, *spatial)`` class indices (0..3) -> ``(B, 3, *spatial)`` float masks of ET, TC and WT."""
    return torch.stack([class_map_to_regions(c[None]) for c in classes])


class QualityCritic(nn.Module):
    """The discriminator ``discriminator`` (a MONAI ``PatchDiscriminator``: ``final_conv`` is its output layer)
    with a new output layer of two logits per region (``p_fp``, ``p_fn``; see the module docstring).

    Forward takes the image ``(B, 4, *spatial)`` and the segmentation one-hot ``(B, 4, *spatial)`` and returns the
    logits ``(B, 6, *grid)``: channels ``p_fp`` of ET, TC, WT, then ``p_fn`` of ET, TC, WT, one patch per
    :data:`CELL`^3 voxels (``grid = ceil(spatial / CELL)``, see :func:`patch_shares`). The discriminator is
    copied: the critic never changes the GAN's own network.
    """

    def __init__(self, discriminator: nn.Module) -> None:
        super().__init__()
        final = getattr(discriminator, "final_conv", None)
        conv = getattr(final, "conv", final)
        if not isinstance(conv, nn.Conv3d):
            raise TypeError(f"discriminator must be a 3-D PatchDiscriminator with a final_conv, got "
                            f"{type(discriminator).__name__}")  # fmt: skip
        self.body = copy.deepcopy(discriminator)
        output = nn.Conv3d(conv.in_channels, 2 * NUM_REGIONS, conv.kernel_size, conv.stride, conv.padding)
        nn.init.normal_(output.weight, std=OUTPUT_INIT_STD)
        nn.init.constant_(output.bias, float(np.log(PRIOR_ERROR / (1 - PRIOR_ERROR))))
        self.body.final_conv = output.to(conv.weight.device)

    def forward(self, image: torch.Tensor, segmentation: torch.Tensor) -> torch.Tensor:
        x = torch.cat([image, segmentation], dim=1)
        spatial = x.shape[2:]
        pads = [p for n in reversed(spatial) for p in (MARGIN, MARGIN + (-n) % CELL)]  # F.pad: last axis first
        out = self.body(F.pad(x, pads))
        logits = out[-1] if isinstance(out, (list, tuple)) else out
        grid = tuple(-(-n // CELL) for n in spatial)
        if tuple(logits.shape[2:]) != grid:
            raise ValueError(f"the critic's discriminator gives a {tuple(logits.shape[2:])} grid for a "
                             f"{tuple(spatial)} image, not {grid}: it must have three stride-2 stages and two "
                             "stride-1 convolutions of kernel 4 (Vox2VoxDiscriminator)")  # fmt: skip
        return logits


def patch_shares(masks: torch.Tensor) -> torch.Tensor:
    """Each patch's share of ``masks`` (``(B, C, *spatial)``): the mean over its :data:`CELL`^3 voxels, the image
    padded with zeros at the end of each axis to whole patches (the critic's grid)."""
    pads = [p for n in reversed(masks.shape[2:]) for p in (0, (-n) % CELL)]
    return F.avg_pool3d(F.pad(masks.float(), pads), CELL)


def critic_dice(logits: torch.Tensor, segmentation_regions: torch.Tensor) -> torch.Tensor:
    """The estimated Dice ``(B, 3)`` of ET, TC and WT from the critic's ``logits`` and the segmentation's region
    masks ``(B, 3, *spatial)``: ``2 TP / (2 TP + FP + FN)`` of the expected shares, smoothed by one voxel, so that
    a region both the segmentation and the critic find empty scores 1 (the BraTS rule) only when the false negatives
    the critic expects over the whole image add up to well under a voxel: a critic learns that from training cases
    without the region (BraTS cases without enhancing tumour), through the Dice term of :class:`CriticLoss`; the
    demo's cases all have every region. Differentiable: the training loss uses it."""
    s = patch_shares(segmentation_regions)
    p = torch.sigmoid(logits.float())
    fp = (s * p[:, :NUM_REGIONS]).flatten(2).sum(-1)
    fn = ((1 - s) * p[:, NUM_REGIONS:]).flatten(2).sum(-1)
    tp = s.flatten(2).sum(-1) - fp
    one_voxel = 1.0 / CELL**3  # a voxel's share of a patch
    return (2 * tp + one_voxel) / (2 * tp + fp + fn + one_voxel)


def error_map(logits: torch.Tensor, segmentation_regions: torch.Tensor) -> torch.Tensor:
    """``(B, 1, *spatial)``: the probability that the segmentation is wrong at each voxel, the larger of its regions'
    (``p_fp`` where the voxel is in the region, ``p_fn`` where it is not), the logits upsampled (trilinear)."""
    spatial = tuple(segmentation_regions.shape[2:])
    # patch i's value at its centre, CELL i + (CELL - 1) / 2, interpolated between centres; cropped to the image
    upsampled = F.interpolate(logits.float(), scale_factor=CELL, mode="trilinear", align_corners=False)
    p = torch.sigmoid(upsampled[(..., *(slice(0, n) for n in spatial))])
    inside = segmentation_regions.float()
    wrong = inside * p[:, :NUM_REGIONS] + (1 - inside) * p[:, NUM_REGIONS:]
    return wrong.amax(dim=1, keepdim=True)


def criticise(
    critic: QualityCritic, image: torch.Tensor, classes: torch.Tensor, flip_axes: Sequence[int] | None = ()
) -> tuple[torch.Tensor, torch.Tensor]:
    """The critic's estimated Dice ``(B, 3)`` (:func:`critic_dice`) of the class maps ``classes`` ``(B, *spatial)``
    of ``image`` ``(B, 4, *spatial)``, and its error map ``(B, 1, *spatial)`` (:func:`error_map`), each the mean
    over the flips of ``flip_axes`` (:func:`bundle.inference.flip_dims`: ``2 ** len(flip_axes)`` passes, each map
    flipped back), on the CPU. As the model's flip TTA does for its probabilities, the mean evens out what one
    orientation, and the fixed place of the patch grid, make of a case. No gradient."""
    device = next(critic.parameters()).device
    regions = region_masks(classes.long())
    onehot = F.one_hot(classes.long(), NUM_CLASSES).movedim(-1, 1).float()
    flips = flip_dims(flip_axes, classes.ndim - 1)
    dice, wrong = torch.zeros(()), torch.zeros(())
    with torch.no_grad():
        for dims in flips:
            image_f, onehot_f, regions_f = (torch.flip(t, dims) for t in (image.float(), onehot, regions))
            logits = critic(image_f.to(device), onehot_f.to(device)).float().cpu()
            dice = dice + critic_dice(logits, regions_f)
            wrong = wrong + torch.flip(error_map(logits, regions_f), dims)  # flipped back
    return dice / len(flips), wrong / len(flips)


def true_dice(segmentation_regions: torch.Tensor, reference_regions: torch.Tensor) -> torch.Tensor:
    """``(B, 3)`` Dice of each region mask against the reference's; 1 when both are empty (BraTS rule). The batched
    torch form of :func:`bundle.metrics.dice`, for the training loss."""
    inter = (segmentation_regions * reference_regions).flatten(2).sum(-1)
    total = (segmentation_regions + reference_regions).flatten(2).sum(-1)
    return torch.where(total > 0, 2 * inter / total.clamp_min(1), torch.ones_like(total))


class CriticLoss(nn.Module):
    """The critic's loss: binary cross-entropy of its ``p_fp`` and ``p_fn`` against each patch's true error shares
    (each weighted by the share of the patch it is about), plus ``dice_weight`` times the mean absolute error of
    the Dice it implies (:func:`critic_dice`) against the true Dice, per region.

    The map term teaches where the errors are; the Dice term makes the sum over every patch right, which the map
    term alone does not (a small ``p_fn`` on each of the many patches far from the tumour adds up).
    """

    def __init__(self, dice_weight: float = 1.0) -> None:
        super().__init__()
        if not dice_weight >= 0:
            raise ValueError(f"dice_weight must be >= 0, got {dice_weight!r}")
        self.dice_weight = float(dice_weight)

    def forward(
        self, logits: torch.Tensor, segmentation_regions: torch.Tensor, reference_regions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(total, map_loss, dice_loss)`` for the logits of segmentations with these region masks."""
        seg, ref = segmentation_regions.float(), reference_regions.float()
        s = patch_shares(seg)
        fp_share, fn_share = patch_shares(seg * (1 - ref)), patch_shares((1 - seg) * ref)
        logits = logits.float()
        map_loss = logits.new_zeros(())
        for share, error, weight, channels in ((fp_share, s, s, slice(0, NUM_REGIONS)),
                                               (fn_share, 1 - s, 1 - s, slice(NUM_REGIONS, None))):  # fmt: skip
            target = torch.where(error > 0, share / error.clamp_min(1e-6), torch.zeros_like(share)).clamp(0, 1)
            bce = F.binary_cross_entropy_with_logits(logits[:, channels], target, weight=weight, reduction="sum")
            map_loss = map_loss + bce / weight.sum().clamp_min(1e-6)
        dice_loss = (critic_dice(logits, seg) - true_dice(seg, ref)).abs().mean()
        return map_loss + self.dice_weight * dice_loss, map_loss, dice_loss


def new_critic(
    discriminator: nn.Module | Callable[[], nn.Module],
    device: str | torch.device,
    start_from: str | os.PathLike[str] | None = None,
) -> QualityCritic:
    """A new critic on ``device`` with the architecture of ``discriminator`` (``discriminator_def``: a network or a
    callable making it), its weights as initialised, or with ``start_from`` the GAN's trained discriminator's
    (``models/discriminator.pt``; an error names a missing file). ``training_critic`` trains it from scratch."""
    if start_from is not None:
        from bundle.quality import load_discriminator  # bundle.quality imports this module

        return QualityCritic(load_discriminator(discriminator, start_from, device)).to(device)
    return QualityCritic(as_network(discriminator, "discriminator")).to(device)


def load_critic(
    discriminator: nn.Module | Callable[[], nn.Module],
    path: str | os.PathLike[str] | None,
    device: str | torch.device | None = None,
    required: bool = False,
) -> QualityCritic | None:
    """The trained critic in ``path`` (``models/critic.pt``, written by ``training_critic``) on the architecture of
    ``discriminator`` (a network or a callable making it), in eval mode. A missing file: ``None`` with a warning
    (the quality check then has no error map and no critic scores), or an error naming it when ``required``."""
    if path is None or not os.path.isfile(path):
        message = (f"quality critic {path} does not exist: run `training_critic` (configs/critic.yaml) to train it; "
                   "without it the quality check writes no error map and no critic_dice scores")  # fmt: skip
        if required:
            raise FileNotFoundError(message)
        logger.warning(message)
        return None
    critic = QualityCritic(as_network(discriminator, "discriminator"))
    if device is not None:
        critic = critic.to(device)
    return load_generator_weights(critic, path).eval()  # tensors only, errors name the file


def check_critic_path(path: str | os.PathLike[str], overwrite: bool) -> None:
    """Refuses to train over an existing critic unless ``overwrite`` (``--overwrite_critic true``); checks that its
    folder can be written before any work."""
    if not isinstance(overwrite, bool):
        raise ValueError(f"overwrite_critic must be true or false, got {overwrite!r}")
    if os.path.exists(path) and not overwrite:
        raise FileExistsError(f"quality critic {path} exists: pass --overwrite_critic true to replace it")
    check_writable_folder(os.path.dirname(os.path.abspath(path)))


def save_critic(critic: nn.Module, path: str | os.PathLike[str]) -> str:
    """Writes the critic's weights (tensors only) to ``path`` atomically, once its training has completed."""
    buffer = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in critic.state_dict().items()}, buffer)
    write_atomically(Path(path), buffer.getvalue())
    logger.info(f"quality critic written to {path}")
    return os.fspath(path)


def corruption_chances(weights: Mapping[str, float] | None) -> tuple[list[str], np.ndarray]:
    """The corruption kinds and the chance of each, from relative ``weights`` per kind (``None``: every kind of
    :data:`bundle.quality.CORRUPTION_KINDS` alike). Unknown kinds, negative weights or no positive weight: an error
    naming them."""
    from bundle.quality import CORRUPTION_KINDS

    weights = dict.fromkeys(CORRUPTION_KINDS, 1.0) if weights is None else dict(weights)
    unknown = [k for k in weights if k not in CORRUPTION_KINDS]
    if unknown:
        raise ValueError(f"corruption_weights: unknown corruption kinds {unknown}; choose from {CORRUPTION_KINDS}")
    values = np.array([float(v) for v in weights.values()])
    if not np.all(np.isfinite(values) & (values >= 0)) or not values.sum() > 0:
        raise ValueError(f"corruption_weights must be finite, >= 0 and not all 0, got {weights}")
    return list(weights), values / values.sum()


def check_corruptions(levels: Sequence[int], weights: Mapping[str, float] | None
                      ) -> tuple[list[int], list[str], np.ndarray]:  # fmt: skip
    """The critic's corruption strengths, kinds and each kind's chance (:func:`corruption_chances`), checked: levels
    not among :data:`bundle.quality.LEVEL_FRACTIONS`, or bad weights, are an error naming them. The workflow's
    ``critic_train#check_corruptions`` step calls it before any data is read; :class:`CriticTrainer` calls it too."""
    from bundle.quality import LEVEL_FRACTIONS

    if not levels or any(level not in LEVEL_FRACTIONS for level in levels):
        raise ValueError(f"corruption_levels must be some of {sorted(LEVEL_FRACTIONS)}, got {levels}")
    kinds, chances = corruption_chances(weights)
    return [int(level) for level in levels], kinds, chances


def _corrupted(classes: np.ndarray, brain: np.ndarray, rng: np.random.Generator, levels: Sequence[int],
               kinds: Sequence[str], chances: np.ndarray) -> np.ndarray:  # fmt: skip
    """One graded corruption of ``classes``, its kind drawn from ``kinds`` with ``chances`` and its strength from
    ``levels`` (``classes`` itself when it is empty)."""
    from bundle.quality import corruptions

    if not np.any(classes > 0):
        return classes
    kind, level = str(rng.choice(kinds, p=chances)), int(rng.choice(list(levels)))
    return corruptions(classes, brain, rng, kinds=[kind], levels=[level])[0].classes


class CriticTrainer(SupervisedTrainer):
    """Fine-tunes the critic (``network``) on the frozen ``generator``'s predictions and graded corruptions.

    Each iteration takes a batch of whole preprocessed cases (image intensity-augmented, label, and ``brain_key``:
    the brain mask taken before the augmentation, whose noise leaves no zero background), predicts each with the
    generator (``generator_inferer``, no gradient), and scores four segmentations of each case: the reference, the
    prediction, and one random corruption of each: its kind drawn with the relative ``corruption_weights`` (every
    kind alike by default), its strength from ``corruption_levels``; dilations and extra lesions stay in the brain.
    The corruptions are drawn from ``seed``, the epoch and the iteration. The loss (:class:`CriticLoss`) is
    back-propagated into the critic only; the generator is never updated. ``amp`` with ``amp_dtype`` "float16"
    scales the loss (a gradient scaler), "bfloat16" needs none.

    ``engine.state.output`` holds ``loss``, ``map_loss`` and ``dice_loss`` (the mean absolute error of the critic's
    Dice).
    """

    def __init__(
        self,
        device: str | torch.device,
        max_epochs: int,
        train_data_loader: Iterable,
        network: QualityCritic,
        optimizer: Optimizer,
        generator: nn.Module,
        generator_inferer: Callable[[torch.Tensor, nn.Module], torch.Tensor],
        loss_function: CriticLoss,
        corruption_levels: Sequence[int] = (1, 2, 3),
        corruption_weights: Mapping[str, float] | None = None,
        seed: int | None = 0,
        brain_key: str = "brain",
        amp: bool = False,
        amp_dtype: str = "bfloat16",
        **kwargs: Any,
    ) -> None:
        if not isinstance(network, QualityCritic):
            raise TypeError(f"network must be a bundle.critic.QualityCritic, got {type(network).__name__}")
        if not isinstance(loss_function, CriticLoss):
            raise TypeError(f"loss_function must be a bundle.critic.CriticLoss, got {type(loss_function).__name__}")
        levels, kinds, chances = check_corruptions(corruption_levels, corruption_weights)
        super().__init__(device=device, max_epochs=max_epochs, train_data_loader=train_data_loader, network=network,
                         optimizer=optimizer, loss_function=loss_function, amp=amp,
                         amp_kwargs=autocast_kwargs(amp_dtype), **kwargs)  # fmt: skip
        self.grad_scaler = torch.amp.GradScaler(torch.device(device).type, enabled=amp and amp_dtype == "float16")
        self.brain_key = brain_key
        self.generator = generator.eval().requires_grad_(False)
        self.generator_inferer = generator_inferer
        self.corruption_levels = levels
        self.corruption_kinds, self.corruption_chances = kinds, chances
        self.seed = 0 if seed is None else int(seed)

    def segmentations(self, engine: CriticTrainer, image: torch.Tensor, label: torch.Tensor, brain: torch.Tensor
                      ) -> torch.Tensor:  # fmt: skip
        """The class maps scored for each case of the batch: ``(4 B, *spatial)``, per case the reference, the
        generator's prediction and a corruption of each (``brain``: ``(B, 1, *spatial)`` masks)."""
        with torch.no_grad():
            pred = engine.generator_inferer(image, engine.generator).argmax(dim=1)
        out = []
        for b in range(image.shape[0]):
            ref = label[b, 0].long()
            brain_b = torch.as_tensor(brain[b, 0]).bool().cpu().numpy()
            rng = np.random.default_rng([engine.seed, engine.state.epoch, engine.state.iteration, b])
            pair = [ref.cpu().numpy(), pred[b].cpu().numpy()]
            corrupted = [_corrupted(c, brain_b, rng, engine.corruption_levels, engine.corruption_kinds,
                                    engine.corruption_chances) for c in pair]  # fmt: skip
            out += [torch.as_tensor(c, device=image.device).long() for c in (*pair, *corrupted)]
        return torch.stack(out)

    def _iteration(self, engine: CriticTrainer, batchdata: dict[str, torch.Tensor]) -> dict:  # type: ignore[override]
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        image, label = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs)[:2]
        if engine.brain_key not in batchdata:
            raise KeyError(f"the critic's batches need {engine.brain_key!r}: the brain mask before the augmentation "
                           "(configs/critic.yaml makes it)")  # fmt: skip
        classes = self.segmentations(engine, image, label, batchdata[engine.brain_key])
        per_case = classes.shape[0] // image.shape[0]
        images = image.repeat_interleave(per_case, dim=0)
        references = label[:, 0].long().repeat_interleave(per_case, dim=0)
        onehot = F.one_hot(classes, NUM_CLASSES).movedim(-1, 1).to(image.dtype)
        engine.network.train()
        engine.state.output = {Keys.IMAGE: image, Keys.LABEL: label}
        with torch.autocast(engine.state.device.type, enabled=engine.amp, **engine.amp_kwargs):
            logits = engine.network(images, onehot)
        engine.fire_event(IterationEvents.FORWARD_COMPLETED)
        seg_regions, ref_regions = region_masks(classes), region_masks(references)
        loss, map_loss, dice_loss = engine.loss_function(logits, seg_regions, ref_regions)
        stop_if_not_finite(engine, {"critic's loss": loss})
        engine.fire_event(IterationEvents.LOSS_COMPLETED)
        engine.optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
        engine.grad_scaler.scale(loss).backward()
        engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
        engine.grad_scaler.step(engine.optimizer)
        engine.grad_scaler.update()
        engine.state.output.update({Keys.LOSS: loss.detach(), "map_loss": map_loss.detach(),
                                    "dice_loss": dice_loss.detach()})  # fmt: skip
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output


def critic_losses(output: list[dict] | dict) -> dict[str, float]:
    """``output_transform`` for Stats/TensorBoard handlers: the critic trainer's losses from its output."""
    item = output[0] if isinstance(output, list) else output
    return {key: float(item[key]) for key in ("loss", "map_loss", "dice_loss")}
