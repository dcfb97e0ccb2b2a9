"""The ``bender`` command: list recipes, train one, and write its results to a folder."""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import torch

from bender import __version__, data, recipes
from bender.alignment import AlignmentRecorder, bent_layers
from bender.training import COLUMNS, check_seed, resolve_device, train

TABLE_COLUMNS = [c for c in COLUMNS if c != "seconds"]  # seed-determined: reproducible
RESULT_FILES = ("metrics.csv", "metrics.json", "curves.png", "model.pt", "alignment.csv")
PROBE = 1000  # test examples on which --alignment compares the gradients


def _positive(kind: type):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {kind.__name__}, got {text!r}") from None
        if not (value > 0 and math.isfinite(value)):
            raise argparse.ArgumentTypeError(f"must be positive and finite, got {text}")
        return value

    return parse


def _seed(text: str) -> int:
    try:
        seed = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an int, got {text!r}") from None
    try:
        return check_seed(seed)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bender", description="Train networks with a bent chain rule (bender-torch)."
    )
    parser.add_argument("--version", action="version", version=f"bender {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("recipes", help="list the named experiments")
    t = sub.add_parser("train", help="train a recipe and write metrics, curves and weights")
    t.add_argument("recipe", help="recipe name (see `bender recipes`)")
    for flag, kind, default, text in (
        ("--epochs", _positive(int), 10, "passes over the training set"),
        ("--lr", _positive(float), 3e-4, "Adam's learning rate"),
        (
            "--batch-size",
            _positive(int),
            64,
            "examples per step; the last partial batch is dropped",
        ),
        (
            "--seed",
            _seed,
            0,
            "seeds the initialisation and the batch order: on one machine, the same seed gives "
            "the same table",
        ),
    ):
        t.add_argument(flag, type=kind, default=default, help=f"{text} (default: %(default)s)")
    t.add_argument(
        "--shuffle-once",
        action="store_true",
        help="shuffle the training set once and keep that batch order every epoch, as "
        "Bender.jl's tutorials do (default: reshuffle every epoch)",
    )
    t.add_argument(
        "--device",
        default="auto",
        help="auto (CUDA if present), cpu, cuda, cuda:1 (default: %(default)s)",
    )
    t.add_argument(
        "--dataset", choices=list(data.DATASETS), default="mnist", help="(default: %(default)s)"
    )
    t.add_argument("--data-dir", help="data root (default: $BENDER_DATA, else ~/.cache/bender)")
    t.add_argument(
        "--out",
        type=Path,
        help="output folder (default: runs/RECIPE-DATASET-seedN, or the first free "
        "runs/RECIPE-DATASET-seedN-K when that one holds an earlier run's results)",
    )
    t.add_argument(
        "--overwrite",
        action="store_true",
        help="let --out replace the results of an earlier run in that folder",
    )
    t.add_argument("--limit", type=_positive(int), help="use only the first N train/test examples")
    t.add_argument(
        "--alignment",
        action="store_true",
        help="after every epoch, record the angles between W and B and between the bent and "
        f"backprop weight gradients (on the first {PROBE} test examples) in alignment.csv",
    )
    t.add_argument("--no-progress", action="store_true", help="hide the per-epoch progress bar")
    return parser


def _results_in(folder: Path) -> list[str]:
    return [name for name in RESULT_FILES if (folder / name).exists()]


def _output_folder(args: argparse.Namespace, parser: argparse.ArgumentParser) -> Path:
    """``--out``, refused if it holds earlier results (unless ``--overwrite``); else a free default.

    Checked before any data is loaded, so a refused run costs nothing and loses nothing.
    """
    if args.out is not None:
        taken = next((p for p in (args.out, *args.out.parents) if p.exists()), None)
        if taken is not None and not taken.is_dir():
            parser.error(f"--out {args.out}: {taken} is a file, not a folder")
        found = _results_in(args.out)
        if found and not args.overwrite:
            parser.error(
                f"{args.out} already holds an earlier run's results ({', '.join(found)}); "
                "pass another --out, or --overwrite to replace them"
            )
        return args.out
    base = Path("runs") / f"{args.recipe}-{args.dataset}-seed{args.seed}"
    folder, k = base, 1
    while _results_in(folder):
        k += 1
        folder = base.with_name(f"{base.name}-{k}")
    return folder


def _replace(path: Path, write: Callable[[Path], object]) -> None:
    """``write`` a temporary sibling, then rename it over ``path``.

    The rename is atomic, so a write cut short (Ctrl-C, a full disk) leaves the previous
    epoch's file whole instead of a truncated one.
    """
    partial = path.with_name(f"{path.stem}.partial{path.suffix}")  # keeps the format suffix
    try:
        write(partial)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def _write_table(out: Path, table: pd.DataFrame, record: dict) -> None:
    """metrics.csv holds the numbers that depend only on the seed; metrics.json adds timings."""
    _replace(out / "metrics.csv", lambda p: table[TABLE_COLUMNS].to_csv(p, index=False))
    record["epochs"] = table.to_dict(orient="records")
    _replace(out / "metrics.json", lambda p: p.write_text(json.dumps(record, indent=2)))


def plot_curves(table: pd.DataFrame, path: Path, title: str) -> None:
    """Loss and accuracy per epoch, train vs test, side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    for ax, metric in zip(axes, ("loss", "acc"), strict=True):
        for split in ("train", "test"):
            ax.plot(table["epoch"], table[f"{metric}_{split}"], marker="o", label=split)
        ax.set_xlabel("epoch")
        ax.set_ylabel("accuracy" if metric == "acc" else "cross-entropy loss")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _train(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    try:
        recipe = recipes.get(args.recipe)
    except KeyError as err:
        parser.error(err.args[0])
    model = recipes.build(args.recipe, args.seed)
    if args.alignment:
        try:
            bent_layers(model)
        except ValueError:
            parser.error(
                f"--alignment compares a bent rule with backprop, but {args.recipe} has no bent "
                "layer; use a feedback-alignment or DFA recipe"
            )
    out = _output_folder(args, parser)
    try:
        device = resolve_device(args.device)
        dataset = data.load(args.dataset, args.data_dir)
    except (FileNotFoundError, RuntimeError, ValueError) as err:
        print(f"bender: error: {err}", file=sys.stderr)
        return 1
    if args.limit:
        dataset = dataset.subset(args.limit, args.limit)
    if len(dataset.train) < args.batch_size:  # no complete batch: an epoch would do nothing
        limited = f" with --limit {args.limit}" if args.limit else ""
        parser.error(
            f"--batch-size {args.batch_size} is larger than the training set "
            f"({len(dataset.train)} examples{limited}); the last partial batch is dropped, "
            "so an epoch would have no batch"
        )
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        print(f"bender: error: cannot create the output folder {out}: {err}", file=sys.stderr)
        return 1
    for name in _results_in(out):  # only with --overwrite: no stale file outlives this run
        (out / name).unlink()
    record = {
        "recipe": args.recipe,
        "dataset": args.dataset,
        "epochs_requested": args.epochs,
        "lr": args.lr,
        "batch_size": args.batch_size,
        "seed": args.seed,
        "reshuffle": not args.shuffle_once,
        "device": str(device),
        "threads": torch.get_num_threads(),  # CPU results depend on it (summation order)
        "limit": args.limit,
        "bender": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "model": repr(model),
    }
    print(f"{args.recipe} on {args.dataset} ({device}), seed {args.seed}, writing to {out}:")
    print(model)

    recorder = None
    if args.alignment:
        recorder = AlignmentRecorder(dataset.test.x[:PROBE], dataset.test.y[:PROBE])
        recorder({"epoch": 0}, model)  # the starting point, before any training
        record["alignment_probe"] = f"first {len(recorder.x)} test examples"

    def save(row: dict, model: torch.nn.Module) -> None:  # after every epoch: nothing is lost
        saving.append(row["epoch"])
        _replace(out / "model.pt", lambda p: torch.save(model.state_dict(), p))
        history.append(row)  # after the weights: the table never runs ahead of model.pt
        _write_table(out, pd.DataFrame(history), record)
        if recorder is not None:
            recorder(row, model)
            _replace(out / "alignment.csv", lambda p: recorder.table().to_csv(p, index=False))

    history: list[dict] = []
    saving: list[int] = []  # the epochs whose results were being written
    interrupted = False
    try:
        table = train(
            model,
            dataset,
            epochs=args.epochs,
            lr=args.lr,
            batch_size=args.batch_size,
            device=device,
            seed=args.seed,
            reshuffle=not args.shuffle_once,
            callbacks=[save],
            progress=not args.no_progress,
        )
    except KeyboardInterrupt:  # Ctrl-C: finish the record of the epochs completed so far
        interrupted = True
        table = pd.DataFrame(history, columns=COLUMNS)
        table.attrs["stopped"] = f"interrupted (Ctrl-C) in epoch {len(history) + 1}"
    except OSError as err:  # a result file could not be written: disk full, folder gone
        if history:  # the numbers are in memory: show them, as they may be nowhere else
            print(pd.DataFrame(history, columns=COLUMNS).round(3).to_string(index=False))
        where = f"writing the results of epoch {saving[-1]}" if saving else "training"
        print(
            f"bender: error: {where} failed: {err}. The run stopped; {out} keeps the files "
            "written before.",
            file=sys.stderr,
        )
        return 1
    if len(table):
        print(table.round(3).to_string(index=False))
        title = f"{args.recipe} on {args.dataset}, seed {args.seed}"
        _replace(out / "curves.png", lambda p: plot_curves(table, p, title))
    if recorder is not None:
        print("angles in degrees (weight_angle: W vs B; grad_angle: bent vs backprop ∂W):")
        print(recorder.table().round(1).to_string(index=False))
    if "stopped" in table.attrs:
        record["stopped"] = table.attrs["stopped"]
        _write_table(out, table, record)
        print(
            f"bender: error: {table.attrs['stopped']}; results so far are in {out}", file=sys.stderr
        )
        return 130 if interrupted else 1  # 130: the shell's code for a run stopped by Ctrl-C
    if recipe.reference and args.dataset == "mnist":  # the tutorials' numbers are MNIST's
        print(f"for comparison, {recipe.reference}")
    print(f"wrote {', '.join(_results_in(out))} to {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "recipes":
        width = max(map(len, recipes.RECIPES))
        for recipe in recipes.RECIPES.values():
            print(f"{recipe.name:<{width}}  {recipe.summary}")
        return 0
    return _train(args, parser)


if __name__ == "__main__":
    sys.exit(main())
