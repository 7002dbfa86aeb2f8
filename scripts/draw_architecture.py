"""Draws docs/architecture.png: the Vox2Vox generator (U-Net) and the conditional PatchGAN discriminator at 128^3.

Every channel count and size in the figure is read from the bundle's own networks at their paper size (features 64,
discriminator channels 64), run on PyTorch's "meta" device: shapes only, no memory or compute.

    python scripts/draw_architecture.py [--output docs/architecture.png]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bundle.networks import Vox2VoxDiscriminator, Vox2VoxGenerator  # noqa: E402

PATCH = 128
COLOURS = {"io": "#e8e8e8", "enc": "#9ecae1", "bottleneck": "#fdae6b", "dec": "#a1d99b", "disc": "#bcbddc"}


def output_shapes(net: torch.nn.Module, x: torch.Tensor, names: list[str]) -> dict[str, tuple[int, ...]]:
    """Output shape (channels, *spatial) of each named submodule in one forward pass on the meta device."""
    shapes: dict[str, tuple[int, ...]] = {}
    for name in names:
        module = net.get_submodule(name)
        module.register_forward_hook(lambda m, i, o, name=name: shapes.__setitem__(name, tuple(o.shape[1:])))
    net(x)
    return shapes


def measure() -> tuple[dict[str, tuple[int, ...]], dict[str, tuple[int, ...]]]:
    """Output shapes of the generator's and the discriminator's stages at the paper's size; "params" counts both."""
    with torch.device("meta"):
        g = Vox2VoxGenerator().eval()
        d = Vox2VoxDiscriminator().eval()
        g_names = ["encoder.0", "encoder.1", "encoder.2", "bottleneck_entry", *[f"bottleneck.{i}" for i in range(4)],
                   "decoder.0", "decoder.1", "decoder.2", "output"]  # fmt: skip
        g_shapes = output_shapes(g, torch.empty(1, 4, PATCH, PATCH, PATCH), g_names)
        d_names = ["initial_conv", "0", "1", "2", "final_conv"]
        d_shapes = output_shapes(d, torch.empty(1, 8, PATCH, PATCH, PATCH), d_names)
    g_shapes["params"] = (sum(p.numel() for p in g.parameters()),)
    d_shapes["params"] = (sum(p.numel() for p in d.parameters()),)
    return g_shapes, d_shapes


def size(shape: tuple[int, ...]) -> str:
    """``64 x 64³`` for a cubic grid."""
    c, *spatial = shape
    grid = f"{spatial[0]}³" if len(set(spatial)) == 1 else "x".join(map(str, spatial))
    return f"{c} × {grid}"


def box(ax, x: float, y: float, title: str, op: str, shape: str, colour: str, w: float = 1.9, h: float = 0.95) -> None:
    ax.add_patch(FancyBboxPatch((x - w / 2, y - h / 2), w, h, boxstyle="round,pad=0.02,rounding_size=0.08",
                                facecolor=colour, edgecolor="#404040", linewidth=0.9))  # fmt: skip
    ax.text(x, y + h * 0.28, title, ha="center", va="center", fontsize=8.5, fontweight="bold")
    ax.text(x, y + h * 0.02, op, ha="center", va="center", fontsize=6.6)
    ax.text(x, y - h * 0.3, shape, ha="center", va="center", fontsize=8.5, family="DejaVu Sans Mono")


def arrow(ax, start: tuple[float, float], end: tuple[float, float], style: str = "-", text: str = "",
          colour: str = "#303030", rad: float = 0.0) -> None:  # fmt: skip
    ax.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=10, linewidth=1.0, color=colour,
                                 linestyle=style, connectionstyle=f"arc3,rad={rad}", shrinkA=0, shrinkB=0))  # fmt: skip
    if text:
        ax.text((start[0] + end[0]) / 2, (start[1] + end[1]) / 2 + 0.12, text, ha="center", va="bottom",
                fontsize=6.8, color=colour)  # fmt: skip


def draw_generator(ax, s: dict[str, tuple[int, ...]]) -> None:
    w, h = 1.9, 0.95
    level = {PATCH // 2**k: 4 - k for k in range(5)}  # grid size -> row: 128 at the top, 8 at the bottom
    y = {name: 1.35 * level[shape[1]] for name, shape in s.items() if name != "params"}
    y_in = 1.35 * level[PATCH]
    enc_x, dec_x = [0.0, 1.2, 2.4, 3.6], [11.4, 12.6, 13.8, 15.0]
    box(ax, enc_x[0], y_in, "input", "T1, T1ce, T2, FLAIR", size((4, PATCH, PATCH, PATCH)), COLOURS["io"], w, h)
    ops = ["Conv k4 s2, LReLU, Drop 0.2", "Conv k4 s2, IN, LReLU, Drop 0.2", "Conv k4 s2, IN, LReLU, Drop 0.2"]
    for i in range(3):
        box(ax, enc_x[i + 1], y[f"encoder.{i}"], f"enc{i + 1}", ops[i], size(s[f"encoder.{i}"]), COLOURS["enc"], w, h)
    # bottleneck: the entry and the four blocks in a row at 1/16 resolution
    yb = y["bottleneck_entry"]
    box(ax, 4.8, yb, "bottleneck entry", "Conv k4 s2, IN, LReLU", size(s["bottleneck_entry"]), COLOURS["bottleneck"],
        w, h)  # fmt: skip
    bw = 1.3  # bottleneck block width
    bx = [6.6 + 1.45 * i for i in range(4)]
    for i, x in enumerate(bx):
        box(ax, x, yb, f"block {i + 1}", "y = Conv k4 s1 'same'\ncat(LReLU(IN(y)), y)", size(s[f"bottleneck.{i}"]),
            COLOURS["bottleneck"], bw, h)  # fmt: skip
    # decoder: upsample, then the skip of the mirrored encoder stage is concatenated (channels doubled), dropout
    for i in range(3):
        up = s[f"decoder.{i}"]
        skip = s[f"encoder.{2 - i}"]
        cat = (up[0] + skip[0], *up[1:])
        op = f"ConvT k4 s2, IN, LReLU → {up[0]}\n+ skip enc{3 - i}, Drop 0.2"
        box(ax, dec_x[i], y[f"decoder.{i}"], f"dec{i + 1}", op, size(cat), COLOURS["dec"], w, h)
    box(ax, dec_x[3], y["output"], "output", "ConvT k4 s2, softmax", size(s["output"]), COLOURS["io"], w, h)
    # forward path
    path = [(enc_x[0], y_in), *[(enc_x[i + 1], y[f"encoder.{i}"]) for i in range(3)], (4.8, yb)]
    for (x0, y0), (x1, y1) in zip(path, path[1:]):
        arrow(ax, (x0 + 0.25, y0 - h / 2), (x1 - 0.25, y1 + h / 2))
    for x0, x1 in zip([4.8, *bx[:-1]], bx):
        arrow(ax, (x0 + (w if x0 == 4.8 else bw) / 2, yb), (x1 - bw / 2, yb))
    path = [(bx[-1], yb), *[(dec_x[i], y[f"decoder.{i}"]) for i in range(3)], (dec_x[3], y["output"])]
    for (x0, y0), (x1, y1) in zip(path, path[1:]):
        arrow(ax, (x0 + 0.25, y0 + h / 2), (x1 - 0.25, y1 - h / 2))
    # skip connections
    for i in range(3):
        ye = y[f"encoder.{2 - i}"]
        arrow(ax, (enc_x[3 - i] + w / 2, ye), (dec_x[i] - w / 2, ye), style="--", colour="#3182bd",
              text=f"skip: enc{3 - i} output ({size(s[f'encoder.{2 - i}'])}), concatenated")  # fmt: skip
    ax.text(7.5, 1.35 * 4 + 0.75, f"Generator (U-Net): {s['params'][0]:,} "
            f"parameters; every convolution 4x4x4 with bias; LReLU slope 0.3; shapes at a {PATCH}³ patch",
            ha="center", fontsize=9.5, fontweight="bold")  # fmt: skip
    ax.set_xlim(-1.1, 16.1)
    ax.set_ylim(-0.75, 1.35 * 4 + 1.1)


def draw_discriminator(ax, s: dict[str, tuple[int, ...]]) -> None:
    w, h = 2.05, 0.95
    stages = [
        ("input", "cat(image, segmentation)", (8, PATCH, PATCH, PATCH), COLOURS["io"]),
        ("stage 1", "Conv k4 s2, LReLU, Drop 0.2", s["initial_conv"], COLOURS["disc"]),
        ("stage 2", "Conv k4 s2, IN, LReLU, Drop 0.2", s["0"], COLOURS["disc"]),
        ("stage 3", "Conv k4 s2, IN, LReLU, Drop 0.2", s["1"], COLOURS["disc"]),
        ("stage 4", "pad 1, Conv k4 s1, IN, LReLU", s["2"], COLOURS["disc"]),
        ("logits", "pad 1, Conv k4 s1, no activation", s["final_conv"], COLOURS["io"]),
    ]
    xs = [0.0 + 2.6 * i for i in range(len(stages))]
    for x, (title, op, shape, colour) in zip(xs, stages):
        box(ax, x, 0.0, title, op, size(shape), colour, w, h)
    for x0, x1 in zip(xs, xs[1:]):
        arrow(ax, (x0 + w / 2, 0.0), (x1 - w / 2, 0.0))
    ax.text(6.5, 1.05, f"Conditional 3D PatchGAN discriminator: {s['params'][0]:,} "
            "parameters; one realness logit per patch of the (image, segmentation) pair",
            ha="center", fontsize=9.5, fontweight="bold")  # fmt: skip
    ax.text(6.5, -0.85, "real pair: (image, reference one-hot); fake pair: (image, generator probabilities); "
            "LSGAN losses; generator loss = adversarial + 5 × class-weighted generalized Dice",
            ha="center", fontsize=8)  # fmt: skip
    ax.set_xlim(-1.4, 14.4)
    ax.set_ylim(-1.15, 1.4)


def main(output: str = str(ROOT / "docs" / "architecture.png")) -> None:
    g_shapes, d_shapes = measure()
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(15, 8.6), gridspec_kw={"height_ratios": [3.1, 1.0]})
    for ax in (top, bottom):
        ax.set_aspect("equal")
        ax.axis("off")
    draw_generator(top, g_shapes)
    draw_discriminator(bottom, d_shapes)
    fig.tight_layout()
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=110)
    print(f"wrote {output}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default=str(ROOT / "docs" / "architecture.png"))
    main(parser.parse_args().output)
