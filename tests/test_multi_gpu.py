"""Data-parallel training (configs/multi_gpu_train.yaml) for real: torchrun, two CPU processes, gloo.

Run as a script under torchrun, this file is also the worker of the gradient check below.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import TINY_MODEL, cli_overrides

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
TIMEOUT_S = 240  # a deadlocked collective fails the test instead of hanging it
TINY = cli_overrides(TINY_MODEL)


def torchrun(*args: str, nproc: int = 2) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc), *args]
    path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "CI": "true", "OMP_NUM_THREADS": "1", "PYTHONPATH": path}
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env, timeout=TIMEOUT_S)
    assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return result


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from bundle.demo_data import make_dataset

    out = tmp_path_factory.mktemp("data") / "brats"
    make_dataset(out, num_cases=6, seed=3, spacing=4.0, quiet=True)
    return out


def generator_sha256(state: dict[str, torch.Tensor]) -> str:
    """The digest multi_gpu_train.yaml logs: the generator's parameters' bytes in order (it has no buffers)."""
    return hashlib.sha256(b"".join(t.detach().cpu().numpy().tobytes() for t in state.values())).hexdigest()


def test_torchrun_trains_on_both_ranks_and_rank_0_alone_writes(data_dir: Path, tmp_path: Path) -> None:
    root = tmp_path / "run"
    result = torchrun(
        "-m", "monai.bundle", "run", "training", "--meta_file", str(CONFIGS / "metadata.json"),
        "--config_file", f"['{CONFIGS / 'train.yaml'}','{CONFIGS / 'multi_gpu_train.yaml'}']",
        "--logging_file", str(CONFIGS / "logging.conf"), "--dataset_dir", str(data_dir), "--bundle_root", str(root),
        "--max_epochs", "2", "--val_interval", "1", "--batch_size", "1", "--num_folds", "3", *TINY,
    )  # fmt: skip
    log = result.stdout + result.stderr

    pids = {int(r): int(p) for r, p in re.findall(r"multi_gpu - INFO - rank (\d) of 2, local rank \d, pid (\d+)", log)}
    assert set(pids) == {0, 1} and pids[0] != pids[1]
    # every rank trained: 4 training cases in 2 shards of 2, batch 1 -> 2 iterations per epoch on each rank
    for rank in (0, 1):
        lines = re.findall(rf"train\.rank{rank} - INFO - Epoch: (\d)/2, Iter: (\d)/2 -- ", log)
        assert lines == [("1", "1"), ("1", "2"), ("2", "1"), ("2", "2")], f"rank {rank}: {lines}"
    # the end-of-training summaries: one validation case on each rank, metrics gathered over both, equal weights
    summaries = dict(re.findall(r"multi_gpu - INFO - rank (\d): (4 iterations, .*)", log))
    assert set(summaries) == {"0", "1"}
    assert summaries["0"] == summaries["1"], summaries  # same gathered metrics and generator digest
    assert "1 validation cases here, metrics over 2 cases {'val_mean_dice': " in summaries["0"]
    digest = summaries["0"].rsplit("generator sha256 ", 1)[1].strip()

    # one set of checkpoints, written by rank 0, holding the final weights every rank ended with
    models = root / "models"
    assert sorted(p.name for p in models.iterdir()) == ["checkpoint_epoch=1.pt", "checkpoint_epoch=2.pt",
                                                         "discriminator.pt", "model.pt"]  # fmt: skip
    state = torch.load(models / "checkpoint_epoch=2.pt", weights_only=True)
    assert state["trainer"]["iteration"] == 4 and state["trainer"]["epoch_length"] == 2
    assert not any(k.startswith("module.") for k in state["generator"])  # DDP's wrapper is not in the checkpoint
    assert generator_sha256(state["generator"]) == digest
    assert set(torch.load(models / "model.pt", weights_only=True)) == set(state["generator"])
    assert set(torch.load(models / "discriminator.pt", weights_only=True)) == set(state["discriminator"])  # no module.
    # TensorBoard files (training scalars, validation scalars, validation images) from rank 0's process only
    events = sorted((root / "logs").iterdir())
    assert events and all(p.name.startswith("events.out.tfevents.") for p in events)
    assert {int(p.name.split(".")[-2]) for p in events} == {pids[0]}  # ...<host>.<pid>.<n>


def test_ddp_gradients_equal_the_mean_of_single_process_gradients() -> None:
    """Both networks in DDP as the config wraps them: after the trainer's iteration (two discriminator forwards,
    two backward passes restricted to each network's parameters) every rank holds the mean over ranks of the
    gradients the single-process trainer computes on each rank's batch; with activation checkpointing too."""
    result = torchrun(str(Path(__file__).resolve()))
    assert result.stdout.count("gradients equal") == 8, result.stdout[-3000:]  # 2 ranks x 2 networks x 2 settings


def _batch(rank: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(100 + rank)
    label = torch.randint(0, 4, (2, 1, 32, 32, 32), generator=generator)
    return {"image": torch.randn(2, 4, 32, 32, 32, generator=generator), "label": label}


def _gradient_worker() -> None:
    import copy

    import torch.distributed as dist
    from monai.networks import one_hot
    from torch.nn.parallel import DistributedDataParallel

    from bundle.losses import Vox2VoxLoss
    from bundle.networks import Vox2VoxDiscriminator, Vox2VoxGenerator
    from bundle.trainer import Vox2VoxTrainer

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    loss = Vox2VoxLoss(class_weights=[0.25, 40.0, 15.0, 50.0])
    for checkpointing in (False, True):
        torch.manual_seed(0)  # the same initial weights on every rank; no dropout, so the reference can recompute
        generator = Vox2VoxGenerator(features=4, dropout=0.0, activation_checkpointing=checkpointing)
        discriminator = Vox2VoxDiscriminator(channels=4, dropout=0.0)
        reference_g, reference_d = copy.deepcopy(generator), copy.deepcopy(discriminator)
        trainer = Vox2VoxTrainer(
            device="cpu", max_epochs=1, train_data_loader=[_batch(rank)],
            network=DistributedDataParallel(generator), optimizer=torch.optim.SGD(generator.parameters(), lr=0.1),
            discriminator=DistributedDataParallel(discriminator),
            d_optimizer=torch.optim.SGD(discriminator.parameters(), lr=0.1), loss_function=loss,
        )  # fmt: skip
        trainer.run()
        expected_g = [torch.zeros_like(p) for p in reference_g.parameters()]
        expected_d = [torch.zeros_like(p) for p in reference_d.parameters()]
        for other in range(world):  # the single-process iteration on each rank's batch, averaged
            image, label = _batch(other)["image"], _batch(other)["label"]
            pred = reference_g(image)
            real = reference_d(torch.cat([image, one_hot(label, 4)], 1))[-1]
            fake = reference_d(torch.cat([image, pred], 1))[-1]
            g_loss, d_loss = loss.generator(fake, pred, label)[0], loss.discriminator(real, fake)
            g_grads = torch.autograd.grad(g_loss, list(reference_g.parameters()), retain_graph=True)
            d_grads = torch.autograd.grad(d_loss, list(reference_d.parameters()))
            for total, grad in zip(expected_g + expected_d, g_grads + d_grads):
                total += grad / world
        for name, net, expected in (("generator", generator, expected_g), ("discriminator", discriminator, expected_d)):
            for param, grad in zip(net.parameters(), expected):
                torch.testing.assert_close(param.grad, grad, rtol=1e-4, atol=1e-6)
            print(f"rank {rank}: {name} gradients equal (activation checkpointing {checkpointing})", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    _gradient_worker()
