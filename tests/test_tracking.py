"""MLflow tracking as a user turns it on: ``monai.bundle run training ... --tracking mlflow``, offline.

A tiny training writes to a local SQLite tracking store inside ``tmp_path``; the run must hold the training loss
and the validation metrics, read back through MLflow's own client.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bundle.demo_data import make_dataset
from helpers import TINY_MODEL, cli_overrides

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
TINY = cli_overrides(TINY_MODEL)
MAX_EPOCHS = 2


@pytest.fixture(scope="module")
def tracked(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """The tracking URI and bundle_root of two tiny epochs trained with ``--tracking mlflow``."""
    tmp = tmp_path_factory.mktemp("tracking")
    data = tmp / "data"
    make_dataset(data, num_cases=4, seed=3, spacing=4.0, quiet=True)  # two folds of two 4 mm cases
    store = tmp / "store"
    store.mkdir()
    uri = f"sqlite:///{store / 'mlflow.db'}"  # an absolute path: sqlite:////tmp/...
    workdir = tmp / "cwd"  # an empty working directory: anything written relative to it is caught below
    workdir.mkdir()
    cmd = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", str(CONFIGS / "train.yaml"),
           "--meta_file", str(CONFIGS / "metadata.json"), "--logging_file", str(CONFIGS / "logging.conf"),
           "--dataset_dir", str(data), "--bundle_root", str(tmp / "root"), "--num_folds", "2",
           "--max_epochs", str(MAX_EPOCHS), "--val_interval", "1", "--batch_size", "2", *TINY,
           "--tracking", "mlflow", "--tracking_uri", uri, "--experiment_name", "vox2vox_test",
           "--run_name", "tiny"]  # fmt: skip
    # no network: MLflow's telemetry off, and no tracking server from the caller's environment (it would take
    # precedence over --tracking_uri)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(CI="true", MLFLOW_DISABLE_TELEMETRY="true", DO_NOT_TRACK="true", PYTHONPATH=str(ROOT))
    result = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, env=env)
    assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    assert (store / "mlflow.db").is_file()
    assert not any(workdir.iterdir()), "tracking wrote into the working directory"
    return uri, tmp / "root"


def test_run_records_training_loss_and_validation_metrics(tracked: tuple[str, Path]) -> None:
    from mlflow.tracking import MlflowClient

    uri, _ = tracked
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("vox2vox_test")
    assert experiment is not None
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == "tiny"
    assert run.info.status == "FINISHED"
    assert run.data.params["max_epochs"] == str(MAX_EPOCHS)
    # the generator's total loss at every iteration: two epochs of one batch of the two training cases
    loss = client.get_metric_history(run.info.run_id, "train_loss")
    assert [m.step for m in loss] == [1, 2]
    assert all(m.value > 0 for m in loss)
    # the validation key metric and the per-region Dice, once per epoch, in the same run
    for name in ("val_mean_dice", "val_dice_ET", "val_dice_TC", "val_dice_WT"):
        history = client.get_metric_history(run.info.run_id, name)
        assert [m.step for m in history] == [1, 2], name
        assert all(0.0 <= m.value <= 1.0 for m in history), name


def test_run_keeps_the_executed_config_as_artifact(tracked: tuple[str, Path]) -> None:
    from mlflow.tracking import MlflowClient

    uri, root = tracked
    client = MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("vox2vox_test").experiment_id])
    (artifact,) = client.list_artifacts(run.info.run_id)
    assert artifact.path.startswith("config_") and artifact.path.endswith(".json")
    # artifacts are kept next to the store, the executed config also in the run's output_dir (logs/)
    assert run.info.artifact_uri.startswith(Path(uri.removeprefix("sqlite:///")).parent.as_uri())
    assert (root / "logs" / artifact.path).is_file()
