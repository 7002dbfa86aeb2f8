"""Helpers shared by the tests (importable because pytest puts this folder on sys.path)."""

from __future__ import annotations

from typing import Any

#: a tiny model and patch, so a run takes seconds through a user's code paths, on the 4 mm test data at its own
#: voxel size (resampled to BraTS' 1 mm it would be 64x the voxels)
TINY_MODEL: dict[str, Any] = {"features": 4, "discriminator_channels": 4, "patch_size": [32, 32, 32], "num_workers": 0,
                              "target_spacing": [4.0, 4.0, 4.0]}  # fmt: skip


def cli_overrides(overrides: dict[str, Any]) -> list[str]:
    """``{"fold": 1, "patch_size": [32, 32, 32]}`` as command-line arguments: ``--fold 1 --patch_size [32,32,32]``."""
    return [arg for key, value in overrides.items() for arg in (f"--{key}", str(value).replace(" ", ""))]


def error_text(error: BaseException | None) -> str:
    """The messages of an exception and of every exception it was raised from (config wrappers chain them)."""
    messages = []
    while error is not None:
        messages.append(str(error))
        error = error.__cause__ or error.__context__
    return "\n".join(messages)
