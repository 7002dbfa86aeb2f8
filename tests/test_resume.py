"""Resume is safe and exact: a training process killed with SIGKILL at any moment and resumed with --resume true
completes, and with --random_seed it ends with the weights of the run that was never stopped, bit for bit (CPU)."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from ignite.engine import Engine, Events
from monai.bundle import ConfigWorkflow

from bundle.checkpoints import AtomicCheckpointSaver, training_checkpoints
from bundle.demo_data import make_dataset
from bundle.determinism import EpochSeeder, randomizables
from helpers import TINY_MODEL, cli_overrides, error_text

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
EPOCHS = 4
#: 4 training cases in batches of 2 (2 iterations an epoch) with the random patches, augmentation and dropout of
#: train.yaml; validation (and the best model) at epochs 2 and 4
RUN = {**TINY_MODEL, "batch_size": 2, "num_folds": 3, "val_interval": 2, "random_seed": 3}


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """One thread here as in the killed processes (``OMP_NUM_THREADS``): the same arithmetic, and no waiting of two
    threads on a shared, loaded CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("data") / "brats"
    make_dataset(out, num_cases=6, seed=5, spacing=4.0, quiet=True)
    return out


def workflow_here(data_dir: Path, root: Path, **overrides) -> ConfigWorkflow:
    """configs/train.yaml's ``training``, initialized in this process as ``python -m monai.bundle run`` does it."""
    args = {**RUN, "max_epochs": EPOCHS, "dataset_dir": str(data_dir), "bundle_root": str(root), **overrides}
    workflow = ConfigWorkflow(config_file=str(CONFIGS / "train.yaml"), meta_file=str(CONFIGS / "metadata.json"),
                              logging_file=str(CONFIGS / "logging.conf"), workflow_type="train", run_id="training",
                              **args)  # fmt: skip
    workflow.initialize()
    return workflow


def train_here(data_dir: Path, root: Path, **overrides) -> ConfigWorkflow:
    workflow = workflow_here(data_dir, root, **overrides)
    workflow.run()
    return workflow


def launch(data_dir: Path, root: Path, **overrides) -> tuple[subprocess.Popen, Path]:
    """The same training as a process of its own, its log (one line per iteration, CI=true) in ``root/run.log``."""
    args = {**RUN, "max_epochs": EPOCHS, "dataset_dir": data_dir, "bundle_root": root, **overrides}
    cmd = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", str(CONFIGS / "train.yaml"),
           "--meta_file", str(CONFIGS / "metadata.json"), "--logging_file", str(CONFIGS / "logging.conf"),
           *cli_overrides(args)]  # fmt: skip
    root.mkdir(parents=True, exist_ok=True)
    log = root / f"run{len(list(root.glob('run*.log')))}.log"
    env = {**os.environ, "CI": "true", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    with log.open("w") as out:
        process = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=env)
    return process, log


def kill_when(
    process: subprocess.Popen, log: Path, moment: Callable[[str], bool], what: str, also: Callable[[], list[int]] = list
) -> None:
    """SIGKILL ``process`` as soon as ``moment(log text)`` holds, and first the processes whose pids ``also`` gives
    (read from the log then); fails if the process ends first."""
    deadline = time.monotonic() + 180
    while not moment(log.read_text()):
        assert process.poll() is None, f"training ended before {what}:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"no {what} after 180 s"
        time.sleep(0.001)
    for pid in also():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    process.send_signal(signal.SIGKILL)
    process.wait()


def exists(path: Path) -> Callable[[str], bool]:
    return lambda log: path.is_file()


#: when the killed process is stopped: each a condition on its folder or its log, polled every millisecond
MOMENTS: dict[str, Callable[[Path], Callable[[str], bool]]] = {
    # StatsHandler's line of the first iteration of epoch 3: the checkpoint of epoch 2 is the newest
    "during an epoch": lambda root: lambda log: f"Epoch: 3/{EPOCHS}, Iter: 1/2 --" in log,
    "right after a checkpoint": lambda root: exists(root / "models" / "checkpoint_epoch=2.pt"),
    # model.pt is written by the validation of epoch 2, which runs before that epoch's checkpoint is written
    "during validation": lambda root: exists(root / "models" / "model.pt"),
    # ignite removes checkpoint 1 before it writes checkpoint 3: killed at that removal (or just after the write)
    "during the rotation": lambda root: (
        lambda log: (
            (root / "models" / "checkpoint_epoch=2.pt").is_file()
            and not (root / "models" / "checkpoint_epoch=1.pt").is_file()
        )
    ),
}


@contextlib.contextmanager
def captured(name: str, level: int = logging.INFO) -> Iterator[io.StringIO]:
    """The lines of logger ``name`` from ``level`` on (logging.conf replaces the root's handlers, caplog's too)."""
    text, handler, logger = io.StringIO(), logging.StreamHandler(), logging.getLogger(name)
    handler.setStream(text)
    handler.setLevel(level)
    before = logger.level
    logger.addHandler(handler)
    logger.setLevel(min(level, logger.getEffectiveLevel()))
    try:
        yield text
    finally:
        logger.removeHandler(handler)
        logger.setLevel(before)


def final_weights(root: Path) -> dict[str, dict[str, torch.Tensor]]:
    state = torch.load(root / "models" / f"checkpoint_epoch={EPOCHS}.pt", weights_only=True)
    return {name: state[name] for name in ("generator", "discriminator")}


def max_difference(resumed: dict, expected: dict) -> dict[str, float]:
    return {name: max((resumed[name][k].double() - v.double()).abs().max().item() for k, v in weights.items())
            for name, weights in expected.items()}  # fmt: skip


def assert_same_weights(resumed: dict, expected: dict) -> None:
    """Every tensor of both networks equal, exactly; the message names the largest differences."""
    for name, weights in expected.items():
        assert resumed[name].keys() == weights.keys()
        same = all(torch.equal(resumed[name][k], v) for k, v in weights.items())
        assert same, f"max |difference| {max_difference(resumed, expected)}"


@pytest.fixture(scope="module")
def uninterrupted(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Callable[..., dict]:
    """The final weights of the run that is never stopped, per setting (each made once)."""
    done: dict[tuple, dict] = {}

    def weights(**overrides) -> dict:
        key = tuple(sorted(overrides.items()))
        if key not in done:
            root = tmp_path_factory.mktemp("uninterrupted")
            train_here(data_dir, root, **overrides)
            done[key] = final_weights(root)
        return done[key]

    return weights


@pytest.mark.parametrize("moment", list(MOMENTS))
def test_killed_and_resumed_equals_the_uninterrupted_run(
    moment: str, data_dir: Path, tmp_path: Path, uninterrupted: Callable[..., dict]
) -> None:
    process, log = launch(data_dir, tmp_path)
    kill_when(process, log, MOMENTS[moment](tmp_path), moment)
    newest = training_checkpoints(tmp_path / "models")[-1]
    with captured("bundle.checkpoints") as lines:
        resumed = train_here(data_dir, tmp_path, resume=True)
    assert f"resuming from {newest}: epoch" in lines.getvalue()  # the newest complete checkpoint
    assert resumed.parser.get_parsed_content("train#trainer").state.epoch == EPOCHS
    models = tmp_path / "models"
    assert [p.name for p in training_checkpoints(models)] == [f"checkpoint_epoch={e}.pt" for e in (3, 4)]
    assert not [p.name for p in models.iterdir() if p.name.startswith("tmp")]  # no unfinished write left
    assert_same_weights(final_weights(tmp_path), uninterrupted())


def test_killed_with_two_workers_and_no_cache_and_resumed_equals_the_uninterrupted_run(
    data_dir: Path, tmp_path: Path, uninterrupted: Callable[..., dict]
) -> None:
    settings = {"num_workers": 2, "cache_rate": 0}
    process, log = launch(data_dir, tmp_path, **settings)
    kill_when(process, log, MOMENTS["during an epoch"](tmp_path), "iteration 1 of epoch 3")
    assert training_checkpoints(tmp_path / "models")[-1].name == "checkpoint_epoch=2.pt"  # killed within epoch 3
    train_here(data_dir, tmp_path, resume=True, **settings)
    assert_same_weights(final_weights(tmp_path), uninterrupted(**settings))


def test_killed_twice_and_resumed_twice_equals_the_uninterrupted_run(
    data_dir: Path, tmp_path: Path, uninterrupted: Callable[..., dict]
) -> None:
    process, log = launch(data_dir, tmp_path)
    kill_when(process, log, exists(tmp_path / "models" / "checkpoint_epoch=1.pt"), "checkpoint 1")
    process, log = launch(data_dir, tmp_path, resume=True)
    kill_when(process, log, exists(tmp_path / "models" / "checkpoint_epoch=3.pt"), "checkpoint 3")
    train_here(data_dir, tmp_path, resume=True)
    assert_same_weights(final_weights(tmp_path), uninterrupted())


def test_a_poly_schedule_killed_and_resumed_continues_its_decay_exactly(
    data_dir: Path, tmp_path: Path, uninterrupted: Callable[..., dict]
) -> None:
    process, log = launch(data_dir, tmp_path, lr_schedule="poly")
    kill_when(process, log, MOMENTS["during an epoch"](tmp_path), "iteration 1 of epoch 3")
    resumed = train_here(data_dir, tmp_path, resume=True, lr_schedule="poly")
    assert_same_weights(final_weights(tmp_path), uninterrupted(lr_schedule="poly"))
    # both networks' rates went down the schedule, epoch by epoch, across the kill: after epoch 4 of 4 they are 0
    for name in ("optimizer", "d_optimizer"):
        assert resumed.parser.get_parsed_content(name).param_groups[0]["lr"] == 0.0
    state = torch.load(tmp_path / "models" / "checkpoint_epoch=3.pt", weights_only=True)
    assert state["lr_scheduler"]["last_epoch"] == state["d_lr_scheduler"]["last_epoch"] == 3


def test_a_poly_schedule_resumed_with_another_max_epochs_is_refused(data_dir: Path, tmp_path: Path) -> None:
    train_here(data_dir, tmp_path, max_epochs=1, lr_schedule="poly")
    saved = (tmp_path / "models" / "checkpoint_epoch=1.pt").read_bytes()
    with pytest.raises(Exception) as error:
        train_here(data_dir, tmp_path, max_epochs=3, resume=True, lr_schedule="poly")
    assert "its lr_scheduler decays the learning rate to 0 at epoch 1, max_epochs is 3" in error_text(error.value)
    assert (tmp_path / "models" / "checkpoint_epoch=1.pt").read_bytes() == saved
    assert training_checkpoints(tmp_path / "models")[-1].name == "checkpoint_epoch=1.pt"


def test_a_checkpoint_from_before_the_schedules_resumes_with_a_warning(data_dir: Path, tmp_path: Path) -> None:
    train_here(data_dir, tmp_path, max_epochs=1)
    path = tmp_path / "models" / "checkpoint_epoch=1.pt"
    state = torch.load(path, weights_only=True)
    torch.save({k: v for k, v in state.items() if k not in ("lr_scheduler", "d_lr_scheduler")}, path)
    with captured("bundle.checkpoints", logging.WARNING) as lines:
        resumed = train_here(data_dir, tmp_path, max_epochs=2, resume=True)
    assert f"checkpoint {path} holds no lr_scheduler state: its learning rate schedule starts again" in lines.getvalue()
    assert resumed.parser.get_parsed_content("train#trainer").state.epoch == 2


def test_a_checkpoint_the_rotation_remembers_and_that_is_gone_is_skipped(data_dir: Path, tmp_path: Path) -> None:
    """The resumed run counts the killed run's checkpoints 1 and 2 in its rotation; checkpoint 1 is deleted behind its
    back (as the killed run's own rotation did when that run was still alive, killed only through its launcher, or
    by hand). Rotating it out at epoch 3 stopped the run with FileNotFoundError; now it is skipped with a debug line."""
    process, log = launch(data_dir, tmp_path)
    kill_when(process, log, exists(tmp_path / "models" / "checkpoint_epoch=2.pt"), "checkpoint 2")
    models = tmp_path / "models"
    assert [p.name for p in training_checkpoints(models)] == ["checkpoint_epoch=1.pt", "checkpoint_epoch=2.pt"]
    workflow = workflow_here(data_dir, tmp_path, resume=True)
    trainer = workflow.parser.get_parsed_content("train#trainer")
    trainer.add_event_handler(Events.EPOCH_STARTED(once=3), lambda: (models / "checkpoint_epoch=1.pt").unlink())
    with captured("bundle.checkpoints", logging.DEBUG) as lines:
        workflow.run()
    assert trainer.state.epoch == EPOCHS
    assert f"old checkpoint {models / 'checkpoint_epoch=1.pt'} is already gone" in lines.getvalue()
    assert [p.name for p in training_checkpoints(models)] == ["checkpoint_epoch=3.pt", "checkpoint_epoch=4.pt"]


def test_a_missing_old_checkpoint_is_skipped_by_the_rotation(tmp_path: Path) -> None:
    # two objects, so that the files are named checkpoint_epoch=N.pt as training's are
    objects = {"net": torch.nn.Linear(2, 2), "other": torch.nn.Linear(2, 2)}
    saver = AtomicCheckpointSaver(str(tmp_path), objects, save_interval=1, n_saved=2, epoch_level=True)
    # what a resume from checkpoint 2 remembers, checkpoint 1 being gone
    saver._interval_checkpoint.load_state_dict({"_saved": [(1, "checkpoint_epoch=1.pt"), (2, "checkpoint_epoch=2.pt")]})
    (tmp_path / "checkpoint_epoch=2.pt").write_bytes(b"")
    engine = Engine(lambda engine, batch: None)
    engine.load_state_dict({"epoch": 2, "epoch_length": 1, "max_epochs": 3})
    saver.attach(engine)
    with captured("bundle.checkpoints", logging.DEBUG) as lines:
        engine.run([0])  # epoch 3: its checkpoint is written and checkpoint 1 rotated out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_epoch=2.pt", "checkpoint_epoch=3.pt"]
    assert f"old checkpoint {tmp_path / 'checkpoint_epoch=1.pt'} is already gone" in lines.getvalue()


def test_a_second_process_training_into_the_same_folder_is_refused(data_dir: Path, tmp_path: Path) -> None:
    """A run killed through its launcher goes on training; a second run started then would write and rotate the same
    checkpoints (what crashed resumes with FileNotFoundError). It is refused, naming the process, until that process
    is gone; the system frees the lock when it dies, even by SIGKILL."""
    first, log = launch(data_dir, tmp_path, max_epochs=100)
    lock = tmp_path / "models" / ".training.lock"
    deadline = time.monotonic() + 180
    while not (lock.is_file() and lock.read_text().startswith("pid ")):  # taken before any data is read
        assert first.poll() is None and time.monotonic() < deadline, f"no lock taken:\n{log.read_text()[-3000:]}"
        time.sleep(0.01)
    try:
        second, second_log = launch(data_dir, tmp_path, overwrite=True)
        assert second.wait(timeout=180) != 0
        assert first.poll() is None, "the first run ended before the second one was refused"
        text = second_log.read_text()
        assert f"another process (pid {first.pid} on " in text and "is training into" in text, text[-3000:]
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    train_here(data_dir, tmp_path, overwrite=True, max_epochs=1)  # free again
    assert not lock.exists()  # removed at the end of the run


@pytest.mark.parametrize(
    ("change", "message"),
    [({"random_seed": 4}, "written by a run with random_seed 3, this run has random_seed 4: a resume continues"),
     ({"fold": 1}, "written by a run on other training data (4 cases"),
     ({"random_seed": None}, "random_seed 3, this run has random_seed None")],
)  # fmt: skip
def test_a_resume_with_another_seed_or_other_data_is_refused(
    change: dict, message: str, data_dir: Path, tmp_path: Path
) -> None:
    train_here(data_dir, tmp_path, max_epochs=1)
    with pytest.raises(Exception) as error:
        train_here(data_dir, tmp_path, max_epochs=2, resume=True, **change)
    text = error_text(error.value)
    assert f"checkpoint {tmp_path / 'models' / 'checkpoint_epoch=1.pt'} does not fit this training run" in text
    assert message in text


def rng_states(seeder: EpochSeeder) -> list:
    import random

    return [random.getstate(), np.random.get_state()[1].tolist(), torch.get_rng_state().tolist(),
            *(t.R.get_state()[1].tolist() for t in seeder.transforms)]  # fmt: skip


def patch(dataset) -> torch.Tensor:
    """The image patch of the first case (RandCropByLabelClassesd gives a list of one sample)."""
    sample = dataset[0]
    return (sample[0] if isinstance(sample, list) else sample)["image"]


@pytest.mark.parametrize("augmentation", ["robust", "paper"])
def test_every_random_transform_of_the_pipeline_is_reseeded_from_seed_and_epoch(
    augmentation: str, data_dir: Path, tmp_path: Path
) -> None:
    workflow = workflow_here(data_dir, tmp_path, augmentation=augmentation, cache_rate=0)
    parser = workflow.parser
    seeder: EpochSeeder = parser.get_parsed_content("train#epoch_seeder")
    pipeline = parser.get_parsed_content("train#preprocessing")
    # the walk finds the transforms inside OneOf, nested Compose and dictionary transforms: the array transform of
    # each dictionary transform too (RandRotated holds a RandRotate); robust: 8 augmentations x 4 modalities
    names = [type(t).__name__ for t in seeder.transforms]
    expected = {"robust": {"RandCropByLabelClassesd": 1, "OneOf": 1, "RandRotated": 1, "RandRotate": 1,
                           "RandGaussianNoised": 4, "RandGaussianNoise": 4, "RandBiasFieldd": 4},
                "paper": {"RandSpatialCropd": 1, "OneOf": 1, "Rand3DElasticd": 1,
                          "RandAdjustContrastd": 1}}  # fmt: skip
    for name, count in expected[augmentation].items():
        assert names.count(name) == count, (name, names)
    assert {id(t) for t in randomizables(pipeline)} <= {id(t) for t in seeder.transforms}
    seeder.seed_epoch(5)
    at_five = rng_states(seeder)
    dataset = parser.get_parsed_content("train#dataset")
    first = patch(dataset).clone()  # draws from every generator it uses
    seeder.seed_epoch(6)
    assert rng_states(seeder) != at_five
    seeder.seed_epoch(5)
    assert rng_states(seeder) == at_five  # whatever was drawn before: (seed, epoch) alone
    assert torch.equal(patch(dataset), first)


def torchrun(data_dir: Path, root: Path, **overrides) -> tuple[subprocess.Popen, Path]:
    """The training on two CPU ranks (gloo) under torchrun, its log in ``root/torchrunN.log``."""
    args = {**RUN, "max_epochs": EPOCHS, "batch_size": 1, "dataset_dir": data_dir, "bundle_root": root, **overrides}
    configs = f"['{CONFIGS / 'train.yaml'}','{CONFIGS / 'multi_gpu_train.yaml'}']"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "monai.bundle",
           "run", "training", "--config_file", configs, "--meta_file", str(CONFIGS / "metadata.json"),
           "--logging_file", str(CONFIGS / "logging.conf"), *cli_overrides(args)]  # fmt: skip
    root.mkdir(parents=True, exist_ok=True)
    path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "CI": "true", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "PYTHONPATH": path}
    log = root / f"torchrun{len(list(root.glob('torchrun*.log')))}.log"
    with log.open("w") as out:
        return subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=env), log


def test_ddp_killed_and_resumed_on_as_many_ranks_equals_the_uninterrupted_run(data_dir: Path, tmp_path: Path) -> None:
    """Each rank draws its own stream (seed, epoch, rank); every process of the run (both ranks, then torchrun:
    torchrun starts its workers in sessions of their own, so they outlive it) killed with SIGKILL after the
    checkpoint of epoch 2, and resumed on two ranks again: the weights are those of the uninterrupted two-rank run."""
    uninterrupted, log = torchrun(data_dir, tmp_path / "uninterrupted")
    assert uninterrupted.wait(timeout=300) == 0, log.read_text()[-3000:]
    killed, log = torchrun(data_dir, tmp_path / "killed")
    kill_when(
        killed,
        log,
        exists(tmp_path / "killed" / "models" / "checkpoint_epoch=2.pt"),
        "checkpoint 2",
        also=lambda: [int(p) for p in re.findall(r"rank \d of 2, local rank \d, pid (\d+)", log.read_text())],
    )
    assert training_checkpoints(tmp_path / "killed" / "models")[-1].name == "checkpoint_epoch=2.pt"
    resumed, log = torchrun(data_dir, tmp_path / "killed", resume=True)
    assert resumed.wait(timeout=300) == 0, log.read_text()[-3000:]
    assert "resuming from " in log.read_text() and "checkpoint_epoch=2.pt: epoch 2, iteration 4" in log.read_text()
    assert_same_weights(final_weights(tmp_path / "killed"), final_weights(tmp_path / "uninterrupted"))
