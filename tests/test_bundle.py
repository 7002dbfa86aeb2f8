"""The bundle as a user runs it: configs through ``python -m monai.bundle`` on tiny generated data."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigWorkflow

from bundle.demo_data import make_dataset
from bundle.metrics import METRIC_NAMES

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
SCHEMA = ROOT.parent / "shared" / "schemas" / "meta_schema_20240725.json"
SCHEMA_MD5 = "06954cad2cc5d3784e72077ac76f0fc8"
# a tiny model and patch so a run takes seconds; the code paths are a user's
# and the demo data's own 4 mm grid as the model's voxel size (not BraTS' 1 mm), so no case is upsampled
TINY = ["--features", "4", "--discriminator_channels", "4", "--patch_size", "[32,32,32]", "--num_workers", "0",
        "--target_spacing", "[4.0,4.0,4.0]"]  # fmt: skip


def bundle_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "monai.bundle", *args, "--meta_file", str(CONFIGS / "metadata.json"),
            "--logging_file", str(CONFIGS / "logging.conf")]  # fmt: skip


def run(cmd: list[str]) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "CI": "true"})
    assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six demo cases at 4 mm (60 x 60 x 39 voxels) in the BraTS 2021 layout."""
    out = tmp_path_factory.mktemp("data") / "brats"
    make_dataset(out, num_cases=6, seed=3, spacing=4.0, quiet=True)
    return out


@pytest.fixture(scope="module")
def trained(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bundle_root after two epochs of training through ``monai.bundle run training``."""
    root = tmp_path_factory.mktemp("run")
    run(bundle_cmd("run", "training", "--config_file", str(CONFIGS / "train.yaml"), "--dataset_dir", str(data_dir),
                   "--bundle_root", str(root), "--max_epochs", "2", "--val_interval", "1", "--batch_size", "2",
                   "--num_folds", "3", *TINY))  # fmt: skip
    return root


def test_training_writes_checkpoints(trained: Path) -> None:
    model = torch.load(trained / "models" / "model.pt", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in model.values())  # the generator's weights alone
    assert "output.conv.weight" in model
    checkpoints = sorted(p.name for p in (trained / "models").glob("checkpoint_epoch=*.pt"))
    assert checkpoints == ["checkpoint_epoch=1.pt", "checkpoint_epoch=2.pt"]  # the last checkpoints_kept (2)
    state = torch.load(trained / "models" / checkpoints[-1], weights_only=True)
    assert set(state) == {"generator", "discriminator", "optimizer", "d_optimizer", "g_scaler", "d_scaler", "trainer"}
    # ignite keeps the iteration count: two epochs of the four training cases in batches of two
    assert state["trainer"]["iteration"] == 2 * state["trainer"]["epoch_length"] == 4
    assert list((trained / "logs").glob("events.out.tfevents.*"))  # TensorBoard


def test_evaluating_writes_metrics(trained: Path, data_dir: Path) -> None:
    run(bundle_cmd("run", "evaluating", "--config_file", f"['{CONFIGS / 'train.yaml'}','{CONFIGS / 'evaluate.yaml'}']",
                   "--dataset_dir", str(data_dir), "--bundle_root", str(trained), "--num_folds", "3", *TINY))  # fmt: skip
    with open(trained / "eval" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2  # the held-out fold of six cases in three folds
    assert list(rows[0]) == ["case_id"] + [f"{r}_{m}" for r in ("ET", "TC", "WT") for m in METRIC_NAMES]
    summary = json.loads((trained / "eval" / "summary.json").read_text())
    for region in ("ET", "TC", "WT"):
        values = [float(r[f"{region}_dice"]) for r in rows]
        assert all(0.0 <= v <= 1.0 for v in values)
        assert summary[region]["dice"] == pytest.approx(np.mean(values), abs=1e-6)
        assert summary[region]["dice_median"] == pytest.approx(np.median(values), abs=1e-6)
    assert sorted(p.name for p in (trained / "eval").glob("boxplot_*.png")) == sorted(
        f"boxplot_{m}.png" for m in METRIC_NAMES
    )


def test_inference_writes_labels_on_the_input_grid(trained: Path, data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "pred"
    run(bundle_cmd("run", "inference", "--config_file", str(CONFIGS / "inference.yaml"), "--dataset_dir",
                   str(data_dir), "--bundle_root", str(trained), "--output_dir", str(out), *TINY))  # fmt: skip
    cases = sorted(p.name for p in data_dir.iterdir())
    assert sorted(p.name for p in out.iterdir()) == [f"{c}.nii.gz" for c in cases]
    for case in cases:
        pred, t1 = nib.load(out / f"{case}.nii.gz"), nib.load(data_dir / case / f"{case}_t1.nii.gz")
        assert pred.shape == t1.shape
        np.testing.assert_allclose(pred.affine, t1.affine)
        assert set(np.unique(np.asarray(pred.dataobj)).tolist()) <= {0, 1, 2, 4}  # BraTS 2021 label values
        for field in ("pixdim", "qform_code", "sform_code", "srow_x", "srow_y", "srow_z"):  # the input's header
            np.testing.assert_array_equal(pred.header[field], t1.header[field])


def test_inference_names_a_missing_modality_file(trained: Path, data_dir: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    case = sorted(data_dir.iterdir())[0]
    (broken / case.name).mkdir(parents=True)
    for f in case.iterdir():
        if not f.name.endswith("_t2.nii.gz"):
            (broken / case.name / f.name).symlink_to(f)
    result = subprocess.run(
        bundle_cmd("run", "inference", "--config_file", str(CONFIGS / "inference.yaml"), "--dataset_dir", str(broken),
                   "--bundle_root", str(trained), "--output_dir", str(tmp_path / "pred"), *TINY),
        cwd=ROOT, capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode != 0
    assert f"case {case.name}: file not found: {broken / case.name / case.name}_t2.nii.gz" in result.stdout
    assert "inference failed for 1 of 1 cases" in result.stderr
    assert not (tmp_path / "pred").exists()


@pytest.mark.parametrize(
    ("config_files", "workflow_type"),
    [(["train.yaml"], "train"), (["train.yaml", "evaluate.yaml"], "train"), (["inference.yaml"], "infer")],
)
def test_check_properties_is_empty(
    config_files: list[str], workflow_type: str, data_dir: Path, tmp_path: Path
) -> None:
    workflow = ConfigWorkflow(
        config_file=[str(CONFIGS / f) for f in config_files],
        meta_file=str(CONFIGS / "metadata.json"),
        logging_file=str(CONFIGS / "logging.conf"),
        workflow_type=workflow_type,
        # checking the properties instantiates the workflow: tiny networks on the tiny data set
        dataset_dir=str(data_dir), bundle_root=str(tmp_path), num_folds=3, features=4, discriminator_channels=4,
        num_workers=0,
    )  # fmt: skip
    workflow.initialize()
    assert not workflow.check_properties()


def test_metadata_is_valid_against_the_model_zoo_schema() -> None:
    run(
        [sys.executable, "-m", "monai.bundle", "verify_metadata", "--meta_file", str(CONFIGS / "metadata.json"),
         "--filepath", str(SCHEMA), "--hash_val", SCHEMA_MD5]
    )  # fmt: skip


def test_verify_net_in_out() -> None:
    run(
        [sys.executable, "-m", "monai.bundle", "verify_net_in_out", "network_def", "--meta_file",
         str(CONFIGS / "metadata.json"), "--config_file", str(CONFIGS / "inference.yaml"), "--n", "2", "--any", "16",
         "--device", "cpu", "--features", "4"]
    )  # fmt: skip


def test_augment_on_device_moves_each_patch_after_the_crop(data_dir: Path, tmp_path: Path) -> None:
    """--augment_on_device true: cache on the host, patch to @device after the crop, no worker processes."""
    from monai.transforms import EnsureTyped, Rand3DElasticd, RandSpatialCropd

    workflow = ConfigWorkflow(
        config_file=str(CONFIGS / "train.yaml"), workflow_type="train", dataset_dir=str(data_dir),
        bundle_root=str(tmp_path), num_folds=3, features=4, discriminator_channels=4, num_workers=2,
        patch_size=[32, 32, 32], target_spacing=[4.0, 4.0, 4.0], augment_on_device=True, cache_rate=0.0,
        # the CPU, named unlike the augmentation's default torch.device("cpu"), stands in for a GPU
        device="$torch.device('cpu', 0)",
    )  # fmt: skip
    workflow.initialize()
    parser = workflow.parser
    assert parser.get_parsed_content("train#dataloader").num_workers == 0  # CUDA is not usable in forked workers
    transforms = parser.get_parsed_content("train#preprocessing").transforms
    crop = next(i for i, t in enumerate(transforms) if isinstance(t, RandSpatialCropd))
    # the first transform after the (random) crop moves the patch: CacheDataset caches everything before the crop
    assert isinstance(transforms[crop + 1], EnsureTyped)
    assert transforms[crop + 1].converter.device == parser.get_parsed_content("device")
    augmentation = parser.get_parsed_content("train#augmentation").transforms[1].transforms
    elastic = next(t for t in augmentation if isinstance(t, Rand3DElasticd))
    assert elastic.rand_3d_elastic.device == parser.get_parsed_content("device")
    sample = parser.get_parsed_content("train#dataset")[0]
    assert sample["image"].shape == (4, 32, 32, 32)


def test_training_cache_reads_no_nifti_after_it_is_built(data_dir: Path, tmp_path: Path) -> None:
    """cache_rate 1: every later epoch (random crop and augmentation) works from memory, not from the files."""
    import shutil

    data = shutil.copytree(data_dir, tmp_path / "data")
    workflow = ConfigWorkflow(
        config_file=str(CONFIGS / "train.yaml"), workflow_type="train", dataset_dir=str(data),
        bundle_root=str(tmp_path / "run"), num_folds=3, features=4, discriminator_channels=4, num_workers=0,
        patch_size=[32, 32, 32], target_spacing=[4.0, 4.0, 4.0], cache_rate=1.0, quiet=True,
    )  # fmt: skip
    workflow.initialize()
    dataset = workflow.parser.get_parsed_content("train#dataset")  # builds the cache
    shutil.rmtree(data)
    samples = [dataset[i] for i in range(len(dataset))]
    assert len(samples) == 4 and all(s["image"].shape == (4, 32, 32, 32) for s in samples)
