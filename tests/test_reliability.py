"""Crash safety of training: resume after kill -9, atomic checkpoints, no silent overwrite, NaN stop, seeds."""

from __future__ import annotations

import copy
import io
import logging
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from ignite.engine import Engine, Events
from monai.bundle import ConfigWorkflow

from bundle.checkpoints import AtomicCheckpointSaver, _load_latest, training_checkpoints
from bundle.demo_data import make_dataset
from bundle.losses import Vox2VoxLoss
from bundle.networks import Vox2VoxDiscriminator, Vox2VoxGenerator
from bundle.trainer import Vox2VoxTrainer, gan_losses
from helpers import TINY_MODEL, cli_overrides, error_text

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
TINY = {**TINY_MODEL, "batch_size": 2, "num_folds": 3, "val_interval": 100}


def training_workflow(run_id: str = "training", **overrides) -> ConfigWorkflow:
    """The training workflow of configs/train.yaml, in this process, with ``overrides`` as on the command line."""
    workflow = ConfigWorkflow(
        config_file=str(CONFIGS / "train.yaml"),
        meta_file=str(CONFIGS / "metadata.json"),
        logging_file=str(CONFIGS / "logging.conf"),
        workflow_type="train",
        run_id=run_id,
        **{k: str(v) if isinstance(v, Path) else v for k, v in {**TINY, **overrides}.items()},
    )
    workflow.initialize()
    return workflow


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("data") / "brats"
    make_dataset(out, num_cases=6, seed=5, spacing=4.0, quiet=True)
    return out


def test_resume_after_kill_continues_from_the_last_checkpoint(data_dir: Path, tmp_path: Path) -> None:
    max_epochs = 40
    args = {"dataset_dir": data_dir, "bundle_root": tmp_path, "max_epochs": max_epochs}
    cmd = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", str(CONFIGS / "train.yaml"),
           "--meta_file", str(CONFIGS / "metadata.json"), *cli_overrides({**TINY, **args})]  # fmt: skip
    process = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    models = tmp_path / "models"
    deadline = time.monotonic() + 120
    while not any(int(p.name.split("=")[1][:-3]) >= 3 for p in training_checkpoints(models)):
        assert process.poll() is None, "training ended before it could be killed"
        assert time.monotonic() < deadline, "no checkpoint after 120 s"
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)  # possibly in the middle of writing a checkpoint
    process.wait()
    resumed_from = training_checkpoints(models)[-1]  # every file under a checkpoint name is complete
    expected = torch.load(resumed_from, weights_only=True)
    assert expected["trainer"]["iteration"] < max_epochs * expected["trainer"]["epoch_length"]

    workflow = training_workflow(**args, resume=True)
    trainer = workflow.parser.get_parsed_content("train#trainer")
    first_step: dict = {}

    @trainer.on(Events.ITERATION_STARTED)
    def capture(engine) -> None:
        if not first_step:
            first_step.update(iteration=engine.state.iteration,
                              generator={k: v.clone() for k, v in engine.network.state_dict().items()},
                              discriminator={k: v.clone() for k, v in engine.discriminator.state_dict().items()},
                              d_optimizer=copy.deepcopy(engine.d_optimizer.state_dict()))  # fmt: skip

    workflow.run()
    # the resumed run started where the checkpoint left off, with its weights and optimizer state
    assert first_step["iteration"] == expected["trainer"]["iteration"] + 1
    for name in ("generator", "discriminator"):
        for key, value in expected[name].items():
            torch.testing.assert_close(first_step[name][key], value, rtol=0, atol=0)
    assert first_step["d_optimizer"]["state"][0]["step"] == expected["d_optimizer"]["state"][0]["step"]
    # and it reached the planned end, keeping the last two checkpoints
    assert trainer.state.epoch == max_epochs
    assert [p.name for p in training_checkpoints(models)] == [f"checkpoint_epoch={e}.pt" for e in (39, 40)]


def test_a_new_run_never_overwrites_an_earlier_one(data_dir: Path, tmp_path: Path) -> None:
    args = {"dataset_dir": data_dir, "bundle_root": tmp_path, "max_epochs": 1}
    training_workflow(**args).run()
    before = {p.name: p.read_bytes() for p in (tmp_path / "models").iterdir()}
    # validation runs at the last epoch at least: the best generator and its discriminator
    assert set(before) == {"checkpoint_epoch=1.pt", "discriminator.pt", "model.pt"}

    cmd = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", str(CONFIGS / "train.yaml"),
           "--meta_file", str(CONFIGS / "metadata.json"), *cli_overrides({**TINY, **args})]  # fmt: skip
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert result.returncode != 0
    earlier = "checkpoint_epoch=1.pt, model.pt, discriminator.pt"
    assert f"holds checkpoints of an earlier run ({earlier})" in result.stdout + result.stderr
    assert "--resume true" in result.stderr and "--overwrite true" in result.stderr
    assert {p.name: p.read_bytes() for p in (tmp_path / "models").iterdir()} == before

    training_workflow(**args, overwrite=True).run()  # an explicit overwrite starts afresh
    assert torch.load(tmp_path / "models" / "checkpoint_epoch=1.pt", weights_only=True)["trainer"]["iteration"] == 2


def test_monai_labels_run_resumes_with_resume_true(data_dir: Path, tmp_path: Path) -> None:
    args = {"dataset_dir": data_dir, "bundle_root": tmp_path}
    training_workflow(**args, max_epochs=1).run()
    # `run` (MONAI Label's entry point) replaces earlier training checkpoints, but not when asked to resume
    workflow = training_workflow("run", **args, max_epochs=2, resume="true")
    trainer = workflow.parser.get_parsed_content("train#trainer")
    started: list[int] = []
    trainer.add_event_handler(Events.ITERATION_STARTED, lambda e: started.append(e.state.iteration))
    workflow.run()
    assert started == [3, 4]  # it went on after the first epoch's two iterations
    assert [p.name for p in training_checkpoints(tmp_path / "models")] == [f"checkpoint_epoch={e}.pt" for e in (1, 2)]


def test_resume_without_a_checkpoint_is_an_error(data_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(Exception) as error:
        training_workflow(dataset_dir=data_dir, bundle_root=tmp_path, max_epochs=1, resume=True).run()
    assert "holds no training checkpoint" in error_text(error.value)


def test_truncated_checkpoint_is_skipped_for_the_one_before(tmp_path: Path) -> None:
    torch.save({"trainer": {"iteration": 4}}, tmp_path / "checkpoint_epoch=1.pt")
    torch.save({"trainer": {"iteration": 8}}, tmp_path / "checkpoint_epoch=2.pt")
    full = (tmp_path / "checkpoint_epoch=2.pt").read_bytes()
    (tmp_path / "checkpoint_epoch=2.pt").write_bytes(full[: len(full) // 2])  # a non-atomic writer killed mid-write
    (tmp_path / "tmpab12cd").write_bytes(b"partial")  # what an atomic write killed mid-way leaves: ignored
    path, state = _load_latest(training_checkpoints(tmp_path))
    assert path.name == "checkpoint_epoch=1.pt" and state["trainer"]["iteration"] == 4


def test_checkpoints_are_written_atomically(tmp_path: Path) -> None:
    saver = AtomicCheckpointSaver(save_dir=str(tmp_path), save_dict={"net": torch.nn.Linear(2, 2)}, save_interval=1)
    assert saver._interval_checkpoint.save_handler._atomic


def test_a_crash_while_writing_a_new_best_model_keeps_the_old_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    net = torch.nn.Linear(2, 2)
    evaluator = Engine(lambda engine, batch: None)
    saver = AtomicCheckpointSaver(str(tmp_path), {"model": net}, save_key_metric=True, key_metric_name="dice",
                                  key_metric_filename="model.pt")  # fmt: skip
    saver.attach(evaluator)
    evaluator.add_event_handler(Events.STARTED, lambda e: e.state.metrics.update(dice=0.5))
    evaluator.run([0], max_epochs=1)
    first = (tmp_path / "model.pt").read_bytes()

    def disk_full(*args, **kwargs) -> None:
        raise OSError(28, "No space left on device")

    with torch.no_grad():
        net.weight.add_(1.0)
    monkeypatch.setattr(torch, "save", disk_full)
    evaluator.state.metrics["dice"] = 0.9  # a new best, whose write fails
    with pytest.raises(OSError, match="No space left"):
        saver.metrics_completed(evaluator)
    assert (tmp_path / "model.pt").read_bytes() == first  # ignite removed it before writing: now it stays
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]  # and no temporary file is left


def test_resume_keeps_the_best_validation_and_its_model(data_dir: Path, tmp_path: Path) -> None:
    args = {"dataset_dir": data_dir, "bundle_root": tmp_path, "val_interval": 1}
    first = training_workflow(**args, max_epochs=2)
    first.run()
    models = tmp_path / "models"
    best = first.parser.get_parsed_content("validate#evaluator").state
    checkpoint = models / "checkpoint_epoch=2.pt"
    state = torch.load(checkpoint, weights_only=True)
    validation = state["validation"]
    assert (validation["best_metric"], validation["best_metric_epoch"]) == (best.best_metric, best.best_metric_epoch)
    assert [score for score, _ in validation["savers"]["model.pt"]["_saved"]] == [best.best_metric]
    assert set(validation["savers"]) == {"model.pt", "discriminator.pt"}
    # a best that the resumed run cannot beat (Dice <= 1), as if the run before the crash had reached it
    validation["best_metric"] = 2.0
    for saved in validation["savers"].values():
        saved["_saved"] = [(2.0, name) for _, name in saved["_saved"]]
    torch.save(state, checkpoint)
    kept = {name: (models / name).read_bytes() for name in ("model.pt", "discriminator.pt")}

    resumed = training_workflow(**args, max_epochs=3, resume="true")  # as the command line gives it
    resumed.run()
    evaluator = resumed.parser.get_parsed_content("validate#evaluator")
    assert evaluator.state.epoch == 3  # it validated again
    assert (evaluator.state.best_metric, evaluator.state.best_metric_epoch) == (2.0, validation["best_metric_epoch"])
    assert {name: (models / name).read_bytes() for name in kept} == kept  # not replaced by a worse model

    # a checkpoint written before the best validation was part of it still resumes, and says what that means
    checkpoint = models / "checkpoint_epoch=3.pt"
    state = torch.load(checkpoint, weights_only=True)
    del state["validation"]
    torch.save(state, checkpoint)
    warnings = io.StringIO()  # caught on the module's logger: logging.conf replaces the root's handlers (caplog's)
    handler = logging.StreamHandler(warnings)
    logging.getLogger("bundle.checkpoints").addHandler(handler)
    try:
        training_workflow(**args, max_epochs=4, resume="true").run()
    finally:
        logging.getLogger("bundle.checkpoints").removeHandler(handler)
    assert f"checkpoint {checkpoint} holds no best validation" in warnings.getvalue()
    assert (models / "model.pt").read_bytes() != kept["model.pt"]  # the first validation became the best


def tiny_trainer(batches: list[dict], **kwargs) -> Vox2VoxTrainer:
    torch.manual_seed(0)
    generator, discriminator = Vox2VoxGenerator(features=2), Vox2VoxDiscriminator(channels=2)
    return Vox2VoxTrainer(
        device="cpu", max_epochs=1, train_data_loader=batches, network=generator,
        optimizer=torch.optim.Adam(generator.parameters()), discriminator=discriminator,
        d_optimizer=torch.optim.Adam(discriminator.parameters()), loss_function=Vox2VoxLoss([1.0, 1.0, 1.0, 1.0]),
        **kwargs,
    )  # fmt: skip


def test_nan_loss_stops_training_and_keeps_the_last_good_checkpoint(tmp_path: Path) -> None:
    label = torch.zeros(1, 1, 32, 32, 32, dtype=torch.long)
    label[..., 10:20, 10:20, 10:20] = 2
    good = {"image": torch.randn(1, 4, 32, 32, 32), "label": label}
    trainer = tiny_trainer([good])
    saver = AtomicCheckpointSaver(
        save_dir=str(tmp_path), save_dict={"generator": trainer.network, "trainer": trainer}, save_interval=1
    )
    saver.attach(trainer)
    trainer.run()
    checkpoint = (tmp_path / "checkpoint_epoch=1.pt").read_bytes()
    weights = {k: v.clone() for k, v in trainer.network.state_dict().items()}

    bad = {"image": torch.full((1, 4, 32, 32, 32), float("nan")), "label": label}
    trainer.data_loader = [bad]
    trainer.state.max_epochs = 2
    with pytest.raises(FloatingPointError, match=r"generator loss is nan at epoch 2, iteration 2"):
        trainer.run()
    assert (tmp_path / "checkpoint_epoch=1.pt").read_bytes() == checkpoint
    assert not (tmp_path / "checkpoint_epoch=2.pt").exists()
    for key, value in trainer.network.state_dict().items():  # stopped before any update
        torch.testing.assert_close(value, weights[key], equal_nan=True)


def first_losses(data_dir: Path, bundle_root: Path, seed: int, count: int = 3) -> list[dict]:
    workflow = training_workflow(dataset_dir=data_dir, bundle_root=bundle_root, max_epochs=2, random_seed=seed)
    trainer = workflow.parser.get_parsed_content("train#trainer")
    losses: list[dict] = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: losses.append(gan_losses(e.state.output)))
    workflow.run()
    return losses[:count]


def test_same_seed_gives_the_same_losses(data_dir: Path, tmp_path: Path) -> None:
    first = first_losses(data_dir, tmp_path / "a", seed=7)
    assert first_losses(data_dir, tmp_path / "b", seed=7) == first
    assert first_losses(data_dir, tmp_path / "c", seed=8) != first
