"""One training epoch of fa-mlp against the same net built from plain nn.Linear.

Prints, measured in this run on the CPU (min and median over --repeats interleaved epochs):
  fa-mlp (bender.train)  /  plain nn.Linear net (bender.train)           target ≤ 1.10
  fa-mlp (bender.train)  /  plain nn.Linear net (DataLoader+TensorDataset) target ≤ 1.00

Usage: python benchmarks/epoch_time.py [--data-dir DIR] [--repeats N]
"""

from __future__ import annotations

import torch
from torch import nn

from _timing import (
    bender_epoch,
    dataloader_epoch,
    header,
    mnist,
    parse_args,
    report,
    time_contenders,
)
from bender import recipes


def plain_mlp() -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 10)
    )


def main() -> None:
    args = parse_args(__doc__, repeats=5)
    torch.manual_seed(0)
    data = mnist(args.data_dir)
    fa = recipes.get("fa-mlp").build
    header("epoch_time: one training epoch of MNIST, batch 64, Adam 3e-4")
    fa_name, plain, loader = (
        "fa-mlp, bender.train",
        "nn.Linear MLP, bender.train",
        "nn.Linear MLP, DataLoader loop",
    )
    times = time_contenders(
        {
            fa_name: lambda: bender_epoch(fa, data),
            plain: lambda: bender_epoch(plain_mlp, data),
            loader: lambda: dataloader_epoch(plain_mlp, data),
        },
        args.repeats,
    )
    report(
        times,
        {
            "fa-mlp / nn.Linear (same loop)": (fa_name, plain, "<= 1.10"),
            "fa-mlp / nn.Linear (DataLoader loop)": (fa_name, loader, "<= 1.00"),
        },
    )


if __name__ == "__main__":
    main()
