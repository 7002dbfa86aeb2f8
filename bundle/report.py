"""A visual report of a segmentation run: overlays per case, training curves and one HTML page.

:func:`make_report` writes ``<output_dir>/cases/<case_id>.png`` for every case that has a prediction
``<predictions_dir>/<case_id>.nii.gz`` (prediction and reference over FLAIR and T1ce, axial / coronal / sagittal
slices through the tumour, radiological convention), ``training_curves.png`` from the TensorBoard event files of a
training run and ``index.html`` embedding both. Where the quality check wrote its maps beside a prediction
(``<case_id>_quality.nii.gz``, ``<case_id>_uncertainty.nii.gz``) they are drawn over FLAIR in two more rows, and its
``quality_ranking.csv`` becomes a worst-first table. Everything is rendered into a temporary folder beside the output
folder and renamed at the end, so a failed or interrupted run never leaves a half-written report.

Label values are read in the data set's own convention (``bundle.datalist`` / ``bundle.labels``) for both the
prediction and the reference. Matplotlib is used through its Agg canvas only (no pyplot, no display needed), and
imported only when drawing, so that input errors are reported quickly.
"""

from __future__ import annotations

import csv
import datetime
import glob
import html
import os
import shutil
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import nibabel as nib
import numpy as np
from tqdm import tqdm

from bundle.datalist import AFFINE_TOLERANCE_MM, CHANNEL_ORDER, LAYOUT_CONVENTION, check_case_files, find_cases
from bundle.labels import label_values

if TYPE_CHECKING:
    from matplotlib.figure import Figure

PathLike = str | os.PathLike[str]

PREDICTION_EXTS = (".nii.gz", ".nii")
#: the quality check's maps written beside a prediction (bundle/quality.py): ``<case_id>_<name>.nii.gz``, not cases
QUALITY_MAPS: tuple[str, ...] = ("quality", "uncertainty")
QUALITY_RANKING = "quality_ranking.csv"  # the quality check's worst-first list, beside the predictions
#: colour scales of the maps: the critic's probability that the segmentation is wrong, from 0 to 1; the
#: passes' mutual information in nats, up to a fifth of its maximum ln 4 (four classes): clearer contrast
QUALITY_MAP_RANGES: dict[str, tuple[float, float]] = {"quality": (0.0, 1.0), "uncertainty": (0.0, 0.28)}
QUALITY_MAP_TITLES: dict[str, str] = {"quality": "critic: P(wrong here)", "uncertainty": "uncertainty (TTA MI)"}
#: short names and overlay colours of the tumour classes 1..3 (NCR/NET, ED, ET)
CLASS_SHORT_NAMES: tuple[str, str, str] = ("NCR/NET", "ED", "ET")
CLASS_COLOURS: tuple[str, str, str] = ("#e8262b", "#2fbf4a", "#ffd400")  # red, green, yellow: the usual BraTS look
OVERLAY_ALPHA = 0.5
VIEWS: tuple[str, str, str] = ("axial", "coronal", "sagittal")
#: patient directions at the (left, right, top, bottom) edges of each view as displayed (radiological convention)
VIEW_EDGES: dict[str, tuple[str, str, str, str]] = {
    "axial": ("R", "L", "A", "P"),
    "coronal": ("R", "L", "S", "I"),
    "sagittal": ("A", "P", "S", "I"),
}
#: intensity window of the grey-scale images: percentiles of the non-zero (brain) voxels
WINDOW_PERCENTILES = (0.5, 99.5)
CROP_MARGIN_VOXELS = 3
FIGURE_WIDTH_IN = 10.5  # case figures at 100 dpi: about 1050 pixels wide
#: TensorBoard scalar tags written by configs/train.yaml (bundle.trainer.gan_losses and the validation metrics)
GENERATOR_TAGS: tuple[str, ...] = ("loss", "g_adv_loss", "g_dice_loss")
DISCRIMINATOR_TAGS: tuple[str, ...] = ("d_loss",)
VALIDATION_TAGS: tuple[str, ...] = ("val_mean_dice", "val_dice_ET", "val_dice_TC", "val_dice_WT")
TAG_LABELS: dict[str, str] = {
    "loss": "G total (adv + alpha x Dice)",
    "g_adv_loss": "G adversarial",
    "g_dice_loss": "G generalized Dice",
    "d_loss": "D (LSGAN)",
    "val_mean_dice": "mean (ET, TC, WT)",
    "val_dice_ET": "ET",
    "val_dice_TC": "TC",
    "val_dice_WT": "WT",
}
#: loss curves with at least this many points get an exponential moving average drawn over the raw values
SMOOTH_MIN_POINTS = 50
SMOOTH_WEIGHT = 0.9


@dataclass(frozen=True)
class ReportCase:
    """One case to render: absolute paths of its FLAIR and T1ce (file and channel), label and prediction, and its
    datalist entry with absolute paths (for :func:`bundle.datalist.check_case_files`)."""

    case_id: str
    files: dict[str, Any]
    flair: tuple[str, int | None]  # (file, channel of a 4-D file or None)
    t1ce: tuple[str, int | None]
    label: str | None
    prediction: str
    maps: dict[str, str] | None = None  # the quality check's maps beside the prediction: {"quality": file, ...}


# ---- inputs -----------------------------------------------------------------------------------------------------


def _existing_dir(path: PathLike, what: str) -> Path:
    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"{what} {folder} does not exist or is not a folder")
    return folder


def prediction_files(predictions_dir: PathLike) -> dict[str, Path]:
    """``{case_id: file}`` of the NIfTI files ``<case_id>.nii.gz`` (or ``.nii``) in ``predictions_dir``."""
    folder = _existing_dir(predictions_dir, "predictions folder")
    found: dict[str, Path] = {}
    for entry in sorted(folder.iterdir()):
        ext = next((e for e in PREDICTION_EXTS if entry.name.endswith(e)), None)
        if ext and not entry.name.startswith(".") and entry.is_file():
            if any(entry.name[: -len(ext)].endswith(f"_{name}") for name in QUALITY_MAPS):
                continue  # a quality check map, not a prediction
            found.setdefault(entry.name[: -len(ext)], entry)  # .nii.gz sorts before .nii: it wins
    if not found:
        raise FileNotFoundError(f"no predictions (<case_id>.nii.gz) in {folder}")
    return found


def _absolute(root: Path, case: dict[str, Any]) -> dict[str, Any]:
    """A case of :func:`bundle.datalist.find_cases` with absolute paths."""
    image = case["image"]
    files = {**case, "image": str(root / image) if isinstance(image, str) else [str(root / p) for p in image]}
    if "label" in case:
        files["label"] = str(root / case["label"])
    return files


def _image_source(case: dict[str, Any], layout: str, modality: int) -> tuple[str, int | None]:
    """File and channel of bundle modality ``modality`` (0 T1, 1 T1ce, 2 T2, 3 FLAIR) of a case of ``layout``."""
    if isinstance(case["image"], str):  # msd: one 4-D file, channels in the layout's own order
        return case["image"], CHANNEL_ORDER[layout][modality]
    return case["image"][modality], None


def select_cases(
    dataset_dir: PathLike, predictions_dir: PathLike, case_ids: Sequence[str] | None = None
) -> tuple[str, list[ReportCase], list[str]]:
    """The label convention, the cases to render and the ids of predictions that match no case of the data set.

    A case is rendered when ``<predictions_dir>/<case_id>.nii.gz`` exists; ``case_ids`` restricts the cases and
    each of them must exist and have a prediction.
    """
    root = _existing_dir(dataset_dir, "data set folder")
    predictions = prediction_files(predictions_dir)
    layout, cases = find_cases(root, require_label=False)
    by_id = {case["case_id"]: case for case in cases}
    if case_ids:
        unknown = [c for c in case_ids if c not in by_id]
        if unknown:
            raise ValueError(f"--cases: no case {', '.join(unknown)} in {root}")
        missing = [c for c in case_ids if c not in predictions]
        if missing:
            raise FileNotFoundError(f"--cases: no prediction {Path(predictions_dir) / (missing[0] + '.nii.gz')}")
        selected = list(dict.fromkeys(case_ids))
    else:
        selected = [c for c in by_id if c in predictions]
        if not selected:
            raise FileNotFoundError(
                f"no prediction in {predictions_dir} matches a case of {root} "
                f"(expected <case_id>.nii.gz, e.g. {next(iter(by_id))}.nii.gz)"
            )
    report_cases = []
    for case_id in selected:
        files = _absolute(root, by_id[case_id])
        report_cases.append(
            ReportCase(case_id=case_id, files=files, flair=_image_source(files, layout, 3),
                       t1ce=_image_source(files, layout, 1), label=files.get("label"),
                       prediction=str(predictions[case_id]), maps=quality_maps(predictions[case_id]))
        )  # fmt: skip
    unmatched = sorted(set(predictions) - set(by_id))
    return LAYOUT_CONVENTION[layout], report_cases, unmatched


def quality_maps(prediction: Path) -> dict[str, str]:
    """The quality check's maps ``<case_id>_quality.nii.gz`` and ``_uncertainty.nii.gz`` beside a prediction."""
    stem = prediction.name[: -len(next(e for e in PREDICTION_EXTS if prediction.name.endswith(e)))]
    found = {name: prediction.with_name(f"{stem}_{name}.nii.gz") for name in QUALITY_MAPS}
    return {name: str(path) for name, path in found.items() if path.is_file()}


def check_inputs(case: ReportCase) -> None:
    """Check from headers that a case's files are complete and co-registered, and that its prediction lies on the
    grid of its images (same spatial shape and affine), naming the file at fault."""
    check_case_files(case.files)
    image = case.flair[0]
    reference = nib.load(image)
    try:
        pred = nib.load(case.prediction)
    except Exception as exc:
        raise ValueError(f"{case.prediction} is not a readable NIfTI file: {exc}") from exc
    if pred.shape != reference.shape[:3]:
        raise ValueError(
            f"{case.prediction}: shape {tuple(pred.shape)} differs from {tuple(reference.shape[:3])} of the case's "
            f"images ({image})"
        )
    for path in (case.maps or {}).values():
        try:
            shape = nib.load(path).shape
        except Exception as exc:
            raise ValueError(f"{path} is not a readable NIfTI file: {exc}") from exc
        if shape != reference.shape[:3]:
            raise ValueError(f"{path}: shape {tuple(shape)} differs from {tuple(reference.shape[:3])} of {image}")
    deviation = float(np.abs(pred.affine - reference.affine).max())
    if deviation > AFFINE_TOLERANCE_MM:
        raise ValueError(
            f"{case.prediction}: affine differs from that of the case's images ({image}) by up to {deviation:.4g} "
            f"(tolerance {AFFINE_TOLERANCE_MM} mm): the prediction is not on the images' grid"
        )


# ---- volumes and slices -----------------------------------------------------------------------------------------


def load_canonical(path: str, channel: int | None = None) -> tuple[np.ndarray, tuple[float, float, float]]:
    """A volume (a channel of a 4-D file if ``channel`` is given) reoriented to RAS, and its voxel spacing in mm."""
    img = nib.load(path)
    if channel is not None:
        img = nib.Nifti1Image(np.asarray(img.dataobj[..., channel]), img.affine)
    img = nib.as_closest_canonical(img)
    zooms = nib.affines.voxel_sizes(img.affine)
    return np.asarray(img.dataobj), (float(zooms[0]), float(zooms[1]), float(zooms[2]))


def labels_to_classes(labels: np.ndarray, convention: str, path: str) -> np.ndarray:
    """Internal classes 0..3 of a label map stored in ``convention``; a value outside it raises, naming the file."""
    values = label_values(convention)
    rounded = np.rint(labels).astype(np.int64) if labels.dtype.kind == "f" else labels.astype(np.int64)
    if labels.dtype.kind == "f" and not np.array_equal(rounded, labels):
        raise ValueError(f"{path}: not a label map (non-integer values)")
    bad = sorted(set(np.unique(rounded).tolist()) - set(values))
    if bad:
        raise ValueError(f"{path}: label values {bad} are not in the {convention} convention {list(values)}")
    lut = np.zeros(max(values) + 1, dtype=np.uint8)
    lut[list(values)] = np.arange(4, dtype=np.uint8)
    return lut[rounded]


def slice_centre(reference: np.ndarray | None, prediction: np.ndarray, image: np.ndarray) -> tuple[int, int, int]:
    """Voxel through which to slice: in the whole tumour of the reference, else of the prediction, the voxel of its
    largest connected lesion nearest to that lesion's centre of mass (a multifocal tumour's overall centre of mass
    can lie between lesions, a crescent's outside it); without tumour, the centre of mass of the non-zero image,
    else the volume's centre."""
    for mask in (reference, prediction):
        if mask is not None and np.any(mask):
            return _lesion_centre(mask > 0)
    if np.any(image):
        return tuple(int(round(c)) for c in np.argwhere(image != 0).mean(axis=0))  # type: ignore[return-value]
    return tuple(n // 2 for n in image.shape)  # type: ignore[return-value]


def _lesion_centre(mask: np.ndarray) -> tuple[int, int, int]:
    """The voxel of the largest 26-connected component of ``mask`` nearest to the component's centre of mass."""
    from scipy import ndimage as ndi  # only needed here

    components, count = ndi.label(mask, structure=np.ones((3, 3, 3), bool))
    largest = 1 + int(np.argmax(np.bincount(components.ravel())[1:])) if count > 1 else 1
    voxels = np.argwhere(components == largest)
    nearest = voxels[np.argmin(((voxels - voxels.mean(axis=0)) ** 2).sum(axis=1))]
    return tuple(int(c) for c in nearest)  # type: ignore[return-value]


def crop_box(volumes: Sequence[np.ndarray | None], margin: int = CROP_MARGIN_VOXELS) -> tuple[slice, slice, slice]:
    """Bounding box, widened by ``margin`` voxels, of the non-zero voxels of ``volumes`` (the brain and both
    segmentations): the panels show the head, not the empty rest of the field of view."""
    present = [v != 0 for v in volumes if v is not None]
    mask = np.logical_or.reduce(present)
    if not mask.any():
        return (slice(None),) * 3  # type: ignore[return-value]
    nonzero = np.argwhere(mask)
    low = np.maximum(nonzero.min(axis=0) - margin, 0)
    high = np.minimum(nonzero.max(axis=0) + margin + 1, mask.shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(low, high))  # type: ignore[return-value]


def display_slices(
    volume: np.ndarray, centre: Sequence[int], spacing: Sequence[float]
) -> dict[str, tuple[np.ndarray, float]]:
    """The axial, coronal and sagittal slices through ``centre`` of a RAS volume, as displayed (row 0 at the top),
    each with its pixel aspect (height / width) from the voxel spacing.

    Radiological convention: the patient's right on the viewer's left in axial and coronal views (anterior up in
    axial, superior up in coronal); sagittal views have superior up and anterior on the left.
    """
    i, j, k = centre
    sx, sy, sz = spacing
    return {
        "axial": (volume[::-1, ::-1, k].T, sy / sx),
        "coronal": (volume[::-1, j, ::-1].T, sz / sx),
        "sagittal": (volume[i, ::-1, ::-1].T, sz / sy),
    }


def intensity_window(image: np.ndarray) -> tuple[float, float]:
    """Grey-scale window of an image: low and high percentiles of its non-zero voxels."""
    voxels = image[image != 0]
    if voxels.size == 0:
        return 0.0, 1.0
    low, high = np.percentile(voxels, WINDOW_PERCENTILES)
    return float(low), (float(high) if high > low else float(low) + 1.0)


# ---- figures ----------------------------------------------------------------------------------------------------


def _save_figure(fig: Figure, path: Path, dpi: int = 100) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=dpi, facecolor=fig.get_facecolor())


def _edge_letters(ax: Any, view: str) -> None:
    """Patient directions at the edges of a panel, so the orientation can be read off the picture."""
    style = {"color": "white", "fontsize": 9, "fontweight": "bold", "transform": ax.transAxes}
    left, right, top, bottom = VIEW_EDGES[view]
    ax.text(0.02, 0.5, left, ha="left", va="center", **style)
    ax.text(0.98, 0.5, right, ha="right", va="center", **style)
    ax.text(0.5, 0.98, top, ha="center", va="top", **style)
    ax.text(0.5, 0.02, bottom, ha="center", va="bottom", **style)


def _case_figure(shape: Sequence[int], spacing: Sequence[float], num_rows: int) -> tuple[Figure, np.ndarray]:
    """A black figure of ``num_rows`` x 3 panels (axial, coronal, sagittal) sized from the volume's extent in mm,
    so that every panel shows its slice at one scale (mm per inch) with little empty space."""
    from matplotlib.figure import Figure

    extent = [n * s for n, s in zip(shape, spacing)]  # mm along R, A, S
    widths = [extent[0], extent[0], extent[1]]  # axial and coronal show R-L across, sagittal A-P
    row_mm = max(extent[1], extent[2])  # axial is A-P tall, coronal and sagittal S-I
    left, right, top, bottom = 0.35, 0.1, 0.85, 0.55  # inches: row labels, title, legend
    inch_per_mm = (FIGURE_WIDTH_IN - left - right) / (sum(widths) * 1.04)  # 4 % for the gaps between panels
    height = num_rows * row_mm * inch_per_mm * 1.04 + top + bottom
    fig = Figure(figsize=(FIGURE_WIDTH_IN, height), facecolor="black")
    grid = {"width_ratios": widths, "wspace": 0.04, "hspace": 0.04}
    axes = fig.subplots(num_rows, 3, squeeze=False, gridspec_kw=grid)
    fig.subplots_adjust(left=left / FIGURE_WIDTH_IN, right=1 - right / FIGURE_WIDTH_IN, top=1 - top / height,
                        bottom=bottom / height)  # fmt: skip
    return fig, axes


def render_case(case: ReportCase, convention: str, path: Path) -> None:
    """Write the PNG of one case: rows FLAIR / T1ce with the reference and with the prediction over them, columns
    axial / coronal / sagittal slices through the tumour; classes coloured semi-transparently, with a legend."""
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    flair, spacing = load_canonical(*case.flair)
    t1ce, _ = load_canonical(*case.t1ce)
    prediction = labels_to_classes(load_canonical(case.prediction)[0], convention, case.prediction)
    reference = labels_to_classes(load_canonical(case.label)[0], convention, case.label) if case.label else None
    box = crop_box([flair, t1ce, prediction, reference])
    offset = [b.start or 0 for b in box]
    flair, t1ce, prediction = flair[box], t1ce[box], prediction[box]
    reference = reference[box] if reference is not None else None
    centre = slice_centre(reference, prediction, flair)
    overlays = [("reference", reference)] if reference is not None else []
    overlays.append(("prediction", prediction))
    rows = [(name, image, seg_name, seg)
            for name, image in (("FLAIR", flair), ("T1ce", t1ce)) for seg_name, seg in overlays]  # fmt: skip
    maps = {name: load_canonical(path)[0][box] for name, path in (case.maps or {}).items()}

    fig, axes = _case_figure(flair.shape, spacing, len(rows) + len(maps))
    cmap = ListedColormap(CLASS_COLOURS)
    windows = {"FLAIR": intensity_window(flair), "T1ce": intensity_window(t1ce)}
    for r, (image_name, image, seg_name, seg) in enumerate(rows):
        image_slices = display_slices(image, centre, spacing)
        seg_slices = display_slices(seg, centre, spacing)
        for c, view in enumerate(VIEWS):
            ax = axes[r, c]
            grey, aspect = image_slices[view]
            ax.imshow(grey, cmap="gray", vmin=windows[image_name][0], vmax=windows[image_name][1], aspect=aspect,
                      interpolation="nearest")  # fmt: skip
            classes = seg_slices[view][0]
            ax.imshow(np.ma.masked_equal(classes, 0), cmap=cmap, vmin=0.5, vmax=3.5, alpha=OVERLAY_ALPHA,
                      aspect=aspect, interpolation="nearest")  # fmt: skip
            ax.set_xticks([])
            ax.set_yticks([])
            _edge_letters(ax, view)
            if r == 0:
                axis = {"axial": 2, "coronal": 1, "sagittal": 0}[view]
                ax.set_title(f"{view} (RAS slice {centre[axis] + offset[axis]})", color="white", fontsize=10)
            if c == 0:
                ax.set_ylabel(f"{image_name} + {seg_name}", color="white", fontsize=10)
    for r, (name, values) in enumerate(maps.items(), start=len(rows)):  # the quality check's maps over FLAIR
        image_slices, map_slices = display_slices(flair, centre, spacing), display_slices(values, centre, spacing)
        low, high = QUALITY_MAP_RANGES[name]
        for c, view in enumerate(VIEWS):
            ax = axes[r, c]
            grey, aspect = image_slices[view]
            ax.imshow(grey, cmap="gray", vmin=windows["FLAIR"][0], vmax=windows["FLAIR"][1], aspect=aspect,
                      interpolation="nearest")  # fmt: skip
            shown = np.ma.masked_less_equal(map_slices[view][0], low + 0.05 * (high - low))  # faint values: hidden
            ax.imshow(shown, cmap="inferno", vmin=low, vmax=high, alpha=0.6, aspect=aspect, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            _edge_letters(ax, view)
            if c == 0:
                ax.set_ylabel(f"FLAIR + {QUALITY_MAP_TITLES[name]}\n(0 to {high:g}, bright = worse)", color="white",
                              fontsize=9)  # fmt: skip
    values = label_values(convention)
    handles = [Patch(facecolor=colour, edgecolor="white", label=f"{name} (label {values[k + 1]})")
               for k, (name, colour) in enumerate(zip(CLASS_SHORT_NAMES, CLASS_COLOURS))]  # fmt: skip
    fig.legend(handles=handles, loc="lower center", ncol=3, frameon=False, labelcolor="white", fontsize=10)
    note = "" if reference is not None else " (no reference segmentation)"
    fig.suptitle(f"{case.case_id}{note}: radiological convention, patient's right on the left", color="white",
                 y=1 - 0.12 / fig.get_figheight(), va="top")  # fmt: skip
    _save_figure(fig, path)


# ---- training curves --------------------------------------------------------------------------------------------


def _event_files(logs_dir: PathLike) -> list[str]:
    folder = _existing_dir(logs_dir, "logs folder")
    files = sorted(glob.glob(os.path.join(folder, "**", "events.out.tfevents.*"), recursive=True))
    if not files:
        raise FileNotFoundError(f"no TensorBoard event files (events.out.tfevents.*) under {folder}")
    return files


def read_scalars(logs_dir: PathLike) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{tag: (steps, values)}`` of every scalar in the event files under ``logs_dir``.

    Files are read oldest first; as TensorBoard does, when a later file restarts a tag at step s (a new run into
    the same folder), the earlier points of that tag at steps >= s are dropped, while a resumed run, which goes on
    from its last step, simply continues the curve.
    """
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # slow import: only here

    runs = []
    for path in _event_files(logs_dir):
        acc = EventAccumulator(path, size_guidance={"scalars": 0})  # 0: keep every point, no reservoir sampling
        acc.Reload()
        try:
            first = acc.FirstEventTimestamp()
        except ValueError:  # an empty file
            continue
        scalars = {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
        runs.append((first, path, scalars))
    merged: dict[str, list[tuple[int, float]]] = {}
    for _, _, scalars in sorted(runs):
        for tag, points in scalars.items():
            if points:
                start = min(step for step, _ in points)
                merged[tag] = [p for p in merged.get(tag, []) if p[0] < start] + points
    return {tag: (np.array([s for s, _ in pts]), np.array([v for _, v in pts])) for tag, pts in merged.items() if pts}


def _smoothed(values: np.ndarray, weight: float = SMOOTH_WEIGHT) -> np.ndarray:
    """Debiased exponential moving average, as TensorBoard's smoothing slider (no lag behind the first values)."""
    out = np.empty(len(values), dtype=float)
    last = 0.0
    for n, v in enumerate(values):
        last = weight * last + (1 - weight) * float(v)
        out[n] = last / (1 - weight ** (n + 1))
    return out


def _plot_losses(ax: Any, scalars: dict[str, tuple[np.ndarray, np.ndarray]], tags: Sequence[str], title: str) -> None:
    from matplotlib.ticker import MaxNLocator

    present = [t for t in tags if t in scalars]
    for n, tag in enumerate(present):
        steps, values = scalars[tag]
        colour = f"C{n}"
        if len(values) >= SMOOTH_MIN_POINTS:
            ax.plot(steps, values, color=colour, alpha=0.25, linewidth=0.8)
            ax.plot(steps, _smoothed(values), color=colour, linewidth=1.5, label=f"{TAG_LABELS.get(tag, tag)} (EMA)")
        else:
            marker = "." if len(values) < 20 else None
            ax.plot(steps, values, color=colour, marker=marker, label=TAG_LABELS.get(tag, tag))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title(title)
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    if present:
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "not in the logs", ha="center", va="center", transform=ax.transAxes)


def _plot_validation(ax: Any, scalars: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    from matplotlib.ticker import MaxNLocator

    present = [t for t in VALIDATION_TAGS if t in scalars]
    for n, tag in enumerate(present):
        steps, values = scalars[tag]
        mean = tag == "val_mean_dice"
        ax.plot(steps, values, color="black" if mean else f"C{n}", linewidth=2 if mean else 1.2,
                marker="o" if len(values) < 30 else None, markersize=3, label=TAG_LABELS[tag])  # fmt: skip
    if "val_mean_dice" in scalars:
        steps, values = scalars["val_mean_dice"]
        best = int(np.argmax(values))
        ax.axvline(steps[best], color="grey", linestyle="--", linewidth=0.8)
        right_half = steps[best] > (steps.min() + steps.max()) / 2
        ax.annotate(f"best {values[best]:.3f} (epoch {steps[best]})", (steps[best], values[best]),
                    textcoords="offset points", xytext=(-4 if right_half else 4, 6),
                    ha="right" if right_half else "left", fontsize=8)  # fmt: skip
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title("validation Dice")
    ax.set_xlabel("epoch")
    ax.set_ylabel("Dice")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    if present:
        ax.legend(fontsize=8, loc="best")
    else:
        ax.text(0.5, 0.5, "no validation in the logs yet", ha="center", va="center", transform=ax.transAxes)


def training_scalars(logs_dir: PathLike) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The scalars of the training run logged under ``logs_dir``; raises, naming the folder, when they hold none
    of the losses and metrics the bundle logs (a wrong folder)."""
    scalars = read_scalars(logs_dir)
    known = (*GENERATOR_TAGS, *DISCRIMINATOR_TAGS, *VALIDATION_TAGS)
    if not any(tag in scalars for tag in known):
        raise ValueError(
            f"the event files under {logs_dir} hold none of the bundle's scalars {list(known)} "
            f"(found {sorted(scalars) or 'no scalars'})"
        )
    return scalars


def render_curves(scalars: dict[str, tuple[np.ndarray, np.ndarray]], logs_dir: PathLike, path: Path) -> None:
    """Write the training curves PNG from :func:`training_scalars`: generator and discriminator losses per
    iteration, validation Dice per region and their mean per epoch."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(15, 4.2), layout="constrained")
    ax_g, ax_d, ax_v = fig.subplots(1, 3)
    _plot_losses(ax_g, scalars, GENERATOR_TAGS, "generator losses")
    _plot_losses(ax_d, scalars, DISCRIMINATOR_TAGS, "discriminator loss")
    _plot_validation(ax_v, scalars)
    fig.suptitle(f"training curves ({logs_dir})")
    _save_figure(fig, path)


# ---- metrics and HTML -------------------------------------------------------------------------------------------


def read_metrics(metrics_csv: PathLike) -> tuple[list[str], dict[str, dict[str, str]]]:
    """The Dice columns of an evaluation ``metrics.csv`` and ``{case_id: {column: value}}``."""
    path = Path(metrics_csv)
    if not path.is_file():
        raise FileNotFoundError(f"metrics file {path} not found")
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        fields = list(reader.fieldnames or [])
        rows = list(reader)
    columns = [c for c in fields if c.endswith("_dice")]
    if "case_id" not in fields or not columns:
        raise ValueError(f"metrics file {path}: expected columns case_id and <region>_dice, got {fields}")
    return columns, {row["case_id"]: {c: row[c] for c in columns} for row in rows}


def _format_value(text: str | None) -> str:
    try:
        return f"{float(text):.3f}" if text not in (None, "") else "&ndash;"
    except ValueError:
        return html.escape(str(text))


def _metrics_table(case_ids: Sequence[str], columns: Sequence[str], metrics: dict[str, dict[str, str]]) -> str:
    head = "".join(f"<th>{html.escape(c.removesuffix('_dice'))} Dice</th>" for c in columns)
    body = []
    for case_id in case_ids:
        row = metrics.get(case_id, {})
        cells = "".join(f"<td>{_format_value(row.get(c))}</td>" for c in columns)
        body.append(f'<tr><td><a href="#{html.escape(case_id)}">{html.escape(case_id)}</a></td>{cells}</tr>')
    return f"<table><tr><th>case</th>{head}</tr>{''.join(body)}</table>"


def read_ranking(path: PathLike) -> list[dict[str, str]]:
    """The rows of the quality check's ``quality_ranking.csv`` (worst first); an unreadable file names itself."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except (OSError, csv.Error, UnicodeDecodeError) as exc:
        raise ValueError(f"quality ranking {path} cannot be read: {exc}") from exc
    if rows and not {"rank", "case_id"} <= set(rows[0]):
        raise ValueError(f"quality ranking {path}: expected columns rank and case_id, got {list(rows[0])}")
    return rows


#: the quality ranking's columns shown in the report, where present: estimates first, then the raw scores
RANKING_COLUMNS = ("est_dice_mean", "est_dice_WT", "expected_dice", "critic_dice_mean", "critic_dice_WT", "d_score",
                   "uncertainty", "confidence")  # fmt: skip


def _ranking_table(ranking: Sequence[dict[str, str]]) -> str:
    columns = [c for c in RANKING_COLUMNS if c in ranking[0]]
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = []
    for row in ranking:
        case_id = html.escape(row["case_id"])
        cells = "".join(f"<td>{_format_value(row.get(c))}</td>" for c in columns)
        body.append(f'<tr><td>{html.escape(row["rank"])}</td><td><a href="#{case_id}">{case_id}</a></td>{cells}</tr>')
    return f"<table><tr><th>rank</th><th>case</th>{head}</tr>{''.join(body)}</table>"


def write_html(
    path: Path,
    case_ids: Sequence[str],
    sources: dict[str, str],
    curves: bool,
    metrics: tuple[list[str], dict[str, dict[str, str]]] | None,
    ranking: list[dict[str, str]] | None = None,
) -> None:
    """Write ``index.html``: title, date, inputs, training curves, the Dice table and every case's PNG (relative
    links, so the report folder can be moved or archived as a whole)."""
    esc = html.escape
    date = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8"><title>Vox2Vox segmentation report</title>',
        "<style>body{font-family:sans-serif;margin:2em;max-width:1400px}img{max-width:100%}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}"
        "td:first-child{text-align:left}</style></head><body>",
        "<h1>Vox2Vox segmentation report</h1>",
        f"<p>Generated {esc(date)}.</p><ul>",
        *(f"<li>{esc(k)}: <code>{esc(v)}</code></li>" for k, v in sources.items()),
        "</ul>",
    ]
    if curves:
        parts += ["<h2>Training curves</h2>", '<a href="training_curves.png"><img src="training_curves.png" '
                  'alt="training curves"></a>']  # fmt: skip
    if metrics is not None:
        parts += ["<h2>Dice per case</h2>", _metrics_table(case_ids, *metrics)]
    if ranking:
        parts += ["<h2>Quality check: worst first</h2>",
                  "<p>Cases to review first: sorted by the estimated mean Dice (the Dice the model's probabilities "
                  "expect, its confidence and uncertainty and the quality critic's estimate, calibrated on "
                  "validation cases; see docs/quality.md), or by the model's expected Dice when no calibration was "
                  "available.</p>", _ranking_table(ranking)]  # fmt: skip
    parts.append(f"<h2>Cases ({len(case_ids)})</h2>")
    parts.append("<p>Prediction and reference over FLAIR and T1ce, slices through the centre of the whole tumour; "
                 "radiological convention (patient's right on the left).</p>")  # fmt: skip
    for case_id in case_ids:
        src = f"cases/{esc(case_id)}.png"
        image = f'<a href="{src}"><img src="{src}" alt="{esc(case_id)}"></a>'
        parts.append(f'<h3 id="{esc(case_id)}">{esc(case_id)}</h3>{image}')
    parts.append("</body></html>\n")
    path.write_text("\n".join(parts), encoding="utf-8")


# ---- output folder ----------------------------------------------------------------------------------------------


def _contains(folder: Path, other: Path) -> bool:
    return other == folder or folder in other.parents


def check_output_dir(output_dir: PathLike, overwrite: bool, inputs: Sequence[PathLike | None]) -> Path:
    """The absolute output folder, refused when it is a file, holds or is one of the inputs, or is a non-empty
    folder and ``overwrite`` is false."""
    out = Path(output_dir).resolve()
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"output {out} exists and is not a folder")
    for given in inputs:
        if given is not None and _contains(out, Path(given).resolve()):
            raise ValueError(f"output folder {out} contains the input {given}: choose another --output-dir")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"output folder {out} is not empty (use --overwrite to replace it)")
    return out


def _publish(tmp: Path, out: Path) -> None:
    """Move the finished report ``tmp`` to ``out``, replacing what is there (checked beforehand)."""
    old = out.with_name(f"{tmp.name}.old") if out.exists() else None
    if old is not None:
        os.rename(out, old)
    try:
        os.rename(tmp, out)
    except BaseException:
        if old is not None:
            os.rename(old, out)  # put the earlier report back
        raise
    if old is not None:
        shutil.rmtree(old)


def make_report(
    dataset_dir: PathLike,
    predictions_dir: PathLike,
    output_dir: PathLike,
    logs_dir: PathLike | None = None,
    case_ids: Sequence[str] | None = None,
    metrics_csv: PathLike | None = None,
    overwrite: bool = False,
    quiet: bool = False,
) -> Path:
    """Render the report (see the module docstring) and return the path of its ``index.html``.

    All inputs are checked before anything is written; the report is written to a temporary folder beside
    ``output_dir`` and renamed at the end. A progress bar over the cases is shown unless ``quiet`` or env
    ``CI=true``; predictions that match no case of the data set are listed on stderr.
    """
    quiet = quiet or os.environ.get("CI", "").lower() == "true"
    convention, cases, unmatched = select_cases(dataset_dir, predictions_dir, case_ids)
    scalars = training_scalars(logs_dir) if logs_dir is not None else None
    metrics = read_metrics(metrics_csv) if metrics_csv is not None else None
    out = check_output_dir(output_dir, overwrite, [dataset_dir, predictions_dir, logs_dir, metrics_csv])
    for case in cases:
        check_inputs(case)
    ranking_file = Path(predictions_dir) / QUALITY_RANKING
    ranking = read_ranking(ranking_file) if ranking_file.is_file() else None
    if ranking is not None:  # only the rendered cases
        shown = {c.case_id for c in cases}
        ranking = [row for row in ranking if row["case_id"] in shown]
    if unmatched:
        shown = ", ".join(unmatched[:5]) + (", ..." if len(unmatched) > 5 else "")
        print(f"warning: {len(unmatched)} prediction(s) in {predictions_dir} match no case of {dataset_dir}: {shown}",
              file=sys.stderr)  # fmt: skip

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()  # not tempfile.mkdtemp: its mode 0700 would make the published report private
    try:
        (tmp / "cases").mkdir()
        for case in tqdm(cases, desc="report", unit="case", disable=quiet):
            render_case(case, convention, tmp / "cases" / f"{case.case_id}.png")
        if scalars is not None:
            render_curves(scalars, logs_dir, tmp / "training_curves.png")
        sources = {"data set": str(Path(dataset_dir).resolve()), "label convention": convention,
                   "predictions": str(Path(predictions_dir).resolve())}  # fmt: skip
        if logs_dir is not None:
            sources["training logs"] = str(Path(logs_dir).resolve())
        if metrics_csv is not None:
            sources["metrics"] = str(Path(metrics_csv).resolve())
        write_html(tmp / "index.html", [c.case_id for c in cases], sources, logs_dir is not None, metrics, ranking)
        _publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out / "index.html"
