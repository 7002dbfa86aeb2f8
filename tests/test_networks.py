"""Shapes and parameter counts of the Vox2Vox generator and discriminator."""

from __future__ import annotations

import pytest
import torch

from bundle.networks import Vox2VoxDiscriminator, Vox2VoxGenerator, as_network


def num_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_paper_sized_parameter_counts() -> None:
    # the authors' final architecture: 150,530,052 and 11,078,337 parameters (REFERENCE section 1)
    assert num_params(Vox2VoxGenerator()) == 150_530_052
    assert num_params(Vox2VoxDiscriminator()) == 11_078_337


def test_generator_returns_class_probabilities_of_input_size() -> None:
    net = Vox2VoxGenerator(features=4).eval()
    x = torch.randn(2, 4, 32, 48, 64)
    with torch.no_grad():
        y = net(x)
    assert y.shape == (2, 4, 32, 48, 64)
    assert torch.all(y >= 0)
    torch.testing.assert_close(y.sum(1), torch.ones(2, 32, 48, 64))


@pytest.mark.parametrize("kernel_size", [3, 4, 5])
def test_generator_kernel_sizes_keep_the_grid(kernel_size: int) -> None:
    net = Vox2VoxGenerator(features=2, kernel_size=kernel_size).eval()
    with torch.no_grad():
        assert net(torch.randn(1, 4, 32, 32, 16)).shape == (1, 4, 32, 32, 16)


def test_generator_rejects_sizes_not_multiple_of_16() -> None:
    with pytest.raises(ValueError, match="multiples of 16"):
        Vox2VoxGenerator(features=2)(torch.randn(1, 4, 32, 32, 20))


def test_generator_names_sizes_too_small_for_the_bottleneck_norm() -> None:
    # 16^3 gives a 1^3 bottleneck, which instance norm cannot normalise; one larger axis is enough for the generator
    with pytest.raises(ValueError, match=r"spatial sizes \[16, 16, 16\] are too small.*at least 32"):
        Vox2VoxGenerator(features=2).eval()(torch.randn(1, 4, 16, 16, 16))
    with torch.no_grad():
        assert Vox2VoxGenerator(features=2).eval()(torch.randn(1, 4, 16, 32, 16)).shape == (1, 4, 16, 32, 16)


@pytest.mark.parametrize("kwargs", [{"features": 0}, {"dropout": 1.0}, {"kernel_size": 1}, {"in_channels": 0}])
def test_generator_validates_arguments(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        Vox2VoxGenerator(**kwargs)


def test_bottleneck_concatenates_pre_norm_output() -> None:
    # each bottleneck block returns cat(LeakyReLU(IN(y)), y) with y its convolution's output
    block = Vox2VoxGenerator(features=2).bottleneck[0]
    x = torch.randn(1, 16, 4, 4, 4)
    y = block.conv(x)
    torch.testing.assert_close(block(x)[:, 16:], y)
    torch.testing.assert_close(block(x)[:, :16], torch.nn.functional.leaky_relu(block.norm(y), 0.3))


def test_discriminator_patch_logits() -> None:
    # 14^3 logits at 128^3 with the paper's layout; smaller channels keep the test fast
    disc = Vox2VoxDiscriminator(channels=2).eval()
    with torch.no_grad():
        out = disc(torch.randn(1, 8, 128, 128, 128))
    assert out[-1].shape == (1, 1, 14, 14, 14)
    # the stride-1 stage has no dropout, as in the authors' code
    assert isinstance(disc.get_submodule("2.adn.D"), torch.nn.Identity)
    assert isinstance(disc.get_submodule("0.adn.D"), torch.nn.Dropout)


def test_as_network_takes_a_network_or_what_makes_one() -> None:
    """Configs pass a network, or with ``_mode_: callable`` its definition: both give the network; anything else is
    an error naming the argument."""
    network = Vox2VoxDiscriminator(in_channels=8, channels=4)
    assert as_network(network) is network
    made = as_network(lambda: Vox2VoxDiscriminator(in_channels=8, channels=4), "discriminator")
    assert isinstance(made, Vox2VoxDiscriminator) and made is not network
    with pytest.raises(TypeError, match="discriminator must be a torch.nn.Module or make one, got str"):
        as_network("models/discriminator.pt", "discriminator")
