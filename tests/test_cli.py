import argparse
import json
import math
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pandas as pd
import pytest
import torch
from torch import nn

from bender import checkpoint, cli, recipes, run_folder
from bender.summary import COLUMNS as SUMMARY_COLUMNS
from bender.training import COLUMNS
from tests.test_data import write_mnist


def _train(tmp_path, data_root, *extra, recipe="fa-mlp", epochs=2, folder="run"):
    out = tmp_path / folder
    args = ["train", recipe, "--epochs", str(epochs), "--limit", "1500"]
    args += ["--data-dir", str(data_root), "--out", str(out), "--no-progress", *extra]
    return cli.main(args), out


def test_recipes_lists_one_line_each(capsys):
    assert cli.main(["recipes"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == len(recipes.RECIPES)
    assert lines[0].startswith("fa-mlp ") and "784-128-64-10" in lines[0]
    assert "trains with" not in lines[0]  # the tutorials' Adam
    kp = next(line for line in lines if line.startswith("kp-mlp "))
    assert kp.endswith("; trains with sgd lr 0.05, momentum 0.9, weight_decay 0.001")
    wm = next(line for line in lines if line.startswith("wm-mlp "))
    assert wm.endswith(
        "relu [= --model mlp --rule wm]; after every step WeightMirror(lr=0.01, "
        "weight_decay=0.01, noise_std=1, batch_size=64)"
    )


def test_summary_prints_the_layers_and_the_memory_binary_weights_save(capsys):
    assert cli.main(["summary", "binary-mlp"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split() == list(SUMMARY_COLUMNS)
    assert lines[1].split()[:6] == [
        "0",
        "GenDense",
        "linear_binary_weights",
        "128",
        "100352",
        "128",
    ]
    assert lines[4].split()[:3] == ["total", "109184", "202"]
    bits = (109184 / 8 + 4 * 202) / 1024
    full = (109184 + 202) * 4 / 1024
    assert lines[5] == (
        f"weights for inference: {bits:.1f} KiB; all in float32 they would take {full:.1f} KiB "
        f"({full / bits:.1f}× more)"
    )
    # layers 2 and 3 take sign_ste's ±1: 128·64 + 64·10 of the 109184 MACs are 1-bit
    assert lines[6] == (
        "multiply-accumulates per sample: 109184, of which 8832 1-bit (8.1%: both operands ±1, "
        "XNOR and popcount)"
    )
    assert cli.main(["summary", "fa-mlp"]) == 0
    printed = capsys.readouterr().out
    assert "weights for inference" not in printed  # nothing binary to compare
    assert printed.splitlines()[-1].split()[:5] == ["total", "0", "109386", "109184", "0"]


@pytest.mark.parametrize("command", ["train", "resume"])
def test_every_option_is_explained_in_help_with_its_default(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([command, "--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    subparser = next(
        a for a in cli._parser()._actions if isinstance(a, argparse._SubParsersAction)
    ).choices[command]
    for action in subparser._actions:
        assert action.help, f"{action.option_strings or action.dest} has no help"
        if action.default not in (None, False, argparse.SUPPRESS):
            flag = action.option_strings[-1]
            explained = text.split(flag, 2)[2].split(" --")[0]  # after the usage line
            assert f"(default: {action.default})" in explained, flag
    if command == "train":
        assert "--epochs EPOCHS passes over the training set (default: 10)" in text


def test_train_writes_all_outputs(tmp_path, data_root, capsys):
    code, out = _train(tmp_path, data_root)
    assert code == 0
    assert {p.name for p in out.iterdir()} == {
        "metrics.csv",
        "metrics.json",
        "curves.png",
        "model.pt",
        "checkpoint.pt",
    }
    table = pd.read_csv(out / "metrics.csv")
    assert list(table.columns) == ["epoch", "loss_train", "loss_test", "acc_train", "acc_test"]
    assert table["epoch"].tolist() == [1, 2]
    record = json.loads((out / "metrics.json").read_text())
    assert (
        record["recipe"] == "fa-mlp"
        and len(record["epochs"]) == 2
        and "seconds" in record["epochs"][0]
        and record["threads"] == torch.get_num_threads()
    )
    state = torch.load(out / "model.pt", weights_only=True)
    model = recipes.build("fa-mlp")
    model.load_state_dict(state)
    assert "0.feedback" in state
    assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"
    printed = capsys.readouterr().out
    assert "loss_train" in printed and "acc_test" in printed
    assert "for comparison, Bender.jl tutorial on MNIST: acc_test 0.959" in printed


def test_fashion_mnist_run_is_not_compared_with_the_mnist_tutorial(tmp_path, data_root, capsys):
    code, out = _train(tmp_path, data_root, "--dataset", "fashion-mnist", epochs=1)
    assert code == 0
    assert json.loads((out / "metrics.json").read_text())["dataset"] == "fashion-mnist"
    printed = capsys.readouterr().out
    assert "fa-mlp on fashion-mnist" in printed and "for comparison" not in printed


def test_same_seed_gives_identical_metrics_csv(tmp_path, data_root):
    _, a = _train(tmp_path / "a", data_root, "--seed", "3")
    _, b = _train(tmp_path / "b", data_root, "--seed", "3")
    assert (a / "metrics.csv").read_bytes() == (b / "metrics.csv").read_bytes()


def test_shuffle_once_is_recorded_and_changes_the_run(tmp_path, data_root):
    _, default = _train(tmp_path / "a", data_root)
    _, once = _train(tmp_path / "b", data_root, "--shuffle-once")
    assert json.loads((default / "metrics.json").read_text())["reshuffle"] is True
    assert json.loads((once / "metrics.json").read_text())["reshuffle"] is False
    a, b = pd.read_csv(default / "metrics.csv"), pd.read_csv(once / "metrics.csv")
    assert a.iloc[0].equals(b.iloc[0])  # the first epoch's order is the same draw
    assert not a.iloc[1].equals(b.iloc[1])


@pytest.mark.parametrize(
    "args",
    [
        ["train", "fa-mlp", "--epochs", "0"],
        ["train", "fa-mlp", "--lr", "-0.1"],
        ["train", "fa-mlp", "--batch-size", "0"],
        ["train", "fa-mlp", "--epochs", "two"],
        ["train", "fa-mlp", "--lr", "inf"],
        ["train", "fa-mlp", "--seed", "1.5"],
        ["train", "fa-mlp", "--seed", str(2**64)],
        ["train", "not-a-recipe"],
        ["train", "fa-mlp", "--dataset", "cifar"],
        ["summary", "fa-mpl"],
        ["train", "binary-mlp", "--clip-weights", "0"],
        ["train", "binary-mlp", "--clip-weights", "nan"],
        ["train", "fa-mlp", "--weight-decay", "-0.1"],
        ["train", "fa-mlp", "--momentum", "inf"],
        ["train", "fa-mlp", "--optimizer", "rmsprop"],
        ["train", "fa-mlp", "--optimizer", "sgd", "--momentum", "5"],
        ["train", "fa-mlp", "--optimizer", "sgd", "--momentum", "1"],
        ["train", "fa-mlp", "--out", ""],
        ["train", "fa-mlp", "--seed", "-1"],
        ["train", "fa-mlp", "--seed", str(2**64)],
        ["train", "fa-mlp", "--threads", "0"],
        ["resume", "somewhere", "--threads", "two"],
        ["train"],
        ["train", "--rule", "fa"],
        ["train", "fa-mlp", "--model", "mlp"],
        ["train", "--model", "resnet18", "--rule", "fa"],
        ["train", "--model", "mlp", "--rule", "feedback"],
        ["train", "--model", "mlp", "--rule", "fa", "--blocks", "1"],
        ["train", "--model", "mlp", "--rule", "dfa", "--blocks", "1,,2"],
        ["train", "--model", "no_such_package.nets:build", "--rule", "fa"],
        ["train", "fa-mlp", "--augment", "crop-flip"],
        ["train", "--model", "mlp", "--augment", "rotate"],
        ["train", "--model", "mlp", "--precision", "fp8"],
        ["train", "--model", "mlp", "--val", "0"],
    ],
)
def test_usage_errors_exit_2(args, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(args)
    assert exit_info.value.code == 2
    if "not-a-recipe" in args:
        assert "valid recipes: fa-mlp" in capsys.readouterr().err


def test_missing_data_exits_1_with_the_folder(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("bender.data._download", lambda name, root: False)
    code = cli.main(["train", "fa-mlp", "--data-dir", str(tmp_path), "--out", str(tmp_path / "o")])
    assert code == 1
    assert str(tmp_path / "MNIST" / "raw") in capsys.readouterr().err


class _BreaksInEpochTwo(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = recipes.mlp((784, 16, 10), recipes.linear)
        self.calls = 0

    def forward(self, x):
        if self.training:
            self.calls += 1
        return self.net(x) * (float("nan") if self.calls > 30 else 1.0)


def test_failed_run_keeps_results_so_far(tmp_path, data_root, monkeypatch, capsys):
    broken = recipes.Recipe("broken", "diverges in epoch 2", _BreaksInEpochTwo)
    monkeypatch.setitem(recipes.RECIPES, "broken", broken)
    with pytest.warns(RuntimeWarning):
        code, out = _train(tmp_path, data_root, recipe="broken", epochs=3)
    assert code == 1
    assert pd.read_csv(out / "metrics.csv")["epoch"].tolist() == [1]
    assert "stopped" in json.loads((out / "metrics.json").read_text())
    assert (out / "model.pt").exists()
    assert "results so far" in capsys.readouterr().err


def test_unavailable_or_unknown_device_exits_1(tmp_path, data_root, capsys):
    if not torch.cuda.is_available():
        code, _ = _train(tmp_path, data_root, "--device", "cuda")
        assert code == 1
        assert "no CUDA device" in capsys.readouterr().err
    code, out = _train(tmp_path, data_root, "--device", "tpu7")
    assert code == 1
    assert "unknown device 'tpu7'" in capsys.readouterr().err
    if not torch.backends.mps.is_available():  # known to torch, unusable here: no traceback
        code, out = _train(tmp_path, data_root, "--device", "mps")
        assert code == 1
        assert "device 'mps' is not usable here" in capsys.readouterr().err
    assert not out.exists()  # refused before the output folder is made


def test_default_folder_never_replaces_an_earlier_run(tmp_path, data_root, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    args = ["train", "bp-mlp", "--epochs", "1", "--limit", "500", "--no-progress"]
    args += ["--data-dir", str(data_root)]
    assert cli.main(args) == 0
    first = tmp_path / "runs" / "bp-mlp-mnist-seed0"
    before = (first / "model.pt").read_bytes()
    assert cli.main([*args, "--lr", "1e-3"]) == 0
    second = tmp_path / "runs" / "bp-mlp-mnist-seed0-2"
    assert (first / "model.pt").read_bytes() == before
    assert json.loads((second / "metrics.json").read_text())["lr"] == 1e-3
    assert f"writing to {Path('runs') / 'bp-mlp-mnist-seed0-2'}" in capsys.readouterr().out


def test_out_with_earlier_results_needs_overwrite(tmp_path, data_root, capsys):
    code, out = _train(tmp_path, data_root, epochs=1)
    assert code == 0
    (out / "curves.png").unlink()  # any one of the result files marks an earlier run
    before = (out / "metrics.json").read_bytes()
    with pytest.raises(SystemExit) as exit_info:
        _train(tmp_path, data_root, "--lr", "1e-3", epochs=1)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert str(out) in err and "metrics.csv" in err and "--overwrite" in err
    assert (out / "metrics.json").read_bytes() == before
    code, _ = _train(tmp_path, data_root, "--lr", "1e-3", "--overwrite", epochs=1)
    assert code == 0
    assert json.loads((out / "metrics.json").read_text())["lr"] == 1e-3
    assert (out / "curves.png").exists()


def test_ctrl_c_keeps_results_so_far_with_curves(tmp_path, data_root, monkeypatch, capsys):
    real_train = cli.train

    def one_epoch_then_ctrl_c(*args, **kwargs):
        real_train(*args, **{**kwargs, "epochs": 1})
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "train", one_epoch_then_ctrl_c)
    code, out = _train(tmp_path, data_root, epochs=3)
    assert code == 130
    assert pd.read_csv(out / "metrics.csv")["epoch"].tolist() == [1]
    stopped = json.loads((out / "metrics.json").read_text())["stopped"]
    assert stopped == "interrupted (Ctrl-C) in epoch 2"
    assert (out / "model.pt").exists()
    assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"
    assert f"results so far are in {out}" in capsys.readouterr().err
    assert not (out / cli.LOCK).exists()  # released


def test_ctrl_c_while_saving_keeps_the_last_whole_checkpoint(tmp_path, data_root, monkeypatch):
    real_save, saved = torch.save, []

    def save_then_ctrl_c_halfway(obj, path):
        if Path(path).name.startswith("checkpoint"):
            return real_save(obj, path)
        if saved:  # epoch 2's model.pt: cut short, as by Ctrl-C during the write
            Path(path).write_bytes(b"PK\x03")
            raise KeyboardInterrupt
        saved.append({k: v.clone() for k, v in obj.items()})
        real_save(obj, path)

    monkeypatch.setattr(torch, "save", save_then_ctrl_c_halfway)
    code, out = _train(tmp_path, data_root, epochs=3)
    assert code == 130
    state = torch.load(out / "model.pt", weights_only=True)
    assert state.keys() == saved[0].keys()
    assert all(torch.equal(state[k], saved[0][k]) for k in state)  # epoch 1's weights, whole
    assert pd.read_csv(out / "metrics.csv")["epoch"].tolist() == [1]  # matches model.pt
    assert not [p.name for p in out.iterdir() if ".partial" in p.name]


def test_batch_larger_than_the_training_set_is_a_usage_error(tmp_path, data_root, capsys):
    args = ["train", "fa-mlp", "--limit", "10", "--data-dir", str(data_root)]
    with pytest.raises(SystemExit) as exit_info:
        cli.main([*args, "--out", str(tmp_path / "run"), "--no-progress"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--batch-size 64 is larger than the training set (10 examples with --limit 10)" in err
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_out_that_cannot_be_a_folder_is_refused(tmp_path, data_root, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", "fa-mlp", "--out", str(blocker / "run"), "--data-dir", str(data_root)])
    assert exit_info.value.code == 2
    assert f"{blocker / 'run'} cannot be a folder: {blocker} is a file" in capsys.readouterr().err


def test_output_folder_that_cannot_be_created_exits_1(tmp_path, data_root, monkeypatch, capsys):
    def refuse(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "mkdir", refuse)
    code, out = _train(tmp_path, data_root, epochs=1)
    assert code == 1
    assert f"cannot create the output folder {out}: [Errno 13] Permission denied" in (
        capsys.readouterr().err
    )


def test_alignment_is_recorded_per_epoch(tmp_path, data_root, capsys):
    code, out = _train(tmp_path, data_root, "--alignment", recipe="dfa-mlp")
    assert code == 0
    angles = pd.read_csv(out / "alignment.csv")
    assert angles["epoch"].tolist() == [0, 1, 2]
    assert list(angles.columns)[1:] == [f"grad_angle_model.{i}" for i in range(3)]
    assert (angles["grad_angle_model.2"] < 1e-3).all()  # the output layer gets the true error
    record = json.loads((out / "metrics.json").read_text())
    assert record["alignment_probe"] == "first 1000 test examples"
    printed = capsys.readouterr().out
    assert "grad_angle_model.0" in printed and "alignment.csv" in printed


def test_alignment_needs_a_bent_recipe(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", "bp-mlp", "--alignment", "--out", str(tmp_path / "run")])
    assert exit_info.value.code == 2
    assert "bp-mlp has no bent layer" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_cnn_recipe_trains_from_the_command_line(tmp_path, data_root):
    flags = ("--alignment", "--limit", "300")  # the later --limit wins
    code, out = _train(tmp_path, data_root, *flags, recipe="fa-cnn", epochs=1)
    assert code == 0
    assert pd.read_csv(out / "metrics.csv")["epoch"].tolist() == [1]
    angles = pd.read_csv(out / "alignment.csv")
    assert list(angles.columns)[1:4] == ["weight_angle_1", "weight_angle_3", "weight_angle_6"]


def test_a_full_disk_stops_the_run_with_a_message_and_the_table(
    tmp_path, data_root, monkeypatch, capsys
):
    real_save = torch.save

    def save_once_then_disk_full(obj, path):  # epoch 1's model.pt and checkpoint.pt fit
        if (Path(path).parent / "checkpoint.pt").exists():
            raise OSError(28, "No space left on device")
        real_save(obj, path)

    monkeypatch.setattr(torch, "save", save_once_then_disk_full)
    code, out = _train(tmp_path, data_root, epochs=3)
    assert code == 1
    captured = capsys.readouterr()
    assert (
        f"writing the results of epoch 2 failed: cannot write {out / 'model.pt'}: [Errno 28] No "
        "space left on device"
    ) in captured.err
    assert "Traceback" not in captured.err
    assert "0." in captured.out.splitlines()[-1]  # epoch 1's row, printed for the record
    assert pd.read_csv(out / "metrics.csv")["epoch"].tolist() == [1]
    assert not [p.name for p in out.iterdir() if ".partial" in p.name]

    assert f"`bender resume {out} --data-dir {data_root}` continues" in captured.err
    monkeypatch.undo()  # space freed
    assert _resume(out, data_root) == 0
    code, whole = _train(tmp_path, data_root, epochs=3, folder="whole")
    assert code == 0
    _same_results(out, whole)


def _resume(out, data_root, *extra):
    return cli.main(["resume", str(out), "--data-dir", str(data_root), "--no-progress", *extra])


def _same_results(a: Path, b: Path) -> None:
    """Two run folders hold the same numbers and weights (timings aside)."""
    for name in ("metrics.csv", "alignment.csv"):
        assert (a / name).exists() == (b / name).exists()
        if (a / name).exists():
            assert (a / name).read_bytes() == (b / name).read_bytes(), name
    weights_a, weights_b = (torch.load(f / "model.pt", weights_only=True) for f in (a, b))
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)


def test_resume_finishes_a_run_stopped_by_ctrl_c_as_if_it_never_stopped(
    tmp_path, data_root, monkeypatch, capsys
):
    code, whole = _train(tmp_path, data_root, "--alignment", epochs=3, folder="whole")
    assert code == 0
    real_train = cli.train

    def one_epoch_then_ctrl_c(*args, **kwargs):
        real_train(*args, **{**kwargs, "epochs": 1})
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "train", one_epoch_then_ctrl_c)
    code, out = _train(tmp_path, data_root, "--alignment", epochs=3)
    assert code == 130
    hint = f"`bender resume {out} --data-dir {data_root}` continues from the last epoch saved"
    assert hint in capsys.readouterr().err
    monkeypatch.setattr(cli, "train", real_train)

    assert _resume(out, data_root) == 0
    assert f"after epoch 1 of 3, writing to {out}" in capsys.readouterr().out
    _same_results(out, whole)
    record = json.loads((out / "metrics.json").read_text())
    assert "stopped" not in record and len(record["epochs"]) == 3
    assert [r["after_epoch"] for r in record["resumed"]] == [1]


def test_resume_trains_a_finished_run_for_more_epochs(tmp_path, data_root, capsys):
    code, longer = _train(tmp_path, data_root, "--shuffle-once", folder="longer")
    assert code == 0
    code, out = _train(tmp_path, data_root, "--shuffle-once", epochs=1)
    assert code == 0
    capsys.readouterr()
    assert _resume(out, data_root) == 0  # it asked for 1 epoch and has it: nothing to train
    assert f"{out} holds a finished run of 1 epoch(s); all its files are there" in (
        capsys.readouterr().out
    )
    assert _resume(out, data_root, "--epochs", "2") == 0
    _same_results(out, longer)
    assert json.loads((out / "metrics.json").read_text())["epochs_requested"] == 2


def test_clipped_binary_weights_are_recorded_and_kept_on_resume(tmp_path, data_root, capsys):
    # far below Glorot's bound (0.08 for 784 → 128): signs flip within a few steps of Adam
    clip = ("--clip-weights", "0.002")
    code, whole = _train(tmp_path, data_root, *clip, recipe="binary-mlp", folder="whole")
    assert code == 0
    weights = torch.load(whole / "model.pt", weights_only=True)
    assert all(weights[f"{i}.weight"].abs().max() == 0.002 for i in range(3))
    code, plain = _train(tmp_path, data_root, recipe="binary-mlp", folder="plain")
    assert (whole / "metrics.csv").read_bytes() != (plain / "metrics.csv").read_bytes()
    code, out = _train(tmp_path, data_root, *clip, recipe="binary-mlp", epochs=1)
    assert json.loads((out / "metrics.json").read_text())["clip_weights"] == 0.002
    assert _resume(out, data_root, "--epochs", "2") == 0
    _same_results(out, whole)  # the resumed epoch clipped too
    with pytest.raises(SystemExit) as exit_info:
        _train(tmp_path, data_root, *clip, folder="fa")  # fa-mlp: nothing binary to clip
    assert exit_info.value.code == 2
    assert "--clip-weights clamps the latent weights of binary layers" in capsys.readouterr().err


def test_resume_says_what_differs_from_the_runs_start(tmp_path, data_root, capsys):
    code, out = _train(tmp_path, data_root, epochs=1)
    assert code == 0
    record = json.loads((out / "metrics.json").read_text())
    record["threads"] = 99
    (out / "metrics.json").write_text(json.dumps(record))
    assert _resume(out, data_root, "--epochs", "2") == 0
    assert f"threads 99 → {torch.get_num_threads()} since the run started" in (
        capsys.readouterr().err
    )


def test_resume_refuses_a_folder_it_cannot_continue(tmp_path, data_root, capsys):
    with pytest.raises(SystemExit) as exit_info:
        _resume(tmp_path / "nothing", data_root)
    assert exit_info.value.code == 2
    assert "nothing is not a folder; name the folder of a bender train run" in (
        capsys.readouterr().err
    )
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit) as exit_info:
        _resume(tmp_path / "empty", data_root)
    assert exit_info.value.code == 2
    assert "holds no metrics.json: it is not a bender train run" in capsys.readouterr().err
    code, out = _train(tmp_path, data_root, epochs=1)
    assert code == 0
    record = json.loads((out / "metrics.json").read_text())
    (out / "metrics.json").write_text(json.dumps(record | {"recipe": "fa-mlp-xl"}))
    with pytest.raises(SystemExit) as exit_info:
        _resume(out, data_root, "--epochs", "2")
    assert exit_info.value.code == 2
    assert "metrics.json: unknown recipe 'fa-mlp-xl'; valid recipes: fa-mlp" in (
        capsys.readouterr().err
    )
    (out / "metrics.json").write_text(json.dumps(record))
    (out / "checkpoint.pt").unlink()
    with pytest.raises(SystemExit) as exit_info:
        _resume(out, data_root, "--epochs", "2")
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"{out} holds no checkpoint.pt: the run stopped before its first epoch was saved" in err
    assert "train(" not in err  # says what to type, not what to call in Python
    command = (
        f"bender train fa-mlp --dataset mnist --epochs 1 --seed 0 --batch-size 64 --optimizer "
        f"adam --lr 0.0003 --limit 1500 --out {out} --overwrite"
    )
    assert f"Start it again with: {command}" in err


def test_a_stop_before_any_saved_epoch_does_not_suggest_resuming(
    tmp_path, data_root, monkeypatch, capsys
):
    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "train", ctrl_c)
    code, out = _train(tmp_path, data_root)
    assert code == 130
    err = capsys.readouterr().err
    assert "interrupted (Ctrl-C) in epoch 1" in err and "bender resume" not in err
    assert not (out / "checkpoint.pt").exists()


def test_resume_refuses_the_checkpoint_of_another_run(tmp_path, data_root, capsys):
    code, other = _train(tmp_path, data_root, recipe="bp-mlp", epochs=1, folder="other")
    assert code == 0
    code, out = _train(tmp_path, data_root, epochs=1)
    assert code == 0
    (other / "checkpoint.pt").replace(out / "checkpoint.pt")
    assert _resume(out, data_root, "--epochs", "2") == 1
    err = capsys.readouterr().err
    assert f"{out} cannot be resumed: the checkpoint holds the weights of another model" in err
    assert "Traceback" not in err


def test_resumed_alignment_rows_keep_every_digit(tmp_path):
    angles = pd.DataFrame(
        {
            "epoch": [0, 1, 2],
            "grad_angle_0": [0.12345678901234566, 1e-300, 3.0],
            "grad_angle_1": [float("nan"), 0.30000000000000004, 2.0],  # NaN: an empty field
        }
    )
    angles.to_csv(tmp_path / "alignment.csv", index=False)
    rows = cli._alignment_rows(tmp_path, 1)  # epoch 2 came after the checkpoint: dropped
    assert [r["epoch"] for r in rows] == [0, 1]
    assert [r["grad_angle_0"] for r in rows] == [0.12345678901234566, 1e-300]
    assert math.isnan(rows[0]["grad_angle_1"]) and rows[1]["grad_angle_1"] == 0.30000000000000004
    assert pd.DataFrame(rows).to_csv(index=False) == angles[:2].to_csv(index=False)


def test_a_second_process_writing_into_the_run_folder_is_refused(tmp_path, data_root, capsys):
    code, out = _train(tmp_path, data_root, epochs=1)
    assert code == 0
    before = (out / "model.pt").read_bytes()
    with run_folder.locked(out):  # held as another process holds it: an flock on the file
        for run in (
            lambda: _resume(out, data_root, "--epochs", "2"),
            lambda: _train(tmp_path, data_root, "--overwrite", epochs=1),
        ):
            with pytest.raises(SystemExit) as exit_info:
                run()
            assert exit_info.value.code == 2
            err = capsys.readouterr().err
            assert f"another bender process (pid {os.getpid()} on " in err
            assert f"is writing to {out}; wait for it to end" in err
            assert (out / "model.pt").read_bytes() == before  # nothing replaced or removed
        assert (out / cli.LOCK).exists()  # still the holder's
    assert not (out / cli.LOCK).exists()


def test_the_lock_of_a_process_that_ended_is_taken_over(tmp_path, data_root):
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    code, out = _train(tmp_path, data_root, epochs=1)
    assert code == 0
    (out / cli.LOCK).write_text(f"{socket.gethostname()} {ended.pid}")
    assert _resume(out, data_root, "--epochs", "2") == 0
    assert not (out / cli.LOCK).exists()


def test_who_holds_a_lock(tmp_path):
    lock = tmp_path / cli.LOCK
    assert cli.lock_holder(lock) is None  # gone: free
    lock.write_text("")  # created, not yet written: held, by whom is unknown
    assert cli.lock_holder(lock) == f"unknown, named in {lock}"
    lock.write_text(f"{socket.gethostname()} {os.getpid()}")
    assert cli.lock_holder(lock) == f"pid {os.getpid()} on {socket.gethostname()}"
    lock.write_text("another-host 1")  # cannot be checked from here: held
    assert cli.lock_holder(lock) == "pid 1 on another-host"


def test_a_recipes_optimizer_settings_are_used_replaced_by_flags_and_kept_on_resume(
    tmp_path, data_root, capsys
):
    code, whole = _train(tmp_path, data_root, recipe="kp-mlp", folder="whole")
    assert code == 0
    record = json.loads((whole / "metrics.json").read_text())
    assert (record["optimizer"], record["lr"]) == ("sgd", 0.05)
    assert record["optimizer_options"] == {"momentum": 0.9, "weight_decay": 1e-3}
    assert "sgd lr 0.05, momentum 0.9, weight_decay 0.001" in capsys.readouterr().out
    code, out = _train(tmp_path, data_root, recipe="kp-mlp", epochs=1)
    capsys.readouterr()
    assert _resume(out, data_root, "--epochs", "2") == 0
    assert "seed 0, sgd lr 0.05, momentum 0.9, weight_decay 0.001, after epoch 1 of 2" in (
        capsys.readouterr().out
    )
    _same_results(out, whole)  # the resumed epoch had SGD's momentum and weight decay too

    flags = ("--momentum", "0", "--lr", "0.01")
    code, changed = _train(tmp_path, data_root, *flags, recipe="kp-mlp", folder="flags")
    record = json.loads((changed / "metrics.json").read_text())
    assert (record["optimizer"], record["lr"]) == ("sgd", 0.01)
    assert record["optimizer_options"] == {"momentum": 0.0, "weight_decay": 1e-3}
    code, adam = _train(tmp_path, data_root, "--optimizer", "adam", recipe="kp-mlp", folder="a")
    record = json.loads((adam / "metrics.json").read_text())
    assert (record["optimizer"], record["lr"], record["optimizer_options"]) == ("adam", 3e-4, {})
    flags = ("--optimizer", "sgd", "--weight-decay", "0.01")
    code, fa = _train(tmp_path, data_root, *flags, folder="fa")
    record = json.loads((fa / "metrics.json").read_text())
    assert (record["optimizer"], record["lr"]) == ("sgd", 3e-4)
    assert record["optimizer_options"] == {"weight_decay": 0.01}


def test_a_weight_mirror_recipe_mirrors_after_every_step_also_when_resumed(
    tmp_path, data_root, capsys
):
    mirror = "WeightMirror(lr=0.01, weight_decay=0.01, noise_std=1, batch_size=64)"
    flags = ("--alignment", "--batch-size", "16")  # 93 steps an epoch
    code, whole = _train(tmp_path, data_root, *flags, recipe="wm-mlp", folder="whole")
    assert code == 0
    assert f"adam lr 0.0003, then {mirror}, writing to" in capsys.readouterr().out
    assert json.loads((whole / "metrics.json").read_text())["after_step"] == [mirror]
    angles = pd.read_csv(whole / "alignment.csv").filter(like="weight_angle")
    assert (angles.iloc[0] > 80).all()  # random B
    assert (angles.iloc[2] < 30).all()  # 186 mirror steps later: 0.99¹⁸⁶ = 0.15 of B's start
    code, out = _train(tmp_path, data_root, *flags, recipe="wm-mlp", epochs=1)
    capsys.readouterr()
    assert _resume(out, data_root, "--epochs", "2") == 0
    assert f"then {mirror}, after epoch 1 of 2" in capsys.readouterr().out
    _same_results(out, whole)  # the resumed epoch mirrored too, with the same noise


def test_momentum_needs_sgd(tmp_path, data_root, capsys):
    for optimizer in ["adam", "adamw"]:
        with pytest.raises(SystemExit) as exit_info:
            _train(tmp_path, data_root, "--momentum", "0.9", "--optimizer", optimizer)
        assert exit_info.value.code == 2
        assert f"--momentum is SGD's; {optimizer} takes none" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()  # refused before anything was made


def test_resume_of_a_run_recorded_before_the_optimizer_flags_uses_adam(tmp_path, data_root):
    assert _train(tmp_path, data_root, folder="longer")[0] == 0
    longer = tmp_path / "longer"
    code, out = _train(tmp_path, data_root, epochs=1)
    assert code == 0
    record = json.loads((out / "metrics.json").read_text())
    for key in ("optimizer", "optimizer_options"):  # as an earlier bender wrote it
        del record[key]
    (out / "metrics.json").write_text(json.dumps(record))
    state = torch.load(out / "checkpoint.pt", weights_only=False)
    del state["settings"]["optimizer_options"]
    torch.save(state, out / "checkpoint.pt")
    assert _resume(out, data_root, "--epochs", "2") == 0
    _same_results(out, longer)


# Hardening: races, failed writes, hand-edited records, damaged data -----------------------------


class _Paused:
    """Runs ``cli.main(argv)`` in a thread that stops, when it reaches ``where`` (a function of
    the cli module, ``load`` or ``train``), until :meth:`go`: a second command can then run at
    exactly that moment. Both threads are one process, and the folder lock (an flock per open
    file) holds between them as between two processes."""

    def __init__(self, monkeypatch, where: str, argv: list[str]) -> None:
        self.reached, self.released = threading.Event(), threading.Event()
        self.code, self.error = None, None
        target = cli.data if where == "load" else cli
        real = getattr(target, where)

        def paused(*args, **kwargs):
            if threading.current_thread() is self.thread:
                self.reached.set()
                assert self.released.wait(60)
            return real(*args, **kwargs)

        monkeypatch.setattr(target, where, paused)
        self.thread = threading.Thread(target=self._run, args=(argv,))
        self.thread.start()
        assert self.reached.wait(60), "the paused command never got there"

    def _run(self, argv: list[str]) -> None:
        try:
            self.code = cli.main(argv)
        except SystemExit as err:
            self.code = err.code
        except BaseException as err:
            self.error = err

    def go(self) -> int:
        self.released.set()
        self.thread.join(120)
        if self.error is not None:
            raise self.error
        return self.code


def _argv(data_root, out=None, epochs=1, *extra, recipe="fa-mlp"):
    argv = ["train", recipe, "--epochs", str(epochs), "--limit", "1500", "--no-progress"]
    argv += ["--data-dir", str(data_root), *extra]
    return argv + (["--out", str(out)] if out is not None else [])


def test_a_resume_reads_the_run_under_the_lock_so_a_longer_run_cannot_slip_in(
    tmp_path, data_root, monkeypatch, capsys
):
    code, out = _train(tmp_path, data_root, epochs=2)
    assert code == 0
    resume = ["resume", str(out), "--data-dir", str(data_root), "--no-progress"]
    first = _Paused(monkeypatch, "load", [*resume, "--epochs", "3"])  # checkpoint read, paused
    with pytest.raises(SystemExit) as exit_info:
        cli.main([*resume, "--epochs", "4"])  # would have trained to 4, then been rewound to 3
    assert exit_info.value.code == 2
    assert f"is writing to {out}; wait for it to end" in capsys.readouterr().err
    assert first.go() == 0
    assert pd.read_csv(out / "metrics.csv")["epoch"].tolist() == [1, 2, 3]


def test_two_trains_into_one_out_never_delete_each_others_results(
    tmp_path, data_root, monkeypatch, capsys
):
    out = tmp_path / "run"
    first = _Paused(monkeypatch, "load", _argv(data_root, out))  # paused loading its data
    assert cli.main(_argv(data_root, out, 1, "--lr", "1e-3")) == 0  # the second finishes
    finished = (out / "model.pt").read_bytes()
    assert first.go() == 2  # finds the results under the lock, and keeps them
    assert "already holds an earlier run's results" in capsys.readouterr().err
    assert (out / "model.pt").read_bytes() == finished
    assert json.loads((out / "metrics.json").read_text())["lr"] == 1e-3


def test_two_default_runs_started_together_get_two_folders(
    tmp_path, data_root, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    first = _Paused(monkeypatch, "train", _argv(data_root))  # holds runs/...seed0, training
    assert cli.main(_argv(data_root)) == 0
    second = Path("runs") / "fa-mlp-mnist-seed0-2"
    assert f"writing to {second}" in capsys.readouterr().out
    assert first.go() == 0
    assert (tmp_path / "runs" / "fa-mlp-mnist-seed0" / "metrics.csv").read_bytes() == (
        tmp_path / second / "metrics.csv"
    ).read_bytes()


def test_a_kill_while_drawing_the_curves_is_repaired_by_resume(tmp_path, data_root, capsys):
    code, out = _train(tmp_path, data_root, epochs=2)
    assert code == 0
    csv = (out / "metrics.csv").read_bytes()
    (out / "curves.png").unlink()  # killed while curves.png was written: it never appeared
    (out / "metrics.csv").unlink()
    (out / "curves.partial.png").write_bytes(b"half")
    assert _resume(out, data_root) == 0
    said = capsys.readouterr().out
    assert "finished run of 2 epoch(s); rewrote metrics.csv, drew curves.png" in said
    assert (out / "metrics.csv").read_bytes() == csv
    assert (out / "curves.png").exists() and not (out / "curves.partial.png").exists()


def test_torch_reporting_a_full_disk_as_runtimeerror_keeps_the_run_resumable(
    tmp_path, data_root, monkeypatch, capsys
):
    real_save = torch.save

    def disk_full_in_epoch_two(obj, path):
        if (Path(path).parent / "checkpoint.pt").exists():
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 6 vs 0")
        real_save(obj, path)

    monkeypatch.setattr(torch, "save", disk_full_in_epoch_two)
    code, out = _train(tmp_path, data_root, epochs=3)
    assert code == 1
    err = capsys.readouterr().err
    assert "writing the results of epoch 2 failed: cannot write" in err
    assert "unexpected pos" in err and "Traceback" not in err
    assert checkpoint.load(out / "checkpoint.pt")["epoch"] == 1  # epoch 1's files, whole
    monkeypatch.undo()
    assert _resume(out, data_root) == 0
    code, whole = _train(tmp_path, data_root, epochs=3, folder="whole")
    _same_results(out, whole)


def test_a_read_only_output_folder_is_one_message(tmp_path, data_root, monkeypatch, capsys):
    out = tmp_path / "run"
    out.mkdir()

    def read_only(path, *args, **kwargs):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(run_folder.os, "open", read_only)
    code, _ = _train(tmp_path, data_root, epochs=1)
    assert code == 1
    err = capsys.readouterr().err
    assert f"bender: error: cannot write in {out}: Read-only file system" in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("field", "value", "wanted"),
    [
        ("batch_size", "64", "a positive int"),
        ("lr", "0.1", "a positive finite number"),
        ("clip_weights", "1", "null or a positive finite number"),
        ("limit", "all", "null or a positive int"),
        ("seed", 10**30, f"an int from 0 to {2**64 - 1}"),
        ("resumed", "notalist", "a list of objects"),
    ],
)
def test_a_hand_edited_record_is_refused_naming_the_field(
    tmp_path, data_root, capsys, field, value, wanted
):
    _, out = _train(tmp_path, data_root, epochs=1)
    record = json.loads((out / "metrics.json").read_text())
    (out / "metrics.json").write_text(json.dumps(record | {field: value}))
    with pytest.raises(SystemExit) as exit_info:
        _resume(out, data_root, "--epochs", "2")
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"metrics.json: field {field!r} must be {wanted}, got {value!r}" in err


def test_a_hand_edited_checkpoint_is_refused_naming_the_field(tmp_path, data_root, capsys):
    _, out = _train(tmp_path, data_root, epochs=1)
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    torch.save(state | {"epoch": "2"}, out / "checkpoint.pt")
    with pytest.raises(SystemExit) as exit_info:
        _resume(out, data_root, "--epochs", "2")
    assert exit_info.value.code == 2
    assert "'epoch' must be an int ≥ 0, got '2'" in capsys.readouterr().err


def test_threads_are_applied_and_recorded(tmp_path, data_root):
    before = torch.get_num_threads()
    try:
        code, out = _train(tmp_path, data_root, "--threads", "1", epochs=1)
        assert code == 0 and torch.get_num_threads() == 1
        assert json.loads((out / "metrics.json").read_text())["threads"] == 1
    finally:
        torch.set_num_threads(before)


def test_compile_is_recorded_and_kept_on_resume(tmp_path, data_root, monkeypatch):
    """--compile trains through torch.compile (Inductor), and resume compiles again."""
    seen = []
    real_train = cli.train
    monkeypatch.setattr(
        cli, "train", lambda *a, **k: seen.append(k["compile"]) or real_train(*a, **k)
    )
    code, out = _train(tmp_path, data_root, "--compile", recipe="binary-mlp-bn", epochs=1)
    assert code == 0 and seen == [True]
    record = json.loads((out / "metrics.json").read_text())
    assert record["compile"] is True
    assert _resume(out, data_root, "--epochs", "2") == 0
    assert seen == [True, True]
    assert len((out / "metrics.csv").read_text().splitlines()) == 3  # header and two epochs


def test_a_damaged_data_file_is_one_message_naming_it(tmp_path, capsys):
    raw = write_mnist(tmp_path / "data", gz=True)
    path = raw / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(path.read_bytes()[:20])
    argv = ["train", "fa-mlp", "--data-dir", str(tmp_path / "data"), "--out", str(tmp_path / "o")]
    assert cli.main([*argv, "--batch-size", "4"]) == 1
    err = capsys.readouterr().err
    assert f"bender: error: {path}: the gzip stream ends early" in err
    assert "Traceback" not in err and not (tmp_path / "o").exists()


def test_export_writes_the_binary_weights_as_bits(tmp_path, data_root, capsys):
    code, out = _train(tmp_path, data_root, recipe="binary-mlp-bn", epochs=1)
    assert code == 0
    capsys.readouterr()
    assert cli.main(["export", str(out)]) == 0
    packed = out / "model-1bit.pt"
    said = capsys.readouterr().out
    assert f"wrote {packed}: {packed.stat().st_size} bytes, 1/" in said
    assert packed.stat().st_size * 15 < (out / "model.pt").stat().st_size
    weights = 784 * 128 + 128 * 64 + 64 * 10
    assert (
        f"the 3 binary layers' {weights} weights: {weights // 8} bytes packed, 1/32.0 of their "
        f"{weights * 4} bytes in float32" in said
    )
    code, fa = _train(tmp_path, data_root, epochs=1, folder="fa")
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["export", str(fa)])
    assert exit_info.value.code == 2
    assert "fa-mlp: this Sequential has no layer with a 1-bit kernel" in capsys.readouterr().err
    (out / "model.pt").write_text("not a state dict")
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["export", str(out)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "model.pt cannot be read as this run's weights (UnpicklingError)" in err
    assert "weights_only" not in err


def _train_model(tmp_path, data_root, model, rule, *extra, epochs=1, folder="run"):
    out = tmp_path / folder
    args = ["train", "--model", model, "--rule", rule, "--epochs", str(epochs)]
    args += ["--limit", "600", "--data-dir", str(data_root), "--out", str(out), "--no-progress"]
    return cli.main([*args, *extra]), out


def test_models_and_rules_are_listed(capsys):
    assert cli.main(["models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[3].startswith("lenet5 ") and lines[3].endswith("(needs 32×32)")
    assert "torchvision:NAME" in lines[-1]
    assert cli.main(["rules"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == list(__import__("bender").rules.RULES)
    assert next(line for line in lines if line.startswith("kp ")).endswith(
        "trains with sgd lr 0.05, momentum 0.9, weight_decay 0.001"
    )


def test_any_model_by_any_rule_trains_records_and_resumes(tmp_path, data_root, capsys):
    code, longer = _train_model(tmp_path, data_root, "lenet5", "dfa", epochs=2, folder="longer")
    assert code == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith("lenet5+dfa on mnist (cpu), seed 0, adam lr 0.0003, writing to")
    record = json.loads((longer / "metrics.json").read_text())
    assert (record["recipe"], record["network"], record["rule"]) == (None, "lenet5", "dfa")
    assert "DFA(feedback 1780×10" in record["model"]  # 6·14·14 + 16·5·5 + 120 + 84 rows
    code, out = _train_model(tmp_path, data_root, "lenet5", "dfa", epochs=1)
    assert code == 0 and _resume(out, data_root, "--epochs", "2") == 0
    _same_results(out, longer)  # resumed as if it never stopped


def test_a_models_rule_steps_and_settings_are_used(tmp_path, data_root, capsys):
    code, out = _train_model(tmp_path, data_root, "mlp", "wm")
    assert code == 0
    record = json.loads((out / "metrics.json").read_text())
    assert record["after_step"] == [
        "WeightMirror(lr=0.01, weight_decay=0.01, noise_std=1, batch_size=64)"
    ]
    code, out = _train_model(tmp_path, data_root, "cnn", "kp", folder="kp")
    assert code == 0
    record = json.loads((out / "metrics.json").read_text())
    assert (record["optimizer"], record["lr"]) == ("sgd", 0.05)
    assert record["optimizer_options"] == {"momentum": 0.9, "weight_decay": 0.001}


def test_dfa_blocks_from_the_command_line(tmp_path, data_root, capsys):
    code, out = _train_model(tmp_path, data_root, "resnet20", "dfa", "--blocks", "layer1,layer2")
    assert code == 0
    record = json.loads((out / "metrics.json").read_text())
    assert (
        record["blocks"] == ["layer1", "layer2"]
        and "blocks=['layer1', 'layer2']" in record["model"]
    )
    with pytest.raises(SystemExit):
        _train_model(tmp_path, data_root, "resnet20", "dfa", "--blocks", "layer9", folder="x")
    assert "blocks names 'layer9', not a submodule" in capsys.readouterr().err


def test_a_binary_model_run_is_exported(tmp_path, data_root, capsys):
    code, out = _train_model(tmp_path, data_root, "mlp", "binary")
    assert code == 0
    assert cli.main(["export", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out


def test_tensorboard_gets_every_epochs_numbers_the_learning_rate_and_the_angles(
    tmp_path, data_root
):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    code, out = _train(tmp_path, data_root, "--tensorboard", "--alignment", "--schedule", "step:1")
    assert code == 0
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    tags = events.Tags()["scalars"]
    assert {"loss/train", "acc/test", "lr", "weight_angle/0", "grad_angle/2"} <= set(tags)
    assert [e.value for e in events.Scalars("lr")] == pytest.approx([3e-4, 3e-5])
    table = pd.read_csv(out / "metrics.csv")
    assert [e.value for e in events.Scalars("acc/test")] == pytest.approx(table["acc_test"])
    assert [e.step for e in events.Scalars("acc/test")] == [1, 2]


def test_a_sweep_writes_its_table_and_plot_and_trains_nothing_twice(tmp_path, data_root, capsys):
    out = tmp_path / "sweep"
    args = ["sweep", "--rules", "bp,fa", "--seeds", "0,1", "--out", str(out), "--jobs", "2"]
    args += ["--epochs", "1", "--limit", "1000", "--data-dir", str(data_root)]
    assert cli.main(args) == 0
    assert "trained 4 run(s), 0 already finished" in capsys.readouterr().out
    summary = pd.read_csv(out / "summary.csv")
    assert summary["rule"].tolist() == ["bp", "fa"] and summary["seeds"].tolist() == [2, 2]
    finals = [
        pd.read_csv(out / f"mlp+bp-seed{s}" / "metrics.csv")["acc_test"].iloc[-1] for s in (0, 1)
    ]
    assert summary["final_mean"].iloc[0] == pytest.approx(sum(finals) / 2)
    assert "| bp | 2 | " in (out / "summary.md").read_text()
    assert (out / "curves.png").stat().st_size > 0
    before = (out / "mlp+fa-seed1" / "metrics.json").stat().st_mtime_ns
    assert cli.main(args) == 0
    assert "trained 0 run(s), 4 already finished" in capsys.readouterr().out
    assert (out / "mlp+fa-seed1" / "metrics.json").stat().st_mtime_ns == before
    assert (
        cli.main([*args[:-6], "--epochs", "2", "--limit", "1000", "--data-dir", str(data_root)])
        == 0
    )
    assert "trained 4 run(s)" in capsys.readouterr().out  # another command: trained anew


def test_a_sweep_on_several_devices_runs_one_at_a_time_on_each(tmp_path, monkeypatch):
    from bender import sweep

    launched, running = [], []

    class Run:  # stands for one `bender train` process; finishes at its second poll
        def __init__(self, command, stdout, stderr):
            device = command[command.index("--device") + 1]
            assert device not in [r.device for r in running]  # its GPU is free
            self.device, self.polls, self.returncode = device, 0, None
            launched.append(device)
            running.append(self)

        def poll(self):
            self.polls += 1
            if self.polls == 2:
                running.remove(self)
                self.returncode = 0
            return self.returncode

        def wait(self):
            return 0

    monkeypatch.setattr(sweep.subprocess, "Popen", Run)
    monkeypatch.setattr(sweep.time, "sleep", lambda seconds: None)
    trained = sweep.sweep("mlp", ["bp", "fa"], [0, 1, 2], tmp_path, [], 2, ["cuda:0", "cuda:1"])
    assert len(trained) == 6 and sorted(launched) == ["cuda:0"] * 3 + ["cuda:1"] * 3
    command = json.loads((tmp_path / "mlp+fa-seed2" / "command.json").read_text())
    assert "--device" not in command  # the same run, whichever GPU it had


def test_a_sweep_takes_its_devices_once(tmp_path, capsys):
    with pytest.raises(SystemExit):
        cli.main(["sweep", "--rules", "bp", "--devices", "cpu", "--device", "cpu"])
    assert "with --devices or --device, not both" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        (["--rules", "bp,nope"], "unknown rule 'nope'"),
        (["--rules", "bp", "--seeds", "0,x"], "expected comma-separated seeds"),
        (["--rules", "bp", "--seed", "3"], "the sweep sets each run's --out and --seed"),
        (["--rules", "bp", "--epochs", "0"], "--epochs"),
        (["--rules", "bp", "--model", "nope"], "unknown model 'nope'"),
    ],
)
def test_a_sweep_with_bad_flags_fails_before_training(tmp_path, extra, says, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["sweep", "--out", str(tmp_path / "s"), *extra])
    assert exit_info.value.code == 2
    assert says in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


def test_a_validation_split_is_evaluated_and_its_best_weights_kept(tmp_path, data_root, capsys):
    code, out = _train(tmp_path, data_root, "--val", "300", epochs=2)
    assert code == 0
    table = pd.read_csv(out / "metrics.csv")
    plain = [c for c in COLUMNS if c != "seconds"]  # the MNIST tutorials' columns
    assert table.columns.tolist() == [*plain, "loss_val", "acc_val"]
    record = json.loads((out / "metrics.json").read_text())
    best = table.loc[table["acc_val"].idxmax()]
    assert record["best"] == {
        "epoch": int(best["epoch"]),
        "acc_val": best["acc_val"],
        "acc_test": best["acc_test"],
    }
    assert record["val"] == 300 and (out / "model-best.pt").exists()
    code, half = _train(tmp_path, data_root, "--val", "300", epochs=1, folder="half")
    assert code == 0 and _resume(half, data_root, "--epochs", "2") == 0
    _same_results(half, out)
    with pytest.raises(SystemExit):
        _train(tmp_path, data_root, "--val", "1500", folder="none")
    assert (
        "--val: a validation split of 1500 leaves no training examples" in capsys.readouterr().err
    )


def test_summary_of_a_model_by_a_rule(capsys):
    assert cli.main(["summary", "--model", "lenet5", "--rule", "fa"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1].split()
    assert last[:4] == ["total", "0", "61706", "61470"]  # parameters; feedback entries
    with pytest.raises(SystemExit):
        cli.main(["summary"])
    assert "name a recipe" in capsys.readouterr().err


def test_a_binary_run_takes_another_one_bit_quantizer_and_keeps_it(tmp_path, data_root, capsys):
    code, out = _train(tmp_path, data_root, "--quantizer", "approx_sign", recipe="binary-mlp-bn")
    assert code == 0
    record = json.loads((out / "metrics.json").read_text())
    assert record["quantizer"] == "approx_sign" and "ApproxSign" in record["model"]
    assert _resume(out, data_root, "--epochs", "3") == 0  # rebuilt with approx_sign
    code, rule_run = _train_model(
        tmp_path, data_root, "cnn", "binary", "--quantizer", "swish_sign", folder="rule"
    )
    assert code == 0 and "SwishSign" in json.loads((rule_run / "metrics.json").read_text())["model"]
    for args in (["fa-mlp"], ["--model", "mlp", "--rule", "fa"]):
        with pytest.raises(SystemExit):
            cli.main(["train", *args, "--quantizer", "approx_sign"])
    assert "quantize" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["train", "binary-mlp-bn", "--quantizer", "ste_tern"])  # 2 bits: not a choice


def test_flip_ratio_is_a_column_of_every_epoch_also_after_a_resume(tmp_path, data_root, capsys):
    code, whole = _train(tmp_path, data_root, "--flip-ratio", recipe="binary-mlp-bn", folder="w")
    assert code == 0
    table = pd.read_csv(whole / "metrics.csv")
    assert table.columns[-1] == "flip_ratio" and table["flip_ratio"].between(0, 1).all()
    assert table["flip_ratio"].iloc[0] > 0  # the first epoch flips some signs
    code, half = _train(
        tmp_path, data_root, "--flip-ratio", recipe="binary-mlp-bn", epochs=1, folder="h"
    )
    assert code == 0 and _resume(half, data_root, "--epochs", "2") == 0
    _same_results(half, whole)
    with pytest.raises(SystemExit):
        _train(tmp_path, data_root, "--flip-ratio", folder="fa")
    assert "--flip-ratio counts sign flips of binary weights, but fa-mlp" in capsys.readouterr().err


def test_tensorboard_shows_the_learning_rate_a_resumed_schedule_trains_with(tmp_path, data_root):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    code, out = _train(tmp_path, data_root, "--tensorboard", "--schedule", "cosine")
    assert code == 0 and _resume(out, data_root, "--epochs", "3") == 0
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    # the cosine was laid over the run's first 2 epochs; its checkpointed factor goes on:
    # ½(1 + cos(π·min(e, 2)/2)) for e = 0, 1, 2 epochs done
    assert [e.value for e in events.Scalars("lr")] == pytest.approx([3e-4, 1.5e-4, 0.0])
