"""Checkpoints that survive crashes: atomic writes, resuming from the last complete one, no silent overwrites."""

from __future__ import annotations

import logging
import re
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine
from ignite.handlers import Checkpoint
from monai.handlers import CheckpointLoader, CheckpointSaver

__all__ = [
    "AtomicCheckpointSaver",
    "NamedCheckpointLoader",
    "ensure_writable",
    "prepare_run_dirs",
    "start_training",
    "training_checkpoints",
]

logger = logging.getLogger(__name__)
TRAINING_CHECKPOINT = re.compile(r"^checkpoint_epoch=(\d+)\.pt$")  # the interval checkpoints of CheckpointSaver
BEST_MODEL_NAME = "model.pt"


class AtomicCheckpointSaver(CheckpointSaver):
    """MONAI's ``CheckpointSaver`` writing each file under a temporary name and renaming it when complete.

    MONAI turns ignite's atomic writes off because they used to leave files readable by their owner only; ignite
    0.5 now adds group and other read permission after the rename. A crash, even ``kill -9`` during a write,
    therefore never leaves a truncated file under a checkpoint's name.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for checkpoint in (self._final_checkpoint, self._key_metric_checkpoint, self._interval_checkpoint):
            if checkpoint is not None:
                checkpoint.save_handler._atomic = True  # ignite's DiskSaver flag, set by MONAI to False


class NamedCheckpointLoader(CheckpointLoader):
    """MONAI's ``CheckpointLoader`` (``weights_only`` loading) whose errors name the checkpoint file."""

    def __call__(self, engine: Engine) -> None:
        if not Path(self.load_path).is_file():
            raise FileNotFoundError(f"checkpoint {self.load_path} does not exist")
        try:
            super().__call__(engine)
        except RuntimeError as error:  # torch names the missing, unexpected and mismatched keys
            raise RuntimeError(f"checkpoint {self.load_path} does not fit the network: {error}") from error


def training_checkpoints(ckpt_dir: str | Path) -> list[Path]:
    """The training checkpoints ``checkpoint_epoch=N.pt`` in ``ckpt_dir``, oldest epoch first."""
    folder = Path(ckpt_dir)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := TRAINING_CHECKPOINT.match(p.name))]
    return [path for _, path in sorted(found)]


def _load_latest(checkpoints: list[Path]) -> tuple[Path, Mapping]:
    """The newest checkpoint that loads; one that does not (e.g. from a writer that was not atomic) is skipped."""
    for path in reversed(checkpoints):
        try:
            return path, torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # noqa: BLE001  any unreadable file falls back to the previous checkpoint
            logger.warning(f"skipping unreadable checkpoint {path}: {error}")
    raise RuntimeError(f"none of the checkpoints {[str(p) for p in checkpoints]} can be read")


def ensure_writable(folder: str | Path) -> Path:
    """Creates ``folder`` if needed and checks that files can be written in it; the error names the folder."""
    path = Path(folder)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as error:
        raise PermissionError(f"output folder {path} cannot be written: {error.strerror or error}") from error
    return path


def prepare_run_dirs(
    ckpt_dir: str | Path,
    other_dirs: Sequence[str | Path] = (),
    resume: bool = False,
    overwrite: bool = False,
    keep_best_model: bool = False,
) -> None:
    """The first training step, before any data is read: output folders writable, earlier runs never overwritten.

    Args:
        ckpt_dir: where checkpoints go. If it holds an earlier run's checkpoints, training stops with an error
            unless ``resume`` (continue that run) or ``overwrite`` (delete its checkpoints and start afresh).
        other_dirs: further output folders (logs) that must be writable.
        keep_best_model: with ``overwrite``, keep ``model.pt``: MONAI Label loads it as the pretrained weights of
            its next training, which then replaces it with that training's best generator.
    """
    if resume and overwrite:
        raise ValueError("resume and overwrite are both true: choose one.")
    for folder in (ckpt_dir, *other_dirs):
        ensure_writable(folder)
    ckpt_dir = Path(ckpt_dir)
    checkpoints = training_checkpoints(ckpt_dir)
    if resume:
        if not checkpoints:
            raise FileNotFoundError(f"resume is true but {ckpt_dir} holds no training checkpoint (checkpoint_epoch=N.pt)")
        return
    earlier = checkpoints + [p for p in [ckpt_dir / BEST_MODEL_NAME] if p.is_file() and not keep_best_model]
    if earlier and not overwrite:
        raise FileExistsError(
            f"{ckpt_dir} holds checkpoints of an earlier run ({', '.join(p.name for p in earlier)}): pass "
            "--resume true to continue it or --overwrite true to replace them."
        )
    for path in earlier:
        path.unlink()
        logger.info(f"overwrite is true: deleted {path}")


def start_training(
    trainer: Engine,
    checkpoint_saver: AtomicCheckpointSaver,
    checkpoint_objects: dict[str, Any],
    ckpt_dir: str | Path,
    resume: bool = False,
) -> None:
    """Attaches the checkpoint saver to ``trainer`` and, with ``resume``, restores the last complete checkpoint.

    Every object in ``checkpoint_objects`` (networks, optimizers, scalers, the trainer with its epoch and iteration
    counters) is restored; a checkpoint that cannot be read is skipped for the one before it. Run after
    :func:`prepare_run_dirs`.
    """
    checkpoints = training_checkpoints(ckpt_dir)
    if resume:
        path, state = _load_latest(checkpoints)
        max_epochs = trainer.state.max_epochs
        try:
            Checkpoint.load_objects(to_load=checkpoint_objects, checkpoint=state, strict=True)
        except (RuntimeError, KeyError, ValueError) as error:
            raise RuntimeError(f"checkpoint {path} does not fit this training run: {error}") from error
        if trainer.state.epoch >= max_epochs:
            raise ValueError(
                f"checkpoint {path} is at epoch {trainer.state.epoch}, max_epochs is {max_epochs}: nothing to "
                "resume; set max_epochs higher to train further."
            )
        trainer.state.max_epochs = max_epochs
        # the saver keeps the last n_saved files: let it count the earlier run's files too (ignite's state format)
        if checkpoint_saver._interval_checkpoint is not None:
            saved = [(int(TRAINING_CHECKPOINT.match(p.name).group(1)), p.name) for p in checkpoints]
            checkpoint_saver._interval_checkpoint.load_state_dict({"_saved": saved})
        logger.info(f"resuming from {path}: epoch {trainer.state.epoch}, iteration {trainer.state.iteration}")
    checkpoint_saver.attach(trainer)
