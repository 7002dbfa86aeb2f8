"""Tests of the synthetic BraTS-layout demo data (bundle/demo_data.py, scripts/make_demo_data.py), at 4 mm for speed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage as ndi

from bundle import demo_data
from bundle.demo_data import MODALITIES, make_case, make_dataset, output_grid

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "make_demo_data.py"
KEYS = (*MODALITIES, "seg")
SPACING = 4.0
N_CASES = 3


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    out = tmp_path_factory.mktemp("demo") / "data"
    return out, make_dataset(out, N_CASES, seed=0, spacing=SPACING, quiet=True)


@pytest.fixture(scope="module")
def cases(dataset: tuple[Path, list[str]]) -> list[dict[str, np.ndarray]]:
    """The written cases, read back: arrays per key plus the images themselves under ``img_<key>``."""
    out, ids = dataset
    loaded = []
    for cid in ids:
        imgs = {k: nib.load(out / cid / f"{cid}_{k}.nii.gz") for k in KEYS}
        arrays = {k: np.asarray(img.dataobj) for k, img in imgs.items()}
        loaded.append({**arrays, **{f"img_{k}": v for k, v in imgs.items()}})
    return loaded


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "CI": "true"},
        timeout=120,
    )


def test_layout(dataset: tuple[Path, list[str]]) -> None:
    out, ids = dataset
    assert ids == [f"DEMO_{i:05d}" for i in range(N_CASES)]
    assert sorted(p.name for p in out.iterdir()) == ids
    for cid in ids:
        assert sorted(p.name for p in (out / cid).iterdir()) == sorted(f"{cid}_{k}.nii.gz" for k in KEYS)
    assert [p.name for p in out.parent.iterdir()] == ["data"]  # no temporary directories left behind


def test_grid(cases: list[dict]) -> None:
    assert output_grid(1.0)[0] == (240, 240, 155) and output_grid(2.0)[0] == (120, 120, 78)
    for case in cases:
        imgs = [case[f"img_{k}"] for k in KEYS]
        for img in imgs:
            assert img.shape == (60, 60, 39)
            np.testing.assert_allclose(img.affine, imgs[0].affine)
            np.testing.assert_allclose(img.header.get_zooms(), (SPACING,) * 3)
        assert nib.aff2axcodes(imgs[0].affine) == ("L", "P", "S")  # like BraTS: not RAS, readers must reorient
        assert all(case[k].dtype == np.int16 for k in MODALITIES) and case["seg"].dtype == np.uint8


def test_labels(cases: list[dict]) -> None:
    for case in cases:
        values = set(np.unique(case["seg"]).tolist())
        assert values <= {0, 1, 2, 4} and {2, 4} <= values


def test_images_skull_stripped_and_tumour_inside_brain(cases: list[dict]) -> None:
    for case in cases:
        brain = np.stack([case[k] for k in MODALITIES]).max(0) > 0
        assert all(((case[k] > 0) == brain).mean() > 0.99 for k in MODALITIES)  # all modalities share the mask
        assert 0 < case["t1"].max() <= 2000 and case["t1"].min() >= 0
        assert not (case["seg"] > 0)[~brain].any()
        assert ndi.binary_erosion(brain)[tuple(np.argwhere(case["seg"] > 0).mean(0).round().astype(int))]


@pytest.mark.parametrize(("anatomy", "shifted"), [("mni152", False), ("sri24", True)])
def test_anatomy_is_the_right_way_round(anatomy: str, shifted: bool) -> None:
    mni = demo_data._anatomy(anatomy)
    com_mni = nib.affines.apply_affine(mni["affine"], np.argwhere(mni["mask"] > 0.5).mean(0))
    case = make_case(0, seed=0, spacing=SPACING, shifted=shifted)
    t1, affine = case["t1"].astype(float), case["affine"]
    com = nib.affines.apply_affine(affine, np.argwhere(t1 > 0).mean(0))
    assert np.abs(com - com_mni).max() < 3.0, (com, com_mni)
    # the atlas T1 resampled without deformation matches; flipped along y or z it does not (the template is L-R
    # symmetric)
    ijk = np.indices(t1.shape).reshape(3, -1).T
    vox = nib.affines.apply_affine(np.linalg.inv(mni["affine"]) @ affine, ijk).T
    ref = ndi.map_coordinates(mni["t1"], vox, order=1).reshape(t1.shape)
    corr = [np.corrcoef(t1.ravel(), r.ravel())[0, 1] for r in (ref, ref[:, ::-1], ref[:, :, ::-1])]
    assert corr[0] > 0.8 and corr[0] > max(corr[1:]) + 0.05, corr


def test_contrasts(cases: list[dict]) -> None:
    for case in cases:
        seg, brain = case["seg"], case["t1"] > 0
        normal = brain & (ndi.binary_dilation(seg > 0, iterations=2) == 0)
        wm = normal & (case["t1"] > np.median(case["t1"][normal]))  # bright on T1: mostly white matter
        regions = (("wm", wm), ("ed", seg == 2), ("et", seg == 4))
        mean = {k: {r: case[k][m].mean() for r, m in regions} for k in MODALITIES}
        # drawn as ratios of at least 1.3, 1.4 and 1.15 to WM (APPEARANCES["standard"]); this rough WM mask and the
        # 4 mm partial volume measure them lower (seen here: 1.2, 1.23, 1.29 at the least over 12 cases)
        assert mean["flair"]["ed"] > 1.1 * mean["flair"]["wm"]
        assert mean["t2"]["ed"] > 1.1 * mean["t2"]["wm"]
        assert mean["t1ce"]["et"] > 1.1 * mean["t1ce"]["wm"]
        assert mean["t1ce"]["et"] > 1.4 * mean["t1"]["et"] * mean["t1ce"]["wm"] / mean["t1"]["wm"]  # it enhances
        assert mean["t1"]["ed"] < mean["t1"]["wm"]
        if (seg == 1).sum() >= 5:
            assert case["t1ce"][seg == 1].mean() < mean["t1ce"]["et"]


def test_deterministic(cases: list[dict]) -> None:
    a, b = make_case(1, seed=0, spacing=SPACING), make_case(1, seed=0, spacing=SPACING)
    for k in KEYS:
        assert np.array_equal(a[k], b[k])
        assert np.array_equal(a[k], cases[1][k])  # case k does not depend on the data-set size or the worker pool
    np.testing.assert_array_equal(a["affine"], cases[1]["img_t1"].affine)
    c = make_case(1, seed=1, spacing=SPACING)
    assert not np.array_equal(a["seg"], c["seg"]) and not np.array_equal(a["t1"], c["t1"])


def test_cases_differ(cases: list[dict]) -> None:
    for i in range(N_CASES):
        for j in range(i):
            assert not np.array_equal(cases[i]["seg"], cases[j]["seg"])
            assert not np.array_equal(cases[i]["flair"], cases[j]["flair"])
    sizes = [(c["seg"] > 0).sum() for c in cases]
    assert len(set(sizes)) == N_CASES


def test_refuses_non_empty_dir_then_overwrites(tmp_path: Path) -> None:
    out = tmp_path / "data"
    out.mkdir()
    (out / "keep.txt").write_text("user data")
    with pytest.raises(FileExistsError, match=str(out)):
        make_dataset(out, 1, seed=0, spacing=SPACING, quiet=True)
    assert (out / "keep.txt").read_text() == "user data"
    result = run_cli("--output-dir", str(out), "--num-cases", "1", "--seed", "0", "--spacing", "4")
    assert result.returncode == 1 and str(out) in result.stderr and "Traceback" not in result.stderr
    assert (out / "keep.txt").exists()
    result = run_cli("--output-dir", str(out), "--num-cases", "1", "--seed", "0", "--spacing", "4", "--overwrite")
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["DEMO_00000"]
    assert [p.name for p in tmp_path.iterdir()] == ["data"]


def test_empty_existing_dir_is_fine(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    assert make_dataset(tmp_path / "data", 1, seed=3, spacing=SPACING, quiet=True) == ["DEMO_00000"]


def test_failure_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: object, **kwargs: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(demo_data, "make_case", boom)
    with pytest.raises(RuntimeError, match="boom"):
        make_dataset(tmp_path / "data", 1, seed=0, spacing=SPACING, quiet=True)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("flag", "value"), [("--num-cases", "0"), ("--spacing", "-2"), ("--spacing", "0"), ("--num-cases", "abc")]
)
def test_cli_bad_arguments(tmp_path: Path, flag: str, value: str) -> None:
    args = {"--output-dir": str(tmp_path / "data"), "--num-cases": "1", "--seed": "0", "--spacing": "4", flag: value}
    result = run_cli(*(f"{k}={v}" for k, v in args.items()))
    assert result.returncode == 1
    assert value in result.stderr and "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize(
    "kwargs", [{"num_cases": 0}, {"num_cases": 2.5}, {"spacing": 0.0}, {"spacing": -1.0}, {"seed": -1}]
)
def test_api_bad_arguments(tmp_path: Path, kwargs: dict) -> None:
    args = {"num_cases": 1, "seed": 0, "spacing": SPACING, **kwargs}
    with pytest.raises(ValueError, match=str(next(iter(kwargs.values())))):
        make_dataset(tmp_path / "data", **args)
    assert not (tmp_path / "data").exists()
