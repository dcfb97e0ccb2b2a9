"""Direct feedback alignment speed on the CPU, 784-512-256-10.

Prints, measured in this run:
  DFA epoch time / backprop epoch time, same net and loop (min and median)   target ≤ 1.0
  DFA training throughput (samples/s) at batch sizes 1, 8, 64, 256
  throughput at 64 / throughput at 1                                  target ≥ 20

Usage: python benchmarks/dfa_speed.py [--data-dir DIR] [--repeats N]
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from _timing import bender_epoch, header, mnist, parse_args, report, time_contenders
from bender import recipes
from bender.data import Batches
from bender.training import make_optimizer


def throughput(batch_size: int, data, seconds: float = 3.0) -> float:
    """Samples per second of DFA training steps (forward, backward, Adam step)."""
    model = recipes.build("dfa-mlp-large")
    opt = make_optimizer("adam", model.parameters(), 3e-4)  # as bender.training.train
    epochs = Batches(data.train, batch_size, seed=0)
    batches = (batch for _ in iter(int, 1) for batch in epochs)  # epoch after epoch
    samples, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        x, y = next(batches)
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()
        samples += batch_size
    return samples / (time.perf_counter() - start)


def main() -> None:
    args = parse_args(__doc__, repeats=3)
    torch.manual_seed(0)
    data = mnist(args.data_dir)
    header("dfa_speed: MLP 784-512-256-10 on MNIST")
    times = time_contenders(
        {
            "epoch dfa-mlp-large": lambda: bender_epoch(recipes.get("dfa-mlp-large").build, data),
            "epoch bp-mlp-large": lambda: bender_epoch(recipes.get("bp-mlp-large").build, data),
        },
        args.repeats,
    )
    report(times, {"DFA / backprop epoch": ("epoch dfa-mlp-large", "epoch bp-mlp-large", "<= 1.0")})
    rates = {b: throughput(b, data) for b in (1, 8, 64, 256)}
    for b, rate in rates.items():
        print(f"DFA batch {b:>3}: {rate:10.0f} samples/s")
    print(f"ratio throughput batch 64 / batch 1   {rates[64] / rates[1]:5.1f}  (target >= 20)")


if __name__ == "__main__":
    main()
