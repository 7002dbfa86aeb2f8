"""The cached datasets of training and validation: in memory (MONAI's ``CacheDataset``) or on disk
(``PersistentDataset``), chosen by one setting, so that a data set larger than memory is still read from NIfTI
only once.

A function rather than two config entries: MONAI Label overrides ``train#dataset#data``, which must stay an
argument of the one component at ``train#dataset`` whichever cache is used.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

from monai.data import CacheDataset, PersistentDataset

from bundle.datalist import unset_path

__all__ = ["cached_dataset"]


def cached_dataset(
    data: Sequence[Any],
    transform: Callable,
    cache_rate: float = 1.0,
    cache_dir: str | os.PathLike[str] | None = None,
    num_workers: int = 0,
    progress: bool = True,
) -> CacheDataset | PersistentDataset:
    """The dataset of ``data`` whose deterministic transforms (up to the first random one) are computed once.

    Args:
        data: the cases (dicts of file paths).
        transform: the preprocessing; what comes before its first random transform is cached.
        cache_rate: with no ``cache_dir``, the fraction of cases cached in memory (``CacheDataset``; 0: none).
        cache_dir: a folder for an on-disk cache (``PersistentDataset``): every case's deterministic result is
            written there on first use and read from it afterwards, in this run and the next ones. For data that
            does not fit in memory; ``null`` / ``none`` on the command line: the memory cache.
        num_workers: threads that fill the memory cache.
        progress: a progress bar while the memory cache fills.
    """
    if not unset_path(cache_dir):
        os.makedirs(cache_dir, exist_ok=True)
        return PersistentDataset(data=data, transform=transform, cache_dir=cache_dir)
    if not 0.0 <= float(cache_rate) <= 1.0:
        raise ValueError(f"cache_rate must be between 0 and 1, got {cache_rate!r}")
    return CacheDataset(data=data, transform=transform, cache_rate=cache_rate, num_workers=num_workers,
                        progress=progress)  # fmt: skip
