"""scripts/benchmark.py end to end with tiny settings, and the speed/memory options' numerics.

No timing is asserted here: speed targets are met in benchmarks (docs/benchmarks.md), never in unit tests.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import torch

from bundle.benchmark import OPTIONS, verdict
from bundle.networks import Vox2VoxGenerator

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--features", "2", "--patch", "32", "--batch", "1", "--warmup", "1", "--steps", "2", "--repeats", "1",
        "--matmul-size", "128", "--inference-spacing", "4", "--data-spacing", "4", "--data-cases", "3",
        "--data-batches", "2", "--num-workers", "0", "--inference-workers", "0"]  # fmt: skip
ROWS = [
    "| a | training throughput, plain PyTorch loop |",
    "| a | training throughput, bundle trainer (train.yaml, `training`) |",
    "| b | FLOPs of one training step (FlopCounterMode) |",
    "| b | dense matmul rate, float32 (128^2) |",
    "| b | achieved FLOP/s of the bundle trainer, float32 |",
    "| c | inference of one 60x60x39 case (inference.yaml: read, sliding window 32^3, invert, write) |",
    "| d | data pipeline alone: train#dataloader, 0 workers, 2 cached cases",
    "| d | data pipeline alone: train#dataloader, 0 workers, no cache (--cache_rate 0: every sample read and "
    "preprocessed), 2 cases |",
    "| e | peak memory of training (configured default) |",
    "| configured default |",
    "| AMP (bf16 autocast) |",
    "| torch.compile (both networks) |",
    "| channels-last (NDHWC) |",
    "| cudnn.benchmark |",
    "| activation checkpointing (generator) |",
]


def test_benchmark_appends_a_section_with_every_row(tmp_path: Path) -> None:
    output = tmp_path / "benchmarks.md"
    earlier = "# Benchmarks\n\n## an earlier run\n\n| kept | as it was |\n"
    output.write_text(earlier)
    cmd = [sys.executable, "scripts/benchmark.py", *TINY, "--options", "activation_checkpointing",
           "--work-dir", str(tmp_path / "work"), "--output", str(output)]  # fmt: skip
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "CI": "true"})
    assert result.returncode == 0, f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"

    text = output.read_text()
    assert text.startswith(earlier)  # earlier sections are never changed
    section = text[len(earlier) :]
    assert section.count("\n## ") == 1 and "CPU, " in section  # one new section, headed by the machine
    assert f"torch {torch.__version__}, monai " in section
    for row in ROWS:
        lines = [line for line in section.splitlines() if line.startswith(row)]
        assert len(lines) == 1, f"{row!r} not in\n{section}"
        assert "failed" not in lines[0], lines[0]
    option_rows = {line.split(" | ")[0].lstrip("| "): line for line in section.splitlines() if " | " in line}
    assert "| 1.00x |" in option_rows["configured default"] and "the reference" in option_rows["configured default"]
    assert any(word in option_rows["activation checkpointing (generator)"] for word in ("smaller", "no memory saving"))
    assert "not run" in option_rows["channels-last (NDHWC)"] and "n/a on the CPU" in option_rows["cudnn.benchmark"]
    assert section in result.stdout  # the table is printed too


def test_verdict_keeps_an_option_only_if_it_measures_better() -> None:
    assert verdict("compile", 1.2, 1.0).startswith("faster")
    assert verdict("channels_last", 0.8, 1.0).startswith("slower")
    assert verdict("amp", 1.0, 1.0).startswith("no measurable difference")
    assert verdict("activation_checkpointing", 0.7, 0.6).startswith("smaller")
    assert verdict("activation_checkpointing", 0.7, 1.0).startswith("no memory saving")
    assert set(OPTIONS) == {"amp", "compile", "channels_last", "cudnn_benchmark", "activation_checkpointing"}


def test_activation_checkpointing_gives_the_same_gradients() -> None:
    """Recomputing the generator's stages in backward replays the same dropout masks: identical results."""
    torch.manual_seed(0)
    plain = Vox2VoxGenerator(features=4, dropout=0.2)
    checkpointed = copy.deepcopy(plain)
    checkpointed.activation_checkpointing = True
    image, weights = torch.randn(2, 4, 32, 32, 32), torch.randn(2, 4, 32, 32, 32)
    grads = []
    for net in (plain, checkpointed):
        torch.manual_seed(1)  # the same dropout masks in both forward passes
        out = net(image)
        (out * weights).sum().backward()
        grads.append((out.detach(), [p.grad for p in net.parameters()]))
    torch.testing.assert_close(grads[0][0], grads[1][0], rtol=0, atol=0)
    for a, b in zip(grads[0][1], grads[1][1]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_channels_last_gives_the_same_outputs() -> None:
    torch.manual_seed(0)
    net = Vox2VoxGenerator(features=4).eval()
    image = torch.randn(1, 4, 32, 32, 32)
    with torch.no_grad():
        expected = net(image)
        net = net.to(memory_format=torch.channels_last_3d)
        actual = net(image.to(memory_format=torch.channels_last_3d))
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5)
