"""Vox2Vox networks: the U-Net generator and the conditional 3D PatchGAN discriminator.

Both follow the authors' final code (Cirillo et al., Vox2Vox, BrainLes 2020; GitHub ``mdciri/Vox2Vox``),
translated to PyTorch's channel-first layout. With default arguments the generator has 150,530,052 parameters
and the discriminator 11,078,337.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
from monai.networks.blocks import Convolution
from monai.networks.nets import PatchDiscriminator
from torch.utils.checkpoint import checkpoint

__all__ = ["Vox2VoxGenerator", "Vox2VoxDiscriminator", "as_network", "he_normal_init"]

NEGATIVE_SLOPE = 0.3  # Keras' LeakyReLU default, which the authors used throughout
NUM_DOWNSAMPLINGS = 4  # the generator halves the grid four times: inputs must be multiples of 2**4


def as_network(network: nn.Module | Callable[[], nn.Module], name: str = "network") -> nn.Module:
    """``network`` itself, or the network it makes when it is a callable (a config's ``_mode_: callable``
    definition, e.g. ``discriminator_def``); anything else is an error naming ``name``."""
    if isinstance(network, nn.Module):
        return network
    if not callable(network):
        raise TypeError(f"{name} must be a torch.nn.Module or make one, got {type(network).__name__}")
    return network()


def he_normal_init(module: nn.Module) -> None:
    """He-normal weights and zero biases for convolutions, as Keras' ``he_normal`` in the authors' code."""
    if isinstance(module, (nn.Conv3d, nn.ConvTranspose3d)):
        nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def _stage(
    in_channels: int, out_channels: int, kernel_size: int, dropout: float, norm: bool, transposed: bool = False
) -> Convolution:
    """A stride-2 (transposed) convolution, then instance norm, LeakyReLU and dropout as the authors order them."""
    return Convolution(
        spatial_dims=3,
        in_channels=in_channels,
        out_channels=out_channels,
        strides=2,
        kernel_size=kernel_size,
        padding=(kernel_size - 1) // 2,
        # TF's stride-2 'same' doubles the size exactly: (n - 1) * 2 - 2 * padding + kernel + output_padding = 2n
        output_padding=2 + 2 * ((kernel_size - 1) // 2) - kernel_size if transposed else None,
        is_transposed=transposed,
        act=("leakyrelu", {"negative_slope": NEGATIVE_SLOPE}),
        norm=("instance", {"affine": True}) if norm else None,
        dropout=dropout or None,
        adn_ordering="NAD",
        bias=True,
    )


class _BottleneckBlock(nn.Module):
    """``y = conv(x); return cat(LeakyReLU(IN(y)), y)``: the authors' bottleneck skip keeps the pre-norm output."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int) -> None:
        super().__init__()
        # 'same' padding on an even kernel is asymmetric (1 before, 2 after for k=4), as in TF
        self.conv = nn.Conv3d(in_channels, out_channels, kernel_size, padding="same", bias=True)
        self.norm = nn.InstanceNorm3d(out_channels, affine=True)
        self.act = nn.LeakyReLU(NEGATIVE_SLOPE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return torch.cat([self.act(self.norm(y)), y], dim=1)


class Vox2VoxGenerator(nn.Module):
    """Vox2Vox U-Net generator: 4 MRI modalities in, per-class probabilities (softmax over channels) out.

    Args:
        in_channels: number of input modalities (T1, T1ce, T2, FLAIR).
        out_channels: number of classes (background, NCR/NET, ED, ET).
        features: channels of the first encoder stage; later stages use 2x, 4x and 8x. 64 in the paper.
        kernel_size: kernel size of every convolution. 4 in the authors' final code (5 in an earlier upload).
        dropout: dropout rate after the encoder stages and the decoder skip concatenations.
        num_bottleneck_blocks: number of bottleneck blocks at 1/16 resolution.
        activation_checkpointing: in training, keep only each encoder, bottleneck and decoder stage's input and
            recompute the stage in the backward pass (``torch.utils.checkpoint``, non-reentrant, with the same
            dropout masks): less activation memory for about one more forward pass of compute. Same results.

    Spatial sizes of the input must be multiples of 16, and not all 16: the bottleneck (1/16 of each size) must
    hold more than one voxel for its instance norm. Sizes of 32 or more in every axis (``16*n+16`` in the
    metadata) also suit the discriminator in training.
    """

    def __init__(
        self,
        in_channels: int = 4,
        out_channels: int = 4,
        features: int = 64,
        kernel_size: int = 4,
        dropout: float = 0.2,
        num_bottleneck_blocks: int = 4,
        activation_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        for name, value in (("in_channels", in_channels), ("out_channels", out_channels), ("features", features)):
            if value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value}.")
        if kernel_size < 2:
            raise ValueError(f"kernel_size must be at least 2, got {kernel_size}.")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}.")
        if num_bottleneck_blocks < 1:
            raise ValueError(f"num_bottleneck_blocks must be at least 1, got {num_bottleneck_blocks}.")
        f, k = features, kernel_size
        self.activation_checkpointing = activation_checkpointing
        self.encoder = nn.ModuleList(
            [
                _stage(in_channels, f, k, dropout, norm=False),
                _stage(f, 2 * f, k, dropout, norm=True),
                _stage(2 * f, 4 * f, k, dropout, norm=True),
            ]
        )
        self.bottleneck_entry = _stage(4 * f, 8 * f, k, dropout=0.0, norm=True)
        self.bottleneck = nn.Sequential(
            *[_BottleneckBlock(8 * f if i == 0 else 16 * f, 8 * f, k) for i in range(num_bottleneck_blocks)]
        )
        # decoder stage i upsamples, then concatenates the mirrored encoder output (skip) and applies dropout
        self.decoder = nn.ModuleList(
            [
                _stage(16 * f, 4 * f, k, dropout=0.0, norm=True, transposed=True),
                _stage(8 * f, 2 * f, k, dropout=0.0, norm=True, transposed=True),
                _stage(4 * f, f, k, dropout=0.0, norm=True, transposed=True),
            ]
        )
        self.decoder_dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        self.output = _stage(2 * f, out_channels, k, dropout=0.0, norm=False, transposed=True)
        # the output stage has no activation before the softmax
        self.output.adn = nn.Identity()  # type: ignore[assignment]
        self.apply(he_normal_init)
        self.size_multiple = 2**NUM_DOWNSAMPLINGS  # an attribute: TorchScript cannot read module-level globals

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        multiple = self.size_multiple
        for size in x.shape[2:]:
            if size % multiple != 0:
                raise ValueError(f"spatial sizes must be multiples of {multiple}, got {list(x.shape[2:])}.")
        bottleneck_voxels = 1
        for size in x.shape[2:]:
            bottleneck_voxels = bottleneck_voxels * (size // multiple)
        if bottleneck_voxels < 2:
            raise ValueError(
                f"spatial sizes {list(x.shape[2:])} are too small: the bottleneck (1/{multiple} of each size) would"
                f" hold one voxel, and its instance norm needs more; use sizes of at least {2 * multiple}."
            )
        # each `not torch.jit.is_scripting() and ...` branch is left out by TorchScript (checkpoint is not scriptable)
        ckpt = self.activation_checkpointing and self.training and torch.is_grad_enabled()
        skips = []
        for stage in self.encoder:
            x = _checkpointed(stage, x) if not torch.jit.is_scripting() and ckpt else stage(x)
            skips.append(x)
        entry = self.bottleneck_entry
        x = _checkpointed(entry, x) if not torch.jit.is_scripting() and ckpt else entry(x)
        for block in self.bottleneck:
            x = _checkpointed(block, x) if not torch.jit.is_scripting() and ckpt else block(x)
        for i, stage in enumerate(self.decoder):  # TorchScript: no zip() over a ModuleList, no reversed()
            y = _checkpointed(stage, x) if not torch.jit.is_scripting() and ckpt else stage(x)
            x = self.decoder_dropout(torch.cat([y, skips[-1 - i]], dim=1))
        return torch.softmax(self.output(x), dim=1)


def _checkpointed(stage: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return checkpoint(stage, x, use_reentrant=False)  # restores the RNG state: the same dropout masks


class Vox2VoxDiscriminator(PatchDiscriminator):
    """Conditional 3D PatchGAN on ``cat(image, segmentation)``, configured from MONAI's ``PatchDiscriminator``.

    Three stride-2 stages (the first without norm), one stride-1 stage with 8x ``channels`` and a one-channel
    output convolution, each stride-1 convolution on a one-voxel zero padding: 14^3 logits at 128^3. Forward
    returns MONAI's list of intermediate outputs; the last element is the logits (no activation).

    Args:
        in_channels: image channels plus segmentation channels (4 + 4 for Vox2Vox).
        channels: channels of the first stage, doubled at each later one. 64 in the paper.
        kernel_size: kernel size of every convolution.
        dropout: dropout after the three stride-2 stages (the authors use none on the stride-1 stage).
    """

    def __init__(self, in_channels: int = 8, channels: int = 64, kernel_size: int = 4, dropout: float = 0.2) -> None:
        if in_channels < 1 or channels < 1:
            raise ValueError(f"in_channels and channels must be positive, got {in_channels} and {channels}.")
        super().__init__(
            spatial_dims=3,
            channels=channels,
            in_channels=in_channels,
            out_channels=1,
            num_layers_d=3,
            kernel_size=kernel_size,
            activation=("leakyrelu", {"negative_slope": NEGATIVE_SLOPE}),
            norm=("instance", {"affine": True}),
            bias=True,
            padding=1,
            dropout=dropout,
        )
        # MONAI applies dropout to every stage; the authors' stride-1 stage has none
        last_stage = self.get_submodule(str(self.num_layers_d - 1))
        last_stage.adn.D = nn.Identity()
        self.apply(he_normal_init)  # replaces MONAI's N(0, 0.02) init with the authors' He-normal
