"""Exports of the generator as a user runs them: ``monai.bundle ckpt_export`` (TorchScript) and ``onnx_export``.

Each export runs through ``python -m monai.bundle`` on a tiny generator (``--features 4``) with random weights
saved the way training saves them, and the exported model must give the eager model's output on new inputs.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.data import load_net_with_metadata

from bundle.networks import Vox2VoxDiscriminator, Vox2VoxGenerator

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
FEATURES = 4  # a tiny generator: exports take seconds
INPUT_SHAPE = [1, 4, 32, 32, 32]
ATOL = 1e-5
# ONNX: named input and output as in the bundle's metadata, batch and spatial sizes free, a widely supported opset
ONNX_CONVERTER_KWARGS = (
    "{'input_names': ['image'], 'output_names': ['pred'], 'opset_version': 18, 'dynamic_axes': "
    "{'image': {0: 'batch', 2: 'x', 3: 'y', 4: 'z'}, 'pred': {0: 'batch', 2: 'x', 3: 'y', 4: 'z'}}}"
)


def export_cmd(command: str, filepath: Path, ckpt_file: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "monai.bundle", command, "network_def", "--filepath", str(filepath),
            "--ckpt_file", str(ckpt_file), "--meta_file", str(CONFIGS / "metadata.json"),
            "--config_file", str(CONFIGS / "inference.yaml"), "--features", str(FEATURES), *args]  # fmt: skip


def run(cmd: list[str]) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "CI": "true"})
    assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def generator() -> Vox2VoxGenerator:
    """The eager generator with random (He-normal, seeded) weights, in eval mode (no dropout)."""
    torch.manual_seed(0)
    return Vox2VoxGenerator(features=FEATURES).eval()


@pytest.fixture(scope="module")
def weights(generator: Vox2VoxGenerator, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The generator's weights alone, as training writes ``models/model.pt``."""
    path = tmp_path_factory.mktemp("weights") / "model.pt"
    torch.save(generator.state_dict(), path)
    return path


def eager(generator: Vox2VoxGenerator, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return generator(x).numpy()


def test_ckpt_export_torchscript_matches_eager(generator: Vox2VoxGenerator, weights: Path, tmp_path: Path) -> None:
    out = tmp_path / "model.ts"
    # traced: scripting fails on the generator's forward (see test_ckpt_export_by_scripting)
    run(export_cmd("ckpt_export", out, weights, "--use_trace", "True", "--input_shape", str(INPUT_SHAPE)))
    model, meta, extra = load_net_with_metadata(str(out), more_extra_files=("inference.json",))
    # the bundle's metadata and config travel inside the TorchScript file
    assert meta["network_data_format"]["outputs"]["pred"]["num_channels"] == 4
    assert b"Vox2VoxGenerator" in extra["inference.json"]
    torch.manual_seed(1)
    for shape in (INPUT_SHAPE, [2, 4, 48, 32, 64]):  # the trace's size, and another batch and grid
        x = torch.rand(shape)
        with torch.no_grad():
            exported = model(x).numpy()
        assert exported.shape == tuple(shape)
        np.testing.assert_allclose(exported, eager(generator, x), rtol=0, atol=ATOL)


def test_ckpt_export_by_scripting(generator: Vox2VoxGenerator, weights: Path, tmp_path: Path) -> None:
    """The Model Zoo's plain ``ckpt_export`` (torch.jit.script, no input shape needed)."""
    out = tmp_path / "model.ts"
    run(export_cmd("ckpt_export", out, weights))
    model = torch.jit.load(str(out))
    x = torch.rand(INPUT_SHAPE)
    with torch.no_grad():
        np.testing.assert_allclose(model(x).numpy(), eager(generator, x), rtol=0, atol=ATOL)
    with pytest.raises(torch.jit.Error, match="multiples of 16"):  # the size check survives scripting
        model(torch.rand(1, 4, 32, 32, 20))


def test_onnx_export_matches_eager_in_onnxruntime(generator: Vox2VoxGenerator, tmp_path: Path) -> None:
    import onnxruntime

    # a training checkpoint holds both networks and the optimisers: --key_in_ckpt picks the generator
    ckpt = tmp_path / "checkpoint_epoch=1.pt"
    discriminator = Vox2VoxDiscriminator(channels=4)
    torch.save({"generator": generator.state_dict(), "discriminator": discriminator.state_dict()}, ckpt)
    out = tmp_path / "model.onnx"
    run(export_cmd("onnx_export", out, ckpt, "--key_in_ckpt", "generator", "--input_shape", str(INPUT_SHAPE),
                   "--converter_kwargs", ONNX_CONVERTER_KWARGS))  # fmt: skip
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["image"]
    assert [o.name for o in session.get_outputs()] == ["pred"]
    torch.manual_seed(2)
    for shape in (INPUT_SHAPE, [2, 4, 48, 32, 64]):  # dynamic batch and spatial axes
        x = torch.rand(shape)
        (exported,) = session.run(None, {"image": x.numpy()})
        assert exported.shape == tuple(shape)
        np.testing.assert_allclose(exported, eager(generator, x), rtol=0, atol=ATOL)
