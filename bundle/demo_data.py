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
    lo, hi = (np.array([np.flatnonzero(brain.any(axis=tuple(b for b in range(3) if b != a)))[i] for a in range(3)])
              for i in (0, -1))
    # candidate centres on a 2 mm lattice: grey/white matter of the cerebrum, with their depth below the brain surface
    sub = (slice(None, None, 2),) * 3
    depth = ndi.distance_transform_edt(brain[sub], sampling=2.0)
    ijk = np.stack(np.nonzero((depth >= 6) & ((maps["wm"][sub] > 0.5) | (maps["gm"][sub] > 0.5))), 1) * 2
    xyz = nib.affines.apply_affine(affine, ijk)
    x, y, z = xyz.T
    keep = (z > -15) & ~((y < -35) & (z < 5)) & ~((np.abs(x) < 10) & (z < 5))  # no cerebellum or brainstem
    return {**maps, "affine": affine, "inv_affine": np.linalg.inv(affine).astype(np.float32),
            "centre": nib.affines.apply_affine(affine, (lo + hi) / 2), "lo": nib.affines.apply_affine(affine, lo),
            "hi": nib.affines.apply_affine(affine, hi), "cand_xyz": xyz[keep], "cand_depth": depth[tuple(ijk[keep].T // 2)],
            "cand_wm": maps["wm"][tuple(ijk[keep].T)] > 0.5}


def output_grid(spacing: float = 1.0) -> tuple[tuple[int, int, int], np.ndarray]:
    """Shape and affine of the output grid: BraTS' 240x240x155 mm field of view at ``spacing`` mm, LPS-like axes
    (``diag(-s, -s, s)``), translated so that the MNI brain is centred in the grid."""
    shape = tuple(int(round(n / spacing)) for n in BRATS_SHAPE)
    affine = np.diag([-spacing, -spacing, spacing, 1.0])
    affine[:3, 3] = _mni()["centre"] - affine[:3, :3] @ ((np.array(shape) - 1) / 2)
    return shape, affine  # type: ignore[return-value]


def _smooth(rng: np.random.Generator, nodes: tuple[int, ...], shape: tuple[int, ...], amplitude: float = 1.0) -> np.ndarray:
    """Smooth random field on ``shape`` with ``|values| <= amplitude``: uniform random values on a coarse ``nodes``
    lattice, interpolated with normalised Gaussian weights along each axis in turn (separable, hence cheap even at
    full size, unlike filtering a full-size volume)."""
    field = rng.uniform(-amplitude, amplitude, nodes).astype(np.float32)
    for n, m in zip(shape, nodes):
        sigma = 0.6 * max((n - 1) / max(m - 1, 1), 1.0)
        w = np.exp(-0.5 * ((np.arange(n)[:, None] - np.linspace(0, n - 1, m)) / sigma) ** 2)
        field = np.tensordot(field, (w / w.sum(1, keepdims=True)).astype(np.float32), axes=(0, 1))
    return field


def _add_tumour(rng: np.random.Generator, seg: np.ndarray, brain: np.ndarray, wm: np.ndarray, axes: list[np.ndarray],
                spacing: float, centre: np.ndarray, size: float) -> None:
    """Paint one tumour into ``seg`` (in place) around world point ``centre``: a randomly deformed ellipsoid core
    (enhancing rim, necrosis inside in most cases) and irregular oedema spreading preferentially into white matter."""
    r_core = max(size * rng.uniform(0.3, 0.6), 2 * spacing)
    extent = max(size - r_core, 2 * spacing)  # mean oedema thickness around the core
    elong = np.exp(rng.normal(0, 0.25, 3))
    elong /= np.cbrt(elong.prod())  # semi-axis factors at constant volume
    wobble = rng.uniform(0.15, 0.35)  # radius modulation
    half = r_core * elong.max() * (1 + wobble) + 1.6 * extent + 2 * spacing
    idx = [(c - ax[0]) / (ax[1] - ax[0]) for ax, c in zip(axes, centre)]  # centre in crop voxel units
    box = tuple(slice(max(int(i - half / spacing), 0), max(int(i + half / spacing) + 2, 0)) for i in idx)
    d = np.meshgrid(*(ax[b] - c for ax, b, c in zip(axes, box, centre)), indexing="ij", sparse=True)
    rot, r = np.linalg.qr(rng.standard_normal((3, 3)))
    rho = np.sqrt(sum((sum(rot[a, b] * d[a] for a in range(3)) / (r_core * elong[b])) ** 2 for b in range(3)))
    core = rho < 1 + wobble * _smooth(rng, (5, 5, 5), rho.shape)
    core[np.unravel_index(np.argmin(rho), rho.shape)] = True
    core &= brain[box]
    if not core.any():
        return
    rim = max(rng.uniform(3.0, 6.0), 1.5 * spacing)
    ncr = core & (ndi.distance_transform_edt(core, sampling=spacing) - spacing / 2 > rim) & (rng.random() < 0.8)
    reach = extent * (0.3 + wm[box]) * (1 + 0.5 * _smooth(rng, (5, 5, 5), rho.shape))
    ed = (ndi.distance_transform_edt(~core, sampling=spacing) - spacing / 2 <= reach) & brain[box] & ~core
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
    margin = MAX_DEFORM_MM + 10.0 + 2 * spacing
    ends = nib.affines.apply_affine(np.linalg.inv(affine), np.stack([mni["lo"] - margin, mni["hi"] + margin]))
    lo = np.clip(np.floor(ends.min(0)).astype(int), 0, shape)
    hi = np.clip(np.ceil(ends.max(0)).astype(int) + 1, 0, shape)
    crop = tuple(int(h - l) for l, h in zip(lo, hi))
    axes = [affine[a, a] * np.arange(lo[a], hi[a]) + affine[a, 3] for a in range(3)]  # world mm (axis-aligned grid)
    # world point each voxel samples from the MNI brain: global scaling about the centre plus a smooth deformation
    scale = rng.uniform(0.98, 1.08) * rng.uniform(0.98, 1.02, 3)
    c = mni["centre"]
    world = np.stack([((c[a] + scale[a] * (axes[a] - c[a])).reshape([-1 if b == a else 1 for b in range(3)])
                       + _smooth(rng, (5, 5, 4), crop, MAX_DEFORM_MM)).ravel() for a in range(3)]).astype(np.float32)
    coords = mni["inv_affine"][:3, :3] @ world + mni["inv_affine"][:3, 3:]
    del world

    def sample(name: str, where: np.ndarray | None = None) -> np.ndarray:
        """Trilinear sample of an MNI map at the voxels ``where`` (all if None) of the crop."""
        out = np.zeros(crop, np.float32)
        pts = coords if where is None else coords[:, where.ravel()]
        values = ndi.map_coordinates(mni[name], pts, order=1, prefilter=False)
        if where is None:
            return values.reshape(crop)
        out[where] = values
        return out

    mask = sample("mask")
    brain = mask > 0.5
    gm, wm, tmpl = sample("gm", brain), sample("wm", brain), sample("t1", brain)
    del coords
    csf = np.clip(mask - gm - wm, 0, 1) * brain

    seg = np.zeros(crop, np.uint8)
    n_tumours = 2 if rng.random() < 0.15 else 1
    for k in range(n_tumours):
        size = rng.uniform(12, 35) * (0.7 if k else 1.0)  # whole-tumour radius, mm
        core_reach = size * 0.7 * 1.5
        use_wm = mni["cand_wm"] if rng.random() < 0.75 else ~mni["cand_wm"]
        ok = use_wm & (mni["cand_depth"] >= min(core_reach + 3, 0.8 * mni["cand_depth"].max()))
        ok = ok if ok.any() else mni["cand_depth"] >= 0.8 * mni["cand_depth"].max()
        centre = mni["cand_xyz"][rng.choice(np.flatnonzero(ok))]
        _add_tumour(rng, seg, brain, wm, axes, spacing, c + (centre - c) / scale, size)

    # soft (about one voxel) class fractions in the tumour's bounding box, and a smooth texture per modality
    tb = ndi.find_objects((seg > 0).view(np.uint8))[0] if seg.any() else (slice(0, 0),) * 3
    tb = tuple(slice(max(b.start - 2, 0), b.stop + 2) for b in tb)
    frac = [ndi.gaussian_filter((seg[tb] == v).astype(np.float32), 0.4) for v in TUMOUR_LABELS]
    healthy = 1 - sum(frac)

    out = {"affine": affine}
    for name, levels in CONTRASTS.items():
        lv = np.array(levels) * rng.uniform(0.9, 1.1, len(levels))
        img = csf * lv[0] + gm * lv[1] + wm * lv[2]
        if name.startswith("t1"):  # MNI T1 texture for realism
            img = 0.5 * img + 0.5 * lv[2] * tmpl
        texture = 1 + _smooth(rng, (4, 4, 4), healthy.shape, 0.15)
        img[tb] = healthy * img[tb] + texture * sum(f * v for f, v in zip(frac, lv[3:]))
        img *= 1 + _smooth(rng, (3, 3, 3), crop, 0.15)  # bias field
        img += rng.standard_normal(crop, np.float32) * (rng.uniform(0.03, 0.05) * lv[2])
        img *= (1000 / (1.25 * lv.max())) * brain
        full = np.zeros(shape, np.int16)
        full[tuple(slice(l, h) for l, h in zip(lo, hi))] = np.clip(np.rint(img), 0, 32767)
        out[name] = full
    out["seg"] = np.zeros(shape, np.uint8)
    out["seg"][tuple(slice(l, h) for l, h in zip(lo, hi))] = seg * brain
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
        img.header.set_xyzt_units("mm", "sec")
        nib.save(img, out_dir / cid / f"{cid}_{key}.nii.gz")
    return cid


def make_dataset(output_dir: str | os.PathLike, num_cases: int, seed: int, spacing: float = 1.0,
                 overwrite: bool = False, quiet: bool = False) -> list[str]:
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
