"""What one bent layer costs against PyTorch's exact op: forward + backward, µs per call.

Times a feedback-alignment dense layer (batch 64, 128 → 64, the middle layer of fa-mlp) and a
feedback-alignment convolution (batch 64, 16 → 32 channels, 3×3 on 14×14, as in fa-cnn), each
forward and backward with an input gradient, against:

- ``F.linear`` / ``F.conv2d`` (backprop, autograd's native backward): the target is ≤ 1.05;
- the same rule written by hand as a ``forward(ctx, ...)`` Function, called through
  ``Function.apply``, the plain way to write a custom backward;
- the ``setup_context`` form of bender's own Function called through its C ``apply``, the
  route bender took before: torch 2.14 made it about 45 µs slower a call.

``--cpp`` adds the same rule written in C++ as a ``torch::autograd::Function`` (compiled here
by ``torch.utils.cpp_extension.load_inline``; needs a C++ compiler and ninja): what a custom
backward costs with no Python at all, the floor for any Python design.

A new torch release that changes what a custom backward costs shows up here first. Each
dense contender runs ``--calls`` calls per round (a conv one a thirtieth of them) over
``--repeats`` interleaved rounds; ratios are
printed three ways as in ``epoch_time.py`` (the targets are read on the paired one).

Usage: python benchmarks/layer_speed.py [--threads N] [--repeats N] [--calls N] [--cpp]
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from _timing import header, parse_args, report, time_contenders
from bender.functional.conv import BentConv, bent_conv
from bender.functional.dense import BentLinear, bent_linear


class HandWrittenFALinear(torch.autograd.Function):
    """Feedback alignment for a dense layer as one writes it by hand: ``∂x = δ B``."""

    @staticmethod
    def forward(ctx, x, weight, feedback, bias):
        ctx.save_for_backward(x, feedback)
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx, grad):
        x, feedback = ctx.saved_tensors
        return grad.mm(feedback), grad.t().mm(x), None, grad.sum(0)


class HandWrittenFAConv(torch.autograd.Function):
    """Feedback alignment for a 2-d convolution (stride 1, padding 1) written by hand."""

    @staticmethod
    def forward(ctx, x, weight, feedback, bias):
        ctx.save_for_backward(x, feedback)
        return F.conv2d(x, weight, bias, 1, 1)

    @staticmethod
    def backward(ctx, grad):
        x, feedback = ctx.saved_tensors
        grad_x, grad_w, grad_b = torch.ops.aten.convolution_backward(
            grad, x, feedback, [grad.shape[1]], [1, 1], [1, 1], [1, 1], False, [0, 0], 1,
            [True, True, True],
        )  # fmt: skip
        return grad_x, grad_w, None, grad_b


CPP_FA_LINEAR = r"""
#include <torch/extension.h>
using torch::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// y = x Wᵀ + b; backward: ∂x = δ B, ∂W = δᵀ x, ∂b = Σ_n δ_n (feedback alignment).
struct FALinear : public torch::autograd::Function<FALinear> {
  static Tensor forward(AutogradContext* ctx, Tensor x, Tensor w, Tensor feedback, Tensor b) {
    ctx->save_for_backward({x, feedback});
    return torch::addmm(b, x, w.t());
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto saved = ctx->get_saved_variables();
    const Tensor& grad = grads[0];
    return {grad.mm(saved[1]), grad.t().mm(saved[0]), Tensor(), grad.sum(0)};
  }
};

Tensor fa_linear(Tensor x, Tensor w, Tensor feedback, Tensor b) {
  return FALinear::apply(x, w, feedback, b);
}
"""


def cpp_fa_linear() -> Callable:
    """The C++ feedback-alignment Function above, compiled (cached by torch between runs)."""
    from torch.utils.cpp_extension import load_inline

    module = load_inline(  # without an -O flag the build is unoptimized
        "layer_speed_fa_linear",
        cpp_sources=CPP_FA_LINEAR,
        functions=["fa_linear"],
        extra_cflags=["-O2"],
    )
    return module.fa_linear


def c_apply(function: type[torch.autograd.Function]) -> Callable:
    """``function``'s C ``apply``, without ``Function.apply``'s Python layer."""
    return super(torch.autograd.Function, function).apply


def timed(step: Callable[[], torch.Tensor], calls: int) -> Callable[[], float]:
    """A contender: seconds per call of ``step().sum().backward()``, after a warm-up."""

    def run() -> float:
        for _ in range(100):
            step().sum().backward()
        start = time.perf_counter()
        for _ in range(calls):
            step().sum().backward()
        return (time.perf_counter() - start) / calls

    return run


def main() -> None:
    def configure(parser) -> None:
        parser.add_argument("--calls", type=int, default=3000, help="calls per round")
        parser.add_argument(
            "--cpp", action="store_true", help="also time the rule as a C++ autograd Function"
        )

    args = parse_args(__doc__, repeats=12, configure=configure)
    torch.manual_seed(0)

    x = torch.randn(64, 128, requires_grad=True)
    w, b = torch.randn(64, 128, requires_grad=True), torch.zeros(64, requires_grad=True)
    fb = torch.randn(64, 128)
    img = torch.randn(64, 16, 14, 14, requires_grad=True)
    k, kb = torch.randn(32, 16, 3, 3, requires_grad=True), torch.zeros(32, requires_grad=True)
    kfb = torch.randn(32, 16, 3, 3)
    conf = ([1, 1], [1, 1], [1, 1], 1)
    dense_old, conv_old = c_apply(BentLinear), c_apply(BentConv)
    n = args.calls

    header(f"layer_speed: forward + backward of one layer, {n} (conv {n // 30}) calls a round")
    contenders = {
        "dense: F.linear": timed(lambda: F.linear(x, w, b), n),
        "dense: bender FA": timed(lambda: bent_linear(x, w, fb, b), n),
        "dense: hand-written FA": timed(lambda: HandWrittenFALinear.apply(x, w, fb, b), n),
        "dense: setup_context C apply": timed(lambda: dense_old(x, w, fb, b), n),
        "conv: F.conv2d": timed(lambda: F.conv2d(img, k, kb, 1, 1), n // 30),
        "conv: bender FA": timed(lambda: bent_conv(img, k, kfb, kb, 1, 1), n // 30),
        "conv: hand-written FA": timed(lambda: HandWrittenFAConv.apply(img, k, kfb, kb), n // 30),
        "conv: setup_context C apply": timed(lambda: conv_old(img, k, kfb, kb, *conf), n // 30),
    }
    ratios = {}
    if args.cpp:
        fa_linear = cpp_fa_linear()
        check = x.detach().requires_grad_()
        delta = torch.randn(64, 64)
        fa_linear(check, w, fb, b).backward(delta)
        torch.testing.assert_close(check.grad, delta @ fb)  # the rule, before it is timed
        w.grad = b.grad = None
        contenders["dense: C++ FA"] = timed(lambda: fa_linear(x, w, fb, b), n)
        ratios["dense: C++ FA / F.linear"] = ("dense: C++ FA", "dense: F.linear", "-")
        ratios["dense: bender FA / C++ FA"] = ("dense: bender FA", "dense: C++ FA", "-")
    times = time_contenders(contenders, args.repeats)
    times = {name: [t * 1e6 for t in ts] for name, ts in times.items()}
    for kind, exact in (("dense", "F.linear"), ("conv", "F.conv2d")):
        ratios[f"{kind}: bender FA / {exact}"] = (
            f"{kind}: bender FA",
            f"{kind}: {exact}",
            "≤ 1.05",
        )
        ratios[f"{kind}: bender FA / hand-written"] = (
            f"{kind}: bender FA",
            f"{kind}: hand-written FA",
            "≤ 1.00",
        )
        ratios[f"{kind}: setup_context C apply / bender FA"] = (
            f"{kind}: setup_context C apply",
            f"{kind}: bender FA",
            "-",
        )
    report(times, ratios, unit="µs")


if __name__ == "__main__":
    main()
