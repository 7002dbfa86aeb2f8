"""BraTS-grade inference (configs/inference.yaml, bundle/inference.py) on tiny volumes with a random tiny generator.

Geometry round trips (LPS, LAS, anisotropic with odd sizes, MSD 4-D), ensemble and flip TTA against a manual
average, the small-ET post-processing rule, checkpoints, atomic writes, and a batch with bad cases.
"""

from __future__ import annotations

import gzip
import itertools
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigWorkflow
from monai.data import MetaTensor
from monai.inferers import SlidingWindowInferer

from bundle.inference import (
    EnsembleInferer,
    RelabelSmallETd,
    checkpoint_paths,
    inference_cases,
    load_generator_weights,
    save_labels_on_input_grid,
)
from bundle.networks import Vox2VoxGenerator
from helpers import error_text

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
MODALITIES = ("t1", "t1ce", "t2", "flair")
FEATURES = 4  # a tiny generator: inference takes seconds on a CPU
PATCH = [32, 32, 32]
# a tiny model and patch, no worker processes: the code paths are a user's
TINY = ["--features", str(FEATURES), "--patch_size", str(PATCH).replace(" ", ""), "--num_workers", "0"]
HEADER_GEOMETRY = ("dim", "pixdim", "qform_code", "sform_code", "quatern_b", "quatern_c", "quatern_d", "qoffset_x",
                   "qoffset_y", "qoffset_z", "srow_x", "srow_y", "srow_z", "xyzt_units")  # fmt: skip


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """Tiny networks gain nothing from threads, and on a shared, loaded CPU two threads wait on each other (10x
    slower measured): one thread, here and in the bundle runs (``OMP_NUM_THREADS``)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def affine_of(spacing: tuple[float, float, float], signs: tuple[int, int, int]) -> np.ndarray:
    """An axis-aligned affine: ``signs`` (-1, -1, 1) is LPS, (-1, 1, 1) LAS, (1, 1, 1) RAS."""
    affine = np.diag([s * d for s, d in zip(signs, spacing)] + [1.0])
    affine[:3, 3] = [-91.5, 120.25, -70.0]
    return affine


def brain_like(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """int16 volume: noisy ellipsoid 'brain' with a bright blob, zero outside (so the foreground crop has work)."""
    grid = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    centre = (0.3, -0.2, 0.1)  # off-centre in every axis: a flipped output would not fit its bounding box
    inside = sum((g - c) ** 2 for g, c in zip(grid, centre)) < 0.4
    blob = sum((g - c - 0.15) ** 2 for g, c in zip(grid, centre)) < 0.04
    data = inside * (400 + 60 * rng.standard_normal(shape)) + blob * 500
    return np.clip(data, 0, None).astype(np.int16)


def write_brats_case(root: Path, case_id: str, shape: tuple[int, int, int], affine: np.ndarray, seed: int,
                     qform_code: int = 1, sform_code: int = 1) -> Path:  # fmt: skip
    """A BraTS 2018-2021 case folder (four modality files, no label) on the given grid and header codes."""
    rng = np.random.default_rng(seed)
    folder = root / case_id
    folder.mkdir(parents=True)
    for modality in MODALITIES:
        img = nib.Nifti1Image(brain_like(shape, rng), affine)
        img.header.set_qform(affine, code=qform_code)
        img.header.set_sform(affine, code=sform_code)
        nib.save(img, folder / f"{case_id}_{modality}.nii.gz")
    return folder


def save_generator(path: Path, seed: int, features: int = FEATURES, wrap: bool = False) -> dict[str, torch.Tensor]:
    """A generator with random weights saved as a state dict (or ``{"model": state_dict}``); returns its weights."""
    torch.manual_seed(seed)
    state = Vox2VoxGenerator(features=features).state_dict()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": state} if wrap else state, path)
    return state


def bundle_inference(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "monai.bundle", "run", "inference", "--config_file", str(CONFIGS / "inference.yaml"),
           "--meta_file", str(CONFIGS / "metadata.json"), "--logging_file", str(CONFIGS / "logging.conf"),
           *TINY, *args]  # fmt: skip
    env = {**os.environ, "CI": "true", "OMP_NUM_THREADS": "1"}  # one thread: see one_thread
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)


def assert_same_grid(pred_path: Path, input_path: Path) -> None:
    """The prediction has the input file's shape, affine and header geometry, as nibabel reads them."""
    pred, ref = nib.load(pred_path), nib.load(input_path)
    assert pred.shape == ref.shape[:3]
    np.testing.assert_array_equal(pred.affine, ref.affine)
    for field in HEADER_GEOMETRY:
        expected = ref.header[field] if field != "dim" else ref.header["dim"].copy()
        if field == "dim":
            expected[0], expected[4:] = 3, 1  # a 3-D label map of a (possibly 4-D) image
        np.testing.assert_array_equal(pred.header[field], expected, err_msg=f"{pred_path}: header field {field}")
    assert pred.get_data_dtype() == np.uint8


def config_workflow(tmp_path: Path, **overrides) -> ConfigWorkflow:
    workflow = ConfigWorkflow(
        config_file=str(CONFIGS / "inference.yaml"), meta_file=str(CONFIGS / "metadata.json"),
        logging_file=str(CONFIGS / "logging.conf"), workflow_type="infer", bundle_root=str(tmp_path / "bundle"),
        **{"features": FEATURES, "patch_size": PATCH, "num_workers": 0, **overrides},
    )  # fmt: skip
    workflow.initialize()
    return workflow


# ---- geometry ---------------------------------------------------------------------------------------------------


def oblique_affine() -> np.ndarray:
    """Anisotropic (1, 1.3, 2) mm voxels, LPS-like axes rotated 10 degrees about z."""
    angle = np.deg2rad(10.0)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([-1.0, -1.3, 2.0])
    affine[:3, 3] = [5.0, -7.0, 3.0]
    return affine


def sagittal_affine() -> np.ndarray:
    """A sagittal acquisition, PIR: voxel axes run posterior, inferior and right; 1.2 mm slices."""
    affine = np.zeros((4, 4))
    affine[1, 0], affine[2, 1], affine[0, 2], affine[3, 3] = -1.0, -1.0, 1.2, 1.0
    affine[:3, 3] = [10.0, 20.0, 30.0]
    return affine


# case id: (shape, affine, qform code, sform code); odd sizes, none a multiple of 16
GEOMETRIES = {
    "LPS_1mm": ((36, 40, 34), affine_of((1.0, 1.0, 1.0), (-1, -1, 1)), 1, 1),
    "LAS_odd": ((35, 37, 33), affine_of((1.0, 1.0, 1.0), (-1, 1, 1)), 1, 2),
    "LPS_anisotropic": ((39, 29, 13), affine_of((0.9, 1.2, 2.5), (-1, -1, 1)), 1, 0),  # no sform: qform rules
    "oblique": ((31, 27, 15), oblique_affine(), 2, 1),
    "PIR_sagittal": ((29, 33, 21), sagittal_affine(), 1, 1),
}


def test_inference_keeps_the_input_grid(user_run: tuple[Path, Path, subprocess.CompletedProcess]) -> None:
    """LPS, LAS, anisotropic, oblique and sagittal inputs of odd sizes: each prediction has its T1 file's shape,
    affine and header geometry (pixdim, qform/sform and their codes), BraTS 2021 label values, and its labels in
    the place of the (off-centre) brain: a flip or shift on the way back would move them out of its bounding box."""
    data, out, _ = user_run
    for case_id in GEOMETRIES:
        t1 = data / case_id / f"{case_id}_t1.nii.gz"
        assert_same_grid(out / f"{case_id}.nii.gz", t1)
        labels = np.asarray(nib.load(out / f"{case_id}.nii.gz").dataobj)
        assert set(np.unique(labels).tolist()) <= {0, 1, 2, 4}
        brain, tumour = np.argwhere(np.asarray(nib.load(t1).dataobj) > 0), np.argwhere(labels > 0)
        assert len(tumour), f"{case_id}: all background"  # random weights still predict every class somewhere
        np.testing.assert_allclose(tumour.min(0), brain.min(0), atol=1, err_msg=f"{case_id}: labels off the brain")
        np.testing.assert_allclose(tumour.max(0), brain.max(0), atol=1, err_msg=f"{case_id}: labels off the brain")


def test_msd_4d_input_with_ensemble_tta_and_postprocessing(tmp_path: Path) -> None:
    """An MSD 4-D file (anisotropic, LAS) with every option on: the output is 3-D on the 4-D file's grid, in MSD
    label values."""
    data = tmp_path / "msd"
    (data / "imagesTs").mkdir(parents=True)
    (data / "dataset.json").write_text("{}")
    rng = np.random.default_rng(5)
    affine = affine_of((1.1, 0.9, 1.6), (-1, 1, 1))
    image = np.stack([brain_like((27, 31, 17), rng) for _ in MODALITIES], axis=-1)
    img = nib.Nifti1Image(image, affine)
    img.header.set_qform(affine, code=1)
    img.header.set_sform(affine, code=1)
    nib.save(img, data / "imagesTs" / "BRATS_900.nii.gz")
    ckpts = [tmp_path / "fold0.pt", tmp_path / "fold1.pt"]
    save_generator(ckpts[0], seed=1)
    save_generator(ckpts[1], seed=2, wrap=True)
    out = tmp_path / "pred"
    workflow = config_workflow(tmp_path, dataset_dir=str(data), output_dir=str(out), tta=True,
                               ckpt_paths=[str(p) for p in ckpts], postprocess_small_et=True)  # fmt: skip
    assert len(workflow.inferer.networks) == 2 and len(workflow.inferer.flips) == 8
    workflow.run()
    assert [p.name for p in out.iterdir()] == ["BRATS_900.nii.gz"]
    assert_same_grid(out / "BRATS_900.nii.gz", data / "imagesTs" / "BRATS_900.nii.gz")
    assert set(np.unique(np.asarray(nib.load(out / "BRATS_900.nii.gz").dataobj)).tolist()) <= {0, 1, 2, 3}


# ---- ensemble and test-time augmentation ------------------------------------------------------------------------


def test_ensemble_and_tta_average_probabilities_by_hand(tmp_path: Path) -> None:
    """The configured inferer with two checkpoints and TTA equals the mean, computed here, over both generators
    and the 8 flips of the three spatial axes of a Gaussian sliding window on the flipped input, flipped back."""
    ckpts = [tmp_path / "a.pt", tmp_path / "b.pt"]
    states = [save_generator(ckpts[0], seed=3), save_generator(ckpts[1], seed=4, wrap=True)]
    workflow = config_workflow(tmp_path, ckpt_paths=[str(p) for p in ckpts], tta=True, sw_overlap=0.25)
    inferer = workflow.inferer
    assert isinstance(inferer, EnsembleInferer) and len(inferer.flips) == 8 and len(inferer.networks) == 2
    for net, state in zip(inferer.networks, states):
        assert all(torch.equal(net.state_dict()[k], v) for k, v in state.items())

    nets = []
    for state in states:
        net = Vox2VoxGenerator(features=FEATURES)
        net.load_state_dict(state)
        nets.append(net.eval())
    window = SlidingWindowInferer(roi_size=PATCH, sw_batch_size=4, overlap=0.25, mode="gaussian")
    x = torch.randn(1, 4, 41, 30, 32, generator=torch.Generator().manual_seed(0))  # 2 blended windows, 1 padded axis
    expected = torch.zeros(1, 4, 41, 30, 32)
    with torch.no_grad():
        for net in nets:
            for r in range(4):
                for axes in itertools.combinations((2, 3, 4), r):
                    flip = (lambda t: torch.flip(t, axes)) if axes else (lambda t: t)  # noqa: E731
                    expected += flip(window(flip(x), net))
        expected /= 16
        got = inferer(x, workflow.parser.get_parsed_content("network"))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(expected, window(x, nets[0]))  # the average differs from one plain pass


def test_single_checkpoint_runs_the_given_network_once(tmp_path: Path) -> None:
    """The default (one checkpoint, no TTA) loads nothing itself and runs the network the evaluator or MONAI Label
    passes, unchanged: exactly the plain sliding window."""
    workflow = config_workflow(tmp_path)  # no models/model.pt: nothing may be read while parsing
    inferer = workflow.inferer
    assert inferer.networks == [] and inferer.flips == [()]
    net = Vox2VoxGenerator(features=FEATURES).eval()
    x = torch.randn(1, 4, 32, 32, 32)
    with torch.no_grad():
        expected = inferer.inferer(x, net)
    torch.testing.assert_close(inferer(x, net), expected, rtol=0, atol=0)


def test_without_a_data_set_the_run_says_so(tmp_path: Path) -> None:
    """``dataset_dir`` is null by default (MONAI Label passes its images itself): a run without one stops clearly."""
    save_generator(tmp_path / "bundle" / "models" / "model.pt", seed=0)
    with pytest.raises(SystemExit, match="no cases to segment: set dataset_dir"):
        config_workflow(tmp_path).run()


# ---- post-processing ------------------------------------------------------------------------------------------


def class_map_with_et(et_voxels: int) -> MetaTensor:
    classes = torch.zeros(1, 20, 20, 20)
    classes[0, :10] = 2  # oedema
    classes.view(-1)[:et_voxels] = 3
    return MetaTensor(classes, meta={"filename_or_obj": "case_t1.nii.gz"})


@pytest.mark.parametrize(("et_voxels", "enabled", "expect_et"), [(499, True, 0), (500, True, 500), (499, False, 499)])
def test_small_et_is_relabelled_necrotic_core(et_voxels: int, enabled: bool, expect_et: int) -> None:
    classes = class_map_with_et(et_voxels)
    out = RelabelSmallETd("pred", min_voxels=500, enabled=enabled)({"pred": classes})["pred"]
    assert int((out == 3).sum()) == expect_et
    assert int((out == 1).sum()) == et_voxels - expect_et  # ET became NCR, nothing else changed
    assert int((out == 2).sum()) == int((classes == 2).sum()) and isinstance(out, MetaTensor)


def test_small_et_rule_is_configured_from_settings(tmp_path: Path) -> None:
    data = tmp_path / "data"  # the postprocessing writes the data set's label values: it needs a data set
    write_brats_case(data, "case", (8, 8, 8), affine_of((1.0, 1.0, 1.0), (-1, -1, 1)), seed=0)

    def rule(workflow: ConfigWorkflow) -> RelabelSmallETd:
        transforms = workflow.parser.get_parsed_content("postprocessing").transforms
        (found,) = [t for t in transforms if isinstance(t, RelabelSmallETd)]
        return found

    assert not rule(config_workflow(tmp_path, dataset_dir=str(data))).enabled  # off by default
    on = rule(config_workflow(tmp_path, dataset_dir=str(data), postprocess_small_et="true"))  # as fire gives it
    assert on.enabled and on.min_voxels == 500
    lower = rule(config_workflow(tmp_path, dataset_dir=str(data), postprocess_small_et=True, et_min_voxels=50))
    assert lower.min_voxels == 50
    with pytest.raises(Exception, match="et_min_voxels"):
        RelabelSmallETd("pred", min_voxels=-1)


def test_cases_from_a_datalist_without_labels_or_folds(tmp_path: Path) -> None:
    data = tmp_path / "data"
    for case_id in ("a", "b"):
        write_brats_case(data, case_id, (8, 8, 8), affine_of((1.0, 1.0, 1.0), (-1, -1, 1)), seed=0)
    datalist = {"label_convention": "brats2021", "channel_order": [0, 1, 2, 3],
                "training": [{"image": [f"b/b_{m}.nii.gz" for m in MODALITIES]}]}  # fmt: skip
    (tmp_path / "datalist.json").write_text(json.dumps(datalist))
    found = inference_cases(data, tmp_path / "datalist.json")
    assert [c["case_id"] for c in found["training"]] == ["b"]
    assert found["training"][0]["image"][0] == str(data / "b" / "b_t1.nii.gz")
    # `--datalist_file null` on the command line is the text 'null': every case of the folder
    assert [c["case_id"] for c in inference_cases(data, "null")["training"]] == ["a", "b"]
    assert inference_cases("null", "null")["training"] == []  # neither: MONAI Label passes its images itself
    with pytest.raises(ValueError, match="needs dataset_dir"):
        inference_cases("null", tmp_path / "datalist.json")
    datalist["training"] = [{"label": "b/b_seg.nii.gz"}]
    (tmp_path / "datalist.json").write_text(json.dumps(datalist))
    malformed = r"datalist\.json is malformed: training item 0 must be an object with 'image'$"
    with pytest.raises(ValueError, match=malformed):
        inference_cases(data, tmp_path / "datalist.json")


@pytest.mark.parametrize(("tta", "passes"), [("false", 1), ("true", 8), ("False", 1), (True, 8), (0, 1)])
def test_tta_is_read_as_the_command_line_gives_it(tta: object, passes: int, tmp_path: Path) -> None:
    # `--tta false` reaches the config as the text 'false', which Python takes for true
    inferer = config_workflow(tmp_path, tta=tta).parser.get_parsed_content("inferer")
    assert len(inferer.flips) == passes


def test_a_yes_no_setting_of_another_value_names_it(tmp_path: Path) -> None:
    with pytest.raises(Exception) as error:
        config_workflow(tmp_path, tta="yes please").parser.get_parsed_content("inferer")
    assert "tta must be true or false, got 'yes please'" in error_text(error.value)


# ---- checkpoints and writing -----------------------------------------------------------------------------------


def test_checkpoints_are_weights_only_and_must_fit(tmp_path: Path) -> None:
    net = Vox2VoxGenerator(features=FEATURES)
    state = save_generator(tmp_path / "wrapped.pt", seed=5, wrap=True)  # {"model": state_dict} is accepted
    load_generator_weights(net, tmp_path / "wrapped.pt")
    assert torch.equal(net.state_dict()["output.conv.weight"], state["output.conv.weight"])
    save_generator(tmp_path / "wide.pt", seed=5, features=8)
    with pytest.raises(RuntimeError, match="size mismatch for encoder.0.conv.weight") as error:
        load_generator_weights(net, tmp_path / "wide.pt")
    assert f"checkpoint {tmp_path / 'wide.pt'} does not fit the network" in str(error.value)
    torch.save({"model": net}, tmp_path / "pickled.pt")  # a whole pickled module: not loadable as weights only
    with pytest.raises(ValueError, match=f"checkpoint {tmp_path / 'pickled.pt'} cannot be read as weights only"):
        load_generator_weights(net, tmp_path / "pickled.pt")
    with pytest.raises(FileNotFoundError, match="missing.pt does not exist"):
        load_generator_weights(net, tmp_path / "missing.pt")
    with pytest.raises(ValueError, match="more than once"):
        checkpoint_paths(["a.pt", "a.pt"])
    with pytest.raises(ValueError, match="non-empty list"):
        checkpoint_paths([])


def test_output_is_written_atomically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A write that fails half-way leaves neither the output nor a temporary file."""
    affine = affine_of((1.0, 1.0, 1.0), (-1, -1, 1))
    nib.save(nib.Nifti1Image(np.zeros((4, 5, 6), np.int16), affine), tmp_path / "ref.nii.gz")
    out = tmp_path / "out" / "case.nii.gz"

    def crash(image: nib.Nifti1Image, filename: str) -> None:
        Path(filename).write_bytes(gzip.compress(b"half a file")[:10])
        raise OSError("disk full")

    monkeypatch.setattr(nib, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        save_labels_on_input_grid(np.ones((4, 5, 6)), tmp_path / "ref.nii.gz", out, affine=affine)
    assert list((tmp_path / "out").iterdir()) == []
    monkeypatch.undo()
    with pytest.raises(ValueError, match="prediction shape"):
        save_labels_on_input_grid(np.ones((4, 5, 7)), tmp_path / "ref.nii.gz", out)
    with pytest.raises(ValueError, match="affine differs"):
        save_labels_on_input_grid(np.ones((4, 5, 6)), tmp_path / "ref.nii.gz", out, affine=np.eye(4))
    save_labels_on_input_grid(np.ones((4, 5, 6)), tmp_path / "ref.nii.gz", out, affine=affine)
    assert sorted(p.name for p in out.parent.iterdir()) == ["case.nii.gz"]


# ---- a batch with bad cases -------------------------------------------------------------------------------------


def corrupt_gzip_body(path: Path) -> None:
    """Damages the compressed voxel data but keeps the gzip header and size trailer: the header check passes, the
    case fails only when its voxels are read."""
    raw = bytearray(path.read_bytes())
    middle = len(raw) // 2
    raw[middle : middle + 64] = bytes(64)
    path.write_bytes(bytes(raw))


BAD_CASES = {  # case id: the file named in its error
    "B_missing": "B_missing_t2.nii.gz",  # a modality file missing
    "C_truncated": "C_truncated_flair.nii.gz",  # cut short: fails the header check
    "D_damaged": "D_damaged_t1ce.nii.gz",  # damaged voxel data behind a sound header: fails while loading
    "E_nan": "E_nan_t2.nii.gz",  # a NaN voxel: fails the voxel check after loading
    "F_unwritable": "F_unwritable.nii.gz",  # a folder in the way of its output: fails when written, after inference
}


@pytest.fixture(scope="module")
def user_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, subprocess.CompletedProcess]:
    """One ``monai.bundle run inference`` over a BraTS 2021 folder holding the cases of ``GEOMETRIES`` and the bad
    cases of ``BAD_CASES`` (one run: starting the bundle takes most of the time); returns data, output and result."""
    tmp = tmp_path_factory.mktemp("user_run")
    data = tmp / "data"
    for seed, (case_id, (shape, affine, qcode, scode)) in enumerate(GEOMETRIES.items()):
        write_brats_case(data, case_id, shape, affine, seed, qform_code=qcode, sform_code=scode)
    affine = affine_of((1.0, 1.0, 1.0), (-1, -1, 1))
    for seed, case_id in enumerate(BAD_CASES):
        write_brats_case(data, case_id, (24, 26, 22), affine, seed)
    (data / "B_missing" / "B_missing_t2.nii.gz").unlink()
    flair = data / "C_truncated" / "C_truncated_flair.nii.gz"
    flair.write_bytes(flair.read_bytes()[:900])
    corrupt_gzip_body(data / "D_damaged" / "D_damaged_t1ce.nii.gz")
    nan = data / "E_nan" / "E_nan_t2.nii.gz"
    values = np.asarray(nib.load(nan).dataobj).astype(np.float32)
    values[3, 4, 5] = np.nan
    nib.save(nib.Nifti1Image(values, affine), nan)
    save_generator(tmp / "bundle" / "models" / "model.pt", seed=0)
    out = tmp / "pred"
    (out / "F_unwritable.nii.gz").mkdir(parents=True)
    result = bundle_inference("--dataset_dir", str(data), "--bundle_root", str(tmp / "bundle"),
                              "--output_dir", str(out))  # fmt: skip
    return data, out, result


def test_batch_goes_on_past_bad_cases(user_run: tuple[Path, Path, subprocess.CompletedProcess]) -> None:
    """The good cases are written and nothing else (no temporary files either); the exit status is non-zero; each
    bad case is named with its file when it fails and again in the summary at the end."""
    _, out, result = user_run
    log = result.stdout + result.stderr
    assert result.returncode != 0, log[-3000:]
    written = sorted(p.name for p in out.iterdir() if p.is_file())
    assert written == sorted(f"{c}.nii.gz" for c in GEOMETRIES)  # and no temporary file
    assert not any((out / "F_unwritable.nii.gz").iterdir())
    total = len(GEOMETRIES) + len(BAD_CASES)
    assert f"{len(GEOMETRIES)} of {total} cases written to {out}" in log
    summary = log[log.index(f"inference failed for {len(BAD_CASES)} of {total} cases, not written") :]
    for case_id, file_name in BAD_CASES.items():
        assert f"case {case_id}: " in summary and file_name in summary, summary
        assert log.count(file_name) >= 2, f"{file_name} not named both when it failed and in the summary"
    names = ", ".join(sorted(BAD_CASES))
    assert f"inference failed for {len(BAD_CASES)} of {total} cases ({names})" in result.stderr
