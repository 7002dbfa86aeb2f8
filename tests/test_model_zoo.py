"""The MONAI Model Zoo's pre-merge checks of a bundle, run offline on this one.

Each test reproduces one step of the zoo's CI (Project-MONAI/model-zoo, ``ci/verify_bundle.py``,
``ci/run_premerge_cpu.sh``, ``ci/unit_tests/``) with the same MONAI entry points and the zoo's defaults.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from monai.bundle.scripts import _get_fake_spatial_shape

from bundle.networks import Vox2VoxDiscriminator, Vox2VoxGenerator

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
META_FILE = CONFIGS / "metadata.json"


def metadata() -> dict:
    return json.loads(META_FILE.read_text())


def run(cmd: list[str], cwd: Path = ROOT) -> subprocess.CompletedProcess:
    """Run a command as the zoo's CI does (a subprocess, ``CI=true``); fail with its output."""
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env={**os.environ, "CI": "true"})
    assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


# ---- verify_net_in_out: ci/verify_bundle.py verify_data_shape, MONAI's defaults (n=1, p=1, any=1) -------------


def test_verify_net_in_out_at_the_zoo_defaults() -> None:
    """The zoo's call: no --n, no overrides, the paper-sized generator, on the smallest declared shape."""
    run([sys.executable, "-m", "monai.bundle", "verify_net_in_out", "network_def", "--meta_file", str(META_FILE),
         "--config_file", str(CONFIGS / "inference.yaml"), "--bundle_root", str(ROOT)])  # fmt: skip


@pytest.mark.parametrize("n", [1, 2, 3])
def test_declared_shapes_are_what_both_networks_accept(n: int) -> None:
    """Every n of the declared patterns runs both networks (train mode, as in training) and gives the declared
    output shapes; the patterns are read as verify_net_in_out reads them."""
    meta = metadata()
    image = meta["network_data_format"]["inputs"]["image"]
    pred = meta["network_data_format"]["outputs"]["pred"]
    shape = _get_fake_spatial_shape(image["spatial_shape"], n=n)
    assert _get_fake_spatial_shape(pred["spatial_shape"], n=n) == shape
    torch.manual_seed(0)
    generator = Vox2VoxGenerator(features=2).train()
    assert generator(torch.rand(1, image["num_channels"], *shape)).shape == (1, pred["num_channels"], *shape)
    d_format = meta["discriminator_data_format"]
    d_in, d_out = d_format["inputs"]["image"], d_format["outputs"]["pred"]
    d_shape = _get_fake_spatial_shape(d_in["spatial_shape"], n=n)
    logits = Vox2VoxDiscriminator(in_channels=d_in["num_channels"], channels=2).train()(torch.rand(1, 8, *d_shape))
    assert logits[-1].shape == (1, d_out["num_channels"], *_get_fake_spatial_shape(d_out["spatial_shape"], n=n))
