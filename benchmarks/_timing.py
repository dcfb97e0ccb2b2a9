"""Timing helpers shared by the benchmark scripts (not part of the library)."""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from bender.data import Dataset, load
from bender.training import train


def parse_args(doc: str, repeats: int) -> argparse.Namespace:
    """``--data-dir`` and ``--repeats``, the two options every benchmark takes."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--data-dir", help="data root (default: $BENDER_DATA)")
    parser.add_argument("--repeats", type=int, default=repeats)
    return parser.parse_args()


def mnist(data_dir: str | None) -> Dataset:
    return load("mnist", data_dir)


def bender_epoch(build: Callable[[], torch.nn.Module], data: Dataset, **train_kwargs) -> float:
    """Seconds of one training epoch (evaluation excluded) through ``bender.training.train``."""
    table = train(build(), data, epochs=1, device="cpu", **train_kwargs)
    return float(table["seconds"].iloc[0])


def dataloader_epoch(build: Callable[[], torch.nn.Module], data: Dataset, batch_size: int = 64):
    """Seconds of one epoch of the textbook loop: DataLoader(TensorDataset), Adam, cross-entropy."""
    model = build()
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(data.train.x, data.train.y),
        batch_size=batch_size,
        shuffle=True,
        drop_last=True,
    )
    opt = torch.optim.Adam(model.parameters(), lr=3e-4)
    start = time.perf_counter()
    for x, y in loader:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
    return time.perf_counter() - start


def median_times(contenders: dict[str, Callable[[], float]], repeats: int) -> dict[str, float]:
    """Run every contender ``repeats`` times and return the median of each.

    Runs are interleaved and the order is reversed on every other round, so that no contender
    always follows the same one (caches, allocator state and clock boost even out).
    """
    times: dict[str, list[float]] = {name: [] for name in contenders}
    order = list(contenders)
    for i in range(repeats):
        for name in order if i % 2 == 0 else order[::-1]:
            times[name].append(contenders[name]())
    return {name: statistics.median(ts) for name, ts in times.items()}


def header(title: str) -> None:
    print(f"# {title}")
    print(f"# torch {torch.__version__}, {torch.get_num_threads()} threads, CPU")
