"""Randomness that a resumed run reproduces: every random state of an epoch derived from (seed, epoch, rank).

A run killed after the checkpoint of epoch k and resumed must draw, from epoch k + 1 on, what the run that was never
stopped draws: the same data order, patches, augmentations and dropout masks. Saving and restoring every generator
(python, numpy, torch, each transform's, the sampler's, every data loader worker's) is fragile; like
pytorch-ignite's ``DeterministicEngine`` (which calls ``manual_seed(seed + epoch)`` at each dataflow restart), every
state is instead *derived* at the start of each epoch from the run's seed, the epoch and the DDP rank, and nothing
that happened before the epoch matters:

- python's ``random``, numpy's global generator and torch's (CPU and every CUDA device): the data order (the
  sampler's seed is drawn from torch's generator when an epoch's data loader iterator is made), the seeds of the
  data loader workers (likewise; MONAI's ``worker_init_fn`` reseeds every random transform of a worker from it) and
  the dropout masks;
- every MONAI ``Randomizable`` in the training dataset's pipeline, found by walking the object tree (``Compose``,
  ``OneOf``, dictionary transforms and the array transforms inside them, any nesting), for ``num_workers`` 0, where
  the transforms run in this process.

:class:`RunIdentity` records in each checkpoint what a resume must share with the run it continues to be exact (the
seed, the training cases), and refuses a resume that differs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.transforms import Randomizable, Transform
from monai.utils import MAX_SEED
from torch.utils.data import Dataset

__all__ = [
    "EpochSeeder",
    "RunIdentity",
    "check_seed",
    "deterministic_kernels",
    "epoch_seeds",
    "randomizables",
    "training_data_digest",
]

logger = logging.getLogger(__name__)


def check_seed(seed: Any) -> int | None:
    """``seed`` as an int in [0, 2**32), or None (not seeded); anything else is an error naming ``random_seed``."""
    if seed is None or (isinstance(seed, str) and seed.strip().lower() in ("none", "null")):
        return None
    try:
        value = int(seed)
    except (TypeError, ValueError):
        raise ValueError(f"random_seed must be an integer in [0, {MAX_SEED}) or null, got {seed!r}") from None
    if value != seed and str(value) != str(seed).strip() or not 0 <= value < MAX_SEED:
        raise ValueError(f"random_seed must be an integer in [0, {MAX_SEED}) or null, got {seed!r}")
    return value


def epoch_seeds(seed: int, epoch: int, rank: int = 0, count: int = 1) -> list[int]:
    """``count`` independent 32-bit seeds of ``epoch`` (1-based) on DDP ``rank``, hashed from the three by numpy's
    ``SeedSequence``, so that no two (seed, epoch, rank) share a stream, as ``seed + epoch`` would (seed 0 at
    epoch 2 is seed 1 at epoch 1)."""
    return [int(s) for s in np.random.SeedSequence([seed, epoch, rank]).generate_state(count, dtype=np.uint32)]


#: values the walk never goes into
_LEAVES = (str, bytes, int, float, bool, type(None), torch.Tensor, np.ndarray)


def _children(obj: Any) -> Iterator[Any]:
    if isinstance(obj, Mapping):
        yield from obj.values()
    elif isinstance(obj, (list, tuple)):
        yield from obj
    elif hasattr(obj, "__dict__"):
        yield from vars(obj).values()


def randomizables(root: Any) -> list[Randomizable]:
    """Every MONAI ``Randomizable`` reachable from ``root`` (a dataset or a transform), each once, in a fixed order
    (depth first, attributes and list items in their order).

    The walk goes through lists, tuples and mappings, and into the attributes of datasets, of transforms and of
    ``Randomizable`` objects, so it finds what a ``Compose`` holds, a ``OneOf``'s choices, the array transform inside
    a dictionary transform and any nesting of them; it does not go into tensors, arrays or other objects (the cached
    data of a ``CacheDataset`` is a list of dictionaries of tensors: walked, nothing found).
    """
    found: list[Randomizable] = []
    seen: set[int] = set()
    stack = [root]
    while stack:
        obj = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, Randomizable):
            found.append(obj)
        if obj is root or isinstance(obj, (Mapping, list, tuple, Transform, Randomizable, Dataset)):
            stack.extend(reversed([c for c in _children(obj) if not isinstance(c, _LEAVES)]))
    return found


def _rank() -> int:
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    return torch.distributed.get_rank() if distributed else 0


class EpochSeeder:
    """At the start of every epoch, every random state of training from (``seed``, epoch, DDP rank).

    Attach it to the trainer (``bundle.checkpoints.start_training`` does); the data loader's iterator of an epoch is
    made after ``EPOCH_STARTED``, so its order and its workers' seeds come from the reseeded generators.

    Args:
        seed: the run's ``random_seed``; None: nothing is reseeded (and a resumed run is not exact).
        dataset: the training dataset: each ``Randomizable`` in it (its transforms, in the order of
            :func:`randomizables`) gets a seed of its own from :func:`epoch_seeds`.
    """

    def __init__(self, seed: int | None, dataset: Any) -> None:
        self.seed = check_seed(seed)
        self.dataset = dataset
        self.transforms = randomizables(dataset)

    def attach(self, engine: Engine) -> None:
        if self.seed is not None:
            engine.add_event_handler(Events.EPOCH_STARTED, self)

    def seed_epoch(self, epoch: int) -> int:
        """Reseeds everything for ``epoch``; returns the epoch's seed."""
        seed, *transform_seeds = epoch_seeds(self.seed, epoch, _rank(), count=1 + len(self.transforms))
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)  # the CPU generator and every CUDA device's
        for transform, transform_seed in zip(self.transforms, transform_seeds):
            transform.set_random_state(seed=transform_seed)
        logger.debug(f"epoch {epoch}: seed {seed} ({len(self.transforms)} random transforms reseeded)")
        return seed

    def __call__(self, engine: Engine) -> None:
        self.seed_epoch(engine.state.epoch)


def _file_signature(value: Any) -> Any:
    """A case's file paths as (file name, size): the same data moved to another folder keeps its signature."""
    if isinstance(value, (str, os.PathLike)) and os.path.isfile(value):
        return [os.path.basename(value), os.path.getsize(value)]
    if isinstance(value, Mapping):
        return {str(k): _file_signature(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple)):
        return [_file_signature(v) for v in value]
    return value if isinstance(value, (int, float, bool, type(None))) else str(value)


def training_data_digest(cases: Sequence[Any]) -> str:
    """sha256 of the training cases in their order, each file by its name and size (not read: BraTS is large)."""
    text = json.dumps([_file_signature(case) for case in cases], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


class RunIdentity:
    """What a resumed run must share with the run it continues, stored in every training checkpoint.

    ``load_state_dict`` (on resume) refuses a different ``random_seed`` or different training cases (other files,
    another fold, another order: :func:`training_data_digest`) with an error naming the values; a different
    ``num_workers`` or number of DDP ranks is resumed with a warning that the run is no longer exact (the workers'
    and ranks' random streams differ).
    """

    def __init__(self, seed: Any, cases: Sequence[Any], num_workers: int = 0) -> None:
        self.seed = check_seed(seed)
        self.cases = cases
        self.num_workers = int(num_workers)
        self._digest: str | None = None

    @property
    def digest(self) -> str:
        """:func:`training_data_digest` of the cases, computed once (the files are not expected to change)."""
        if self._digest is None:
            self._digest = training_data_digest(self.cases)
        return self._digest

    def state_dict(self) -> dict[str, Any]:
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        world = torch.distributed.get_world_size() if distributed else 1
        return {"random_seed": self.seed, "training_data": self.digest,
                "num_cases": len(self.cases), "num_workers": self.num_workers, "world_size": world}  # fmt: skip

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        here = self.state_dict()
        if state_dict["random_seed"] != here["random_seed"]:
            raise ValueError(
                f"it was written by a run with random_seed {state_dict['random_seed']}, this run has random_seed "
                f"{here['random_seed']}: a resume continues the same run, so pass --random_seed "
                f"{state_dict['random_seed']}, or start a new run with --overwrite true"
            )
        if state_dict["training_data"] != here["training_data"]:
            raise ValueError(
                f"it was written by a run on other training data ({state_dict['num_cases']} cases, digest "
                f"{state_dict['training_data'][:12]}), this run has {here['num_cases']} cases (digest "
                f"{here['training_data'][:12]}): check --dataset_dir, --datalist_file, --fold and --num_folds, or "
                "start a new run with --overwrite true"
            )
        for key in ("num_workers", "world_size"):
            if state_dict[key] != here[key]:
                logger.warning(
                    f"the checkpoint's run had {key} {state_dict[key]}, this one has {here[key]}: it "
                    "resumes, but no longer draws the random numbers of the uninterrupted run"
                )


def deterministic_kernels(enabled: bool) -> None:
    """``--deterministic true``: torch's deterministic algorithms (an error at any operation without one) and, for
    cuBLAS, fixed workspaces (``CUBLAS_WORKSPACE_CONFIG=:4096:8``, unless already set), for bit-exact GPU runs.

    Run before CUDA is first used (train.yaml's ``initialize``); cuDNN's timed choice of algorithms must be off too
    (train.yaml turns ``cudnn_benchmark`` off with it). False leaves torch's defaults.
    """
    if not enabled:
        return
    if "CUBLAS_WORKSPACE_CONFIG" not in os.environ:
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            logger.warning("CUDA is already in use: CUBLAS_WORKSPACE_CONFIG=:4096:8 may come too late; export it "
                           "before the run for deterministic cuBLAS")  # fmt: skip
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = ":4096:8"
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
