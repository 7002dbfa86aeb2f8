"""Datalists for the bundle: find the cases of a BraTS or MSD data set, assign cross-validation folds, check files.

Supported layouts (see :func:`detect_layout`), files ``.nii.gz`` or ``.nii``:

- ``brats2021`` (BraTS 2018-2021): ``<id>/<id>_t1``, ``_t1ce``, ``_t2``, ``_flair``, label ``<id>_seg``
- ``brats2023`` (BraTS 2023+): ``<id>/<id>-t1n``, ``-t1c``, ``-t2w``, ``-t2f``, label ``<id>-seg``
- ``msd`` (MSD Task01_BrainTumour): ``imagesTr/<id>`` (4-D, channels FLAIR, T1w, T1gd, T2w), ``labelsTr/<id>``

BraTS case folders may lie at depth 1 or 2 of the data set folder. Datalist paths are relative to the data set
folder; the bundle's channel order is T1, T1ce, T2, FLAIR (``channel_order`` maps it to the stored channels).
"""

from __future__ import annotations

import gzip
import json
import os
import zlib
from typing import Any

import nibabel as nib
import numpy as np

from bundle.labels import LABEL_CONVENTIONS

PathLike = str | os.PathLike[str]

#: file-name suffixes of (T1, T1ce, T2, FLAIR) and of the label, by BraTS layout
BRATS_SUFFIXES: dict[str, tuple[tuple[str, ...], str]] = {
    "brats2021": (("_t1", "_t1ce", "_t2", "_flair"), "_seg"),
    "brats2023": (("-t1n", "-t1c", "-t2w", "-t2f"), "-seg"),
}
#: index in the stored image channels of each of (T1, T1ce, T2, FLAIR), by layout
CHANNEL_ORDER: dict[str, list[int]] = {"brats2021": [0, 1, 2, 3], "brats2023": [0, 1, 2, 3], "msd": [1, 2, 3, 0]}
#: label convention (a key of ``LABEL_CONVENTIONS``) by layout
LAYOUT_CONVENTION: dict[str, str] = {"brats2021": "brats2021", "brats2023": "brats2023", "msd": "msd"}
SPLITS = ("train", "validate", "all")
#: largest difference allowed between the affines of one case's files (mm; rotations are compared alike)
AFFINE_TOLERANCE_MM = 1e-3
_EXTS = (".nii.gz", ".nii")
_EXPECTED = (
    "expected BraTS case folders at depth 1 or 2 (<id>/<id>_t1.nii.gz, _t1ce, _t2, _flair, _seg for BraTS 2018-2021; "
    "<id>/<id>-t1n.nii.gz, -t1c, -t2w, -t2f, -seg for BraTS 2023+) or MSD Task01 (dataset.json, imagesTr/, labelsTr/)"
)


def _dataset_root(dataset_dir: PathLike) -> str:
    root = os.fspath(dataset_dir)
    if not os.path.isdir(root):
        raise FileNotFoundError(f"data set folder {root} does not exist or is not a folder")
    return root


def _subdirs(folder: str) -> list[str]:
    return sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))


def _nifti(names: set[str], stem: str) -> str | None:
    """The name among ``names`` of ``stem.nii.gz`` or ``stem.nii``, or None."""
    return next((stem + ext for ext in _EXTS if stem + ext in names), None)


def _scan_brats(root: str) -> dict[str, dict[str, str]]:
    """BraTS case folders at depth 1 or 2 of ``root``: ``{layout: {case_id: folder relative to root}}``."""
    found: dict[str, dict[str, str]] = {layout: {} for layout in BRATS_SUFFIXES}

    def visit(rel: str, depth: int) -> None:
        case_id, names = os.path.basename(rel), set(os.listdir(os.path.join(root, rel)))
        for layout, (mods, seg) in BRATS_SUFFIXES.items():
            if any(_nifti(names, case_id + s) for s in (*mods, seg)):
                if case_id in found[layout]:
                    raise ValueError(f"case {case_id} found twice in {root}: {found[layout][case_id]} and {rel}")
                found[layout][case_id] = rel
                return
        if depth == 1:
            for sub in _subdirs(os.path.join(root, rel)):
                visit(f"{rel}/{sub}", 2)

    for sub in _subdirs(root):
        visit(sub, 1)
    return found


def _detect(root: str) -> tuple[str, dict[str, str]]:
    if any(os.path.isdir(os.path.join(root, d)) for d in ("imagesTr", "imagesTs")):
        return "msd", {}
    found = {layout: cases for layout, cases in _scan_brats(root).items() if cases}
    if len(found) > 1:
        examples = ", ".join(f"{next(iter(cases.values()))} ({layout})" for layout, cases in found.items())
        raise ValueError(f"data set folder {root} mixes BraTS layouts, e.g. {examples}")
    if not found:
        raise ValueError(f"no known data set layout in {root}: {_EXPECTED}")
    return next(iter(found.items()))


def detect_layout(dataset_dir: PathLike) -> str:
    """The layout of ``dataset_dir``: "brats2021", "brats2023" or "msd"."""
    return _detect(_dataset_root(dataset_dir))[0]


def _brats_cases(root: str, layout: str, folders: dict[str, str], require_label: bool) -> list[dict[str, Any]]:
    mods, seg = BRATS_SUFFIXES[layout]
    cases = []
    for case_id, rel in folders.items():
        names = set(os.listdir(os.path.join(root, rel)))
        case: dict[str, Any] = {"case_id": case_id, "image": []}
        for suffix in mods:
            name = _nifti(names, case_id + suffix)
            if name is None:
                raise FileNotFoundError(f"case {case_id}: missing {os.path.join(root, rel, case_id + suffix)}.nii.gz")
            case["image"].append(f"{rel}/{name}")
        label = _nifti(names, case_id + seg)
        if label is not None:
            case["label"] = f"{rel}/{label}"
        elif require_label:
            raise FileNotFoundError(f"case {case_id}: missing label {os.path.join(root, rel, case_id + seg)}.nii.gz")
        cases.append(case)
    return cases


def _nifti_files(folder: str) -> dict[str, str]:
    """``{case_id: file name}`` of the NIfTI files in ``folder``, skipping hidden and macOS ``._`` files."""
    if not os.path.isdir(folder):
        return {}
    files = {}
    for name in sorted(os.listdir(folder)):
        ext = next((e for e in _EXTS if name.endswith(e)), None)
        if ext and not name.startswith(".") and os.path.isfile(os.path.join(folder, name)):
            files.setdefault(name[: -len(ext)], name)
    return files


def _msd_cases(root: str, require_label: bool) -> list[dict[str, Any]]:
    labels = _nifti_files(os.path.join(root, "labelsTr"))
    cases: dict[str, dict[str, Any]] = {}
    for folder in ("imagesTr",) if require_label else ("imagesTr", "imagesTs"):
        for case_id, name in _nifti_files(os.path.join(root, folder)).items():
            if case_id in cases:
                raise ValueError(f"case {case_id} found twice in {root}: {cases[case_id]['image']} and {folder}/{name}")
            cases[case_id] = {"case_id": case_id, "image": f"{folder}/{name}"}
            if folder == "imagesTr" and case_id in labels:
                cases[case_id]["label"] = f"labelsTr/{labels[case_id]}"
            elif require_label:
                missing = os.path.join(root, "labelsTr", case_id)
                raise FileNotFoundError(f"case {case_id}: missing label {missing}.nii.gz")
    return list(cases.values())


def find_cases(dataset_dir: PathLike, require_label: bool = True) -> tuple[str, list[dict[str, Any]]]:
    """The layout and the cases of ``dataset_dir``, sorted by case id, with paths relative to ``dataset_dir``.

    Each case is ``{"case_id", "image", "label"}``; "image" is [T1, T1ce, T2, FLAIR] for BraTS, the 4-D file for msd.
    Without ``require_label``, unlabelled cases (including MSD ``imagesTs``) are included without "label".
    """
    root = _dataset_root(dataset_dir)
    layout, folders = _detect(root)
    cases = _msd_cases(root, require_label) if layout == "msd" else _brats_cases(root, layout, folders, require_label)
    if not cases:
        raise ValueError(f"no {'labelled ' if require_label else ''}cases found in {root} ({layout} layout)")
    return layout, sorted(cases, key=lambda case: case["case_id"])


def make_datalist(dataset_dir: PathLike, num_folds: int = 5, seed: int = 0) -> dict[str, Any]:
    """A training datalist of the labelled cases of ``dataset_dir``, each assigned to one of ``num_folds`` folds.

    ``num_folds`` 1 puts every case in fold 0: a data set to evaluate or infer on as a whole (split "all").
    """
    layout, cases = find_cases(dataset_dir, require_label=True)
    if isinstance(num_folds, bool) or not isinstance(num_folds, (int, np.integer)) or not 1 <= num_folds <= len(cases):
        raise ValueError(
            f"num_folds must be an integer from 1 to {len(cases)} (the number of cases in {dataset_dir}), "
            f"got {num_folds!r}"
        )
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    for rank, index in enumerate(np.random.default_rng(int(seed)).permutation(len(cases))):
        cases[index]["fold"] = rank % int(num_folds)
    return {
        "layout": layout,
        "label_convention": LAYOUT_CONVENTION[layout],
        "channel_order": list(CHANNEL_ORDER[layout]),
        "num_folds": int(num_folds),
        "seed": int(seed),
        "training": cases,
    }


def save_datalist(datalist: dict[str, Any], output: PathLike, overwrite: bool = False) -> str:
    """Write ``datalist`` as JSON to ``output`` via a temporary file; refuses an existing file unless ``overwrite``."""
    out = os.fspath(output)
    if os.path.isdir(out):
        raise IsADirectoryError(f"output {out} is a folder")
    if os.path.exists(out) and not overwrite:
        raise FileExistsError(f"output {out} already exists (use --overwrite / overwrite=True to replace it)")
    folder, base = os.path.split(os.path.abspath(out))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{base}.{os.getpid()}.tmp")
    try:
        with open(tmp, "x", encoding="utf-8") as f:
            json.dump(datalist, f, indent=2)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return out


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def unset_path(value: PathLike | None) -> bool:
    """Whether an optional path setting is unset: None, or ``null`` / ``none`` / empty as the command line gives
    it (``--datalist_file null`` reaches the config as the text 'null')."""
    return value is None or str(value).strip().lower() in ("", "null", "none")


def _datalist_problem(data: Any, training: bool = True) -> str | None:
    """What is wrong with a loaded datalist, or None. ``training``: every case needs ``label`` and ``fold``;
    otherwise (inference) only ``image``, and ``num_folds`` is not needed."""
    if not isinstance(data, dict):
        return "expected a JSON object"
    required = ("label_convention", "channel_order", "num_folds", "training") if training else (
        "label_convention", "channel_order", "training")  # fmt: skip
    missing = [k for k in required if k not in data]
    if missing:
        return f"missing keys {missing}"
    if data["label_convention"] not in LABEL_CONVENTIONS:
        return f"unknown label_convention {data['label_convention']!r}; expected one of {sorted(LABEL_CONVENTIONS)}"
    order = data["channel_order"]
    if not isinstance(order, list) or not all(map(_is_int, order)) or sorted(order) != [0, 1, 2, 3]:
        return f"channel_order must be a permutation of [0, 1, 2, 3], got {order!r}"
    if training and (not _is_int(data["num_folds"]) or data["num_folds"] < 1):
        return f"num_folds must be an integer >= 1, got {data['num_folds']!r}"
    if not isinstance(data["training"], list) or not data["training"]:
        return "'training' must be a non-empty list of cases"
    for i, item in enumerate(data["training"]):
        named = isinstance(item, dict) and "case_id" in item
        where = f"training item {i}" + (f" ({item['case_id']})" if named else "")
        if not isinstance(item, dict) or "image" not in item or (training and "label" not in item):
            return f"{where} must be an object with 'image'" + (" and 'label'" if training else "")
        image = item["image"]
        paths = [image] if isinstance(image, str) else image if isinstance(image, list) and len(image) == 4 else [None]
        if not all(isinstance(p, str) and p for p in paths):
            return f"{where}: 'image' must be a path or a list of 4 paths, got {image!r}"
        if not training:
            continue
        if not isinstance(item["label"], str) or not item["label"]:
            return f"{where}: 'label' must be a path, got {item['label']!r}"
        if not _is_int(item.get("fold")) or not 0 <= item["fold"] < data["num_folds"]:
            return f"{where}: 'fold' must be an integer from 0 to {data['num_folds'] - 1}, got {item.get('fold')!r}"
    return None


def load_datalist(datalist_file: PathLike, dataset_dir: PathLike, training: bool = True) -> dict[str, Any]:
    """Read and validate a datalist JSON; image and label paths are made absolute under ``dataset_dir``.
    ``training``: its cases need labels and folds; false (inference): images alone will do."""
    path = os.fspath(datalist_file)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"datalist file {path} not found")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        raise ValueError(f"datalist file {path} is not valid JSON: {exc}") from exc
    problem = _datalist_problem(data, training)
    if problem:
        raise ValueError(f"datalist file {path} is malformed: {problem}")
    return _absolute_paths(data, dataset_dir)


def _absolute_paths(datalist: dict[str, Any], dataset_dir: PathLike) -> dict[str, Any]:
    """A copy of ``datalist`` whose image and label paths are joined onto ``dataset_dir`` (absolute ones kept)."""
    root = os.path.abspath(_dataset_root(dataset_dir))
    absolute = lambda p: os.path.join(root, p)  # noqa: E731  (os.path.join keeps absolute paths)
    training = []
    for item in datalist["training"]:
        image = item["image"]
        item = {**item, "image": absolute(image) if isinstance(image, str) else [absolute(p) for p in image]}
        if "label" in item:
            item["label"] = absolute(item["label"])
        training.append(item)
    return {**datalist, "training": training}


def modality_files(image: PathLike | list[PathLike]) -> str | list[str]:
    """All four modality files of a study given by one of them, in the order T1, T1ce, T2, FLAIR.

    MONAI Label hands the bundle one image file per study; an annotator's datastore holds BraTS files, one per
    modality, since 3D Slicer cannot show 4-channel NIfTI. A file named like a BraTS 2018-2021 or 2023 modality
    (``<id>_flair.nii.gz``, ``<id>-t2f.nii.gz``, ...) is expanded to its siblings; anything else (a list already,
    a 4-D NIfTI) is returned as it is. A missing sibling is an error naming it.
    """
    if not isinstance(image, (str, os.PathLike)):
        return [os.fspath(p) for p in image]
    path = os.fspath(image)
    folder, name = os.path.split(path)
    ext = next((e for e in _EXTS if name.endswith(e)), None)
    if ext is None:
        return path
    stem = name[: -len(ext)]
    for suffixes, _ in BRATS_SUFFIXES.values():
        suffix = next((x for x in sorted(suffixes, key=len, reverse=True) if stem.endswith(x)), None)
        if suffix is not None:
            case = stem[: -len(suffix)]
            files = [os.path.join(folder, case + s + ext) for s in suffixes]
            missing = [f for f in files if not os.path.isfile(f)]
            if missing:
                raise FileNotFoundError(f"{path}: the study's other modality files are missing: {', '.join(missing)}")
            return files
    return path


def case_id_from_path(path: PathLike) -> str:
    """The case id of an image file: its name without extension and modality suffix (BraTS) or as is (MSD)."""
    name = os.path.basename(os.fspath(path))
    stem = next((name[: -len(ext)] for ext in _EXTS if name.endswith(ext)), name)
    for suffixes, _ in BRATS_SUFFIXES.values():
        for suffix in sorted(suffixes, key=len, reverse=True):
            if stem.endswith(suffix):
                return stem[: -len(suffix)]
    return stem


#: the conventions assumed when no data set is named: MONAI Label hands the bundle its cases directly
DEFAULT_DATALIST: dict[str, Any] = {
    "layout": None, "label_convention": "brats2021", "channel_order": [0, 1, 2, 3], "num_folds": 1, "training": []
}  # fmt: skip


def resolve_datalist(
    datalist_file: PathLike | None, dataset_dir: PathLike | None, num_folds: int = 5, seed: int = 0
) -> dict[str, Any]:
    """The datalist a workflow trains on, with absolute paths and every case's files checked (headers only).

    Reads ``datalist_file`` when given (a JSON from ``scripts/prepare_datalist.py``); otherwise makes the folds
    from ``dataset_dir`` in memory, seeded, exactly as the script would. With neither (MONAI Label, which sets
    the dataset's data itself), the BraTS 2018-2021 conventions and no cases: :func:`split_cases` then says that
    a data set must be named.
    """
    if unset_path(datalist_file) and unset_path(dataset_dir):
        return dict(DEFAULT_DATALIST)
    if not unset_path(datalist_file):
        datalist = load_datalist(datalist_file, dataset_dir)
    else:
        datalist = _absolute_paths(make_datalist(dataset_dir, num_folds=num_folds, seed=seed), dataset_dir)
    for case in datalist["training"]:
        check_case_files(case)
    return datalist


def split_cases(datalist: dict[str, Any], fold: int, split: str) -> list[dict[str, Any]]:
    """Cases of ``split``: "train" (fold != ``fold``), "validate" (fold == ``fold``) or "all"."""
    if not datalist["training"]:
        raise ValueError("no cases to use: set dataset_dir (--dataset_dir /path/to/data) or datalist_file.")
    num_folds = datalist["num_folds"]
    if not _is_int(fold) or not 0 <= fold < num_folds:
        raise ValueError(f"fold must be an integer from 0 to {num_folds - 1}, got {fold!r}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    keep = lambda c: split == "all" or (c["fold"] == fold) == (split == "validate")  # noqa: E731
    return [dict(case) for case in datalist["training"] if keep(case)]


def _stored_bytes(path: str, expected: int) -> int:
    """Uncompressed size of ``path``; for gzip, the size trailer is trusted when it matches ``expected``."""
    if not path.endswith(".gz"):
        return os.path.getsize(path)
    with open(path, "rb") as f:
        f.seek(-4, os.SEEK_END)
        if int.from_bytes(f.read(4), "little") == expected % 2**32:
            return expected
    size = 0  # trailer mismatch (truncated, multi-member or padded): count the decompressed bytes
    try:
        with gzip.open(path, "rb") as f:
            while chunk := f.read(1 << 22):
                size += len(chunk)
    except (OSError, EOFError, zlib.error) as exc:
        raise ValueError(f"{path} is a damaged or truncated gzip file: {exc}") from exc
    return size


def _read_header(path: str) -> tuple[tuple[int, ...], np.ndarray]:
    """Shape and affine of the NIfTI file ``path`` from its header, checking that it holds all its voxel bytes."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"file not found: {path}")
    try:
        img = nib.load(path)
    except Exception as exc:
        raise ValueError(f"{path} is not a readable NIfTI file: {exc}") from exc
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise ValueError(f"{path} is not a NIfTI file ({type(img).__name__})")
    proxy = img.dataobj  # the loaded header's copy has vox_offset reset; the array proxy keeps the file's
    shape = tuple(int(n) for n in proxy.shape)
    expected = int(proxy.offset) + int(np.prod(shape)) * np.dtype(proxy.dtype).itemsize
    size = _stored_bytes(path, expected)
    if size < expected:
        raise ValueError(f"{path} is truncated: {size} bytes, expected {expected} for shape {shape}")
    return shape, img.affine


def check_case_files(case: dict[str, Any]) -> None:
    """Check from headers that a case's files exist, are complete NIfTI files of the expected dimensions, and share
    one spatial shape and one affine (within ``AFFINE_TOLERANCE_MM``): co-registered, as the model assumes."""
    image = case["image"]
    if isinstance(image, str):
        files = [(os.fspath(image), 4)]
    elif len(image) == 4:
        files = [(os.fspath(p), 3) for p in image]
    else:
        raise ValueError(f"case {case.get('case_id')}: expected 4 image files (T1, T1ce, T2, FLAIR), got {len(image)}")
    if case.get("label") is not None:
        files.append((os.fspath(case["label"]), 3))
    reference: tuple[str, tuple[int, ...], np.ndarray] | None = None
    for path, ndim in files:
        shape, affine = _read_header(path)
        if len(shape) != ndim or (ndim == 4 and shape[3] != 4):
            wanted = "a 4-D image with 4 channels" if ndim == 4 else "a 3-D volume"
            raise ValueError(f"{path}: expected {wanted}, got shape {shape}")
        if reference is None:
            reference = (path, shape[:3], affine)
            continue
        if shape[:3] != reference[1]:
            raise ValueError(f"{path}: spatial shape {shape[:3]} differs from {reference[1]} of {reference[0]}")
        deviation = float(np.abs(affine - reference[2]).max())
        if deviation > AFFINE_TOLERANCE_MM:
            raise ValueError(
                f"{path}: affine differs from that of {reference[0]} by up to {deviation:.4g} "
                f"(tolerance {AFFINE_TOLERANCE_MM} mm): the files are not on one grid\n{affine}\nvs\n{reference[2]}"
            )
