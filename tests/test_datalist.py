"""Tests of bundle.datalist and scripts/prepare_datalist.py on tiny fake BraTS and MSD data sets."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bundle.datalist import (
    check_case_files,
    detect_layout,
    find_cases,
    load_datalist,
    make_datalist,
    resolve_datalist,
    save_datalist,
    split_cases,
)

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "prepare_datalist.py"
SUFFIXES = {
    "brats2021": ["_t1", "_t1ce", "_t2", "_flair", "_seg"],
    "brats2023": ["-t1n", "-t1c", "-t2w", "-t2f", "-seg"],
}


def _save(path: Path, shape: tuple[int, ...] = (8, 8, 8), seed: int = 0) -> None:
    data = np.random.default_rng(seed).random(shape, dtype=np.float32)  # noise: a cut .nii.gz is really missing data
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(path))


def make_brats(root: Path, layout: str, n: int = 6, sub: str = "", ext: str = ".nii.gz") -> Path:
    prefix = "BraTS2021_" if layout == "brats2021" else "BraTS-GLI-"
    for i in range(n):
        case_id = f"{prefix}{i:05d}"
        folder = root / sub / case_id
        folder.mkdir(parents=True)
        for j, suffix in enumerate(SUFFIXES[layout]):
            _save(folder / f"{case_id}{suffix}{ext}", seed=i * 10 + j)
    (root / "name_mapping.csv").write_text("not a case\n")
    return root


def make_msd(root: Path, n: int = 5, n_test: int = 2) -> Path:
    for folder in ("imagesTr", "labelsTr", "imagesTs"):
        (root / folder).mkdir(parents=True)
    for i in range(n):
        _save(root / "imagesTr" / f"BRATS_{i:03d}.nii.gz", (8, 8, 8, 4), seed=i)
        _save(root / "labelsTr" / f"BRATS_{i:03d}.nii.gz", seed=100 + i)
    for i in range(n, n + n_test):
        _save(root / "imagesTs" / f"BRATS_{i:03d}.nii.gz", (8, 8, 8, 4), seed=i)
    (root / "imagesTr" / "._BRATS_000.nii.gz").write_bytes(b"\x00\x05\x16\x07 AppleDouble junk")
    (root / "labelsTr" / "._BRATS_000.nii.gz").write_bytes(b"\x00\x05\x16\x07 AppleDouble junk")
    (root / "dataset.json").write_text(json.dumps({"name": "BRATS", "numTraining": n}))
    return root


@pytest.fixture
def brats2021(tmp_path: Path) -> Path:
    return make_brats(tmp_path / "brats2021", "brats2021")


@pytest.fixture
def msd(tmp_path: Path) -> Path:
    return make_msd(tmp_path / "Task01_BrainTumour")


def test_detect_layouts(tmp_path: Path) -> None:
    assert detect_layout(make_brats(tmp_path / "a", "brats2021")) == "brats2021"
    assert detect_layout(make_brats(tmp_path / "b", "brats2023")) == "brats2023"
    assert detect_layout(make_brats(tmp_path / "c", "brats2021", sub="TrainingData")) == "brats2021"
    assert detect_layout(make_msd(tmp_path / "d")) == "msd"


def test_detect_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere"):
        detect_layout(tmp_path / "nowhere")
    (tmp_path / "empty" / "x" / "y" / "z").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"no known data set layout in .*empty.*expected"):
        detect_layout(tmp_path / "empty")
    make_brats(tmp_path / "mixed", "brats2021", n=1)
    make_brats(tmp_path / "mixed" / "more", "brats2023", n=1)
    with pytest.raises(ValueError, match="mixes BraTS layouts"):
        detect_layout(tmp_path / "mixed")


@pytest.mark.parametrize("layout", ["brats2021", "brats2023"])
def test_find_cases_brats(tmp_path: Path, layout: str) -> None:
    root = make_brats(tmp_path / "data", layout, sub="TrainingData" if layout == "brats2021" else "")
    found, cases = find_cases(root)
    assert found == layout and len(cases) == 6
    assert [c["case_id"] for c in cases] == sorted(c["case_id"] for c in cases)
    case_id = cases[0]["case_id"]
    folder = f"TrainingData/{case_id}" if layout == "brats2021" else case_id
    *mods, seg = SUFFIXES[layout]
    assert cases[0]["image"] == [f"{folder}/{case_id}{s}.nii.gz" for s in mods]
    assert cases[0]["label"] == f"{folder}/{case_id}{seg}.nii.gz"
    assert all((root / p).is_file() for c in cases for p in [*c["image"], c["label"]])


def test_find_cases_uncompressed_and_unlabelled(tmp_path: Path) -> None:
    root = make_brats(tmp_path / "data", "brats2023", n=3, ext=".nii")
    _, cases = find_cases(root)
    assert cases[1]["image"][0].endswith("-t1n.nii") and cases[1]["label"].endswith("-seg.nii")
    missing = root / cases[1]["case_id"] / f"{cases[1]['case_id']}-seg.nii"
    missing.unlink()
    with pytest.raises(FileNotFoundError, match=cases[1]["case_id"] + "-seg"):
        find_cases(root)
    _, cases = find_cases(root, require_label=False)
    assert len(cases) == 3 and "label" not in cases[1] and "label" in cases[0]


def test_find_cases_missing_modality(brats2021: Path) -> None:
    (brats2021 / "BraTS2021_00003" / "BraTS2021_00003_t1ce.nii.gz").unlink()
    for require_label in (True, False):
        with pytest.raises(FileNotFoundError, match=r"BraTS2021_00003.*BraTS2021_00003_t1ce\.nii"):
            find_cases(brats2021, require_label=require_label)


def test_find_cases_msd(msd: Path) -> None:
    layout, cases = find_cases(msd)
    assert layout == "msd" and [c["case_id"] for c in cases] == [f"BRATS_{i:03d}" for i in range(5)]
    assert cases[0] == {
        "case_id": "BRATS_000",
        "image": "imagesTr/BRATS_000.nii.gz",
        "label": "labelsTr/BRATS_000.nii.gz",
    }
    _, cases = find_cases(msd, require_label=False)
    assert len(cases) == 7 and cases[-1] == {"case_id": "BRATS_006", "image": "imagesTs/BRATS_006.nii.gz"}
    (msd / "labelsTr" / "BRATS_002.nii.gz").unlink()
    with pytest.raises(FileNotFoundError, match=r"BRATS_002.*labelsTr"):
        find_cases(msd)


def test_make_datalist_metadata(brats2021: Path, msd: Path) -> None:
    datalist = make_datalist(msd, num_folds=2)
    assert datalist["layout"] == datalist["label_convention"] == "msd"
    assert datalist["channel_order"] == [1, 2, 3, 0] and datalist["num_folds"] == 2 and datalist["seed"] == 0
    datalist = make_datalist(brats2021, num_folds=3, seed=7)
    assert (datalist["layout"], datalist["label_convention"]) == ("brats2021", "brats2021")
    assert datalist["channel_order"] == [0, 1, 2, 3] and datalist["seed"] == 7
    assert set(datalist["training"][0]) == {"case_id", "image", "label", "fold"}


def test_folds_balanced_and_deterministic(tmp_path: Path) -> None:
    root = make_brats(tmp_path / "data", "brats2023", n=7)
    for k in (2, 3, 4, 7):
        sizes = Counter(c["fold"] for c in make_datalist(root, num_folds=k)["training"])
        assert sorted(sizes) == list(range(k)) and max(sizes.values()) - min(sizes.values()) <= 1
    folds = lambda seed: [c["fold"] for c in make_datalist(root, num_folds=3, seed=seed)["training"]]  # noqa: E731
    assert folds(1) == folds(1)
    assert len({tuple(folds(s)) for s in range(6)}) > 1


@pytest.mark.parametrize("num_folds", [0, 7, "abc", 2.5, True])
def test_bad_num_folds(brats2021: Path, num_folds: object) -> None:
    with pytest.raises(ValueError, match=f"num_folds.*got {num_folds!r}"):
        make_datalist(brats2021, num_folds=num_folds)  # type: ignore[arg-type]


def test_load_datalist_and_split(tmp_path: Path, brats2021: Path) -> None:
    datalist = make_datalist(brats2021, num_folds=3)
    datalist["training"][0]["label"] = str(tmp_path / "elsewhere" / "seg.nii.gz")  # absolute paths are kept
    file = tmp_path / "datalist.json"
    save_datalist(datalist, file)
    loaded = load_datalist(file, os.path.relpath(brats2021))
    first, second = loaded["training"][:2]
    assert first["label"] == str(tmp_path / "elsewhere" / "seg.nii.gz")
    assert all(os.path.isabs(p) and os.path.isfile(p) for p in [*second["image"], second["label"]])
    assert second["image"][3] == str(brats2021 / datalist["training"][1]["image"][3])
    for fold in range(3):
        train, val = split_cases(loaded, fold, "train"), split_cases(loaded, fold, "validate")
        assert val and all(c["fold"] == fold for c in val) and all(c["fold"] != fold for c in train)
        assert sorted(c["case_id"] for c in train + val) == [c["case_id"] for c in loaded["training"]]
    assert split_cases(loaded, 0, "all") == loaded["training"]
    for fold in (3, -1):
        with pytest.raises(ValueError, match=f"got {fold}"):
            split_cases(loaded, fold, "train")
    with pytest.raises(ValueError, match="split"):
        split_cases(loaded, 0, "test")


def test_load_datalist_errors(tmp_path: Path, brats2021: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing.json"):
        load_datalist(tmp_path / "missing.json", brats2021)
    good = make_datalist(brats2021, num_folds=2)
    bad = {
        "empty.json": {**good, "training": []},
        "nokey.json": {k: v for k, v in good.items() if k != "channel_order"},
        "nolabel.json": {**good, "training": [{"case_id": "a", "image": ["a"] * 4, "fold": 0}]},
        "badfold.json": {**good, "training": [{**good["training"][0], "fold": 5}]},
    }
    for name, content in bad.items():
        (tmp_path / name).write_text(json.dumps(content))
        with pytest.raises(ValueError, match=f"{name} is malformed"):
            load_datalist(tmp_path / name, brats2021)
    (tmp_path / "broken.json").write_text('{"training": [')
    with pytest.raises(ValueError, match="broken.json is not valid JSON"):
        load_datalist(tmp_path / "broken.json", brats2021)


def test_check_case_files_ok(tmp_path: Path, brats2021: Path, msd: Path) -> None:
    for root in (brats2021, msd, make_brats(tmp_path / "raw", "brats2023", n=2, ext=".nii")):
        file = tmp_path / f"{root.name}.json"
        save_datalist(make_datalist(root, num_folds=2), file)
        for case in load_datalist(file, root)["training"]:
            check_case_files(case)


def _case(root: Path, case_id: str = "BraTS2021_00001") -> dict:
    files = [str(root / case_id / f"{case_id}{s}.nii.gz") for s in SUFFIXES["brats2021"]]
    return {"case_id": case_id, "image": files[:4], "label": files[4]}


def test_check_case_files_errors(tmp_path: Path, brats2021: Path, msd: Path) -> None:
    case = _case(brats2021)
    os.remove(case["image"][2])
    with pytest.raises(FileNotFoundError, match=r"BraTS2021_00001_t2\.nii\.gz"):
        check_case_files(case)
    _save(Path(case["image"][2]), (8, 8, 7))
    with pytest.raises(ValueError, match=r"_t2\.nii\.gz: spatial shape \(8, 8, 7\) differs from \(8, 8, 8\)"):
        check_case_files(case)
    _save(Path(case["image"][2]))
    check_case_files(case)
    for keep in (0.6, 0.02):  # cut in the voxel data (header still readable), or in the header
        data = Path(case["label"]).read_bytes()
        Path(case["label"]).write_bytes(data[: int(len(data) * keep)])
        with pytest.raises(ValueError, match=r"BraTS2021_00001_seg\.nii\.gz"):
            check_case_files(case)
        _save(Path(case["label"]))
    raw = tmp_path / "raw.nii"
    _save(raw)
    raw.write_bytes(raw.read_bytes()[:-10])
    with pytest.raises(ValueError, match=r"raw\.nii is truncated"):
        check_case_files({"case_id": "x", "image": [str(raw)] * 4})
    Path(case["image"][0]).write_text("not a nifti file")
    with pytest.raises(ValueError, match=r"_t1\.nii\.gz is not a readable NIfTI"):
        check_case_files(case)
    image, label = msd / "imagesTr" / "BRATS_001.nii.gz", msd / "labelsTr" / "BRATS_001.nii.gz"
    check_case_files({"case_id": "BRATS_001", "image": str(image), "label": str(label)})
    _save(label, (8, 8, 8, 1))
    with pytest.raises(ValueError, match=r"BRATS_001\.nii\.gz: expected a 3-D volume"):
        check_case_files({"case_id": "BRATS_001", "image": str(image), "label": str(label)})
    with pytest.raises(ValueError, match="expected a 4-D image with 4 channels"):
        check_case_files({"case_id": "BRATS_001", "image": str(label)})


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_cli(tmp_path: Path, msd: Path) -> None:
    out = tmp_path / "out" / "datalist.json"
    result = _cli("--dataset-dir", str(msd), "--output", str(out), "--num-folds", "2", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "msd" in result.stdout and "cases: 5" in result.stdout and "0: 3, 1: 2" in result.stdout
    written = json.loads(out.read_text())
    assert written == make_datalist(msd, num_folds=2) and not [p for p in out.parent.iterdir() if p != out]
    out.write_text("keep me")
    result = _cli("--dataset-dir", str(msd), "--output", str(out), cwd=tmp_path)
    assert result.returncode == 1 and str(out) in result.stderr and "Traceback" not in result.stderr
    assert out.read_text() == "keep me"
    result = _cli("--dataset-dir", str(msd), "--output", str(out), "--overwrite", "--num-folds", "9", cwd=tmp_path)
    assert result.returncode == 1 and "num_folds" in result.stderr and "9" in result.stderr
    assert out.read_text() == "keep me"
    result = _cli("--dataset-dir", str(msd), "--output", str(out), "--overwrite", cwd=tmp_path)
    assert result.returncode == 0 and json.loads(out.read_text())["num_folds"] == 5
    result = _cli("--dataset-dir", str(tmp_path / "no_such_data"), "--output", str(tmp_path / "x.json"), cwd=tmp_path)
    assert result.returncode == 1 and "no_such_data" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "x.json").exists()


@pytest.mark.parametrize(("layout", "convention"), [("brats2021", "brats2021"), ("brats2023", "brats2023")])
def test_cli_on_brats_layouts(tmp_path: Path, layout: str, convention: str) -> None:
    data = make_brats(tmp_path / layout, layout, n=6)
    out = tmp_path / "datalist.json"
    result = _cli("--dataset-dir", str(data), "--output", str(out), "--num-folds", "3", "--seed", "1", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert layout in result.stdout and "cases: 6" in result.stdout
    written = json.loads(out.read_text())
    assert written == make_datalist(data, num_folds=3, seed=1)
    assert written["label_convention"] == convention
    assert sorted(c["fold"] for c in written["training"]) == [0, 0, 1, 1, 2, 2]


def test_single_fold_holds_every_case(brats2021: Path) -> None:
    datalist = make_datalist(brats2021, num_folds=1)
    assert {c["fold"] for c in datalist["training"]} == {0}
    assert len(split_cases(datalist, 0, "all")) == len(datalist["training"])


def test_modality_files_expands_a_study_given_by_one_file(brats2021: Path, tmp_path: Path) -> None:
    from bundle.datalist import modality_files

    layout, cases = find_cases(brats2021)
    case = cases[0]
    flair = str(brats2021 / case["image"][3])
    assert modality_files(flair) == [str(brats2021 / p) for p in case["image"]]
    four_d = tmp_path / "study.nii.gz"
    assert modality_files(str(four_d)) == str(four_d)  # a 4-D file stays as it is
    os.remove(brats2021 / case["image"][1])
    with pytest.raises(FileNotFoundError, match="_t1ce.nii.gz"):
        modality_files(flair)


@pytest.mark.parametrize("unset", [None, "null", "None", ""])
def test_unset_paths_as_the_command_line_gives_them(unset: str | None, brats2021: Path) -> None:
    """``--dataset_dir null --datalist_file null`` arrive as the text 'null': no data set (MONAI Label's case)."""
    empty = resolve_datalist(unset, unset)
    assert empty["training"] == [] and empty["label_convention"] == "brats2021"
    with pytest.raises(ValueError, match="no cases to use: set dataset_dir"):
        split_cases(empty, 0, "train")
    found = resolve_datalist(unset, brats2021, num_folds=2)
    assert [c["case_id"] for c in found["training"]] == [c["case_id"] for c in make_datalist(brats2021, 2)["training"]]
