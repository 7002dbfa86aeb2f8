"""One iteration of the conditional adversarial trainer."""

from __future__ import annotations

import copy
import re

import pytest
import torch
from monai.networks import one_hot

from bundle.losses import Vox2VoxLoss
from bundle.networks import Vox2VoxDiscriminator, Vox2VoxGenerator
from bundle.trainer import POLY_EXPONENT, Vox2VoxTrainer, autocast_kwargs, gan_losses, learning_rate_schedule


def make_trainer(generator, discriminator, batch, **kwargs) -> Vox2VoxTrainer:
    return Vox2VoxTrainer(
        device="cpu",
        max_epochs=1,
        train_data_loader=[batch],
        network=generator,
        optimizer=torch.optim.Adam(generator.parameters(), lr=2e-4, betas=(0.5, 0.999)),
        discriminator=discriminator,
        d_optimizer=torch.optim.Adam(discriminator.parameters(), lr=2e-4, betas=(0.5, 0.999)),
        loss_function=Vox2VoxLoss(class_weights=[0.25, 40.0, 15.0, 50.0]),
        **kwargs,
    )


def tiny_batch() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    label = torch.zeros(2, 1, 32, 32, 32, dtype=torch.long)
    label[:, :, 8:20, 8:20, 8:20] = 2
    label[:, :, 10:16, 10:16, 10:16] = 3
    label[:, :, 12:14, 12:14, 12:14] = 1
    return {"image": torch.randn(2, 4, 32, 32, 32), "label": label}


def test_one_iteration_updates_both_networks_from_their_own_loss() -> None:
    torch.manual_seed(0)
    # no dropout, so the same forward pass can be recomputed here to check the gradients
    generator, discriminator = Vox2VoxGenerator(features=4, dropout=0.0), Vox2VoxDiscriminator(channels=4, dropout=0.0)
    before_g, before_d = copy.deepcopy(generator), copy.deepcopy(discriminator)
    batch = tiny_batch()
    trainer = make_trainer(generator, discriminator, batch)
    trainer.run()

    changed = lambda a, b: any(not torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))  # noqa: E731
    assert changed(generator, before_g) and changed(discriminator, before_d)

    # expected gradients: L_G into G only (D frozen for it), L_D into D only, from one forward pass
    loss = Vox2VoxLoss(class_weights=[0.25, 40.0, 15.0, 50.0])
    image, label = batch["image"], batch["label"]
    pred = before_g(image)
    real = before_d(torch.cat([image, one_hot(label, 4)], 1))[-1]
    fake = before_d(torch.cat([image, pred], 1))[-1]
    g_loss = loss.generator(fake, pred, label)[0]
    d_loss = loss.discriminator(real, fake)
    g_grads = torch.autograd.grad(g_loss, list(before_g.parameters()), retain_graph=True)
    d_grads = torch.autograd.grad(d_loss, list(before_d.parameters()))
    for param, expected in zip(generator.parameters(), g_grads):
        torch.testing.assert_close(param.grad, expected, rtol=1e-4, atol=1e-6)
    for param, expected in zip(discriminator.parameters(), d_grads):
        torch.testing.assert_close(param.grad, expected, rtol=1e-4, atol=1e-6)

    losses = gan_losses(trainer.state.output)
    assert set(losses) == {"loss", "g_adv_loss", "g_dice_loss", "d_loss"}
    assert abs(losses["loss"] - g_loss.item()) < 1e-5 and abs(losses["d_loss"] - d_loss.item()) < 1e-6


def test_mixed_precision_iteration_runs_and_updates() -> None:
    # bf16 autocast is the GPU default; the CPU supports it too, so the code path is tested here
    torch.manual_seed(0)
    generator, discriminator = Vox2VoxGenerator(features=4), Vox2VoxDiscriminator(channels=4)
    before = copy.deepcopy(generator)
    trainer = make_trainer(generator, discriminator, tiny_batch(), amp=True, amp_dtype="bfloat16")
    trainer.run()
    assert torch.isfinite(torch.tensor(gan_losses(trainer.state.output)["loss"]))
    assert any(not torch.equal(p, q) for p, q in zip(generator.parameters(), before.parameters()))


def test_autocast_type_is_checked_by_name() -> None:
    """The trainer and the evaluators (``amp_kwargs`` in the configs) autocast in the type ``amp_dtype`` names."""
    assert autocast_kwargs("bfloat16") == {"dtype": torch.bfloat16}
    assert autocast_kwargs("float16") == {"dtype": torch.float16}
    with pytest.raises(ValueError, match="amp_dtype must be one of"):
        autocast_kwargs("float32")
    generator, discriminator = Vox2VoxGenerator(features=4), Vox2VoxDiscriminator(channels=4)
    with pytest.raises(ValueError, match="amp_dtype must be one of"):
        make_trainer(generator, discriminator, tiny_batch(), amp=True, amp_dtype="fp16")


def rates(schedule: str, max_epochs: int, epochs: int) -> list[float]:
    """The learning rate of each of ``epochs`` epochs, stepped once per epoch as ``LrScheduleHandler`` does."""
    optimizer = torch.optim.Adam(torch.nn.Linear(1, 1).parameters(), lr=1e-3)
    scheduler = learning_rate_schedule(optimizer, schedule, max_epochs)
    seen = []
    for _ in range(epochs):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return seen


def test_the_constant_schedule_keeps_the_papers_rate_and_poly_decays_it_to_zero_at_max_epochs() -> None:
    assert rates("constant", 10, 10) == [1e-3] * 10
    poly = rates("poly", 10, 11)
    expected = [1e-3 * (1 - epoch / 10) ** POLY_EXPONENT for epoch in range(11)]
    assert poly == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert poly[0] == 1e-3 and poly[-1] == 0.0 and all(a > b for a, b in zip(poly, poly[1:]))


@pytest.mark.parametrize(
    "schedule, max_epochs, message",
    [("cosine", 10, "lr_schedule must be one of ['constant', 'poly'], got 'cosine'"),
     ("poly", 0, "max_epochs must be a positive integer, got 0"),
     ("poly", "90", "max_epochs must be a positive integer, got '90'")],
)  # fmt: skip
def test_a_bad_schedule_or_run_length_is_refused_by_name(schedule: str, max_epochs, message: str) -> None:
    optimizer = torch.optim.Adam(torch.nn.Linear(1, 1).parameters(), lr=1e-3)
    with pytest.raises(ValueError, match=re.escape(message)):
        learning_rate_schedule(optimizer, schedule, max_epochs)
