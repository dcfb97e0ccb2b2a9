"""Feedback alignment for convolutions on the CPU: one layer, and the CNN recipes' epochs.

Prints, measured in this run (min and median over --repeats interleaved rounds):
  per layer: forward + backward (∂x, ∂W, ∂b) of bender's feedback-alignment convolution
  (``bent_conv``, ∂x through the feedback kernel B) against PyTorch's own convolution with
  autograd, for three layer shapes                                          target ≤ 1.10
  per epoch: fa-cnn and dfa-cnn against bp-cnn, the same CNN trained by the same loop
  (bender.train, MNIST, batch 64, Adam 3e-4)                                target ≤ 1.10

Usage: python benchmarks/conv_speed.py [--data-dir DIR] [--repeats N] [--layers-only]
"""

from __future__ import annotations

import argparse
import time
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F

from _timing import bender_epoch, header, mnist, parse_args, report, time_contenders
from bender import recipes
from bender.functional.conv import bent_conv

# name: (input N×C×H×W, kernel out×in×kh×kw, padding)
LAYERS = {
    "fa-cnn conv2 (64×16×14×14, 5×5→32)": ((64, 16, 14, 14), (32, 16, 5, 5), (2, 2)),
    "3×3 conv (32×64×16×16, →64)": ((32, 64, 16, 16), (64, 64, 3, 3), (1, 1)),
    "even kernel, same (64×16×14×14, 4×4→32)": ((64, 16, 14, 14), (32, 16, 4, 4), "same"),
}
CALLS = 20  # forward + backward passes per timed round of one layer


def layer_round(conv: Callable[..., torch.Tensor], shapes: tuple) -> Callable[[], float]:
    """Milliseconds per forward + backward of ``conv(x, W, B, b, padding)`` on fixed tensors."""
    x_shape, w_shape, padding = shapes
    x = torch.randn(x_shape, requires_grad=True)
    weight = torch.randn(w_shape, requires_grad=True)
    feedback = torch.randn(w_shape)
    bias = torch.randn(w_shape[0], requires_grad=True)
    delta = torch.randn_like(conv(x, weight, feedback, bias, padding))

    def run() -> float:
        start = time.perf_counter()
        for _ in range(CALLS):
            out = conv(x, weight, feedback, bias, padding)
            torch.autograd.grad(out, (x, weight, bias), delta)
        return (time.perf_counter() - start) / CALLS * 1e3

    return run


def bender_conv(x, weight, feedback, bias, padding) -> torch.Tensor:
    return bent_conv(x, weight, feedback, bias, 1, padding)


def torch_conv(x, weight, feedback, bias, padding) -> torch.Tensor:
    return F.conv2d(x, weight, bias, 1, padding)  # backprop: ∂x through W, B unused


def main() -> None:
    def options(parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--layers-only", action="store_true", help="time the layers, not the epochs"
        )

    args = parse_args(__doc__, repeats=5, configure=options)
    torch.manual_seed(0)
    # PyTorch's notice that its own even-kernel "same" convolution copies the input padded
    warnings.filterwarnings("ignore", "Using padding='same' with even kernel")
    header("conv_speed: feedback alignment for convolutions")
    contenders, ratios = {}, {}
    for name, shapes in LAYERS.items():
        ours, theirs = f"bent_conv, {name}", f"F.conv2d, {name}"
        contenders[ours] = layer_round(bender_conv, shapes)
        contenders[theirs] = layer_round(torch_conv, shapes)
        ratios[f"bent_conv / F.conv2d, {name}"] = (ours, theirs, "<= 1.10")
    for run in contenders.values():
        run()  # warm-up: allocator, oneDNN primitives
    print(f"## one layer, forward + backward, ms per call ({CALLS} calls a round)")
    report(time_contenders(contenders, args.repeats), ratios, unit="ms")
    if args.layers_only:
        return
    data = mnist(args.data_dir)
    epochs = {f"{name}, bender.train": name for name in ("fa-cnn", "dfa-cnn", "bp-cnn")}
    contenders = {
        label: (lambda name=name: bender_epoch(recipes.get(name).build, data))
        for label, name in epochs.items()
    }
    fa, dfa, bp = epochs
    print("## one training epoch of MNIST, batch 64, Adam 3e-4, seconds")
    report(
        time_contenders(contenders, args.repeats),
        {"fa-cnn / bp-cnn": (fa, bp, "<= 1.10"), "dfa-cnn / bp-cnn": (dfa, bp, "<= 1.10")},
    )


if __name__ == "__main__":
    main()
