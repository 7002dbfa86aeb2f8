"""Synthetic BraTS-style demo cases: real MNI152 brain anatomy (shipped inside nilearn) plus synthetic gliomas.

No installable package ships real glioma scans with labels, so the CPU demo, the tests and smoke runs use
stand-in cases laid out exactly like BraTS 2018-2021: ``<case>/<case>_{t1,t1ce,t2,flair,seg}.nii.gz``,
skull-stripped int16 images, uint8 labels 1 NCR/NET, 2 ED, 4 ET, a 240x240x155 grid at 1 mm with an LPS-like
(not RAS) affine, so that downstream code has to reorient just as it does for the real data.
"""

from __future__ import annotations

import functools
import os
import shutil
import uuid
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi
from tqdm import tqdm

MODALITIES: tuple[str, ...] = ("t1", "t1ce", "t2", "flair")
BRATS_SHAPE: tuple[int, int, int] = (240, 240, 155)
CASE_PREFIX = "DEMO_"
#: relative intensity per modality of: CSF, GM, WM, NCR (label 1), ED (label 2), ET (label 4)
CONTRASTS: dict[str, tuple[float, ...]] = {
    "t1": (0.25, 0.65, 1.0, 0.3, 0.5, 0.6),
    "t1ce": (0.25, 0.65, 1.0, 0.3, 0.5, 1.5),
    "t2": (1.0, 0.6, 0.4, 0.9, 0.85, 0.7),
    "flair": (0.2, 0.7, 0.55, 0.6, 1.0, 0.8),
}
TUMOUR_LABELS: tuple[int, int, int] = (1, 2, 4)  # NCR/NET, ED, ET (BraTS 2021 convention)
MAX_DEFORM_MM = 4.0  # bound of the per-case smooth deformation of the anatomy


def case_id(index: int) -> str:
    """Case id of the ``index``-th demo case, e.g. ``DEMO_00003``."""
    return f"{CASE_PREFIX}{index:05d}"


@functools.lru_cache(maxsize=1)
def _mni() -> dict[str, Any]:
    """MNI152 1 mm maps (T1 normalised to WM = 1, GM, WM, brain mask), their affine, the brain's bounding-box centre and
    candidate tumour centres in the cerebrum; read offline from nilearn's package data once per process."""
    from nilearn import datasets  # imported lazily: slow import, only needed to build cases

    imgs = {
        "t1": datasets.load_mni152_template(resolution=1),
        "gm": datasets.load_mni152_gm_template(resolution=1),
        "wm": datasets.load_mni152_wm_template(resolution=1),
        "mask": datasets.load_mni152_brain_mask(resolution=1),
    }
    maps = {k: np.ascontiguousarray(img.get_fdata(dtype=np.float32)) for k, img in imgs.items()}
    maps["t1"] /= np.median(maps["t1"][maps["wm"] > 0.9])
    affine = imgs["t1"].affine
    brain = maps["mask"] > 0.5
    vox = np.argwhere(brain)
    lo, hi = nib.affines.apply_affine(affine, np.stack([vox.min(0), vox.max(0)]))  # world bounding box of the brain
    # candidate tumour centres on a 2 mm lattice: grey or white matter of the cerebrum, with their depth in the brain
    sub = (slice(None, None, 2),) * 3
    depth = ndi.distance_transform_edt(brain[sub], sampling=2.0)
    ijk = np.argwhere((depth >= 6) & ((maps["wm"][sub] > 0.5) | (maps["gm"][sub] > 0.5)))
    xyz = nib.affines.apply_affine(affine, ijk * 2)
    x, y, z = xyz.T
    keep = (z > -15) & ~((y < -35) & (z < 5)) & ~((np.abs(x) < 10) & (z < 5))  # no cerebellum or brainstem
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


def output_grid(spacing: float = 1.0) -> tuple[tuple[int, int, int], np.ndarray]:
    """Shape and affine of the output grid: BraTS' 240x240x155 mm field of view at ``spacing`` mm, LPS-like axes
    (``diag(-s, -s, s)``), translated so that the MNI brain is centred in the grid."""
    shape = tuple(int(round(n / spacing)) for n in BRATS_SHAPE)
    affine = np.diag([-spacing, -spacing, spacing, 1.0])
    affine[:3, 3] = _mni()["centre"] - affine[:3, :3] @ ((np.array(shape) - 1) / 2)
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
) -> None:
    """Paint one tumour into ``seg`` (in place) around world point ``centre``: a randomly deformed ellipsoid core
    (enhancing rim, necrosis inside in most cases) and irregular oedema spreading preferentially into white matter."""
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
    rim = max(rng.uniform(3.0, 6.0), 1.5 * spacing)
    ncr = core & (ndi.distance_transform_edt(core, sampling=spacing) - spacing / 2 > rim) & (rng.random() < 0.85)
    reach = extent * (0.3 + wm[box]) * (1 + 0.5 * _smooth(rng, (5, 5, 5), rho.shape))
    ed = (ndi.distance_transform_edt(~core, sampling=spacing) - spacing / 2 <= reach) & brain[box]
    parts, _ = ndi.label(ed | core)
    ed = np.isin(parts, np.unique(parts[core])) & ~core  # one connected lesion: drop oedema islands
    sub = seg[box]
    sub[ed & (sub == 0)] = 2
    sub[core & (sub != 1)] = 4
    sub[ncr] = 1


def make_case(case_index: int, seed: int, spacing: float = 1.0) -> dict[str, np.ndarray]:
    """Build one synthetic case in memory (no I/O): int16 ``t1``, ``t1ce``, ``t2``, ``flair``, uint8 ``seg`` and the
    4x4 ``affine``. Deterministic in ``(seed, case_index)`` only, so case k is the same whatever the data-set size."""
    _check_args(1, seed, spacing)
    if isinstance(case_index, bool) or not isinstance(case_index, (int, np.integer)) or case_index < 0:
        raise ValueError(f"case_index must be a non-negative integer, got {case_index!r}")
    rng = np.random.default_rng([int(seed), int(case_index)])
    mni = _mni()
    shape, affine = output_grid(spacing)
    # work on the crop of the grid that can see the brain; everything outside it is background
    margin = MAX_DEFORM_MM + 5.0 + 2 * spacing  # deformation, global scaling
    ends = nib.affines.apply_affine(np.linalg.inv(affine), np.stack([mni["lo"] - margin, mni["hi"] + margin]))
    lo = np.clip(np.floor(ends.min(0)).astype(int), 0, shape)
    hi = np.clip(np.ceil(ends.max(0)).astype(int) + 1, 0, shape)
    crop = tuple(int(h - l) for l, h in zip(lo, hi))
    axes = [affine[a, a] * np.arange(lo[a], hi[a]) + affine[a, 3] for a in range(3)]  # world mm (axis-aligned grid)
    # world point each voxel samples from the MNI brain: global scaling about the centre plus a smooth deformation
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
        _add_tumour(rng, seg, brain, wm3, axes, spacing, c + (centre - c) / scale, size)

    # soft (about one voxel) class fractions in the tumour's bounding box, at the brain voxels there
    tb = ndi.find_objects((seg > 0).view(np.uint8))[0]
    tb = tuple(slice(max(b.start - 2, 0), b.stop + 2) for b in tb)
    index = np.full(crop, -1, np.int32)
    index[brain] = np.arange(len(wm), dtype=np.int32)
    in_tb = brain[tb]
    ids = index[tb][in_tb]
    frac = [ndi.gaussian_filter((seg[tb] == v).astype(np.float32), 0.4)[in_tb] for v in TUMOUR_LABELS]
    healthy = 1 - sum(frac)

    out = {"affine": affine}
    region = tuple(slice(l, h) for l, h in zip(lo, hi))
    for name, levels in CONTRASTS.items():
        lv = np.array(levels) * rng.uniform(0.9, 1.1, len(levels))
        img = csf * lv[0] + gm * lv[1] + wm * lv[2]
        if name.startswith("t1"):  # MNI T1 texture for realism
            img = 0.5 * img + 0.5 * lv[2] * tmpl
        texture = 1 + _smooth(rng, (4, 4, 4), in_tb.shape, 0.15)[in_tb]  # intensity variation inside the tumour
        img[ids] = healthy * img[ids] + texture * sum(f * v for f, v in zip(frac, lv[3:]))
        img *= 1 + _smooth(rng, (3, 3, 3), crop, 0.15)[brain]  # bias field
        img += rng.standard_normal(len(img), np.float32) * (rng.uniform(0.03, 0.05) * lv[2])
        out[name] = np.zeros(shape, np.int16)
        out[name][region][brain] = np.clip(np.rint(img * (1000 / (1.25 * lv.max()))), 0, 32767)
    out["seg"] = np.zeros(shape, np.uint8)
    out["seg"][region] = seg
    return out


def _check_args(num_cases: int, seed: int, spacing: float) -> None:
    """Raise ``ValueError`` naming the offending value for a bad case count, seed or spacing."""
    if isinstance(num_cases, bool) or not isinstance(num_cases, (int, np.integer)) or num_cases < 1:
        raise ValueError(f"num_cases must be a positive integer, got {num_cases!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if isinstance(spacing, bool) or not isinstance(spacing, (int, float, np.number)) or not 0 < spacing < np.inf:
        raise ValueError(f"spacing must be a positive number of mm, got {spacing!r}")
    if min(round(n / spacing) for n in BRATS_SHAPE) < 8:
        raise ValueError(f"spacing {spacing!r} mm is too coarse: the grid would have fewer than 8 voxels along an axis")


def _write_case(out_dir: Path, index: int, seed: int, spacing: float) -> str:
    """Build case ``index`` and write its five files under ``out_dir/<case_id>/``; returns the case id."""
    case, cid = make_case(index, seed, spacing), case_id(index)
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
) -> list[str]:
    """Write ``num_cases`` demo cases in BraTS layout to ``output_dir`` and return their ids.

    Refuses a non-empty ``output_dir`` unless ``overwrite``; writes into a temporary sibling directory that is renamed
    into place only when complete, so user data is never lost and no half-written data set is left behind. Progress
    is shown unless ``quiet`` or env ``CI=true``.
    """
    _check_args(num_cases, seed, spacing)
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
        _mni()  # load the anatomy once, before forking the workers, so they inherit it
        workers = min(2, os.cpu_count() or 1, num_cases)
        pool = ProcessPoolExecutor(workers) if workers > 1 else None
        try:
            jobs = ([tmp] * num_cases, range(num_cases), [seed] * num_cases, [spacing] * num_cases)
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
