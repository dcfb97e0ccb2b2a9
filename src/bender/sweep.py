"""Comparison tables as the field reports them: every rule × seed, one ``bender train`` each.

``sweep(rules, seeds, out, train_flags, jobs)`` runs ``bender train --model M --rule R --seed S
--out OUT/M+R-seedS`` for each pair, ``jobs`` processes at a time (each on the least busy of
``devices``, when given: one run per GPU), and skips a run whose folder
holds a finished run of the same command (so a stopped sweep goes on where it stopped). Then
:func:`summarize` writes one table of the final and the best test accuracy per rule, mean ±
sample standard deviation over seeds (``summary.csv``, ``summary.md``), and :func:`plot`
one figure of the test accuracy per epoch, the mean of each rule with a band from the lowest to
the highest seed (``curves.png``).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

from bender.checkpoint import write_atomically


def run_folder_name(model: str, rule: str, seed: int) -> str:
    return f"{model}+{rule}-seed{seed}"


def finished(folder: Path, command: list[str]) -> bool:
    """Whether ``folder`` holds a complete run that ``command`` made."""
    try:
        record = json.loads((folder / "metrics.json").read_text())
        same = json.loads((folder / "command.json").read_text()) == command
    except (OSError, ValueError):
        return False
    epochs = record.get("epochs")
    return (
        same
        and "stopped" not in record
        and isinstance(epochs, list)
        and len(epochs) == record.get("epochs_requested")
    )


def sweep(
    model: str,
    rules: list[str],
    seeds: list[int],
    out: Path,
    train_flags: list[str],
    jobs: int = 1,
    devices: list[str] | None = None,
) -> list[str]:
    """Train every rule × seed that ``out`` does not hold finished; the folders trained now.

    Each run is a fresh ``python -m bender train`` process whose output goes to its folder's
    ``log.txt``, with ``--device`` the least busy of ``devices`` when given (not part of the
    command a finished run is recognised by); a run that fails stops the sweep with its log's
    name (the runs finished so far stay, and are skipped next time).
    """
    out.mkdir(parents=True, exist_ok=True)
    todo = []
    for rule in rules:
        for seed in seeds:
            folder = out / run_folder_name(model, rule, seed)
            command = ["train", "--model", model, "--rule", rule, "--seed", str(seed)]
            command += ["--out", str(folder), "--no-progress", *train_flags]
            if not finished(folder, command):
                todo.append((folder, command))
    running: list[tuple[Path, subprocess.Popen, object, str | None]] = []
    trained = []
    failed = None
    while (todo or running) and failed is None:
        while todo and len(running) < jobs:
            folder, command = todo.pop(0)
            folder.mkdir(parents=True, exist_ok=True)
            log = open(folder / "log.txt", "w")  # noqa: SIM115 (closed when the run ends)
            device = None
            if devices:
                busy = [entry[3] for entry in running]
                device = min(devices, key=busy.count)  # the first of the least busy
            where = [] if device is None else ["--device", device]
            process = subprocess.Popen(
                [sys.executable, "-m", "bender", *command, *where, "--overwrite"],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            running.append((folder, process, log, device))
            write_atomically(
                folder / "command.json", lambda p, c=command: p.write_text(json.dumps(c))
            )
        time.sleep(0.2)
        for entry in list(running):
            folder, process, log, _ = entry
            if process.poll() is None:
                continue
            running.remove(entry)
            log.close()
            if process.returncode != 0:
                failed = folder
            else:
                trained.append(folder.name)
    for _, process, log, _ in running:  # after a failure: let the others finish
        process.wait()
        log.close()
    if failed is not None:
        raise RuntimeError(f"the run in {failed} failed; see {failed / 'log.txt'}")
    return trained


def curves(out: Path, model: str, rules: list[str], seeds: list[int]) -> pd.DataFrame:
    """Every run's per-epoch table, with its rule and seed."""
    tables = []
    for rule in rules:
        for seed in seeds:
            table = pd.read_csv(out / run_folder_name(model, rule, seed) / "metrics.csv")
            tables.append(table.assign(rule=rule, seed=seed))
    return pd.concat(tables, ignore_index=True)


def summarize(runs: pd.DataFrame) -> pd.DataFrame:
    """Per rule: seeds, final and best test accuracy, mean and sample sd over seeds."""
    per_run = runs.groupby(["rule", "seed"], sort=False)["acc_test"].agg(["last", "max"])
    grouped = per_run.groupby(level="rule", sort=False)
    table = pd.DataFrame(
        {
            "seeds": grouped.size(),
            "final_mean": grouped["last"].mean(),
            "final_sd": grouped["last"].std(),
            "best_mean": grouped["max"].mean(),
            "best_sd": grouped["max"].std(),
        }
    ).fillna({"final_sd": 0.0, "best_sd": 0.0})
    return table.reset_index()


def markdown(table: pd.DataFrame, title: str) -> str:
    """The summary as a Markdown table: ``mean ± sd`` of final and best test accuracy."""
    lines = [
        f"# {title}",
        "",
        "| rule | seeds | final acc_test | best acc_test |",
        "|---|--:|--:|--:|",
    ]
    for row in table.itertuples():
        lines.append(
            f"| {row.rule} | {row.seeds} | {row.final_mean:.4f} ± {row.final_sd:.4f} | "
            f"{row.best_mean:.4f} ± {row.best_sd:.4f} |"
        )
    return "\n".join(lines) + "\n"


def plot(runs: pd.DataFrame, path: Path, title: str) -> None:
    """Test accuracy per epoch: each rule's mean over seeds, with a band from min to max."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), constrained_layout=True)
    for rule, group in runs.groupby("rule", sort=False):
        by_epoch = group.groupby("epoch")["acc_test"]
        mean, low, high = by_epoch.mean(), by_epoch.min(), by_epoch.max()
        ax.plot(mean.index, mean.values, marker="o", label=rule)
        ax.fill_between(mean.index, low.values, high.values, alpha=0.2)
    ax.set_xlabel("epoch")
    ax.set_ylabel("test accuracy")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(title)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_results(out: Path, model: str, rules: list[str], seeds: list[int], title: str):
    """``summary.csv``, ``summary.md`` and ``curves.png`` in ``out``; the summary table."""
    runs = curves(out, model, rules, seeds)
    table = summarize(runs)
    write_atomically(out / "summary.csv", lambda p: table.to_csv(p, index=False))
    write_atomically(out / "summary.md", lambda p: p.write_text(markdown(table, title)))
    write_atomically(out / "curves.png", lambda p: plot(runs, p, title))
    return table
