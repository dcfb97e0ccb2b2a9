"""Timing helpers shared by the benchmark scripts (not part of the library)."""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from bender.data import Dataset, load
from bender.functional.native import native_linear
from bender.training import train


def parse_args(
    doc: str,
    repeats: int,
    configure: Callable[[argparse.ArgumentParser], None] | None = None,
    device: bool = False,
) -> argparse.Namespace:
    """``--data-dir``, ``--repeats`` and ``--threads``, which every benchmark takes, plus its own.

    ``device=True`` adds ``--device`` (default ``cpu``) for the benchmarks that train epochs.
    ``--threads N`` is applied here (``torch.set_num_threads``); the header prints the count.
    """
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--data-dir", help="data root (default: $BENDER_DATA)")
    parser.add_argument("--repeats", type=int, default=repeats)
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's own)")
    if device:
        parser.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    if configure is not None:
        configure(parser)
    args = parser.parse_args()
    if args.threads is not None:
        if args.threads < 1:
            parser.error(f"--threads must be a positive int, got {args.threads}")
        torch.set_num_threads(args.threads)
    return args


def mnist(data_dir: str | None) -> Dataset:
    return load("mnist", data_dir)


def synchronize(device: str | torch.device) -> None:
    """Wait for the work queued on ``device`` (CUDA runs asynchronously; the CPU does not)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def bender_epoch(
    build: Callable[[], torch.nn.Module], data: Dataset, device: str = "cpu", **train_kwargs
) -> float:
    """Seconds of one training epoch (evaluation excluded) through ``bender.training.train``.

    ``train`` times the epoch up to its last loss, read on the host, so queued GPU work counts.
    """
    table = train(build(), data, epochs=1, device=device, **train_kwargs)
    return float(table["seconds"].iloc[0])


def dataloader_epoch(
    build: Callable[[], torch.nn.Module], data: Dataset, batch_size: int = 64, device: str = "cpu"
) -> float:
    """Seconds of one epoch of the textbook loop: DataLoader(TensorDataset), Adam, cross-entropy.

    The data stay on the CPU and each batch is moved to ``device``, as the textbook loop does.
    """
    model = build().to(device)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(data.train.x, data.train.y),
        batch_size=batch_size,
        shuffle=True,
        drop_last=True,
    )
    opt = torch.optim.Adam(model.parameters(), lr=3e-4)
    start = time.perf_counter()
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
    synchronize(device)
    return time.perf_counter() - start


def time_contenders(
    contenders: dict[str, Callable[[], float]], repeats: int
) -> dict[str, list[float]]:
    """Run every contender ``repeats`` times; return all the seconds measured for each.

    Runs are interleaved and the order is reversed on every other round, so that no contender
    always follows the same one (caches, allocator state and clock boost even out).
    """
    times: dict[str, list[float]] = {name: [] for name in contenders}
    order = list(contenders)
    for i in range(repeats):
        for name in order if i % 2 == 0 else order[::-1]:
            times[name].append(contenders[name]())
    return times


def report(
    times: dict[str, list[float]], ratios: dict[str, tuple[str, str, str]], unit: str = "s"
) -> None:
    """Print each contender's minimum and median, then each ratio three ways.

    ``paired`` is the median over rounds of the ratio within a round (the two contenders ran
    seconds apart). It is the reading the targets are checked against: the development machine
    is shared and switches between a fast and a slow state (the same epoch took 0.62 s or 1.1 s)
    for minutes at a time, so the two minima can come from different states, while a round
    almost always sits inside one. The ratio of minima (``timeit``'s reasoning: interference
    only adds time) and of medians are printed beside it; when the three disagree, the run was
    disturbed. ``ratios`` maps a label to (numerator, denominator, target); ``unit`` is what
    the times are in.
    """
    width = max(map(len, times))
    for name, ts in times.items():
        minimum, median = min(ts), statistics.median(ts)
        print(f"{name:<{width}}  min {minimum:7.3f} {unit}   median {median:7.3f} {unit}")
    for label, (num, den, target) in ratios.items():
        paired = statistics.median(a / b for a, b in zip(times[num], times[den], strict=True))
        by_min = min(times[num]) / min(times[den])
        by_median = statistics.median(times[num]) / statistics.median(times[den])
        print(
            f"ratio {label}: {paired:5.2f} (paired)  {by_min:5.2f} (min)  "
            f"{by_median:5.2f} (median)   target {target}"
        )


def header(title: str, device: str = "cpu") -> None:
    print(f"# {title}")
    where = "CPU"
    if torch.device(device).type == "cuda":
        where = f"{device}: {torch.cuda.get_device_name(device)}"
    native = ", bender's C++ Function (BENDER_NATIVE=1)" if native_linear() is not None else ""
    print(f"# torch {torch.__version__}, {torch.get_num_threads()} threads, {where}{native}")
