"""What the ``setup_context`` form of bender's autograd Functions costs per call.

bender's Functions are written in the form with a separate ``setup_context`` (``forward``
without ``ctx``), which torch.func transforms (``grad``, ``vmap``) need. This times one
``BentLinear`` layer (batch 64, 128 → 64), forward and backward, called through ``direct_apply``
as bender calls it, against the same Function in the older form (``forward(ctx, ...)``,
defined here), and against the same call through ``Function.apply``, which binds the
arguments for ``setup_context`` on every call. Each contender runs ``--calls`` steps per round
over ``--repeats`` interleaved rounds; each ratio is printed three ways, as in
``epoch_time.py``.

Usage: python benchmarks/function_form.py [--repeats N] [--calls N]
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from _timing import header, parse_args, report, time_contenders
from bender.functional._apply import direct_apply
from bender.functional.dense import BentLinear


class CtxForwardBentLinear(torch.autograd.Function):
    """``BentLinear`` in the older form: ``forward(ctx, ...)`` saves what backward needs."""

    @staticmethod
    def forward(ctx, x, weight, feedback, bias):
        ctx.save_for_backward(x, feedback)
        return F.linear(x, weight, bias)

    backward = BentLinear.backward


def main() -> None:
    args = parse_args(
        __doc__,
        repeats=12,
        configure=lambda p: p.add_argument("--calls", type=int, default=5000),
    )
    torch.manual_seed(0)
    x = torch.randn(64, 128, requires_grad=True)
    weight = torch.randn(64, 128, requires_grad=True)
    feedback = torch.randn(64, 128)
    bias = torch.zeros(64, requires_grad=True)

    def timed(apply):
        def run() -> float:
            for _ in range(100):  # warm up
                apply(x, weight, feedback, bias).sum().backward()
            start = time.perf_counter()
            for _ in range(args.calls):
                apply(x, weight, feedback, bias).sum().backward()
            return (time.perf_counter() - start) / args.calls

        return run

    header(f"function_form: one BentLinear layer, forward + backward, {args.calls} calls a round")
    times = time_contenders(
        {
            "setup_context form (bender)": timed(direct_apply(BentLinear)),
            "forward(ctx, ...) form": timed(direct_apply(CtxForwardBentLinear)),
            "setup_context form, Function.apply": timed(BentLinear.apply),
        },
        args.repeats,
    )
    times = {name: [t * 1e6 for t in ts] for name, ts in times.items()}  # per call
    bender, ctx_form = "setup_context form (bender)", "forward(ctx, ...) form"
    ratios = {
        "setup_context / forward(ctx)": (bender, ctx_form, "-"),
        "Function.apply / direct_apply": ("setup_context form, Function.apply", bender, "-"),
    }
    report(times, ratios, unit="µs")


if __name__ == "__main__":
    main()
