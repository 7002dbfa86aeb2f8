"""Bad input, case by case: a clear error naming the file (and value), and no partial output."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigWorkflow

from bundle.checkpoints import LOCK_NAME
from bundle.demo_data import make_dataset
from bundle.networks import Vox2VoxGenerator
from helpers import TINY_MODEL, error_text

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
CASE = "DEMO_00001"
TINY = {**TINY_MODEL, "batch_size": 2, "max_epochs": 1, "val_interval": 1}


def resave(path: Path, transform: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]) -> None:
    img = nib.load(path)
    data, affine = transform(np.asarray(img.dataobj), img.affine)
    nib.save(nib.Nifti1Image(data, affine), path)


def with_nan(data: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    data = data.astype(np.float32)
    data.flat[data.size // 2] = np.nan
    return data, affine


def shifted(data: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    affine = affine.copy()
    affine[0, 3] += 2.0  # 2 mm off the other modalities
    return data, affine


def label_value_3(data: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    data = data.copy()
    data[data == 4] = 3  # not a BraTS 2018-2021 label value
    return data, affine


# each corruption of case DEMO_00001: (what it does to the data set folder, text the error must contain)
CORRUPTIONS: dict[str, tuple[Callable[[Path], None], str]] = {
    "missing modality": (lambda d: (d / CASE / f"{CASE}_t2.nii.gz").unlink(), f"{CASE}_t2.nii.gz"),
    "truncated file": (
        lambda d: (d / CASE / f"{CASE}_flair.nii.gz").write_bytes(
            (d / CASE / f"{CASE}_flair.nii.gz").read_bytes()[:900]
        ),
        f"{CASE}_flair.nii.gz",
    ),
    "not NIfTI": (lambda d: (d / CASE / f"{CASE}_t1ce.nii.gz").write_text("not an image"), f"{CASE}_t1ce.nii.gz"),
    "shapes differ": (lambda d: resave(d / CASE / f"{CASE}_t2.nii.gz", lambda a, m: (a[:-2], m)), f"{CASE}_t2.nii.gz"),
    "affines differ": (lambda d: resave(d / CASE / f"{CASE}_t2.nii.gz", shifted), f"{CASE}_t2.nii.gz: affine differs"),
    "NaN voxels": (
        lambda d: resave(d / CASE / f"{CASE}_flair.nii.gz", with_nan),
        f"{CASE}_flair.nii.gz: 1 voxels are NaN",
    ),
    "all-zero volume": (
        lambda d: resave(d / CASE / f"{CASE}_t1.nii.gz", lambda a, m: (np.zeros_like(a), m)),
        f"{CASE}_t1.nii.gz: every voxel is zero",
    ),
    "2-D image": (
        lambda d: resave(d / CASE / f"{CASE}_t1.nii.gz", lambda a, m: (a[:, :, 5], m)),
        "expected a 3-D volume",
    ),
    "5-D image": (
        lambda d: resave(d / CASE / f"{CASE}_t1.nii.gz", lambda a, m: (a[..., None, None], m)),
        "expected a 3-D volume",
    ),
    "label value outside the convention": (
        lambda d: resave(d / CASE / f"{CASE}_seg.nii.gz", label_value_3),
        f"{CASE}_seg.nii.gz: label values [3] are not in the brats2021 convention",
    ),
    "missing data folder": (lambda d: shutil.rmtree(d), "does not exist"),
}
#: what inference reads: every corruption of the images (it reads no labels); a missing folder stops the whole run
INFERENCE_CORRUPTIONS = [
    c for c in CORRUPTIONS if c not in ("label value outside the convention", "missing data folder")
]


@pytest.fixture(scope="module")
def clean_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("clean") / "brats"
    make_dataset(out, num_cases=4, seed=11, spacing=4.0, quiet=True)
    return out


@pytest.fixture()
def data_dir(clean_data: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(clean_data, tmp_path / "brats"))


def run_workflow(config_files: list[str], run_id: str, **overrides) -> None:
    overrides = {k: str(v) if isinstance(v, Path) else v for k, v in {**TINY, **overrides}.items()}
    workflow = ConfigWorkflow(
        config_file=[str(CONFIGS / f) for f in config_files],
        meta_file=str(CONFIGS / "metadata.json"),
        logging_file=str(CONFIGS / "logging.conf"),
        workflow_type="train",
        run_id=run_id,
        **overrides,
    )
    workflow.initialize()
    workflow.run()


def save_tiny_generator(path: Path, features: int = 4) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(Vox2VoxGenerator(features=features).state_dict(), path)


def written_files(folder: Path) -> list[str]:
    """What a run wrote under ``folder``, but for the lock file of the run's models folder (held, and left, by a run
    that stops after it has begun; bundle.checkpoints.lock_run_dir)."""
    files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()) if folder.exists() else []
    return [f for f in files if Path(f).name != LOCK_NAME]


@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
def test_training_names_the_bad_input(corruption: str, data_dir: Path, tmp_path: Path) -> None:
    corrupt, expected = CORRUPTIONS[corruption]
    corrupt(data_dir)
    with pytest.raises(Exception) as error:
        run_workflow(["train.yaml"], "training", dataset_dir=data_dir, bundle_root=tmp_path / "run", num_folds=2)
    assert expected in error_text(error.value)
    assert written_files(tmp_path / "run") == []  # no checkpoint, no log


@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
def test_evaluation_names_the_bad_input(corruption: str, data_dir: Path, tmp_path: Path) -> None:
    corrupt, expected = CORRUPTIONS[corruption]
    corrupt(data_dir)
    save_tiny_generator(tmp_path / "run" / "models" / "model.pt")
    with pytest.raises(Exception) as error:
        run_workflow(["train.yaml", "evaluate.yaml"], "evaluating", dataset_dir=data_dir,
                     bundle_root=tmp_path / "run", num_folds=1, eval_split="all")  # fmt: skip
    assert expected in error_text(error.value)
    assert written_files(tmp_path / "run") == ["models/model.pt"]  # no metrics


@pytest.mark.parametrize("corruption", INFERENCE_CORRUPTIONS)
def test_inference_names_the_bad_case_and_writes_the_others(
    corruption: str, data_dir: Path, tmp_path: Path, capfd: pytest.CaptureFixture
) -> None:
    corrupt, expected = CORRUPTIONS[corruption]
    corrupt(data_dir)
    save_tiny_generator(tmp_path / "run" / "models" / "model.pt")
    out = tmp_path / "predictions"
    with pytest.raises(SystemExit, match=rf"inference failed for 1 of 4 cases \({CASE}\)"):
        run_workflow(["inference.yaml"], "inference", dataset_dir=data_dir, bundle_root=tmp_path / "run",
                     output_dir=out)  # fmt: skip
    logged = "".join(capfd.readouterr())  # the bundle's log (configs/logging.conf) goes to the console
    assert f"case {CASE}: " in logged and expected in logged
    good = sorted(p.name for p in data_dir.iterdir() if p.name != CASE)
    assert written_files(out) == [f"{case}.nii.gz" for case in good]  # nothing for the bad case


def test_inference_names_a_missing_data_folder(data_dir: Path, tmp_path: Path) -> None:
    save_tiny_generator(tmp_path / "run" / "models" / "model.pt")
    with pytest.raises(Exception) as error:
        run_workflow(["inference.yaml"], "inference", dataset_dir=tmp_path / "nowhere", bundle_root=tmp_path / "run",
                     output_dir=tmp_path / "predictions")  # fmt: skip
    assert f"data set folder {tmp_path / 'nowhere'} does not exist" in error_text(error.value)
    assert not (tmp_path / "predictions").exists()


def test_inference_names_a_checkpoint_of_another_size(data_dir: Path, tmp_path: Path) -> None:
    checkpoint = tmp_path / "run" / "models" / "model.pt"
    save_tiny_generator(checkpoint, features=8)
    with pytest.raises(Exception) as error:
        run_workflow(["inference.yaml"], "inference", dataset_dir=data_dir, bundle_root=tmp_path / "run",
                     output_dir=tmp_path / "predictions")  # fmt: skip
    text = error_text(error.value)
    assert str(checkpoint) in text and "size mismatch for encoder.0.conv.weight" in text
    assert written_files(tmp_path / "predictions") == []


@pytest.mark.parametrize("config_files", [["train.yaml", "evaluate.yaml"], ["inference.yaml"]])
def test_unwritable_evaluation_or_inference_folder_is_named_before_any_work(
    config_files: list[str], data_dir: Path, tmp_path: Path
) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("a file where a folder should be")
    save_tiny_generator(tmp_path / "run" / "models" / "model.pt")
    evaluating = "evaluate.yaml" in config_files
    folder = {"eval_dir": blocker / "eval"} if evaluating else {"output_dir": blocker / "predictions"}
    with pytest.raises(Exception) as error:
        run_workflow(config_files, "evaluating" if evaluating else "inference", dataset_dir=data_dir,
                     bundle_root=tmp_path / "run", num_folds=1, eval_split="all", **folder)  # fmt: skip
    assert f"output folder {next(iter(folder.values()))} cannot be written" in error_text(error.value)


@pytest.mark.parametrize(
    ("content", "expected"), [('{"training": []}', "malformed"), ("{not json", "not valid JSON"), (None, "not found")]
)
def test_bad_datalist_is_named(content: str | None, expected: str, data_dir: Path, tmp_path: Path) -> None:
    datalist = tmp_path / "datalist.json"
    if content is not None:
        datalist.write_text(content)
    with pytest.raises(Exception) as error:
        run_workflow(["train.yaml"], "training", dataset_dir=data_dir, bundle_root=tmp_path / "run",
                     datalist_file=datalist)  # fmt: skip
    assert str(datalist) in error_text(error.value) and expected in error_text(error.value)
    # the same datalist for inference
    save_tiny_generator(tmp_path / "run" / "models" / "model.pt")
    with pytest.raises(Exception) as error:
        run_workflow(["inference.yaml"], "inference", dataset_dir=data_dir, bundle_root=tmp_path / "run",
                     datalist_file=datalist, output_dir=tmp_path / "predictions")  # fmt: skip
    assert str(datalist) in error_text(error.value) and expected in error_text(error.value)
    assert not (tmp_path / "predictions").exists()


def test_checkpoint_of_another_size_names_file_and_keys(data_dir: Path, tmp_path: Path) -> None:
    checkpoint = tmp_path / "run" / "models" / "model.pt"
    save_tiny_generator(checkpoint, features=8)
    with pytest.raises(Exception) as error:
        run_workflow(["train.yaml", "evaluate.yaml"], "evaluating", dataset_dir=data_dir,
                     bundle_root=tmp_path / "run", num_folds=1, eval_split="all")  # fmt: skip
    text = error_text(error.value)
    assert f"checkpoint {checkpoint} does not fit the network" in text
    assert "size mismatch for encoder.0.conv.weight" in text
    assert not (tmp_path / "run" / "eval").exists()


def test_unwritable_output_folder_is_named(data_dir: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("a file where a folder should be")
    with pytest.raises(Exception) as error:
        run_workflow(["train.yaml"], "training", dataset_dir=data_dir, bundle_root=blocker / "run", num_folds=2)
    assert f"output folder {blocker / 'run' / 'models'} cannot be written" in error_text(error.value)


def test_datalist_errors_name_the_file_in_json(data_dir: Path, tmp_path: Path) -> None:
    # a valid datalist whose case lost a file: the file is named, not just the case
    datalist = {"label_convention": "brats2021", "channel_order": [0, 1, 2, 3], "num_folds": 1, "training": [
        {"case_id": CASE, "fold": 0, "label": f"{CASE}/{CASE}_seg.nii.gz",
         "image": [f"{CASE}/{CASE}_{m}.nii.gz" for m in ("t1", "t1ce", "t2", "flair")]}]}  # fmt: skip
    (tmp_path / "datalist.json").write_text(json.dumps(datalist))
    (data_dir / CASE / f"{CASE}_t1ce.nii.gz").unlink()
    with pytest.raises(Exception) as error:
        run_workflow(["train.yaml", "evaluate.yaml"], "evaluating", dataset_dir=data_dir, bundle_root=tmp_path / "run",
                     datalist_file=tmp_path / "datalist.json", num_folds=1, eval_split="all")  # fmt: skip
    assert f"{CASE}_t1ce.nii.gz" in error_text(error.value)


def test_a_4d_file_names_its_bad_channel_by_modality() -> None:
    from monai.data import MetaTensor

    from bundle.image_checks import CheckImaged

    image = MetaTensor(torch.ones(4, 4, 4, 4), meta={"filename_or_obj": "BRATS_001.nii.gz"})
    image[0] = 0  # MSD stores FLAIR, T1w, T1gd, T2w: the first channel is the FLAIR
    msd = CheckImaged("image", channel_order=[1, 2, 3, 0])
    with pytest.raises(ValueError, match=r"^BRATS_001\.nii\.gz \(channel FLAIR\): every voxel is zero"):
        msd({"image": image})
    image[0], image[3] = float("inf"), 1.0
    with pytest.raises(ValueError, match=r"\(channel FLAIR\): 64 voxels are NaN or infinite"):
        msd({"image": image})
    with pytest.raises(ValueError, match="channel_order must be a permutation"):
        CheckImaged("image", channel_order=[0, 1, 2, 2])
