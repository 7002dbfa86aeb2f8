"""The bundle as a user runs it: configs through ``python -m monai.bundle`` on tiny generated data."""

from __future__ import annotations

import ast
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
from monai.inferers import SlidingWindowInferer

from bundle.demo_data import make_dataset
from bundle.inference import EnsembleInferer
from bundle.metrics import METRIC_NAMES
from bundle.quality import CORRUPTION_KINDS
from helpers import TINY_MODEL, cli_overrides
from scripts import demo

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
# the Model Zoo's metadata schema, a byte-identical copy (tests/data/SOURCES.md): checked offline, no download
SCHEMA = ROOT / "tests" / "data" / "meta_schema_20240725.json"
SCHEMA_MD5 = "06954cad2cc5d3784e72077ac76f0fc8"
TINY = cli_overrides(TINY_MODEL)


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
    assert set(state) == {
        "generator",
        "discriminator",
        "optimizer",
        "d_optimizer",
        "lr_scheduler",  # the learning-rate schedules, continued by a resume
        "d_lr_scheduler",
        "g_scaler",
        "d_scaler",
        "trainer",
        "validation",
        "run",  # the seed and training data a resume is checked against
    }
    assert state["run"]["random_seed"] == 0 and state["run"]["num_cases"] == 4
    # ignite keeps the iteration count: two epochs of the four training cases in batches of two
    assert state["trainer"]["iteration"] == 2 * state["trainer"]["epoch_length"] == 4
    assert list((trained / "logs").glob("events.out.tfevents.*"))  # TensorBoard


def test_evaluating_writes_metrics(trained: Path, data_dir: Path) -> None:
    configs = f"['{CONFIGS / 'train.yaml'}','{CONFIGS / 'evaluate.yaml'}']"
    run(bundle_cmd("run", "evaluating", "--config_file", configs, "--dataset_dir", str(data_dir), "--bundle_root",
                   str(trained), "--num_folds", "3", *TINY))  # fmt: skip
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
    # the evaluation workflow by MONAI's inference properties (dataset, evaluator, inferer), as MONAI has no
    # evaluation type; it also keeps the training properties of the train.yaml it is merged over
    [
        (["train.yaml"], "train"),
        (["train.yaml", "evaluate.yaml"], "infer"),
        (["train.yaml", "evaluate.yaml"], "train"),
        (["inference.yaml"], "infer"),
    ],
)
def test_check_properties_is_empty(config_files: list[str], workflow_type: str, data_dir: Path, tmp_path: Path) -> None:
    workflow = ConfigWorkflow(
        config_file=[str(CONFIGS / f) for f in config_files],
        meta_file=str(CONFIGS / "metadata.json"),
        logging_file=str(CONFIGS / "logging.conf"),
        workflow_type=workflow_type,
        # checking the properties instantiates the workflow: tiny networks on the tiny data set
        dataset_dir=str(data_dir), bundle_root=str(tmp_path), num_folds=3, features=4, discriminator_channels=4,
        num_workers=0, target_spacing=[4.0, 4.0, 4.0],
    )  # fmt: skip
    workflow.initialize()
    assert not workflow.check_properties()


def evaluating_inferer(config_files: list[str], tmp_path: Path, **overrides: object) -> EnsembleInferer:
    """The inferer the evaluating workflow of ``config_files`` (in this order) scores cases with."""
    workflow = ConfigWorkflow(
        config_file=[str(ROOT / f) for f in config_files], meta_file=str(CONFIGS / "metadata.json"),
        logging_file=str(CONFIGS / "logging.conf"), workflow_type="infer", bundle_root=str(tmp_path), **overrides,
    )  # fmt: skip
    workflow.initialize()
    return workflow.parser.get_parsed_content("evaluate#evaluator#inferer")


@pytest.mark.parametrize(
    ("overrides", "passes", "uncertainty"),
    [({}, 1, False), ({"tta": "true"}, 8, False), ({"tta": "false"}, 1, False), ({"quality": "true"}, 8, True)],
)
def test_evaluating_scores_the_flip_tta_prediction_when_asked(
    overrides: dict[str, str], passes: int, uncertainty: bool, tmp_path: Path
) -> None:
    # --tta true scores what inference's --tta true writes; the quality check's uncertainty needs the flips
    inferer = evaluating_inferer(["configs/train.yaml", "configs/evaluate.yaml"], tmp_path, **overrides)
    assert isinstance(inferer, EnsembleInferer) and isinstance(inferer.inferer, SlidingWindowInferer)
    assert len(inferer.flips) == passes and inferer.uncertainty is uncertainty


def test_the_demo_evaluates_with_flip_tta(tmp_path: Path) -> None:
    # demo.yaml's tta: true reaches the evaluation only if no later config sets tta again
    inferer = evaluating_inferer(ast.literal_eval(demo.EVAL_CONFIGS), tmp_path)
    assert len(inferer.flips) == 8 and not inferer.uncertainty


def test_metadata_is_valid_against_the_model_zoo_schema() -> None:
    run(
        [sys.executable, "-m", "monai.bundle", "verify_metadata", "--meta_file", str(CONFIGS / "metadata.json"),
         "--filepath", str(SCHEMA), "--hash_val", SCHEMA_MD5]
    )  # fmt: skip


def test_label_names_are_keyed_by_the_values_monai_label_writes() -> None:
    # MONAI Label names each label value of the /infer result by outputs.pred.channel_def, and writes submitted
    # labels with those values: under MONAI Label (no data set) inference writes BraTS 2018-2021 values
    from bundle.inference import inference_cases
    from bundle.labels import CLASS_NAMES, label_values

    written = label_values(inference_cases(None)["label_convention"])  # no data set: as under MONAI Label
    pred = json.loads((CONFIGS / "metadata.json").read_text())["network_data_format"]["outputs"]["pred"]
    assert pred["channel_def"] == {str(v): name for v, name in zip(written, CLASS_NAMES)}
    assert len(pred["channel_def"]) == pred["num_channels"]


def test_augment_on_device_moves_each_patch_after_the_crop(data_dir: Path, tmp_path: Path) -> None:
    """--augment_on_device true: cache on the host, patch to @device after the crop, no worker processes."""
    from monai.transforms import EnsureTyped, RandCropByLabelClassesd

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
    crop = next(i for i, t in enumerate(transforms) if isinstance(t, RandCropByLabelClassesd))  # the default set
    # the first transform after the (random) crop moves the patch: CacheDataset caches everything before the crop
    assert isinstance(transforms[crop + 1], EnsureTyped)
    assert transforms[crop + 1].converter.device == parser.get_parsed_content("device")
    elastic = parser.get_parsed_content("train#elastic")
    assert elastic.rand_3d_elastic.device == parser.get_parsed_content("device")
    [patch] = parser.get_parsed_content("train#dataset")[0]  # the class-aware crop gives a list of one patch
    assert patch["image"].shape == (4, 32, 32, 32)


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
    samples = [patch for i in range(len(dataset)) for patch in dataset[i]]  # one patch per volume
    assert len(samples) == 4 and all(s["image"].shape == (4, 32, 32, 32) for s in samples)


def test_training_disk_cache_reads_no_nifti_after_the_first_epoch(data_dir: Path, tmp_path: Path) -> None:
    """cache_dir: the deterministic preprocessing goes to disk (PersistentDataset), for data larger than memory."""
    import shutil

    from monai.data import PersistentDataset

    data = shutil.copytree(data_dir, tmp_path / "data")
    workflow = ConfigWorkflow(
        config_file=str(CONFIGS / "train.yaml"), workflow_type="train", dataset_dir=str(data),
        bundle_root=str(tmp_path / "run"), num_folds=3, features=4, discriminator_channels=4, num_workers=0,
        patch_size=[32, 32, 32], target_spacing=[4.0, 4.0, 4.0], cache_dir=str(tmp_path / "cache"), quiet=True,
    )  # fmt: skip
    workflow.initialize()
    dataset = workflow.parser.get_parsed_content("train#dataset")
    assert isinstance(dataset, PersistentDataset)
    first = [patch for i in range(len(dataset)) for patch in dataset[i]]  # reads the files, writes the cache
    assert len(list((tmp_path / "cache").iterdir())) == 4
    shutil.rmtree(data)
    again = [patch for i in range(len(dataset)) for patch in dataset[i]]  # random crops of the cached volumes
    assert all(s["image"].shape == (4, 32, 32, 32) for s in first + again)
    assert all(0 <= int(s["label"].min()) and int(s["label"].max()) <= 3 for s in again)  # classes 0..3


# ---- the quality check (bundle/quality.py): the trained fixture's generator and discriminator -------------------


def test_training_writes_the_best_discriminator(trained: Path) -> None:
    from bundle.networks import Vox2VoxDiscriminator

    weights = torch.load(trained / "models" / "discriminator.pt", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in weights.values())  # the discriminator's weights alone
    Vox2VoxDiscriminator(in_channels=8, channels=4).load_state_dict(weights, strict=True)
    # written at the best validation, with model.pt: equal to the discriminator of the last checkpoint with a
    # validation at which the metric improved (here both epochs validate; compare with the epoch saved with it)
    checkpoints = [torch.load(p, weights_only=True)["discriminator"] for p in
                   sorted((trained / "models").glob("checkpoint_epoch=*.pt"))]  # fmt: skip
    assert any(all(torch.equal(c[k], weights[k]) for k in weights) for c in checkpoints)


CRITIC_SCORES = ["critic_dice_ET", "critic_dice_TC", "critic_dice_WT", "critic_dice_mean"]
CRITIC_CONFIGS = f"['{CONFIGS / 'train.yaml'}','{CONFIGS / 'evaluate.yaml'}','{CONFIGS / 'critic.yaml'}']"


@pytest.fixture(scope="module")
def critic(trained: Path, data_dir: Path) -> Path:
    """``models/critic.pt`` of the trained fixture, after one epoch of ``monai.bundle run training_critic``."""
    run(bundle_cmd("run", "training_critic", "--config_file", CRITIC_CONFIGS, "--dataset_dir", str(data_dir),
                   "--bundle_root", str(trained), "--num_folds", "3", "--critic_max_epochs", "1", *TINY))  # fmt: skip
    return trained / "models" / "critic.pt"


def test_critic_trains_from_config_alone_and_is_not_replaced_unasked(critic: Path, trained: Path,
                                                                     data_dir: Path) -> None:  # fmt: skip
    from bundle.critic import QualityCritic
    from bundle.networks import Vox2VoxDiscriminator

    weights = torch.load(critic, weights_only=True)
    network = QualityCritic(Vox2VoxDiscriminator(in_channels=8, channels=4))
    # trained, not just initialised: every output bias starts at the prior's logit, and each Adam step moves it
    start = network.body.final_conv.bias.detach().clone()
    network.load_state_dict(weights, strict=True)
    assert (weights["body.final_conv.bias"] - start).abs().min() > 1e-6
    assert [p.name for p in critic.parent.iterdir() if p.name.startswith(".critic")] == []  # no temporary file
    again = subprocess.run(bundle_cmd("run", "training_critic", "--config_file", CRITIC_CONFIGS, "--dataset_dir",
                                      str(data_dir), "--bundle_root", str(trained), "--num_folds", "3", *TINY),
                           cwd=ROOT, capture_output=True, text=True)  # fmt: skip
    assert again.returncode != 0
    assert f"quality critic {critic} exists: pass --overwrite_critic true" in again.stderr + again.stdout
    assert all(torch.equal(v, weights[k]) for k, v in torch.load(critic, weights_only=True).items())


def test_critic_corruptions_are_checked_before_any_data_is_read(trained: Path, tmp_path: Path) -> None:
    """A bad corruption weight is refused by the workflow's first steps: the data folder, which does not exist,
    is never read, and no critic is written."""
    path, absent = tmp_path / "critic.pt", tmp_path / "no_data"
    bad = subprocess.run(bundle_cmd("run", "training_critic", "--config_file", CRITIC_CONFIGS, "--dataset_dir",
                                    str(absent), "--bundle_root", str(trained), "--critic_ckpt_path", str(path),
                                    "--critic_corruption_weights", "{'blur': 1}", *TINY),
                         cwd=ROOT, capture_output=True, text=True)  # fmt: skip
    assert bad.returncode != 0
    assert "corruption_weights: unknown corruption kinds ['blur']" in bad.stderr + bad.stdout
    assert "resolve_datalist" not in bad.stderr + bad.stdout and not path.exists()  # the data's step never ran


def test_quality_check_calibrates_infers_and_evaluates(
    trained: Path, critic: Path, data_dir: Path, tmp_path: Path
) -> None:
    """calibrating on the validation fold, then inference and evaluating with --quality true, as a user runs them."""
    configs = f"['{CONFIGS / 'train.yaml'}','{CONFIGS / 'evaluate.yaml'}','{CONFIGS / 'quality.yaml'}']"
    rows_csv = tmp_path / "calibration_rows.csv"
    run(bundle_cmd("run", "calibrating", "--config_file", configs, "--dataset_dir", str(data_dir), "--bundle_root",
                   str(trained), "--num_folds", "3", "--corruption_levels", "[3]", "--tta_flip_axes", "[0]",
                   "--calibration_rows_csv", str(rows_csv), *TINY))  # fmt: skip
    calibration = json.loads((trained / "models" / "quality_calibration.json").read_text())
    assert calibration["features"] == ["uncertainty", "confidence", "confidence_wt", "expected_dice",
                                       "expected_dice_wt", "critic_dice_mean", "critic_dice_WT"]  # fmt: skip
    assert calibration["link"] == "logit" and set(calibration["weights"]) == {"generator", "discriminator", "critic"}
    assert len(calibration["cases"]) == 2  # the held-out fold of six cases in three folds
    # per case: prediction, reference and one corruption of each kind at level 3
    assert calibration["num_rows"] == 2 * (2 + len(CORRUPTION_KINDS))
    with open(rows_csv) as f:
        rows = list(csv.DictReader(f))
    assert {r["source"] for r in rows} == {"prediction", "reference", *CORRUPTION_KINDS}
    assert all(float(r["dice_mean"]) == 1.0 for r in rows if r["source"] == "reference")

    cases = sorted(p.name for p in data_dir.iterdir())[:2]
    two = tmp_path / "two"
    for case in cases:
        (two / case).mkdir(parents=True)
        for f in (data_dir / case).iterdir():
            (two / case / f.name).symlink_to(f)
    out = tmp_path / "pred"
    run(bundle_cmd("run", "inference", "--config_file", str(CONFIGS / "inference.yaml"), "--dataset_dir", str(two),
                   "--bundle_root", str(trained), "--output_dir", str(out), "--quality", "true",
                   "--tta_flip_axes", "[0]", *TINY))  # fmt: skip
    expected = {f"{c}{suffix}.nii.gz" for c in cases for suffix in ("", "_quality", "_uncertainty")}
    assert {p.name for p in out.iterdir()} == expected | {"quality.csv", "quality_ranking.csv"}
    for case in cases:
        t1 = nib.load(two / case / f"{case}_t1.nii.gz")
        for suffix in ("_quality", "_uncertainty"):
            image = nib.load(out / f"{case}{suffix}.nii.gz")
            assert image.shape == t1.shape and image.get_data_dtype() == np.float32
            np.testing.assert_allclose(image.affine, t1.affine)
            assert np.all(np.isfinite(image.get_fdata()))
        assert np.all(nib.load(out / f"{case}_uncertainty.nii.gz").get_fdata() >= 0)
        wrong = nib.load(out / f"{case}_quality.nii.gz").get_fdata()  # the critic's probability of an error
        assert 0.0 <= wrong.min() and wrong.max() <= 1.0 and wrong.max() > wrong.min()
    with open(out / "quality.csv") as f:
        quality = list(csv.DictReader(f))
    assert [r["case_id"] for r in quality] == cases
    assert list(quality[0]) == ["case_id", "d_score", "d_score_low", "uncertainty", "volume_ml", "confidence",
                                "confidence_wt", "expected_dice", "expected_dice_wt", "d_score_tumour", *CRITIC_SCORES,
                                "est_dice_WT", "est_dice_mean"]  # fmt: skip
    expected_dice = ("expected_dice", "expected_dice_wt")
    assert all(0.0 <= float(r[k]) <= 1.0 for r in quality for k in (*CRITIC_SCORES, *expected_dice))
    assert all(0.0 <= float(r[k]) <= 1.0 for r in quality for k in ("est_dice_WT", "est_dice_mean"))
    with open(out / "quality_ranking.csv") as f:
        ranking = list(csv.DictReader(f))
    estimates = [float(r["est_dice_mean"]) for r in ranking]
    assert [r["rank"] for r in ranking] == ["1", "2"] and estimates == sorted(estimates)

    eval_dir = tmp_path / "eval"
    run(bundle_cmd("run", "evaluating", "--config_file", f"['{CONFIGS / 'train.yaml'}','{CONFIGS / 'evaluate.yaml'}']",
                   "--dataset_dir", str(data_dir), "--bundle_root", str(trained), "--num_folds", "3", "--quality",
                   "true", "--tta_flip_axes", "[0]", "--eval_dir", str(eval_dir), *TINY))  # fmt: skip
    with open(eval_dir / "metrics.csv") as f:
        metrics = list(csv.DictReader(f))
    default = ["case_id"] + [f"{r}_{m}" for r in ("ET", "TC", "WT") for m in METRIC_NAMES]
    quality = ["d_score", "d_score_low", "uncertainty", "volume_ml", "confidence", "confidence_wt", *expected_dice,
               "d_score_tumour", *CRITIC_SCORES, "est_dice_WT", "est_dice_mean"]  # fmt: skip
    assert list(metrics[0]) == default + quality
    assert len(metrics) == 2 and all(0.0 <= float(r["est_dice_mean"]) <= 1.0 for r in metrics)


def test_quality_check_names_a_missing_discriminator(tmp_path: Path) -> None:
    from helpers import error_text

    missing = tmp_path / "nowhere" / "discriminator.pt"
    workflow = ConfigWorkflow(
        config_file=str(CONFIGS / "inference.yaml"), meta_file=str(CONFIGS / "metadata.json"),
        logging_file=str(CONFIGS / "logging.conf"), workflow_type="infer", bundle_root=str(tmp_path),
        features=4, discriminator_channels=4, quality="true", discriminator_ckpt_path=str(missing),
    )  # fmt: skip
    with pytest.raises(Exception) as raised:
        workflow.initialize()
        workflow.parser.get_parsed_content("quality_scorer")
    assert f"discriminator checkpoint {missing} does not exist" in error_text(raised.value)
