"""One training step of a zoo model under each learning rule, against backprop, in one run.

Prints, measured in this run (one step: forward, cross-entropy, backward, Adam step):
  step time of each rule / step time of bp                 targets: fa, usf, frsf, brsf ≤ 1.10,
                                                                    dfa ≤ 1.00
Usage: python benchmarks/rule_speed.py [--model resnet20] [--batch-size 128] [--image-size 32]
                                       [--rules fa dfa usf frsf brsf] [--repeats N]
                                       [--steps K] [--threads T] [--device cpu]
Each repeat times ``--steps`` steps of every rule in turn (interleaved, the order reversed on
every other round), after one untimed warm-up step; inputs are random images of 3 channels.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from _timing import header, parse_args, report, synchronize, time_contenders
from bender.recipes import build_network

TARGETS = {"fa": "≤ 1.10", "usf": "≤ 1.10", "frsf": "≤ 1.10", "brsf": "≤ 1.10", "dfa": "≤ 1.00"}


def _configure(parser) -> None:
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--rules", nargs="+", default=list(TARGETS))


def stepper(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, device: str):
    """A function that runs ``steps`` training steps of ``model`` and returns their seconds."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    step()  # warm-up: allocations, Adam's state

    def timed() -> float:
        synchronize(device)
        start = time.perf_counter()
        for _ in range(steps):
            step()
        synchronize(device)
        return time.perf_counter() - start

    return timed


def main() -> None:
    args = parse_args(__doc__, repeats=5, configure=_configure, device=True)
    shape = (3, args.image_size, args.image_size)
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(args.batch_size, *shape, generator=generator).to(args.device)
    y = torch.randint(0, 10, (args.batch_size,), generator=generator).to(args.device)
    contenders = {}
    for rule in ["bp", *args.rules]:
        model = build_network(args.model, rule, shape, 10, seed=0).to(args.device)
        contenders[rule] = stepper(model, x, y, args.steps, args.device)
    header(
        f"{args.model}, batch {args.batch_size}, {shape[1]}×{shape[2]}×{shape[0]} images, "
        f"{args.steps} steps a repeat, {args.repeats} repeats",
        args.device,
    )
    times = time_contenders(contenders, args.repeats)
    report(times, {f"{r} / bp": (r, "bp", TARGETS.get(r, "-")) for r in args.rules})


if __name__ == "__main__":
    main()
