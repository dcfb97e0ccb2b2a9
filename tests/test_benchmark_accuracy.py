"""benchmarks/accuracy.py: one `bender train` process per seed, a summary, resumable sweeps."""

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "accuracy.py"


def _sweep(out, data_root, *extra, seeds="0-1", limit="600"):
    command = [sys.executable, str(SCRIPT), "fa-mlp", "--seeds", seeds, "--out", str(out)]
    command += ["--data-dir", str(data_root), *extra, "--", "--epochs", "1", "--limit", limit]
    return subprocess.run(command, capture_output=True, text=True)


def test_sweep_reports_each_seed_and_resumes(tmp_path, data_root):
    done = _sweep(tmp_path, data_root)
    assert done.returncode == 0, done.stderr
    table = pd.read_csv(tmp_path / "accuracy.csv")
    assert table["seed"].tolist() == [0, 1]
    runs = [tmp_path / f"fa-mlp-s{s}" for s in (0, 1)]
    finals = [pd.read_csv(run / "metrics.csv")["acc_test"].iloc[-1] for run in runs]
    assert table["acc_test"].tolist() == finals
    summary = done.stdout.splitlines()[-2]
    assert f"mean {sum(finals) / 2:.4f}" in summary
    # One epoch on 600 images cannot reach 0.95, so the verdict must say so.
    assert "target each >= 0.950: NOT met" in summary

    log = runs[0] / "log.txt"
    log.write_text("marker")  # any re-run of seed 0 overwrites it
    assert _sweep(tmp_path, data_root, "--reuse").returncode == 0
    assert log.read_text() == "marker"  # the same command: kept
    assert _sweep(tmp_path, data_root, "--reuse", seeds="0", limit="500").returncode == 0
    assert log.read_text() != "marker"  # another command: trained again


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nope"], "unknown recipe(s) nope; valid: fa-mlp"),
        (["fa-mlp", "--seeds", "5-3"], "expected integers or ranges like 0-29, got '5-3'"),
    ],
)
def test_bad_arguments_fail_before_training(tmp_path, args, message):
    command = [sys.executable, str(SCRIPT), *args, "--out", str(tmp_path / "out")]
    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode == 2
    assert message in done.stderr
    assert not (tmp_path / "out").exists()
