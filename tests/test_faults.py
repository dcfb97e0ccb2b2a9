"""The fault suite: ``bender train`` killed with SIGKILL at random moments, then taken up again
with ``bender resume`` (or, killed before its first epoch was saved, started again with
``--overwrite``, as the message says), ends with the metrics.csv of a run that never stopped,
for a feedback-alignment, a DFA, a conv and a binary recipe.

The kill moments are drawn from a seeded generator over the length of an unbroken run, so they
land anywhere: loading torch, reading the data, training, writing any of the result files.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest

RUNS = {  # recipe: (training examples, epochs); small, so that a run takes seconds
    "fa-mlp": (768, 3),
    "dfa-mlp": (768, 3),
    "fa-cnn": (256, 2),
    "binary-mlp": (768, 3),
}
KILLS = 3  # per recipe, before the run is let finish


def _command(out: Path, data_root: Path, recipe: str, resume: bool) -> list[str]:
    limit, epochs = RUNS[recipe]
    common = ["--data-dir", str(data_root), "--no-progress", "--threads", "1"]
    if resume:
        return [sys.executable, "-m", "bender", "resume", str(out), *common]
    train = ["train", recipe, "--epochs", str(epochs), "--limit", str(limit), "--batch-size", "32"]
    return [sys.executable, "-m", "bender", *train, "--out", str(out), "--overwrite", *common]


def _start(out: Path, data_root: Path, recipe: str) -> subprocess.Popen:
    """Resume where a checkpoint was saved; else start the run again."""
    resume = (out / "checkpoint.pt").exists() and (out / "metrics.json").exists()
    return subprocess.Popen(
        _command(out, data_root, recipe, resume),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=os.environ | {"PYTHONUNBUFFERED": "1"},
    )


@pytest.mark.parametrize("recipe", list(RUNS))
def test_killed_at_random_moments_and_resumed_gives_the_unbroken_table(tmp_path, data_root, recipe):
    whole = tmp_path / "whole"
    start = time.perf_counter()
    unbroken = subprocess.run(
        _command(whole, data_root, recipe, resume=False), capture_output=True, text=True
    )
    length = time.perf_counter() - start
    assert unbroken.returncode == 0, unbroken.stderr

    out, rng = tmp_path / "killed", random.Random(recipe)
    for _ in range(KILLS):
        process = _start(out, data_root, recipe)
        try:
            process.wait(rng.uniform(0.1, length))
        except subprocess.TimeoutExpired:
            process.kill()  # SIGKILL: no handler, no finally
        _, err = process.communicate()
        assert "Traceback" not in err, err
        if process.returncode == 0:  # it finished first; the next start repairs or refuses
            break
    final = _start(out, data_root, recipe)
    _, err = final.communicate(timeout=300)
    assert final.returncode == 0, err
    assert (out / "metrics.csv").read_bytes() == (whole / "metrics.csv").read_bytes()
    assert (out / "curves.png").exists() and not list(out.glob("*.partial*"))
    assert json.loads((out / "metrics.json").read_text())["epochs_requested"] == RUNS[recipe][1]
