"""BraTS-grade inference: ensembles and flip TTA, BraTS post-processing, outputs on the input's grid, case-by-case runs.

Used by ``configs/inference.yaml``. What MONAI's evaluator and MONAI Label read from that config (``network_def``,
``inferer``, ``preprocessing``, ``postprocessing``) keeps working with the single-model default: the
:class:`EnsembleInferer` then runs the network it is given, once.
"""

from __future__ import annotations

import copy
import itertools
import logging
import os
import re
import uuid
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

import nibabel as nib
import numpy as np
import torch
import torch.nn as nn
from ignite.engine import Engine, Events
from monai.config import KeysCollection
from monai.data import Dataset
from monai.inferers import Inferer
from monai.networks.utils import eval_mode
from monai.transforms import MapTransform, SaveImaged

from bundle.checkpoints import check_writable_folder
from bundle.datalist import (
    AFFINE_TOLERANCE_MM,
    BRATS_SUFFIXES,
    CHANNEL_ORDER,
    LAYOUT_CONVENTION,
    _absolute_paths,
    _dataset_root,
    _detect,
    _msd_cases,
    _nifti,
    case_id_from_path,
    check_case_files,
    load_datalist,
    unset_path,
)

__all__ = [
    "CaseByCase",
    "CaseDataset",
    "EnsembleInferer",
    "GeneratorWeightsLoader",
    "RelabelSmallETd",
    "SaveOnInputGridd",
    "checkpoint_paths",
    "entropy",
    "flip_dims",
    "inference_cases",
    "load_ensemble",
    "load_generator_weights",
    "mutual_information",
    "save_labels_on_input_grid",
    "save_map_on_input_grid",
]

logger = logging.getLogger(__name__)

#: key of a case that failed before inference (file checks, loading, preprocessing), holding the error message
CASE_ERROR_KEY = "case_error"
_APPLYING = re.compile(r"applying transform <(?:[\w.]+\.)?(\w+) object")  # how MONAI wraps a transform's error
ET_CLASS, NCR_CLASS = 3, 1  # the model's classes of enhancing tumour and of necrotic / non-enhancing tumour core


# ---- weights --------------------------------------------------------------------------------------------------


def checkpoint_paths(ckpt_paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> list[str]:
    """``ckpt_paths`` as a non-empty list of distinct paths (a single path is accepted). Existence is checked when a
    file is loaded, so that a config can be parsed (e.g. by ``check_properties``) before the weights exist."""
    paths = [ckpt_paths] if isinstance(ckpt_paths, (str, os.PathLike)) else ckpt_paths
    if not isinstance(paths, Sequence) or not paths:
        raise ValueError(f"ckpt_paths must be a non-empty list of checkpoint files, got {ckpt_paths!r}")
    bad = [p for p in paths if not isinstance(p, (str, os.PathLike)) or not os.fspath(p)]
    if bad:
        raise ValueError(f"ckpt_paths must hold file paths, got {bad!r} in {ckpt_paths!r}")
    out = [os.fspath(p) for p in paths]
    twice = sorted({p for p in out if out.count(p) > 1})
    if twice:
        raise ValueError(f"ckpt_paths lists {twice} more than once: each checkpoint is averaged once")
    return out


def load_generator_weights(network: nn.Module, path: str | os.PathLike[str]) -> nn.Module:
    """Loads the weights in ``path`` into ``network`` (strict) and returns it.

    ``path`` must hold tensors only (read with ``weights_only=True``): a state dict, or ``{"model": state_dict}`` as
    MONAI's checkpoint savers write. Errors name the file; a checkpoint that does not fit names the mismatched keys.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001  unpickling, zip and I/O errors alike
        raise ValueError(f"checkpoint {path} cannot be read as weights only (tensors): {error}") from error
    if isinstance(checkpoint, Mapping) and isinstance(checkpoint.get("model"), Mapping):
        checkpoint = checkpoint["model"]
    if not isinstance(checkpoint, Mapping) or not all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        found = sorted(map(str, checkpoint))[:5] if isinstance(checkpoint, Mapping) else type(checkpoint).__name__
        raise ValueError(f"checkpoint {path} is neither a state dict nor {{'model': state_dict}} (found {found})")
    try:
        network.load_state_dict(checkpoint, strict=True)
    except RuntimeError as error:  # torch names the missing, unexpected and mismatched keys
        raise RuntimeError(f"checkpoint {path} does not fit the network: {error}") from error
    return network


def load_ensemble(
    network: nn.Module, ckpt_paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]
) -> list[nn.Module] | None:
    """The generators of an ensemble, one per checkpoint, in eval mode; ``None`` for a single checkpoint.

    A single checkpoint is the default a MONAI evaluator or MONAI Label load into ``network`` themselves, so nothing
    is read here. For several, ``network`` gets the first and a copy of it each further one: all are read now,
    before any case, so a missing or unfitting file stops the run at once.
    """
    paths = checkpoint_paths(ckpt_paths)
    if len(paths) == 1:
        return None
    members = [load_generator_weights(network if i == 0 else copy.deepcopy(network), p) for i, p in enumerate(paths)]
    logger.info(f"ensemble of {len(members)} generators: {', '.join(paths)}")
    return [m.eval() for m in members]


class GeneratorWeightsLoader:
    """Ignite handler: loads a checkpoint into ``network`` when the engine starts (:func:`load_generator_weights`)."""

    def __init__(self, network: nn.Module, load_path: str | os.PathLike[str]) -> None:
        if not isinstance(network, nn.Module):
            raise TypeError(f"network must be a torch.nn.Module, got {type(network).__name__}")
        self.network = network
        self.load_path = os.fspath(load_path)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Engine | None = None) -> None:
        load_generator_weights(self.network, self.load_path)
        logger.info(f"loaded the generator's weights from {self.load_path}")


# ---- ensemble and test-time augmentation ----------------------------------------------------------------------


def flip_dims(flip_axes: Sequence[int] | None, spatial_dims: int = 3) -> list[tuple[int, ...]]:
    """The flips of test-time augmentation over ``flip_axes`` (spatial axes, 0 = the first): one per subset of
    them, the empty one (the unflipped input) first, each as the tensor dims of a ``(batch, channel, *spatial)``
    input, ready for ``torch.flip``. Empty or ``None``: the unflipped input alone."""
    axes = list(flip_axes or [])
    valid = all(isinstance(a, int) and not isinstance(a, bool) and 0 <= a < spatial_dims for a in axes)
    if not valid or len(set(axes)) != len(axes):
        raise ValueError(f"flip_axes (tta_flip_axes) must be distinct axes in [0, {spatial_dims}), got {flip_axes!r}")
    return [tuple(a + 2 for a in subset) for r in range(len(axes) + 1) for subset in itertools.combinations(axes, r)]


class EnsembleInferer(Inferer):
    """Averages the class probabilities of ``inferer`` (e.g. a Gaussian sliding window) over networks x flips.

    Args:
        inferer: runs one network on one (flipped) input, e.g. ``SlidingWindowInferer``.
        networks: the networks to average, e.g. one per cross-validation fold. ``None`` or empty: the network the
            caller passes (MONAI's evaluators, MONAI Label), which keeps the single-model default working unchanged.
        flip_axes: spatial axes (0 = first spatial axis) for flip test-time augmentation: the input is flipped over
            every subset of them (the empty one included, so ``2 ** len(flip_axes)`` passes per network) and each
            output flipped back before averaging. Empty: no augmentation.
        spatial_dims: number of spatial dimensions of the input ``(batch, channel, *spatial)``.
        uncertainty: also return, as one extra last channel, the voxel-wise mutual information between the pass
            and the predicted class, ``H(mean_p) - mean(H(p))`` in nats (:func:`mutual_information`): 0 where all
            passes give the same probabilities, positive where they disagree. For the quality check
            (``bundle.quality.SplitUncertaintyd`` takes it off again); false: the mean probabilities alone.
    """

    def __init__(
        self,
        inferer: Callable[..., torch.Tensor],
        networks: Sequence[nn.Module] | None = None,
        flip_axes: Sequence[int] = (),
        spatial_dims: int = 3,
        uncertainty: bool = False,
    ) -> None:
        super().__init__()
        if not isinstance(uncertainty, bool):
            raise ValueError(f"uncertainty (quality) must be true or false, got {uncertainty!r}")
        self.uncertainty = uncertainty
        if not callable(inferer):
            raise TypeError(f"inferer must be callable (a MONAI Inferer), got {type(inferer).__name__}")
        networks = list(networks or [])
        if not all(isinstance(n, nn.Module) for n in networks):
            raise TypeError(f"networks must be torch.nn.Module instances, got {[type(n).__name__ for n in networks]}")
        self.inferer = inferer
        self.networks = networks
        self.flips = flip_dims(flip_axes, spatial_dims)

    def __call__(
        self, inputs: torch.Tensor, network: Callable[..., torch.Tensor], *args: Any, **kwargs: Any
    ) -> torch.Tensor:
        """The mean over networks and flips of ``inferer(flip(inputs), net)``, flipped back (float32); with
        ``uncertainty``, the mutual information of the passes as one more channel."""
        networks: Sequence[Callable[..., torch.Tensor]] = self.networks or [network]
        total: torch.Tensor | None = None
        total_entropy: torch.Tensor | None = None  # sum over passes of each pass's entropy (uncertainty only)
        with eval_mode(*self.networks) if self.networks else torch.no_grad():
            for net in networks:
                for dims in self.flips:
                    out = self.inferer(torch.flip(inputs, dims) if dims else inputs, net, *args, **kwargs)
                    if not isinstance(out, torch.Tensor):
                        raise TypeError(f"the wrapped inferer must return a tensor, got {type(out).__name__}")
                    out = (torch.flip(out, dims) if dims else out).float()
                    total = out if total is None else total + out
                    if self.uncertainty:
                        h = entropy(out)
                        total_entropy = h if total_entropy is None else total_entropy + h
        assert total is not None  # at least one network and the unflipped pass
        passes = len(networks) * len(self.flips)
        mean = total if passes == 1 else total / passes
        if not self.uncertainty:
            return mean
        assert total_entropy is not None
        return torch.cat([mean, mutual_information(mean, total_entropy / passes)], dim=1)


def entropy(probabilities: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Shannon entropy in nats over the class dimension ``dim`` (kept, size 1); ``0 log 0`` is 0."""
    p = probabilities.float()
    return -torch.special.xlogy(p, p).sum(dim=dim, keepdim=True)


def mutual_information(mean_probabilities: torch.Tensor, mean_entropy: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """``H(mean_p) - mean(H(p))``: how much the passes of an ensemble / TTA disagree, in nats (BALD's mutual
    information). 0 where every pass gives the same probabilities; clamped at 0 against rounding."""
    return (entropy(mean_probabilities, dim) - mean_entropy).clamp_min(0.0)


# ---- post-processing and writing --------------------------------------------------------------------------------


class RelabelSmallETd(MapTransform):
    """BraTS post-processing on a class map: a predicted enhancing tumour (class 3) of fewer than ``min_voxels``
    voxels in all is relabelled necrotic core (class 1).

    A few ET voxels in a case without ET (common in low-grade gliomas) cost the whole ET Dice for that case in BraTS
    scoring (Dice 0 instead of 1), so small ET predictions are turned into tumour core, which TC and WT still count.
    Voxels are counted on the grid the map is on (the input's, after ``Invertd``). ``enabled`` false: no change.
    """

    def __init__(
        self,
        keys: KeysCollection,
        min_voxels: int,
        enabled: bool = True,
        et_class: int = ET_CLASS,
        ncr_class: int = NCR_CLASS,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if isinstance(min_voxels, bool) or not isinstance(min_voxels, (int, np.integer)) or min_voxels < 0:
            raise ValueError(f"min_voxels (et_min_voxels) must be a non-negative integer, got {min_voxels!r}")
        if not isinstance(enabled, bool):
            raise ValueError(f"enabled (postprocess_small_et) must be true or false, got {enabled!r}")
        self.min_voxels, self.enabled = int(min_voxels), enabled
        self.et_class, self.ncr_class = et_class, ncr_class

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        if not self.enabled:
            return d
        for key in self.key_iterator(d):
            classes = d[key]
            et = torch.as_tensor(classes) == self.et_class
            count = int(et.sum())
            if 0 < count < self.min_voxels:
                classes = classes.clone()  # keeps a MetaTensor's metadata
                classes[et] = self.ncr_class
                name = os.path.basename(str(getattr(d[key], "meta", {}).get("filename_or_obj", key)))
                logger.info(f"{name}: enhancing tumour of {count} voxels (< {self.min_voxels}) relabelled NCR")
            d[key] = classes
        return d


def _reference_grid(
    array: np.ndarray, reference: str, path: str, affine: np.ndarray | None, tolerance_mm: float
) -> nib.Nifti1Image | nib.Nifti2Image:
    """The NIfTI ``reference``, after checking that ``array`` (3-D) lies on its grid: same shape and, if known, an
    affine within ``tolerance_mm``; errors name ``path`` and ``reference``."""
    if not path.endswith(".nii.gz"):
        raise ValueError(f"output {path} must end with .nii.gz")
    ref = nib.load(reference)
    if not isinstance(ref, (nib.Nifti1Image, nib.Nifti2Image)):
        raise ValueError(f"{reference} is not a NIfTI file ({type(ref).__name__})")
    if array.shape != tuple(ref.shape[:3]):
        raise ValueError(f"{path}: prediction shape {array.shape} differs from {tuple(ref.shape[:3])} of {reference}")
    if affine is not None:
        deviation = float(np.abs(np.asarray(affine, dtype=np.float64) - ref.affine).max())
        if deviation > tolerance_mm:
            raise ValueError(
                f"{path}: prediction affine differs from that of {reference} by up to {deviation:.4g} "
                f"(tolerance {tolerance_mm})\n{np.asarray(affine)}\nvs\n{ref.affine}"
            )
    return ref


def _save_nifti_atomically(image: nib.Nifti1Image | nib.Nifti2Image, path: str) -> None:
    """Writes ``image`` under a temporary name in ``path``'s folder, synced, then renamed to ``path``."""
    folder, name = os.path.split(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{name[: -len('.nii.gz')]}.{uuid.uuid4().hex[:8]}.tmp.nii.gz")
    try:
        nib.save(image, tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save_labels_on_input_grid(
    labels: np.ndarray,
    reference: str | os.PathLike[str],
    path: str | os.PathLike[str],
    affine: np.ndarray | None = None,
    tolerance_mm: float = AFFINE_TOLERANCE_MM,
) -> str:
    """Writes the 3-D label map ``labels`` to ``path`` (``.nii.gz``) with the header geometry of the NIfTI file
    ``reference``: its shape, sform and qform with their codes, pixdim and units; uint8, no intensity scaling.

    ``affine`` (the prediction's, if known) must match the reference's within ``tolerance_mm``, and the shapes must
    be equal: a prediction on another grid is an error, never written. The file is written under a temporary name
    in the same folder and renamed when complete, so an interrupted run never leaves a half-written ``path``.
    """
    reference, path = os.fspath(reference), os.fspath(path)
    labels = np.asarray(labels)
    ref = _reference_grid(labels, reference, path, affine, tolerance_mm)
    if labels.size and (labels.min() < 0 or labels.max() > np.iinfo(np.uint8).max or np.any(labels % 1)):
        raise ValueError(f"{path}: label values must be integers in [0, 255], got {np.unique(labels)[:10]}")
    header = ref.header.copy()
    header.set_data_dtype(np.uint8)
    header.set_slope_inter(1.0, 0.0)
    header["cal_min"], header["cal_max"] = 0, 0  # the image's display range means nothing for labels
    _save_nifti_atomically(type(ref)(labels.astype(np.uint8), None, header), path)  # affine None: from the header
    return path


def save_map_on_input_grid(
    values: np.ndarray,
    reference: str | os.PathLike[str],
    path: str | os.PathLike[str],
    affine: np.ndarray | None = None,
    tolerance_mm: float = AFFINE_TOLERANCE_MM,
) -> str:
    """Writes the 3-D float map ``values`` (e.g. the quality check's maps) to ``path`` as float32, with the header
    geometry of ``reference``, checked and written atomically as :func:`save_labels_on_input_grid` does."""
    reference, path = os.fspath(reference), os.fspath(path)
    values = np.asarray(values, dtype=np.float32)
    ref = _reference_grid(values, reference, path, affine, tolerance_mm)
    if not np.all(np.isfinite(values)):
        raise ValueError(f"{path}: the map holds NaN or infinite values")
    header = ref.header.copy()
    header.set_data_dtype(np.float32)
    header.set_slope_inter(1.0, 0.0)
    header["cal_min"], header["cal_max"] = 0, 0  # the image's display range means nothing for the map
    _save_nifti_atomically(type(ref)(values, None, header), path)
    return path


class SaveOnInputGridd(SaveImaged):
    """Writes each prediction as ``<output_dir>/<case_id>.nii.gz`` on the grid and header geometry of the file it was
    predicted from (``filename_or_obj`` in its metadata: the first modality, or the MSD 4-D file); see
    :func:`save_labels_on_input_grid`, which checks the grid and writes atomically.

    A ``SaveImaged`` so that MONAI Label, which drops ``SaveImaged`` from a bundle's postprocessing and returns the
    prediction itself, drops this too; its writing is its own (MONAI's writers are not atomic and set both the
    sform and qform codes to 1 whatever the input's were).
    """

    def __init__(
        self, keys: KeysCollection, output_dir: str | os.PathLike[str], allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, output_dir=output_dir, output_postfix="", separate_folder=False,
                         output_dtype=np.uint8, allow_missing_keys=allow_missing_keys, print_log=False)  # fmt: skip
        self.output_dir = os.fspath(output_dir)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:  # type: ignore[override]
        d = dict(data)
        for key in self.key_iterator(d):
            pred = d[key]
            meta = getattr(pred, "meta", {})
            reference = meta.get("filename_or_obj")
            if not reference:
                raise ValueError(f"{key}: no 'filename_or_obj' in its metadata: cannot tell the input grid")
            array = torch.as_tensor(pred).detach().cpu().numpy()
            if array.ndim == 4 and array.shape[0] == 1:  # channel-first class map
                array = array[0]
            affine = meta.get("affine")
            affine = None if affine is None else torch.as_tensor(affine).detach().cpu().numpy()
            path = os.path.join(self.output_dir, f"{case_id_from_path(str(reference))}.nii.gz")
            save_labels_on_input_grid(array, str(reference), path, affine=affine)
            logger.info(f"wrote {path}")
        return d


# ---- cases, one at a time ----------------------------------------------------------------------------------------


def inference_cases(
    dataset_dir: str | os.PathLike[str] | None, datalist_file: str | os.PathLike[str] | None = None
) -> dict[str, Any]:
    """The cases to segment with absolute paths: every case of ``dataset_dir`` in one of the supported layouts, or
    every case of ``datalist_file`` (paths relative to ``dataset_dir``; labels and folds not needed). No file is
    checked here: each case is checked when it is processed (:class:`CaseDataset`), so one bad case does not
    stop the others. A BraTS case missing a modality file keeps the expected path, reported when it is checked.
    With neither ``dataset_dir`` nor ``datalist_file`` (MONAI Label, which passes its images itself): no cases, and
    the BraTS 2018-2021 conventions, so that the preprocessing and postprocessing can still be built.
    """
    if unset_path(datalist_file) and unset_path(dataset_dir):
        layout = "brats2021"
        return {"layout": None, "label_convention": LAYOUT_CONVENTION[layout],
                "channel_order": list(CHANNEL_ORDER[layout]), "training": []}  # fmt: skip
    if unset_path(dataset_dir):
        raise ValueError(f"datalist_file {datalist_file} needs dataset_dir: its paths are relative to it")
    if not unset_path(datalist_file):
        datalist = load_datalist(datalist_file, dataset_dir, training=False)
    else:
        root = _dataset_root(dataset_dir)
        layout, folders = _detect(root)
        if layout == "msd":
            cases = _msd_cases(root, require_label=False)
            if not cases:
                raise ValueError(f"no cases found in {root} (msd layout: imagesTr/, imagesTs/)")
        else:
            cases = []
            for case_id, rel in folders.items():
                names = set(os.listdir(os.path.join(root, rel)))
                stems = [case_id + suffix for suffix in BRATS_SUFFIXES[layout][0]]
                files = [_nifti(names, stem) or f"{stem}.nii.gz" for stem in stems]  # absent: reported when checked
                cases.append({"case_id": case_id, "image": [f"{rel}/{name}" for name in files]})
        datalist = _absolute_paths(
            {"layout": layout, "label_convention": LAYOUT_CONVENTION[layout], "channel_order": CHANNEL_ORDER[layout],
             "training": sorted(cases, key=lambda c: c["case_id"])},
            dataset_dir,
        )  # fmt: skip
    cases = []
    for case in datalist["training"]:
        case = {k: v for k, v in case.items() if k != "label"}
        image = case["image"]
        case.setdefault("case_id", case_id_from_path(image if isinstance(image, str) else image[0]))
        cases.append(case)
    return {**datalist, "training": cases}


def _case_files(case: Mapping[str, Any]) -> list[str]:
    image = case.get("image")
    return [str(image)] if isinstance(image, (str, os.PathLike)) else [str(p) for p in image or []]


def _unwrap(error: BaseException) -> tuple[BaseException, str | None]:
    """The error a transform raised, and the transform's name, from MONAI's "applying transform <...>" wrappers."""
    transform = None
    while error.__cause__ is not None and (found := _APPLYING.match(str(error))):
        transform, error = found.group(1), error.__cause__
    return error, transform


def _unreadable_file(files: Sequence[str]) -> tuple[str, BaseException] | None:
    """The first of ``files`` whose voxels cannot be read, with the error (e.g. a damaged gzip stream)."""
    for path in files:
        try:
            np.asarray(nib.load(path).dataobj)
        except Exception as error:  # noqa: BLE001
            return path, error
    return None


def describe_case_error(case: Mapping[str, Any], error: BaseException) -> str:
    """One line naming the case and, where the error does not already, the file at fault."""
    cause, transform = _unwrap(error)
    message = (str(cause) or type(cause).__name__).rstrip(".")
    files = _case_files(case)
    if not any(os.path.basename(f) in message for f in files):
        unreadable = _unreadable_file(files)
        if unreadable:
            message = f"{unreadable[0]} cannot be read: {unreadable[1]}"
        else:
            where = f" in {transform}" if transform else ""
            message = f"{type(cause).__name__}{where}: {message} (case files: {', '.join(files)})"
    return f"case {case.get('case_id')}: {message}"


class CaseDataset(Dataset):
    """MONAI ``Dataset`` of inference cases that checks each case's files (:func:`check_case_files`) before its
    transform, and turns any error of a case into ``{"case_id", CASE_ERROR_KEY: message}`` instead of raising,
    so that a bad case is reported by :class:`CaseByCase` and the others go on. Use with batch size 1."""

    def _transform(self, index: int) -> Any:
        case = self.data[index]
        try:
            check_case_files(case)
            return super()._transform(index)
        except Exception as error:  # noqa: BLE001  any error of one case is that case's, reported and skipped
            return {"case_id": case.get("case_id", f"#{index}"), CASE_ERROR_KEY: describe_case_error(case, error)}


class CaseByCase:
    """``iteration_update`` of a ``SupervisedEvaluator`` that processes one case per iteration and keeps going past
    a case that fails: its error (naming the case and file) is logged, nothing is written for it, and
    :meth:`finish` summarises the failures and exits non-zero after all the other cases are written.

    Failures before the network (file checks, loading) arrive from :class:`CaseDataset`; failures of the network
    or of the postprocessing, writing included, are caught here. A failure of the run itself (e.g. a checkpoint
    that does not fit) still stops it.
    """

    def __init__(
        self, output_dir: str | os.PathLike[str], case_key: str = "case_id", files_key: str = "input_files"
    ) -> None:
        self.output_dir = os.fspath(output_dir)
        self.case_key, self.files_key = case_key, files_key  # the case id, and the input files (for messages)
        self.written: list[str] = []
        self.failures: dict[str, str] = {}

    def __call__(self, engine: Engine, batch: dict[str, Any]) -> Any:
        if engine.state.iteration == 1:  # a new run (evaluators restart their count at every run)
            self.written, self.failures = [], {}
            check_writable_folder(self.output_dir)  # before any case: a run whose outputs cannot be written stops now
        ids = batch.get(self.case_key) or ["<unknown case>"]
        if len(ids) != 1:
            raise ValueError(f"CaseByCase runs one case per batch (batch_size 1), got a batch of {len(ids)}: {ids}")
        case_id = str(ids[0])
        errors = batch.get(CASE_ERROR_KEY)
        if errors:
            return self._fail(engine, case_id, str(errors[0]))
        try:
            output = engine._iteration(engine, batch)  # type: ignore[attr-defined]
        except Exception as error:  # noqa: BLE001  one case's error; the run goes on
            logger.debug(f"case {case_id} failed", exc_info=True)
            files = [str(f[0]) if isinstance(f, (list, tuple)) else str(f) for f in batch.get(self.files_key) or []]
            return self._fail(engine, case_id, describe_case_error({"case_id": case_id, "image": files}, error))
        self.written.append(case_id)
        return output

    def _fail(self, engine: Engine, case_id: str, message: str) -> list:
        self.failures[case_id] = message
        logger.error(f"{message}; no output written for it, going on with the other cases")
        stale = os.path.join(self.output_dir, f"{case_id}.nii.gz")
        if os.path.isfile(stale):
            logger.warning(f"case {case_id}: {stale} is from an earlier run, not from this one")
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        engine.state.output = []
        return []

    def finish(self) -> None:
        """Logs the summary of the run; raises ``SystemExit`` (status 1) naming the failed cases, if any."""
        total = len(self.written) + len(self.failures)
        if total == 0:
            raise SystemExit("inference: no cases to segment: set dataset_dir (--dataset_dir /path/to/data)")
        logger.info(f"inference: {len(self.written)} of {total} cases written to {self.output_dir}")
        if self.failures:
            lines = "\n".join(f"  {message}" for message in self.failures.values())
            logger.error(f"inference failed for {len(self.failures)} of {total} cases, not written:\n{lines}")
            raise SystemExit(
                f"inference failed for {len(self.failures)} of {total} cases ({', '.join(self.failures)}): "
                "see the errors above; the other cases were written"
            )
