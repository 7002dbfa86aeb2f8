"""Checkpoints that survive crashes: atomic writes, resuming from the last complete one, no silent overwrites."""

from __future__ import annotations

import errno
import logging
import os
import re
import socket
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint
from monai.handlers import CheckpointLoader, CheckpointSaver
from torch.optim.lr_scheduler import LRScheduler, PolynomialLR

from bundle.determinism import EpochSeeder, RunIdentity

__all__ = [
    "AtomicCheckpointSaver",
    "NamedCheckpointLoader",
    "ValidationState",
    "check_writable_folder",
    "ensure_writable",
    "lock_run_dir",
    "prepare_run_dirs",
    "start_training",
    "training_checkpoints",
    "unlock_run_dir",
]

logger = logging.getLogger(__name__)
TRAINING_CHECKPOINT = re.compile(r"^checkpoint_epoch=(\d+)\.pt$")  # the interval checkpoints of CheckpointSaver
PARTIAL_WRITE = re.compile(r"^tmp[a-z0-9_]{8}$")  # tempfile.NamedTemporaryFile's names: ignite's atomic writes
#: what validation writes at its best epoch: the generator alone (evaluation, inference, MONAI Label) and the
#: discriminator of that epoch (the quality check); an earlier run's copies are stale beside a new run's model
BEST_MODEL_NAMES = ("model.pt", "discriminator.pt")


class AtomicCheckpointSaver(CheckpointSaver):
    """MONAI's ``CheckpointSaver`` writing each file under a temporary name and renaming it when complete.

    MONAI turns ignite's atomic writes off because they used to leave files readable by their owner only; ignite
    0.5 now adds group and other read permission after the rename. A crash, even ``kill -9`` during a write,
    therefore never leaves a truncated file under a checkpoint's name.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for checkpoint in (self._final_checkpoint, self._key_metric_checkpoint, self._interval_checkpoint):
            if checkpoint is None:
                continue
            checkpoint.save_handler._atomic = True  # ignite's DiskSaver flag, set by MONAI to False
            if checkpoint.save_handler.filename is not None:
                # a fixed name (models/model.pt): ignite removes the previous file before it writes the new one,
                # which leaves no best model at all if the process dies in between; the atomic rename replaces
                # the file in one step, so the removal is left out
                checkpoint.save_handler.remove = _keep_until_replaced
            else:
                # the rotation of checkpoint_epoch=N.pt: a file it remembers may already be gone (deleted by the
                # earlier process of a resumed run, or by hand); skipping it is all there is to do
                checkpoint.save_handler.remove = _remove_if_present(checkpoint.save_handler)

    @property
    def key_metric_filename(self) -> str | None:
        """The fixed file name of the best-metric checkpoint (``model.pt``), or None."""
        checkpoint = self._key_metric_checkpoint
        return None if checkpoint is None else checkpoint.save_handler.filename

    def state_dict(self) -> dict[str, Any]:
        """What the best-metric saver has saved (score and file name), for :meth:`load_state_dict` on resume."""
        return {} if self._key_metric_checkpoint is None else dict(self._key_metric_checkpoint.state_dict())


def _keep_until_replaced(filename: str) -> None:
    """The ``remove`` of a fixed-name saver: nothing to do, the next atomic write replaces the file."""


def _remove_if_present(save_handler: Any) -> Callable[[str], None]:
    """``save_handler.remove`` that skips, with a debug line, a file that no longer exists."""
    remove = save_handler.remove

    def remove_if_present(filename: str) -> None:
        try:
            remove(filename)
        except FileNotFoundError:
            path = Path(save_handler.dirname) / filename
            logger.debug(f"old checkpoint {path} is already gone (removed by an earlier process?): nothing to remove")

    return remove_if_present


class ValidationState:
    """The best validation so far, as part of a training checkpoint, so that a resumed run goes on from it.

    It holds the evaluator's best metric and its epoch, and the score each best-metric saver among the validation
    handlers has saved (``models/model.pt``, ``models/discriminator.pt``). Without it a resumed run would take its
    first validation for a new best and replace the best model of the run before the crash with a worse one.

    Args:
        evaluator: the validation evaluator (its ``state.best_metric`` and ``state.best_metric_epoch``).
        handlers: the evaluator's handlers; the :class:`AtomicCheckpointSaver` ones with a fixed key-metric file
            name are tracked by that name. Savers missing on this process (disabled on ranks > 0) are skipped.
    """

    def __init__(self, evaluator: Engine, handlers: Sequence[Any]) -> None:
        self.evaluator = evaluator
        self.savers = {
            h.key_metric_filename: h for h in handlers if isinstance(h, AtomicCheckpointSaver) and h.key_metric_filename
        }

    def state_dict(self) -> dict[str, Any]:
        state = self.evaluator.state
        return {
            "best_metric": float(state.best_metric),
            "best_metric_epoch": int(state.best_metric_epoch),
            "savers": {name: saver.state_dict() for name, saver in self.savers.items()},
        }

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        self.evaluator.state.best_metric = state_dict["best_metric"]
        self.evaluator.state.best_metric_epoch = state_dict["best_metric_epoch"]
        for name, saver in self.savers.items():
            if state_dict["savers"].get(name):
                saver.load_state_dict(state_dict["savers"][name])


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
            logger.warning(f"skipping unreadable checkpoint {path} for the one before it: {error}")
    raise RuntimeError(f"none of the checkpoints {[str(p) for p in checkpoints]} can be read")


def check_writable_folder(folder: str | Path) -> None:
    """Raises naming ``folder`` if files cannot be written there (it, or its nearest existing parent, if absent),
    without making it: for outputs written at the end of a run, checked at its start."""
    existing = os.path.abspath(folder)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing) or not os.access(existing, os.W_OK | os.X_OK):
        raise PermissionError(f"output folder {folder} cannot be written ({existing} is not a writable folder)")


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


#: the folders this process trains into, with the open lock file of each (see :func:`lock_run_dir`)
_RUN_LOCKS: dict[Path, Any] = {}
LOCK_NAME = ".training.lock"


def lock_run_dir(ckpt_dir: str | Path) -> None:
    """Makes this process the only one training into ``ckpt_dir`` until its training completes or it exits.

    Two processes writing and rotating the same checkpoints corrupt each other's bookkeeping: a process killed
    through its launcher (``kill -9`` of a shell, of ``scripts/demo.py``) can go on training while a resume starts.
    An exclusive lock on ``ckpt_dir/.training.lock`` is held for the run; the kernel releases it when the process
    dies, even by SIGKILL, so a stale lock file never blocks. A second process gets an error naming the
    holder's pid. On a file system without locks a warning is logged and training goes on unlocked.
    """
    import fcntl  # POSIX; the bundle's training runs on Linux

    folder = Path(ckpt_dir).resolve()
    if folder in _RUN_LOCKS:
        return
    path = folder / LOCK_NAME
    handle = path.open("a+")
    try:
        # a POSIX record lock, not flock: it belongs to this process alone, so the data loader workers it forks do
        # not hold it on after it is killed
        fcntl.lockf(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        if error.errno in (errno.EACCES, errno.EAGAIN):
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise RuntimeError(
                f"another process ({holder}) is training into {folder} ({path} is locked): stop it first "
                "(a run killed through its launcher may still be running), then resume with --resume true"
            ) from None
        logger.warning(f"cannot lock {path} ({error}): nothing keeps a second process from training into {folder}")
        handle.close()
        return
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
    handle.flush()
    _RUN_LOCKS[folder] = handle


def unlock_run_dir(ckpt_dir: str | Path) -> None:
    """Ends :func:`lock_run_dir` (at the end of training): the lock file is removed and released."""
    handle = _RUN_LOCKS.pop(Path(ckpt_dir).resolve(), None)
    if handle is not None:
        Path(handle.name).unlink(missing_ok=True)
        handle.close()


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
            unless ``resume`` (continue that run) or ``overwrite`` (delete its checkpoints and start afresh). If
            another process is training into it, training stops with an error naming that process
            (:func:`lock_run_dir`).
        other_dirs: further output folders (logs) that must be writable.
        keep_best_model: with ``overwrite``, keep ``model.pt`` and ``discriminator.pt``: MONAI Label loads
            ``model.pt`` as the pretrained weights of its next training, which then replaces both with that
            training's best generator and its discriminator.
    """
    if resume and overwrite:
        raise ValueError("resume and overwrite are both true: choose one.")
    for folder in (ckpt_dir, *other_dirs):
        ensure_writable(folder)
    ckpt_dir = Path(ckpt_dir)
    lock_run_dir(ckpt_dir)
    try:
        _check_earlier_run(ckpt_dir, resume, overwrite, keep_best_model)
        _remove_partial_writes(ckpt_dir)
    except BaseException:
        unlock_run_dir(ckpt_dir)  # this run stops here: the folder is free
        raise


def _remove_partial_writes(ckpt_dir: Path) -> None:
    """Deletes the temporary files of checkpoint writes that a killed process left (``tmpXXXXXXXX``, ignite's atomic
    write), each up to a checkpoint's size; only this process writes into ``ckpt_dir`` (:func:`lock_run_dir`)."""
    for path in sorted(ckpt_dir.iterdir()):
        if PARTIAL_WRITE.match(path.name) and path.is_file():
            path.unlink()
            logger.info(f"deleted {path}: a checkpoint write that an earlier process did not finish")


def _check_earlier_run(ckpt_dir: Path, resume: bool, overwrite: bool, keep_best_model: bool) -> None:
    checkpoints = training_checkpoints(ckpt_dir)
    if resume:
        if not checkpoints:
            raise FileNotFoundError(
                f"resume is true but {ckpt_dir} holds no training checkpoint (checkpoint_epoch=N.pt)"
            )
        return
    best = [] if keep_best_model else [ckpt_dir / name for name in BEST_MODEL_NAMES]
    earlier = checkpoints + [p for p in best if p.is_file()]
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
    epoch_seeder: EpochSeeder | None = None,
) -> None:
    """Attaches the checkpoint saver (and the epoch seeder) to ``trainer`` and, with ``resume``, restores the newest
    complete checkpoint.

    Every object in ``checkpoint_objects`` (networks, optimizers, scalers, the trainer with its epoch and iteration
    counters, the best validation, the run's identity) is restored; a checkpoint that cannot be read is skipped for
    the one before it, with a warning. With ``epoch_seeder`` every random state is derived from (seed, epoch) at the
    start of each epoch, so the resumed epochs draw what the uninterrupted run draws. Run after
    :func:`prepare_run_dirs`.
    """
    checkpoints = training_checkpoints(ckpt_dir)
    if resume:
        path, state = _load_latest(checkpoints)
        max_epochs = trainer.state.max_epochs
        # written before the best validation, the run identity or the learning-rate schedule was part of a
        # checkpoint: resumed without them
        optional = (ValidationState, RunIdentity, LRScheduler)
        unsaved = [k for k, v in checkpoint_objects.items() if isinstance(v, optional) and k not in state]
        to_load = {k: v for k, v in checkpoint_objects.items() if k not in unsaved}
        for key in unsaved:
            if isinstance(checkpoint_objects[key], ValidationState):
                logger.warning(
                    f"checkpoint {path} holds no best validation: the first validation of this run "
                    "counts as the best so far and replaces the best model (model.pt, discriminator.pt)"
                )
            elif isinstance(checkpoint_objects[key], LRScheduler):
                logger.warning(f"checkpoint {path} holds no {key} state: its learning rate schedule starts again "
                               "from the first epoch (no change for the default constant rate)")  # fmt: skip
            else:
                logger.warning(f"checkpoint {path} holds no seed and data of its run: they cannot be checked, and the "
                               "resumed epochs need not draw the random numbers of an uninterrupted run")  # fmt: skip
        for key, scheduler in to_load.items():
            if not isinstance(scheduler, PolynomialLR):
                continue
            # a decay fixed to the run's length cannot stretch to another: the rate would stay at 0 past the old end
            saved_end = state[key].get("total_iters", max_epochs)
            if saved_end != max_epochs:
                raise ValueError(
                    f"checkpoint {path}: its {key} decays the learning rate to 0 at epoch {saved_end}, max_epochs is "
                    f"{max_epochs}; resume with --max_epochs {saved_end}, or start a new run for a longer schedule."
                )
        try:
            Checkpoint.load_objects(to_load=to_load, checkpoint=state, strict=True)
        except (RuntimeError, KeyError, ValueError) as error:
            raise RuntimeError(f"checkpoint {path} does not fit this training run: {error}") from error
        if trainer.state.epoch >= max_epochs:
            raise ValueError(
                f"checkpoint {path} is at epoch {trainer.state.epoch}, max_epochs is {max_epochs}: nothing to "
                "resume; set max_epochs higher to train further."
            )
        trainer.state.max_epochs = max_epochs
        # the saver keeps the last n_saved files: let it count the earlier run's files too (ignite's state format);
        # one of them that is gone by the time it is rotated out is skipped (AtomicCheckpointSaver)
        if checkpoint_saver._interval_checkpoint is not None:
            saved = [(int(TRAINING_CHECKPOINT.match(p.name).group(1)), p.name) for p in checkpoints]
            checkpoint_saver._interval_checkpoint.load_state_dict({"_saved": saved})
        logger.info(f"resuming from {path}: epoch {trainer.state.epoch}, iteration {trainer.state.iteration} "
                    f"(checkpoints found: {', '.join(p.name for p in checkpoints)})")  # fmt: skip
    if epoch_seeder is not None:
        epoch_seeder.attach(trainer)
    checkpoint_saver.attach(trainer)
    # the folder is free for the next run once this one completes (a crash frees it when the process exits)
    trainer.add_event_handler(Events.COMPLETED, lambda _: unlock_run_dir(ckpt_dir))
