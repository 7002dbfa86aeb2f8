"""The quality check: which segmentations to distrust, from the quality critic, the model's uncertainty and the
trained discriminator.

Per case, on the model's grid (the preprocessed image):

- **critic scores** (with ``models/critic.pt``, :mod:`bundle.critic`): the quality critic's estimated Dice of
  each region, ``critic_dice_ET`` / ``_TC`` / ``_WT`` and their mean ``critic_dice_mean``, and its map of the
  probability that the segmentation is wrong at each voxel (``<case_id>_quality.nii.gz`` at inference);

- **discriminator scores**: the conditional discriminator D, trained (LSGAN) to output 1 for (image, reference)
  and 0 for (image, generated segmentation), scores (image, one-hot segmentation) patch by patch. Its patch logits,
  upsampled to the image grid, give the voxel-wise *implausibility* map ``1 - D`` (about 0 where the segmentation
  looks like a reference, 1 or more where it looks generated or wrong); ``d_score`` is the mean of ``D`` over the
  brain, ``d_score_low`` its 5th percentile (the worst spot) and ``d_score_tumour`` its mean over the segmentation's
  tumour and the voxels the model calls possibly tumour.
- **uncertainty**: the mutual information of the flip-TTA (and fold-ensemble) passes
  (:func:`bundle.inference.mutual_information`), voxel-wise, and ``uncertainty``, its mean over the voxels the
  model calls possibly tumour (mean tumour probability >= ``TUMOUR_PROBABILITY_FLOOR``).
- **baselines**: ``volume_ml``, the segmentation's whole-tumour volume; ``confidence``, the model's mean
  probability of the segmentation's class over the tumour (for the model's own segmentation: its mean maximum
  softmax probability there); ``confidence_wt``, the same for tumour against background; ``expected_dice``, the
  mean over ET, TC and WT of the Dice the model's probabilities expect of the segmentation
  (:func:`expected_dice`), and ``expected_dice_wt``, that of the WT.
- **estimated Dice**: a linear model on the logit of the WT and of the mean (ET, TC, WT) Dice, from the scores
  of :data:`DEFAULT_FEATURES` (``docs/quality.md`` compares the choices), fitted on validation cases by
  :func:`fit_calibration` and stored as JSON (``models/quality_calibration.json``) with the sha256 of the weights
  it was fitted with.

Why one-hot and not the generator's probabilities: in training D saw references as one-hot maps and generated
segmentations as soft probabilities, so on probabilities it can tell "generated" from the softness alone, whatever
the shape; given one-hot maps it has to judge the shape against the image. The calibration set (corrupted
references) is one-hot, and so is any segmentation a user edits. ``docs/quality.md`` measures both inputs.
"""

from __future__ import annotations

import csv
import datetime
import hashlib
import io
import json
import logging
import math
import os
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from ignite.engine import Engine, Events
from monai.config import KeysCollection
from monai.transforms import MapTransform
from scipy import ndimage as ndi
from scipy.special import expit, logit
from scipy.stats import spearmanr
from sklearn.metrics import roc_auc_score

from bundle.checkpoints import check_writable_folder
from bundle.critic import CRITIC_SCORE_NAMES, QualityCritic, criticise, region_masks, true_dice
from bundle.datalist import case_id_from_path
from bundle.handlers import write_atomically
from bundle.inference import flip_dims, load_generator_weights, save_map_on_input_grid
from bundle.labels import REGIONS
from bundle.metrics import dice
from bundle.networks import as_network

__all__ = [
    "CONFUSION_FRACTIONS",
    "CONFUSIONS",
    "CORRUPTION_KINDS",
    "Corruption",
    "QualityCaseTable",
    "QualityScored",
    "QualityScorer",
    "QualityTableWriter",
    "SaveMapsOnInputGridd",
    "SplitUncertaintyd",
    "apply_calibration",
    "corruptions",
    "expected_dice",
    "fit_calibration",
    "load_calibration",
    "load_discriminator",
    "rank_worst_first",
    "region_dice",
    "save_calibration",
    "top_fraction_recall",
    "weights_digests",
]

logger = logging.getLogger(__name__)

NUM_CLASSES = 4  # background, NCR/NET, ED, ET
BACKGROUND, NCR, ED, ET = 0, 1, 2, 3
#: a voxel is "possibly tumour" for the uncertainty and confidence scores when the model's mean probability of the
#: tumour classes is at least this (the tumour and its uncertain rim, not the whole brain's near-certain background)
TUMOUR_PROBABILITY_FLOOR = 0.05
LOW_QUANTILE = 0.05  # d_score_low: this quantile of D over the brain, the least plausible spot of the segmentation
#: graded corruption strengths 1, 2, 3: the erosion / dilation / shift / missing-part distance as a fraction of the
#: whole tumour's equivalent-sphere radius (at least one voxel), and the extra lesion's radius likewise
LEVEL_FRACTIONS: dict[int, float] = {1: 0.15, 2: 0.35, 3: 0.7}
CORRUPTION_KINDS: tuple[str, ...] = ("erosion", "dilation", "shift", "swap", "missing", "extra", "confusion")
#: the "confusion" corruption's (true class, class it is given): the sub-region errors of a model on contrasts it
#: does not know (faint enhancement called oedema or necrosis, a non-enhancing part of the rim called enhancing,
#: necrosis called oedema, bright oedema called enhancing), which the other kinds, errors of the whole tumour or of
#: whole sub-regions, do not make (docs/quality.md)
CONFUSIONS: tuple[tuple[int, int], ...] = ((ET, ED), (ET, NCR), (NCR, ET), (NCR, ED), (ED, ET))
#: the share of the confused sub-region's voxels, beyond a plane, that each "confusion" level relabels
CONFUSION_FRACTIONS: dict[int, float] = {1: 1 / 6, 2: 1 / 3, 3: 2 / 3}
SCORE_NAMES: tuple[str, ...] = ("d_score", "d_score_low", "uncertainty", "volume_ml", "confidence", "d_score_tumour",
                                "confidence_wt", "expected_dice", "expected_dice_wt", *CRITIC_SCORE_NAMES)  # fmt: skip
#: what the estimated Dice is fitted on by default: the model's uncertainty, its confidence in the segmentation, the
#: Dice its probabilities expect and the critic's estimated mean and WT Dice. With the expected Dice the ranking of
#: the demo's 20 shifted predictions rose from 0.75 to 0.83-0.86; on 80: 0.883, without the critic 0.880, the expected
#: Dice alone 0.890: the critic adds nothing beside it (docs/quality.md). Not the discriminator's scores: they
#: carry no information on the Dice (Spearman about 0) and can be added with calibration_features. Not the volume
#: either: a property of the tumour, not of the segmentation.
DEFAULT_FEATURES: tuple[str, ...] = ("uncertainty", "confidence", "confidence_wt", "expected_dice", "expected_dice_wt",
                                     "critic_dice_mean", "critic_dice_WT")  # fmt: skip
CALIBRATION_TARGETS: tuple[str, ...] = ("dice_WT", "dice_mean")
ESTIMATE_NAMES: dict[str, str] = {"dice_WT": "est_dice_WT", "dice_mean": "est_dice_mean"}
#: the calibration is linear on the logit of the Dice, the Dice clipped to [DICE_CLIP, 1 - DICE_CLIP] first (a
#: perfect or a missed segmentation has an infinite logit). A linear model on the Dice itself has to be clipped
#: at 1, which gives every good segmentation the same estimate and loses their ranking
DICE_CLIP = 0.02
CALIBRATION_LINKS: tuple[str, ...] = ("identity", "logit")  # version 1 files were fitted on the Dice (identity)
CALIBRATION_VERSION = 2


# ---- Dice and corruptions -------------------------------------------------------------------------------------------


def expected_dice(segmentation_regions: torch.Tensor, probabilities: torch.Tensor) -> torch.Tensor:
    """``(B, 3)``: the Dice of each region mask ``(B, 3, *spatial)`` (ET, TC, WT) that the model's ``probabilities``
    ``(B, 4, *spatial)`` expect, ``2 TP / (2 TP + FP + FN)`` of the expected counts (a region's probability the sum
    of its classes'): the soft Dice of the masks against those region probabilities (:func:`bundle.critic.true_dice`);
    1 when both the region and its probabilities are empty (BraTS rule). A baseline of the quality check: on the
    demo's shifted cases it ranks the model's predictions best (docs/quality.md)."""
    if segmentation_regions.ndim < 3 or segmentation_regions.shape[1] != len(REGIONS):
        raise ValueError(f"expected (B, 3, *spatial) region masks, got {tuple(segmentation_regions.shape)}")
    if probabilities.shape[1:2] != (NUM_CLASSES,) or probabilities.shape[2:] != segmentation_regions.shape[2:]:
        raise ValueError(f"expected (B, 4, *spatial) probabilities on the regions' grid, got "
                         f"{tuple(probabilities.shape)} for {tuple(segmentation_regions.shape)}")  # fmt: skip
    probs = probabilities.float()
    region_probabilities = torch.stack([probs[:, list(members)].sum(1) for members in REGIONS.values()], 1)
    return true_dice(segmentation_regions.float(), region_probabilities.clamp(0, 1))


def region_dice(pred: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    """Dice of two class maps (0..3) per BraTS region (ET, TC, WT; 1 when both empty) and their mean."""
    pred, ref = np.asarray(pred), np.asarray(ref)
    out = {f"dice_{r}": dice(np.isin(pred, members), np.isin(ref, members)) for r, members in REGIONS.items()}
    out["dice_mean"] = float(np.mean([out[f"dice_{r}"] for r in REGIONS]))
    return out


@dataclass(frozen=True)
class Corruption:
    """One corrupted segmentation: the kind of corruption, its strength (1 mild .. 3 strong) and the class map."""

    kind: str
    level: int
    classes: np.ndarray


def _within(mask: np.ndarray, radius: float, outside: bool = False) -> np.ndarray:
    """The voxels within ``radius`` voxels (Euclidean) of ``mask``: its dilation by a ball, from one distance
    transform (linear in the volume; a ball-shaped structuring element costs its volume per voxel). ``outside``:
    whether the voxels beyond the array's edge count as part of ``mask`` (the background around an image does)."""
    padded = np.pad(mask, 1, constant_values=outside)
    if not padded.any():
        return np.zeros_like(mask)
    return (ndi.distance_transform_edt(~padded) <= radius)[(slice(1, -1),) * mask.ndim]


def _distance(tumour: np.ndarray, level: int) -> int:
    """The corruption distance in voxels for ``level``: a fraction of the tumour's equivalent-sphere radius."""
    radius = (3.0 * tumour.sum() / (4.0 * math.pi)) ** (1.0 / 3.0)
    return max(1, int(round(LEVEL_FRACTIONS[level] * radius)))


def _beyond_plane(mask: np.ndarray, fraction: float, rng: np.random.Generator, either_side: bool = True
                  ) -> np.ndarray:  # fmt: skip
    """The voxels of (non-empty) ``mask`` beyond a plane across a random axis that leaves ``fraction`` of the mask's
    extent along that axis (its voxels' coordinate quantile) on that side: the far side of the axis, or either side
    at random with ``either_side``."""
    axis = int(rng.integers(3))
    coords = np.nonzero(mask)[axis]
    index = np.arange(mask.shape[axis]).reshape([-1 if a == axis else 1 for a in range(mask.ndim)])
    if not either_side or rng.random() < 0.5:
        return mask & (index >= np.quantile(coords, 1.0 - fraction))
    return mask & (index <= np.quantile(coords, fraction))


def _corrupt(kind: str, level: int, classes: np.ndarray, brain: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    tumour = classes > 0
    k = _distance(tumour, level)
    out = classes.copy()
    if kind == "erosion":  # the tumour's rim is lost to background
        out[tumour & _within(~tumour, k, outside=True)] = BACKGROUND  # within k of the background
    elif kind == "dilation":  # a rim of oedema around the tumour, within the brain
        out[_within(tumour, k) & ~tumour & brain] = ED
    elif kind == "shift":  # the whole segmentation moved by k voxels along a random axis and direction
        axis, sign = int(rng.integers(3)), int(rng.choice([-1, 1]))
        out = np.zeros_like(classes)
        src = [slice(None)] * 3
        dst = [slice(None)] * 3
        src[axis] = slice(0, classes.shape[axis] - k) if sign > 0 else slice(k, None)
        dst[axis] = slice(k, None) if sign > 0 else slice(0, classes.shape[axis] - k)
        out[tuple(dst)] = classes[tuple(src)]
    elif kind == "swap":  # sub-region labels swapped: 1 NCR<->ET, 2 ED<->ET, 3 every tumour voxel oedema
        pairs = {1: (NCR, ET), 2: (ED, ET)}
        if level in pairs:
            a, b = pairs[level]
            out[classes == a], out[classes == b] = b, a
        else:
            out[tumour] = ED
    elif kind == "missing":  # the part of the tumour beyond a plane is missed: 1/6, 1/3 or all of its extent
        if tumour.any():
            out[_beyond_plane(tumour, {1: 1 / 6, 2: 1 / 3, 3: 1.0}[level], rng, either_side=False)] = BACKGROUND
    elif kind == "confusion":  # part of one sub-region, beyond a plane, given another sub-region's label
        present = [(a, b) for a, b in CONFUSIONS if np.any(classes == a)]
        if present:
            source, target = present[int(rng.integers(len(present)))]
            out[_beyond_plane(classes == source, CONFUSION_FRACTIONS[level], rng)] = target
    elif kind == "extra":  # a false lesion elsewhere in the brain: oedema around an enhancing core
        radius = max(1, _distance(tumour, level))
        candidates = np.argwhere(brain & ~_within(tumour, radius + 1))
        if len(candidates):
            centre = candidates[rng.integers(len(candidates))]
            grid = np.indices(classes.shape).reshape(3, -1).T
            dist2 = ((grid - centre) ** 2).sum(axis=1).reshape(classes.shape)
            lesion = (dist2 <= radius**2) & brain & ~tumour
            out[lesion] = ED
            out[lesion & (dist2 <= (radius / 2) ** 2)] = ET
    else:
        raise ValueError(f"unknown corruption {kind!r}; choose one of {CORRUPTION_KINDS}")
    return out


def corruptions(
    classes: np.ndarray,
    brain: np.ndarray,
    rng: np.random.Generator | int = 0,
    kinds: Sequence[str] = CORRUPTION_KINDS,
    levels: Sequence[int] = (1, 2, 3),
) -> list[Corruption]:
    """Graded corruptions of a reference class map (0..3), for calibrating and benchmarking the quality check.

    Each of ``kinds`` at each of ``levels`` (1 mild .. 3 strong, see :data:`LEVEL_FRACTIONS`): erosion, dilation,
    shift of the whole segmentation, swapped sub-region labels, a missing part of the tumour, an extra false lesion,
    part of one sub-region given another's label (:data:`CONFUSIONS`, :data:`CONFUSION_FRACTIONS` of its voxels).
    ``brain`` (bool, same shape) bounds dilations and places extra lesions. Deterministic for a given ``rng`` seed.
    """
    classes = np.asarray(classes)
    brain = np.asarray(brain, dtype=bool)
    if classes.ndim != 3 or brain.shape != classes.shape:
        raise ValueError(f"classes and brain must be 3-D of one shape, got {classes.shape} and {brain.shape}")
    if classes.size and (classes.min() < 0 or classes.max() >= NUM_CLASSES):
        raise ValueError(f"classes must be class indices 0..{NUM_CLASSES - 1}, got {np.unique(classes)[:10]}")
    unknown = [k for k in kinds if k not in CORRUPTION_KINDS]
    bad_levels = [lv for lv in levels if lv not in LEVEL_FRACTIONS]
    if unknown or bad_levels:
        raise ValueError(f"unknown corruption kinds {unknown} or levels {bad_levels}: kinds {CORRUPTION_KINDS}, "
                         f"levels {sorted(LEVEL_FRACTIONS)}")  # fmt: skip
    if not np.any(classes > 0):
        raise ValueError("the reference holds no tumour: nothing to corrupt")
    rng = np.random.default_rng(rng) if not isinstance(rng, np.random.Generator) else rng
    return [Corruption(kind, level, _corrupt(kind, level, classes, brain, rng)) for kind in kinds for level in levels]


# ---- the discriminator and the scores ---------------------------------------------------------------------------


def load_discriminator(
    discriminator: nn.Module | Callable[[], nn.Module],
    path: str | os.PathLike[str],
    device: str | torch.device | None = None,
) -> nn.Module:
    """Loads the discriminator's weights (tensors only, ``models/discriminator.pt``) into ``discriminator`` (a
    network, or a callable making it, e.g. a config's ``_mode_: callable`` definition) on ``device``, in eval mode.
    A missing file is an error naming it and saying where it comes from."""
    path = os.fspath(path)
    discriminator = as_network(discriminator, "discriminator")
    if device is not None:
        discriminator = discriminator.to(device)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"discriminator checkpoint {path} does not exist: training with configs/train.yaml writes it beside "
            "model.pt (set --discriminator_ckpt_path to its path)"
        )
    return load_generator_weights(discriminator, path).eval()


class QualityScorer:
    """Scores a segmentation of a preprocessed image with the discriminator, the model's probabilities and the
    passes' mutual information; estimates its Dice with a calibration (see the module docstring).

    Args:
        discriminator: the trained ``Vox2VoxDiscriminator`` (weights loaded, e.g. by :func:`load_discriminator`).
        critic: the trained quality critic (:func:`bundle.critic.load_critic`) or ``None``: no error map and no
            ``critic_dice`` scores (NaN).
        calibration: a calibration dict (:func:`load_calibration`) or ``None``: estimated Dice left empty.
        spacing: voxel size (mm) of the model's grid, for ``volume_ml``.
        discriminator_input: ``onehot`` (default, see the module docstring) or ``probabilities`` (the generator's,
            when given).
        critic_flip_axes: spatial axes whose flips, in every combination, the critic's estimated Dice and error map
            are averaged over (:func:`bundle.critic.criticise`); the configs pass the model's ``tta_flip_axes``.
            Empty: one pass.
    """

    def __init__(
        self,
        discriminator: nn.Module,
        calibration: Mapping[str, Any] | None = None,
        spacing: Sequence[float] = (1.0, 1.0, 1.0),
        discriminator_input: str = "onehot",
        critic: QualityCritic | None = None,
        critic_flip_axes: Sequence[int] | None = (),
    ) -> None:
        if not isinstance(discriminator, nn.Module):
            raise TypeError(f"discriminator must be a torch.nn.Module, got {type(discriminator).__name__}")
        if critic is not None and not isinstance(critic, QualityCritic):
            raise TypeError(f"critic must be a bundle.critic.QualityCritic or None, got {type(critic).__name__}")
        if discriminator_input not in ("onehot", "probabilities"):
            raise ValueError(f"discriminator_input must be 'onehot' or 'probabilities', got {discriminator_input!r}")
        spacing = tuple(float(s) for s in spacing)
        if len(spacing) != 3 or not all(s > 0 for s in spacing):
            raise ValueError(f"spacing must be 3 positive voxel sizes in mm, got {spacing!r}")
        self.discriminator = discriminator.eval()
        self.critic = critic.eval() if critic is not None else None
        self.calibration = dict(calibration) if calibration is not None else None
        self.spacing = spacing
        self.discriminator_input = discriminator_input
        flip_dims(critic_flip_axes)  # checked now, not at the first case
        self.critic_flip_axes = list(critic_flip_axes or [])

    def plausibility(self, image: torch.Tensor, segmentation: torch.Tensor) -> torch.Tensor:
        """D's patch logits on ``(image, segmentation)`` (``(C, *spatial)`` each; the segmentation one-hot or
        probabilities), upsampled (trilinear) to the image grid: ``(1, *spatial)``, ~1 plausible, ~0 not."""
        if image.ndim != 4 or segmentation.shape[1:] != image.shape[1:]:
            raise ValueError(f"image and segmentation must be (C, *spatial) of one grid, got {tuple(image.shape)} "
                             f"and {tuple(segmentation.shape)}")  # fmt: skip
        device = next(self.discriminator.parameters()).device
        x = torch.cat([torch.as_tensor(image).float(), torch.as_tensor(segmentation).float()])[None].to(device)
        with torch.no_grad():
            out = self.discriminator(x)
            logits = (out[-1] if isinstance(out, (list, tuple)) else out).float()
            upsampled = F.interpolate(logits, size=tuple(image.shape[1:]), mode="trilinear", align_corners=False)
        return upsampled[0].cpu()

    def score(
        self,
        image: torch.Tensor,
        classes: torch.Tensor | np.ndarray,
        probabilities: torch.Tensor | None = None,
        uncertainty: torch.Tensor | None = None,
    ) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
        """The scores of the class map ``classes`` (``(*spatial)`` or ``(1, *spatial)``) of ``image``, and its maps
        (``(1, *spatial)`` each): ``implausibility``, D's ``1 - D``, and with a critic ``quality``, the critic's
        probability that the segmentation is wrong at each voxel. ``probabilities`` (the model's mean,
        ``(4, *spatial)``) and ``uncertainty`` (mutual information, ``(1, *spatial)``) give the uncertainty,
        confidence and expected-Dice scores (NaN without them); the estimated Dice needs a calibration (NaN
        without)."""
        image = torch.as_tensor(image).detach().cpu().float()
        classes = torch.as_tensor(np.asarray(classes) if isinstance(classes, np.ndarray) else classes).detach().cpu()
        classes = classes.reshape(image.shape[1:]).long()
        onehot = F.one_hot(classes, NUM_CLASSES).permute(3, 0, 1, 2).float()
        if self.discriminator_input == "probabilities" and probabilities is not None:
            segmentation = torch.as_tensor(probabilities).detach().cpu().float()
        else:
            segmentation = onehot
        d = self.plausibility(image, segmentation)[0]
        maps = {"implausibility": (1.0 - d)[None]}
        brain = (image != 0).any(dim=0)
        d_brain = d[brain] if brain.any() else d.flatten()
        scores = {
            "d_score": float(d_brain.mean()),
            "d_score_low": float(torch.quantile(d_brain, LOW_QUANTILE)),
            "uncertainty": math.nan,
            "volume_ml": float((classes > 0).sum()) * float(np.prod(self.spacing)) / 1000.0,
            "confidence": math.nan,
            "confidence_wt": math.nan,
            "expected_dice": math.nan,
            "expected_dice_wt": math.nan,
        }
        region = classes > 0
        if probabilities is not None:
            probs = torch.as_tensor(probabilities).detach().cpu().float()
            possibly_tumour = (1.0 - probs[BACKGROUND]) >= TUMOUR_PROBABILITY_FLOOR
            region = possibly_tumour | (classes > 0)
            if region.any():
                chosen = torch.gather(probs, 0, classes[None])[0]  # the model's probability of each voxel's class
                scores["confidence"] = float(chosen[region].mean())
                # the same for the whole tumour: the model's probability of tumour where the segmentation has
                # tumour, of background elsewhere (a swap of sub-regions leaves it, as it leaves the WT Dice)
                tumour = torch.where(classes > 0, 1.0 - probs[BACKGROUND], probs[BACKGROUND])
                scores["confidence_wt"] = float(tumour[region].mean())
            else:  # the model is sure there is no tumour, and the segmentation agrees
                scores["confidence"] = scores["confidence_wt"] = 1.0
            expected = expected_dice(region_masks(classes[None]), probs[None])[0].tolist()
            scores["expected_dice"], scores["expected_dice_wt"] = float(np.mean(expected)), expected[-1]
            if uncertainty is not None:
                mi = torch.as_tensor(uncertainty).detach().cpu().float().reshape(image.shape[1:])
                scores["uncertainty"] = float(mi[possibly_tumour].mean()) if possibly_tumour.any() else 0.0
        # D where it matters: over the segmentation's tumour and wherever the model sees possible tumour
        scores["d_score_tumour"] = float(d[region].mean()) if region.any() else scores["d_score"]
        scores.update(dict.fromkeys(CRITIC_SCORE_NAMES, math.nan))
        if self.critic is not None:
            critic_scores, maps["quality"] = self.criticise(image, classes)
            scores.update(critic_scores)
        scores.update(apply_calibration(self.calibration, scores))
        return scores, maps

    def criticise(self, image: torch.Tensor, classes: torch.Tensor) -> tuple[dict[str, float], torch.Tensor]:
        """The critic's estimated Dice of each region (and their mean) and its error map ``(1, *spatial)``, each
        averaged over the flips of ``critic_flip_axes``."""
        assert self.critic is not None
        dice, wrong = criticise(self.critic, image[None], classes[None], self.critic_flip_axes)
        values = dice[0].tolist()
        return dict(zip(CRITIC_SCORE_NAMES, [*values, float(np.mean(values))])), wrong[0]


# ---- calibration ------------------------------------------------------------------------------------------------


def _design(rows: Sequence[Mapping[str, float]], features: Sequence[str]) -> np.ndarray:
    x = np.array([[float(row[f]) for f in features] for row in rows], dtype=float)
    return np.hstack([np.ones((len(rows), 1)), x])


def fit_calibration(
    rows: Sequence[Mapping[str, float]],
    features: Sequence[str] = DEFAULT_FEATURES,
    targets: Sequence[str] = CALIBRATION_TARGETS,
) -> dict[str, Any]:
    """Least-squares linear model ``logit(Dice) ~ intercept + sum_f w_f score_f`` per target (numpy ``lstsq``; the
    Dice clipped to [:data:`DICE_CLIP`, 1 - :data:`DICE_CLIP`]), from rows holding the ``features`` and true Dice
    ``targets``; the estimate is the sigmoid of the linear model. Returns the JSON-ready calibration with its
    in-sample fit quality (R^2, Spearman, mean absolute error, on the Dice), the number of rows and the date."""
    features, targets = list(features), list(targets)
    if not features or not targets:
        raise ValueError("fit_calibration needs at least one feature and one target")
    missing = sorted({k for row in rows for k in (*features, *targets) if k not in row})
    if missing:
        raise ValueError(f"calibration rows lack {missing}")
    x = _design(rows, features)
    if not np.all(np.isfinite(x)):
        bad = sorted({f for row in rows for f in features if not math.isfinite(float(row[f]))})
        needs = "; the critic's need models/critic.pt (run `training_critic` first)" if any(
            f in CRITIC_SCORE_NAMES for f in bad) else ""  # fmt: skip
        raise ValueError(f"calibration features {bad} are NaN or infinite in some rows (uncertainty needs TTA{needs})")
    if len(rows) < len(features) + 2:
        raise ValueError(f"{len(rows)} calibration rows are too few for {len(features)} features (need >= "
                         f"{len(features) + 2})")  # fmt: skip
    models = {}
    for target in targets:
        y = np.array([float(row[target]) for row in rows], dtype=float)
        clipped = np.clip(y, DICE_CLIP, 1.0 - DICE_CLIP)
        coef, *_ = np.linalg.lstsq(x, logit(clipped), rcond=None)
        fitted = expit(x @ coef)
        ss_tot = float(((y - y.mean()) ** 2).sum())
        models[target] = {
            "intercept": float(coef[0]),
            "coefficients": {f: float(c) for f, c in zip(features, coef[1:])},
            "r2": 1.0 - float(((y - fitted) ** 2).sum()) / ss_tot if ss_tot > 0 else math.nan,
            "spearman": float(spearmanr(fitted, y).statistic) if np.ptp(fitted) > 0 and np.ptp(y) > 0 else math.nan,
            "mean_absolute_error": float(np.abs(y - fitted).mean()),
        }
    return {
        "version": CALIBRATION_VERSION,
        "model": f"linear least squares on the logit of the Dice (clipped to [{DICE_CLIP}, {1 - DICE_CLIP}]), "
        "estimate = sigmoid",
        "link": "logit",
        "features": features,
        "targets": models,
        "num_rows": len(rows),
        "fit_date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def apply_calibration(calibration: Mapping[str, Any] | None, scores: Mapping[str, float]) -> dict[str, float]:
    """``{"est_dice_WT", "est_dice_mean"}`` from ``scores`` with ``calibration``; NaN without a calibration."""
    if calibration is None:
        return dict.fromkeys(ESTIMATE_NAMES.values(), math.nan)
    out = {}
    on_logit = calibration.get("link", "identity") == "logit"
    for target, model in calibration["targets"].items():
        value = model["intercept"] + sum(w * float(scores[f]) for f, w in model["coefficients"].items())
        estimate = expit(value) if on_logit else min(max(value, 0.0), 1.0)
        out[ESTIMATE_NAMES.get(target, f"est_{target}")] = float(estimate)
    return out


def _file_digest(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# one weights file, or those of an ensemble (any order: its probabilities are averaged); None: none
WeightsPaths = str | os.PathLike | Sequence[str | os.PathLike] | None


def _paths_list(paths: WeightsPaths) -> list[str | os.PathLike]:
    return [] if paths is None else [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)


def _paths_text(paths: WeightsPaths) -> str:
    return ", ".join(map(os.fspath, _paths_list(paths)))


def weights_digests(weights: Mapping[str, WeightsPaths]) -> dict[str, str]:
    """sha256 of each weights file (``{"generator": path, "discriminator": path}``; None: left out): what a
    calibration was fitted with, so that it is not applied to the outputs of other weights. A list of paths (an
    ensemble, whose probabilities are averaged) gets the sha256 of its files' sorted digests; a list of one path,
    that file's own digest."""
    digests = {}
    for role, paths in weights.items():
        if paths is None:
            continue
        files = [_file_digest(path) for path in _paths_list(paths)]
        digests[role] = files[0] if len(files) == 1 else hashlib.sha256("".join(sorted(files)).encode()).hexdigest()
    return digests


def save_calibration(path: str | os.PathLike[str], calibration: Mapping[str, Any]) -> Path:
    """Writes the calibration as JSON, atomically."""
    path = Path(path)
    write_atomically(path, json.dumps(calibration, indent=2) + "\n")
    return path


def load_calibration(
    path: str | os.PathLike[str] | None, required: bool = False, weights: Mapping[str, WeightsPaths] | None = None
) -> dict[str, Any] | None:
    """The calibration in ``path``, checked; ``None`` (with a warning) when the file is missing or was fitted with
    other weights than ``weights`` (``{"generator": path, "discriminator": path}``, compared by sha256 with those
    it was fitted with: after retraining, an old calibration would give wrong estimates), or an error naming it
    when ``required``. A file that is not a calibration is always an error naming it."""

    def unusable(message: str, error: type[Exception]) -> None:
        if required:
            raise error(message)
        logger.warning(message)

    if path is None or not os.path.isfile(path):
        unusable(f"quality calibration {path} does not exist: run `calibrating` (configs/quality.yaml) first; "
                 "the quality scores are written without estimated Dice", FileNotFoundError)  # fmt: skip
        return None
    try:
        calibration = json.loads(Path(path).read_text())
        features = list(calibration["features"])
        for target, model in calibration["targets"].items():
            if set(model["coefficients"]) != set(features) or not math.isfinite(float(model["intercept"])):
                raise ValueError(f"target {target}: coefficients {sorted(model['coefficients'])} vs {features}")
        unknown = [f for f in features if f not in SCORE_NAMES]
        if unknown:
            raise ValueError(f"unknown features {unknown}; known: {SCORE_NAMES}")
        if calibration.get("link", "identity") not in CALIBRATION_LINKS:
            raise ValueError(f"unknown link {calibration['link']!r}; known: {CALIBRATION_LINKS}")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise ValueError(f"quality calibration {path} cannot be read: {error}") from error
    fitted_with = calibration.get("weights", {})
    current = {role: p for role, p in (weights or {}).items() if role in fitted_with}
    gone = {role for role, p in current.items() if not all(os.path.isfile(f) for f in _paths_list(p))}
    now = weights_digests({role: p for role, p in current.items() if role not in gone})
    if gone:
        files = ", ".join(f"{_paths_text(current[role])} ({role})" for role in sorted(gone))
        unusable(f"quality calibration {path} was fitted with weights that no longer exist: {files}; the quality "
                 "scores are written without estimated Dice", FileNotFoundError)  # fmt: skip
        return None
    changed = sorted(role for role, digest in now.items() if digest != fitted_with[role])
    if changed:
        files = ", ".join(f"{_paths_text(weights[role])} ({role})" for role in changed)  # type: ignore[index]
        unusable(f"quality calibration {path} was fitted with other weights than {files}: run `calibrating` again "
                 "with --overwrite_calibration true; the quality scores are written without estimated Dice",
                 ValueError)  # fmt: skip
        return None
    return calibration


# ---- rankings -----------------------------------------------------------------------------------------------------


def rank_worst_first(rows: Sequence[Mapping[str, Any]]) -> tuple[list[Mapping[str, Any]], str]:
    """``rows`` sorted worst first, and the score used: the estimated mean Dice when calibrated, else the model's
    expected Dice when its probabilities were scored (it ranks the demo's predictions better than the critic alone,
    docs/quality.md), else the critic's mean Dice when there is a critic, else ``d_score``."""

    def known(key: str) -> bool:
        return bool(rows) and all(math.isfinite(float(r.get(key, math.nan))) for r in rows)

    key = next((k for k in ("est_dice_mean", "expected_dice", "critic_dice_mean") if known(k)), "d_score")
    return sorted(rows, key=lambda r: (float(r[key]), str(r.get("case_id", "")))), key


def top_fraction_recall(scores: Sequence[float], truth: Sequence[float], fraction: float = 0.1) -> float:
    """Share of the truly worst ``fraction`` of cases (lowest ``truth``) among the worst-scored ``fraction``
    (lowest ``scores``); at least one case each. Higher scores must mean better quality."""
    scores, truth = np.asarray(scores, dtype=float), np.asarray(truth, dtype=float)
    if scores.shape != truth.shape or scores.ndim != 1 or not len(scores):
        raise ValueError(f"scores and truth must be equal-length non-empty lists, got {scores.shape}, {truth.shape}")
    n = max(1, int(round(fraction * len(scores))))
    worst_true = set(np.argsort(truth, kind="stable")[:n].tolist())
    worst_scored = set(np.argsort(scores, kind="stable")[:n].tolist())
    return len(worst_true & worst_scored) / n


def voxel_auroc(scores: torch.Tensor, wrong: torch.Tensor) -> float:
    """Area under the ROC curve of a voxel map ``scores`` against the true error mask ``wrong`` (same voxels,
    flattened): how well the map tells wrong voxels from right ones. NaN when every voxel is right (or every one
    wrong). scikit-learn's, not MONAI's ``compute_roc_auc``, which loops in Python over every voxel."""
    wrong = torch.as_tensor(wrong).flatten().numpy().astype(bool)
    if wrong.size == 0 or wrong.all() or not wrong.any():
        return math.nan
    return float(roc_auc_score(wrong, torch.as_tensor(scores).flatten().numpy()))


def _csv_text(rows: Sequence[Mapping[str, Any]]) -> str:
    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: ("" if isinstance(v, float) and math.isnan(v) else f"{v:.6f}" if isinstance(v, float)
                          else v) for k, v in row.items()} for row in rows)  # fmt: skip
    return table.getvalue()


# ---- transforms -------------------------------------------------------------------------------------------------


class SplitUncertaintyd(MapTransform):
    """Takes the last channel of ``keys`` (the :class:`bundle.inference.EnsembleInferer` ``uncertainty`` channel)
    off into ``uncertainty_key``, leaving the class probabilities."""

    def __init__(self, keys: KeysCollection, uncertainty_key: str = "uncertainty", num_classes: int = NUM_CLASSES,
                 allow_missing_keys: bool = False) -> None:  # fmt: skip
        super().__init__(keys, allow_missing_keys)
        self.uncertainty_key, self.num_classes = uncertainty_key, num_classes

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            value = d[key]
            if value.shape[0] != self.num_classes + 1:
                raise ValueError(f"{key}: expected {self.num_classes} class channels and an uncertainty channel, got "
                                 f"{value.shape[0]} channels (is the inferer's uncertainty on?)")  # fmt: skip
            d[key], d[self.uncertainty_key] = value[: self.num_classes], value[self.num_classes :]
        return d


class QualityScored(MapTransform):
    """Scores the prediction of each case (:class:`QualityScorer`) on the model's grid, before ``Invertd``.

    Reads the preprocessed ``image_key``, the class probabilities ``keys`` and the mutual information
    ``uncertainty_key``; writes the critic's error map to ``quality_key`` (when the scorer has a critic) and the
    scores (with the case id, from the image's file name) to ``scores_key``. With ``result_key`` the scores also go
    to ``<result_key>["quality"]`` (NaN as null): MONAI Label returns ``data["result"]`` as the inference result's
    params, so its users see the estimated Dice of each segmentation.
    """

    def __init__(
        self,
        keys: KeysCollection,
        scorer: QualityScorer,
        image_key: str = "image",
        uncertainty_key: str = "uncertainty",
        quality_key: str = "quality",
        scores_key: str = "quality_scores",
        result_key: str | None = "result",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if not isinstance(scorer, QualityScorer):
            raise TypeError(f"scorer must be a bundle.quality.QualityScorer, got {type(scorer).__name__}")
        self.scorer = scorer
        self.image_key, self.uncertainty_key = image_key, uncertainty_key
        self.quality_key, self.scores_key, self.result_key = quality_key, scores_key, result_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            probs = torch.as_tensor(d[key]).detach().float()
            classes = probs.argmax(dim=0)
            scores, maps = self.scorer.score(d[self.image_key], classes, probs, d.get(self.uncertainty_key))
            if "quality" in maps:
                d[self.quality_key] = maps["quality"].to(probs.device)
            reference = getattr(d[self.image_key], "meta", {}).get("filename_or_obj")
            case_id = case_id_from_path(str(reference)) if reference else None
            d[self.scores_key] = {"case_id": case_id, **scores}
            if self.result_key is not None:
                finite = {k: (v if math.isfinite(v) else None) for k, v in scores.items()}
                d[self.result_key] = {**dict(d.get(self.result_key) or {}), "quality": finite}
        return d


class SaveMapsOnInputGridd(MapTransform):
    """Writes each float map of ``keys`` (after ``Invertd``: on the input grid) as
    ``<output_dir>/<case_id>_<key>.nii.gz`` with the input's header, atomically
    (:func:`bundle.inference.save_map_on_input_grid`)."""

    def __init__(self, keys: KeysCollection, output_dir: str | os.PathLike[str], allow_missing_keys: bool = False
                 ) -> None:  # fmt: skip
        super().__init__(keys, allow_missing_keys)
        self.output_dir = os.fspath(output_dir)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            meta = getattr(d[key], "meta", {})
            reference = meta.get("filename_or_obj")
            if not reference:
                raise ValueError(f"{key}: no 'filename_or_obj' in its metadata: cannot tell the input grid")
            array = torch.as_tensor(d[key]).detach().cpu().numpy()
            array = array[0] if array.ndim == 4 and array.shape[0] == 1 else array
            affine = meta.get("affine")
            affine = None if affine is None else torch.as_tensor(affine).detach().cpu().numpy()
            path = os.path.join(self.output_dir, f"{case_id_from_path(str(reference))}_{key}.nii.gz")
            save_map_on_input_grid(array, str(reference), path, affine=affine)
            logger.info(f"wrote {path}")
        return d


# ---- handlers ---------------------------------------------------------------------------------------------------


class QualityTableWriter:
    """Ignite handler of inference: collects each case's ``scores_key`` from the output and, when the run
    completes, writes ``<output_dir>/quality.csv`` (one row per case, in the order processed) and
    ``quality_ranking.csv`` (worst first by estimated mean Dice, or by ``d_score`` when uncalibrated), atomically.
    A case that failed (no output) has no row."""

    def __init__(self, output_dir: str | os.PathLike[str], scores_key: str = "quality_scores") -> None:
        self.output_dir = Path(output_dir)
        self.scores_key = scores_key
        self.rows: list[dict[str, Any]] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.COMPLETED, self._write)

    def _reset(self, engine: Engine) -> None:
        self.rows = []

    def _collect(self, engine: Engine) -> None:
        for item in engine.state.output or []:
            if isinstance(item, Mapping) and isinstance(item.get(self.scores_key), Mapping):
                self.rows.append(dict(item[self.scores_key]))

    def _write(self, engine: Engine) -> None:
        if not self.rows:
            logger.warning("quality check: no case was scored, no quality.csv written")
            return
        write_atomically(self.output_dir / "quality.csv", _csv_text(self.rows))
        ranked, key = rank_worst_first(self.rows)
        ranking = [{"rank": n + 1, **row} for n, row in enumerate(ranked)]
        write_atomically(self.output_dir / "quality_ranking.csv", _csv_text(ranking))
        worst = ", ".join(f"{r['case_id']} ({key} {float(r[key]):.3f})" for r in ranked[:5])
        logger.info(f"quality check of {len(self.rows)} cases written to {self.output_dir}; worst first: {worst}")


class QualityCaseTable:
    """Ignite handler of an evaluator with labels (``calibrating`` and ``scripts/benchmark_quality.py``): scores,
    per case, the model's prediction, the reference and its graded :func:`corruptions`, next to their true Dice.

    Reads ``image``, ``label`` (class map), ``pred`` (mean probabilities) and ``uncertainty`` of each decollated
    output; ``levels``: the corruption strengths used. When the run completes, writes every row to ``rows_csv``
    and, with ``calibration_file``, fits :func:`fit_calibration` on them and saves it there with the sha256 of the
    ``weights`` files (``{"generator": path, "discriminator": path, "critic": path}``; the critic's only where
    the scorer has one) it was fitted with. An existing
    ``calibration_file`` is refused before any case is processed unless ``overwrite``.
    """

    def __init__(
        self,
        scorer: QualityScorer,
        rows_csv: str | os.PathLike[str],
        calibration_file: str | os.PathLike[str] | None = None,
        features: Sequence[str] = DEFAULT_FEATURES,
        overwrite: bool = False,
        seed: int = 0,
        levels: Sequence[int] = (1, 2, 3),
        case_key: str = "case_id",
        weights: Mapping[str, str | os.PathLike[str] | None] | None = None,
    ) -> None:
        if not isinstance(scorer, QualityScorer):
            raise TypeError(f"scorer must be a bundle.quality.QualityScorer, got {type(scorer).__name__}")
        unknown = [f for f in features if f not in SCORE_NAMES]
        if unknown:
            raise ValueError(f"unknown calibration features {unknown}; choose from {SCORE_NAMES}")
        if not isinstance(overwrite, bool):
            raise ValueError(f"overwrite (overwrite_calibration) must be true or false, got {overwrite!r}")
        self.scorer, self.rows_csv = scorer, Path(rows_csv)
        self.calibration_file = Path(calibration_file) if calibration_file else None
        bad = [lv for lv in levels if lv not in LEVEL_FRACTIONS]
        if bad or not levels:
            raise ValueError(f"corruption levels must be some of {sorted(LEVEL_FRACTIONS)}, got {list(levels)}")
        self.features, self.overwrite, self.seed, self.case_key = list(features), overwrite, seed, case_key
        self.levels = list(levels)
        self.weights = dict(weights or {})
        self.rows: list[dict[str, Any]] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._start)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.COMPLETED, self._write)

    def _start(self, engine: Engine) -> None:
        self.rows = []
        if self.calibration_file is not None and self.calibration_file.exists() and not self.overwrite:
            raise FileExistsError(f"quality calibration {self.calibration_file} exists: pass "
                                  "--overwrite_calibration true to replace it")  # fmt: skip
        critic_features = [f for f in self.features if f in CRITIC_SCORE_NAMES]
        if self.calibration_file is not None and critic_features and self.scorer.critic is None:
            raise FileNotFoundError(f"calibration features {critic_features} are the quality critic's, and there is no "
                                    "critic (models/critic.pt): run `training_critic` first, or pass "
                                    "--calibration_features without them")  # fmt: skip
        for path in (self.rows_csv, self.calibration_file):  # written at the end: checked before any case
            if path is not None:
                check_writable_folder(path.parent)

    def case_rows(self, case_id: str, image: torch.Tensor, label: torch.Tensor, probs: torch.Tensor,
                  uncertainty: torch.Tensor | None) -> list[dict[str, Any]]:  # fmt: skip
        """The rows of one case: its prediction, the reference and each corruption, scored, with true Dice."""
        image = torch.as_tensor(image).detach().cpu().float()
        probs = torch.as_tensor(probs).detach().cpu().float()
        ref = torch.as_tensor(label).detach().cpu().reshape(image.shape[1:]).long().numpy()
        brain = (image != 0).any(dim=0).numpy()
        rng = np.random.default_rng([self.seed, int.from_bytes(case_id.encode()[-8:], "little")])
        pred = probs.argmax(dim=0).numpy()
        segmentations = [("prediction", 0, pred), ("reference", 0, ref)]
        segmentations += [(c.kind, c.level, c.classes) for c in corruptions(ref, brain, rng, levels=self.levels)]
        rows = []
        for source, level, classes in segmentations:
            scores, maps = self.scorer.score(image, classes, probs, uncertainty)
            row = {"case_id": case_id, "source": source, "level": level, **region_dice(classes, ref), **scores}
            wrong = torch.as_tensor(classes != ref)[torch.as_tensor(brain)]
            # the baseline map: the model's probability that the voxel is not of the segmentation's class
            maps["model_error"] = 1.0 - torch.gather(probs, 0, torch.as_tensor(classes).long()[None])
            for name, key in (("critic_auroc", "quality"), ("d_auroc", "implausibility"),
                              ("model_error_auroc", "model_error")):  # fmt: skip
                row[name] = voxel_auroc(maps[key][0][torch.as_tensor(brain)], wrong) if key in maps else math.nan
            if source == "prediction":  # what D makes of the generator's own probabilities (kind it saw as fake)
                row["d_score_probabilities"] = float(self.scorer.plausibility(image, probs)[0][
                    (image != 0).any(dim=0)].mean())  # fmt: skip
            rows.append(row)
        return rows

    def _collect(self, engine: Engine) -> None:
        for item, data in zip(engine.state.output, engine.state.batch):
            case_id = str(data.get(self.case_key, f"case{len(self.rows)}"))
            self.rows += self.case_rows(case_id, item["image"], item["label"], item["pred"], item.get("uncertainty"))
            logger.info(f"quality rows of case {case_id}: {len(self.rows)} in all")

    def _write(self, engine: Engine) -> None:
        if not self.rows:
            raise RuntimeError("no case was scored: the evaluation data set is empty")
        names = list(dict.fromkeys(k for row in self.rows for k in row))  # d_score_probabilities: predictions only
        write_atomically(self.rows_csv, _csv_text([{k: row.get(k, math.nan) for k in names} for row in self.rows]))
        logger.info(f"{len(self.rows)} quality rows written to {self.rows_csv}")
        if self.calibration_file is None:
            return
        fit_rows = [{**row, **{t: row[t] for t in CALIBRATION_TARGETS}} for row in self.rows]
        calibration = fit_calibration(fit_rows, self.features)
        calibration["cases"] = sorted({str(r["case_id"]) for r in self.rows})
        calibration["rows"] = "per case: the prediction, the reference and corruptions " + ", ".join(CORRUPTION_KINDS)
        # the critic's file only where the scorer has one: its scores are among the rows
        calibration["weights"] = weights_digests({role: path for role, path in self.weights.items()
                                                  if role != "critic" or self.scorer.critic is not None})  # fmt: skip
        save_calibration(self.calibration_file, calibration)
        fit = {t: round(m["spearman"], 3) for t, m in calibration["targets"].items()}
        logger.info(f"quality calibration on {len(calibration['cases'])} cases ({len(self.rows)} rows; in-sample "
                    f"Spearman {fit}) written to {self.calibration_file}")  # fmt: skip
