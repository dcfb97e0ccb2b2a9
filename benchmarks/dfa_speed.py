"""Direct feedback alignment speed, MLP 784-512-256-10 (the dfa-mlp-large recipe).

Prints, measured in this run:
  DFA epoch time / backprop epoch time, same net and loop                   target ≤ 1.0
  DFA training throughput (samples/s) at batch sizes 1, 8, 64, 256
  throughput at 64 / throughput at 1                                  target ≥ 20

Usage: python benchmarks/dfa_speed.py [--data-dir DIR] [--repeats N] [--device D]
                                      [--hidden 512 256]
``--device`` (default cpu) runs everything on that device, the data included.
``--hidden`` sets other hidden widths (relu MLP, 784 inputs, 10 outputs) for both nets.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from _timing import (
    bender_epoch,
    header,
    mnist,
    parse_args,
    report,
    synchronize,
    time_contenders,
)
from bender import DFA
from bender.data import Batches
from bender.mappings import linear, linear_blocked_dx
from bender.recipes import mlp
from bender.training import make_optimizer


def dfa_net(hidden: tuple[int, ...]) -> DFA:
    """The dfa-mlp-large recipe's construction with the given hidden widths."""
    return DFA(mlp((784, *hidden, 10), linear_blocked_dx), 10)


def backprop_net(hidden: tuple[int, ...]) -> torch.nn.Sequential:
    """The bp-mlp-large recipe's construction with the given hidden widths."""
    return mlp((784, *hidden, 10), linear)


def throughput(
    hidden: tuple[int, ...], batch_size: int, data, device: str = "cpu", seconds: float = 3.0
) -> float:
    """Samples per second of DFA training steps (forward, backward, Adam step) on ``device``."""
    model = dfa_net(hidden).to(device)
    opt = make_optimizer("adam", model.parameters(), 3e-4)  # as bender.training.train
    epochs = Batches(data.train.to(device), batch_size, seed=0)
    batches = (batch for _ in iter(int, 1) for batch in epochs)  # epoch after epoch
    samples, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        x, y = next(batches)
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()
        samples += batch_size
    synchronize(device)  # the steps queued on a GPU count
    return samples / (time.perf_counter() - start)


def main() -> None:
    def options(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--hidden", type=int, nargs="+", default=[512, 256])

    args = parse_args(__doc__, repeats=3, configure=options, device=True)
    device = args.device
    hidden = tuple(args.hidden)
    torch.manual_seed(0)
    data = mnist(args.data_dir)
    net = "-".join(map(str, (784, *hidden, 10)))
    header(f"dfa_speed: MLP {net} on MNIST", device)
    dfa, bp = f"epoch DFA {net}", f"epoch backprop {net}"
    times = time_contenders(
        {
            dfa: lambda: bender_epoch(lambda: dfa_net(hidden), data, device=device),
            bp: lambda: bender_epoch(lambda: backprop_net(hidden), data, device=device),
        },
        args.repeats,
    )
    report(times, {"DFA / backprop epoch": (dfa, bp, "<= 1.0")})
    rates = {b: throughput(hidden, b, data, device) for b in (1, 8, 64, 256)}
    for b, rate in rates.items():
        print(f"DFA batch {b:>3}: {rate:10.0f} samples/s")
    print(f"ratio throughput batch 64 / batch 1   {rates[64] / rates[1]:5.1f}  (target >= 20)")


if __name__ == "__main__":
    main()
