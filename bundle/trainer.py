"""The conditional adversarial trainer for Vox2Vox, built on MONAI's ``SupervisedTrainer``.

MONAI's ``AdversarialTrainer`` shows the discriminator the input image as "real" and the prediction alone as
"fake", and ``GanTrainer`` feeds random latents to the generator; a conditional image-to-segmentation GAN needs
its own iteration. Everything else (events, handlers, state, checkpointing) is MONAI's.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from ignite.engine import Engine
from monai.engines import SupervisedTrainer
from monai.engines.utils import IterationEvents
from monai.networks import one_hot
from monai.utils import CommonKeys as Keys
from torch.optim import Optimizer
from torch.optim.lr_scheduler import ConstantLR, LRScheduler, PolynomialLR

from bundle.losses import Vox2VoxLoss

__all__ = [
    "LR_SCHEDULES",
    "Vox2VoxTrainer",
    "autocast_kwargs",
    "gan_losses",
    "learning_rate_schedule",
    "stop_if_not_finite",
    "training_scalars",
]

AMP_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


def autocast_kwargs(amp_dtype: str) -> dict[str, torch.dtype]:
    """``amp_kwargs`` of MONAI's trainers and evaluators for the autocast type named ``amp_dtype``, checked."""
    if amp_dtype not in AMP_DTYPES:
        raise ValueError(f"amp_dtype must be one of {sorted(AMP_DTYPES)}, got {amp_dtype!r}.")
    return {"dtype": AMP_DTYPES[amp_dtype]}


#: the learning-rate schedules of ``lr_schedule``: the paper's constant rate, or nnU-Net's polynomial decay to zero
LR_SCHEDULES: tuple[str, ...] = ("constant", "poly")
POLY_EXPONENT = 0.9  # nnU-Net's PolyLR exponent


def learning_rate_schedule(optimizer: Optimizer, schedule: str, max_epochs: int) -> LRScheduler:
    """The epoch-level learning-rate scheduler named ``schedule`` for ``optimizer`` (stepped by MONAI's
    ``LrScheduleHandler`` after each epoch; its state is in the training checkpoint, so a resumed run continues it).

    ``constant``: the paper's fixed rate. ``poly``: ``lr * (1 - epoch / max_epochs) ** 0.9``, nnU-Net's decay to 0 at
    ``max_epochs`` (measured neutral on the CPU demo: docs/robustness.md).
    """
    if schedule not in LR_SCHEDULES:
        raise ValueError(f"lr_schedule must be one of {list(LR_SCHEDULES)}, got {schedule!r}.")
    if isinstance(max_epochs, bool) or not isinstance(max_epochs, int) or max_epochs < 1:
        raise ValueError(f"max_epochs must be a positive integer, got {max_epochs!r}.")
    if schedule == "constant":
        return ConstantLR(optimizer, factor=1.0, total_iters=0)
    return PolynomialLR(optimizer, total_iters=max_epochs, power=POLY_EXPONENT)


def stop_if_not_finite(engine: Engine, losses: dict[str, torch.Tensor]) -> None:
    """Stops training before any weight changes when a loss is NaN or infinite; earlier checkpoints stay."""
    for name, value in losses.items():
        if not torch.isfinite(value):
            raise FloatingPointError(
                f"the {name} is {value.item()} at epoch {engine.state.epoch}, iteration {engine.state.iteration}: "
                "training stopped before updating the networks; the last checkpoint saved is kept."
            )


class Vox2VoxTrainer(SupervisedTrainer):
    """Trains the generator ``network`` and the conditional ``discriminator`` together, as the authors do.

    Each iteration runs the generator once, then the discriminator on the real pair ``(image, one_hot(label))``
    and on the generated pair ``(image, G(image))``. Both losses come from that one forward pass (the authors'
    single gradient tape): the generator's loss is back-propagated into the generator's parameters only
    (the discriminator is frozen for it), the discriminator's loss into the discriminator's only, then both
    optimizers step.

    ``engine.state.output`` holds ``image``, ``label``, ``pred`` (probabilities), ``loss`` (generator total),
    ``g_adv_loss``, ``g_dice_loss`` and ``d_loss``.

    Args:
        discriminator: conditional discriminator on ``cat(image, segmentation)``; returns logits or a list whose
            last element is the logits (MONAI's ``PatchDiscriminator``).
        d_optimizer: optimizer of the discriminator.
        loss_function: a :class:`bundle.losses.Vox2VoxLoss`.
        amp: mixed precision for both networks; ``amp_dtype`` "bfloat16" (no loss scaling) or "float16"
            (a gradient scaler per network).
        other arguments: as ``monai.engines.SupervisedTrainer``; ``network`` and ``optimizer`` are the generator's;
            ``compile`` (with ``compile_kwargs``) compiles both networks.
    """

    def __init__(
        self,
        device: str | torch.device,
        max_epochs: int,
        train_data_loader: Iterable,
        network: torch.nn.Module,
        optimizer: Optimizer,
        discriminator: torch.nn.Module,
        d_optimizer: Optimizer,
        loss_function: Vox2VoxLoss,
        amp: bool = False,
        amp_dtype: str = "bfloat16",
        **kwargs: Any,
    ) -> None:
        if not isinstance(loss_function, Vox2VoxLoss):
            raise TypeError(f"loss_function must be a bundle.losses.Vox2VoxLoss, got {type(loss_function).__name__}.")
        amp_kwargs = autocast_kwargs(amp_dtype)
        device = torch.device(device)
        super().__init__(
            device=device,
            max_epochs=max_epochs,
            train_data_loader=train_data_loader,
            network=network,
            optimizer=optimizer,
            loss_function=loss_function,
            amp=amp,
            amp_kwargs=amp_kwargs,
            **kwargs,
        )
        if self.compile:  # MONAI compiled the generator (``compile=True``); the discriminator likewise
            discriminator = torch.compile(discriminator, **(kwargs.get("compile_kwargs") or {}))
        self.discriminator = discriminator
        self.d_optimizer = d_optimizer
        use_scaler = amp and amp_dtype == "float16"
        self.g_scaler = torch.amp.GradScaler(device.type, enabled=use_scaler)
        self.d_scaler = torch.amp.GradScaler(device.type, enabled=use_scaler)

    @staticmethod
    def _logits(output: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
        return output[-1] if isinstance(output, (list, tuple)) else output

    def _iteration(self, engine: Vox2VoxTrainer, batchdata: dict[str, torch.Tensor]) -> dict:  # type: ignore[override]
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        image, label = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs)[:2]
        generator, discriminator = engine.network, engine.discriminator
        loss: Vox2VoxLoss = engine.loss_function
        generator.train()
        discriminator.train()
        engine.state.output = {Keys.IMAGE: image, Keys.LABEL: label}
        autocast = torch.autocast(engine.state.device.type, enabled=engine.amp, **engine.amp_kwargs)

        with autocast:
            pred = engine.inferer(image, generator)
            engine.state.output[Keys.PRED] = pred
            engine.fire_event(IterationEvents.FORWARD_COMPLETED)
            real = one_hot(label, num_classes=pred.shape[1], dtype=pred.dtype)
            real_logits = self._logits(discriminator(torch.cat([image, real], dim=1)))
            fake_logits = self._logits(discriminator(torch.cat([image, pred], dim=1)))
            g_loss, g_adv, g_dice = loss.generator(fake_logits.float(), pred.float(), label)
            d_loss = loss.discriminator(real_logits.float(), fake_logits.float())
        engine.state.output[Keys.LOSS] = g_loss
        engine.fire_event(IterationEvents.LOSS_COMPLETED)
        stop_if_not_finite(engine, {"generator loss": g_loss, "discriminator loss": d_loss})

        engine.optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
        engine.d_optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
        # each loss reaches only its own network's parameters: D is frozen for G's update and vice versa
        engine.g_scaler.scale(g_loss).backward(inputs=list(generator.parameters()), retain_graph=True)
        engine.d_scaler.scale(d_loss).backward(inputs=list(discriminator.parameters()))
        engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
        for optimizer, scaler in ((engine.optimizer, engine.g_scaler), (engine.d_optimizer, engine.d_scaler)):
            scaler.step(optimizer)
            scaler.update()
        engine.state.output.update(
            {
                Keys.PRED: pred.detach(),
                Keys.LOSS: g_loss.detach(),
                "g_adv_loss": g_adv.detach(),
                "g_dice_loss": g_dice.detach(),
                "d_loss": d_loss.detach(),
                "g_lr": engine.optimizer.param_groups[0]["lr"],
                "d_lr": engine.d_optimizer.param_groups[0]["lr"],
            }
        )
        engine.fire_event(IterationEvents.MODEL_COMPLETED)  # MONAI decollates the output on this event
        return engine.state.output


def gan_losses(output: list[dict] | dict) -> dict[str, float]:
    """``output_transform`` for Stats/TensorBoard handlers: the trainer's four losses from its (decollated) output."""
    item = output[0] if isinstance(output, list) else output
    return {key: float(item[key]) for key in ("loss", "g_adv_loss", "g_dice_loss", "d_loss")}


def training_scalars(output: list[dict] | dict) -> dict[str, float]:
    """``output_transform`` for TensorBoard: the four losses and both networks' learning rates."""
    item = output[0] if isinstance(output, list) else output
    return {**gan_losses(output), "g_lr": float(item["g_lr"]), "d_lr": float(item["d_lr"])}
