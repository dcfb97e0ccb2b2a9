"""Test accuracy of recipes over several seeds, each run by the ``bender train`` command.

For every recipe and seed this runs ``bender train RECIPE --seed S --out OUT/RECIPE-sS
--overwrite``, or for ``MODEL+RULE`` ``bender train --model MODEL --rule RULE ...`` (in a fresh
process, exactly as a user would type it, with any further flags passed
through; without ``--reuse`` every run is made afresh, replacing an earlier one there), then
prints each run's test accuracy after its last epoch, their mean, sd and range, and whether the
project's acceptance target for that recipe and dataset (``TARGETS`` below, the one place that
holds them) is met on the seeds given.

Usage:
  python benchmarks/accuracy.py [RECIPE | MODEL+RULE ...] [--seeds 0 1 2 | 0-29] [--data-dir DIR]
                                [--out DIR] [--reuse] [-- MORE BENDER TRAIN FLAGS]
Default: fa-mlp, fa-mlp-large and binary-mlp on seeds 0, 1, 2. Example, the notebook's
procedure for thirty seeds:
  python benchmarks/accuracy.py binary-mlp --seeds 0-29 -- --lr 1e-4 --shuffle-once
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from bender import recipes, rules
from bender.sweep import finished


@dataclass(frozen=True)
class Target:
    """Acceptance on the final test accuracy: each seed ``>= each``, their mean ``>= mean``."""

    each: float
    mean: float | None = None

    def describe(self) -> str:
        text = f"each >= {self.each:.3f}"
        return text if self.mean is None else f"{text}, mean >= {self.mean:.3f}"

    def met(self, accs: list[float]) -> bool:
        return min(accs) >= self.each and (self.mean is None or statistics.mean(accs) >= self.mean)


# (experiment, dataset) -> target
TARGETS = {
    ("fa-mlp", "mnist"): Target(each=0.950),
    ("fa-mlp-large", "mnist"): Target(each=0.965),
    ("binary-mlp", "mnist"): Target(each=0.83, mean=0.85),
    # LeNet-5 on Fashion-MNIST, 20 epochs (any model, any rule)
    ("lenet5+bp", "fashion-mnist"): Target(each=0.89),
    ("lenet5+usf", "fashion-mnist"): Target(each=0.88),
    ("lenet5+brsf", "fashion-mnist"): Target(each=0.88),
    ("lenet5+frsf", "fashion-mnist"): Target(each=0.88),
    ("lenet5+fa", "fashion-mnist"): Target(each=0.83),
    ("lenet5+dfa", "fashion-mnist"): Target(each=0.83),
}


def train_words(name: str) -> list[str]:
    """What ``bender train`` is given to run the recipe ``name``, or ``MODEL+RULE``."""
    if "+" in name:
        model, rule = name.split("+", 1)
        return ["--model", model, "--rule", rule]
    return [name]


def check_name(name: str) -> None:
    """A ``KeyError`` or ``ValueError`` unless ``name`` is a recipe or ``MODEL+RULE``."""
    if "+" in name:
        rules.get_rule(name.split("+", 1)[1])
    else:
        recipes.get(name)


def seed_list(tokens: list[str]) -> list[int]:
    """``["0", "1", "5-7"]`` -> ``[0, 1, 5, 6, 7]``."""
    seeds = []
    for token in tokens:
        first, dash, last = token.partition("-")
        try:
            span = range(int(first), int(last if dash else first) + 1)
        except ValueError:
            span = range(0)
        if not span:
            raise ValueError(f"--seeds: expected integers or ranges like 0-29, got {token!r}")
        seeds.extend(span)
    return seeds


def run(recipe: str, seed: int, out: Path, train_flags: list[str], reuse: bool) -> float:
    """Final acc_test of one ``bender train`` run; its console output goes to ``out/log.txt``
    and its record (dataset included) stays in ``out/metrics.json``."""
    command = ["train", *train_words(recipe), "--seed", str(seed), "--no-progress"]
    command += ["--out", str(out)]
    command += train_flags
    if not (reuse and finished(out, command)):
        out.mkdir(parents=True, exist_ok=True)
        (out / "command.json").write_text(json.dumps(command))
        with open(out / "log.txt", "w") as log:
            done = subprocess.run(
                [sys.executable, "-m", "bender.cli", *command, "--overwrite"],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        if done.returncode != 0:
            raise SystemExit(f"`bender {' '.join(command)}` failed; see {out / 'log.txt'}")
    return float(pd.read_csv(out / "metrics.csv")["acc_test"].iloc[-1])


def dataset_of(out: Path) -> str:
    """The dataset a finished run in ``out`` trained on, as its ``metrics.json`` records it."""
    return json.loads((out / "metrics.json").read_text())["dataset"]


def main() -> None:
    argv = sys.argv[1:]
    cut = argv.index("--") if "--" in argv else len(argv)
    argv, train_flags = argv[:cut], argv[cut + 1 :]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = [name for name, dataset in TARGETS if dataset == "mnist"]
    parser.add_argument("recipes", nargs="*", default=default, metavar="RECIPE")
    parser.add_argument("--seeds", nargs="+", default=["0", "1", "2"])
    parser.add_argument("--data-dir", help="data root, passed to bender train")
    parser.add_argument("--out", type=Path, default=Path("runs/accuracy"))
    parser.add_argument("--reuse", action="store_true", help="keep finished identical runs")
    args = parser.parse_args(argv)
    try:
        for name in args.recipes:
            check_name(name)
    except (KeyError, ValueError) as err:
        parser.error(err.args[0])
    try:
        seeds = seed_list(args.seeds)
    except ValueError as err:
        parser.error(str(err))
    if args.data_dir:
        train_flags += ["--data-dir", args.data_dir]
    flags = " ".join(train_flags)
    print(f"# accuracy: acc_test after the last epoch; bender train flags: {flags or '(none)'}")
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for recipe in args.recipes:
        accs = []
        for seed in seeds:
            accs.append(run(recipe, seed, args.out / f"{recipe}-s{seed}", train_flags, args.reuse))
            rows.append({"recipe": recipe, "seed": seed, "acc_test": accs[-1]})
            pd.DataFrame(rows).to_csv(args.out / "accuracy.csv", index=False)  # kept if one fails
            print(f"{recipe:<14} seed {seed:>3}  acc_test {accs[-1]:.4f}", flush=True)
        sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
        line = (
            f"{recipe:<14} {len(accs)} seeds  mean {statistics.mean(accs):.4f}  sd {sd:.4f}  "
            f"range {min(accs):.4f}-{max(accs):.4f}"
        )
        datasets = {dataset_of(args.out / f"{recipe}-s{seed}") for seed in seeds}
        target = TARGETS.get((recipe, datasets.pop())) if len(datasets) == 1 else None
        if target is not None:
            line += f"   target {target.describe()}: {'met' if target.met(accs) else 'NOT met'}"
        print(line, flush=True)
    print(f"# per-run folders and accuracy.csv in {args.out}")


if __name__ == "__main__":
    main()
