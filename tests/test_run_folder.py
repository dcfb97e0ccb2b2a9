"""run_folder: one writer per folder, results checked under the lock, records read back with
care, derived files repaired; write_atomically's fsyncs and its one kind of failure."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap

import pandas as pd
import pytest
import torch

from bender import checkpoint, run_folder
from bender.checkpoint import WriteFailed, write_atomically
from bender.run_folder import (
    LOCK,
    FolderBusy,
    FolderTaken,
    FolderUnusable,
    RecordError,
    claim,
    claim_first_free,
    locked,
    read_record,
    repair,
)
from bender.training import COLUMNS


def test_a_held_lock_refuses_a_second_holder_and_is_gone_after(tmp_path):
    folder = tmp_path / "run"
    with locked(folder):
        assert (folder / LOCK).read_text().split()[1] == str(os.getpid())
        busy = rf"pid {os.getpid()} on .* is writing to {folder}"
        with pytest.raises(FolderBusy, match=busy), locked(folder):
            pass
    assert not (folder / LOCK).exists()
    with locked(folder):  # free again
        pass


def test_a_lock_held_by_a_killed_process_is_free(tmp_path):
    folder = tmp_path / "run"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                f"""
                import time
                from pathlib import Path
                from bender.run_folder import locked
                with locked(Path({str(folder)!r})):
                    print("held", flush=True)
                    time.sleep(60)
                """
            ),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(FolderBusy, match=f"pid {holder.pid} on"), locked(folder):
        pass
    holder.kill()  # kill -9: no finally runs, the file stays
    holder.wait()
    assert (folder / LOCK).exists()
    with locked(folder):  # the system dropped the flock with the process
        pass


def test_a_folder_that_cannot_hold_the_lock_is_named(tmp_path, monkeypatch):
    def read_only(*args, **kwargs):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(run_folder.os, "open", read_only)
    unusable = f"cannot write in {tmp_path}: Read-only file sys"
    with pytest.raises(FolderUnusable, match=unusable), locked(tmp_path):
        pass


def test_a_lock_file_that_cannot_be_removed_at_the_end_is_left_quietly(tmp_path, monkeypatch):
    real_unlink = type(tmp_path).unlink

    def read_only(self, missing_ok=False):
        if self.name == LOCK:
            raise OSError(30, "Read-only file system")
        real_unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(type(tmp_path), "unlink", read_only)
    with locked(tmp_path):
        pass
    monkeypatch.undo()
    with locked(tmp_path):  # the file left behind holds no lock
        pass


def test_claim_checks_for_results_under_the_lock_and_removes_them_only_when_asked(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "metrics.csv").write_text("epoch\n1\n")
    (folder / "model.partial.pt").write_text("cut short")
    taken = r"earlier run's results \(metrics\.csv\)"
    with pytest.raises(FolderTaken, match=taken), claim(folder):
        pass
    assert (folder / "metrics.csv").exists() and not (folder / LOCK).exists()
    with claim(folder, overwrite=True):
        assert not (folder / "metrics.csv").exists()
        assert not (folder / "model.partial.pt").exists()


def test_claim_first_free_passes_over_folders_with_results_or_a_holder(tmp_path):
    base = tmp_path / "runs" / "fa-mlp-mnist-seed0"
    base.mkdir(parents=True)
    (base / "metrics.json").write_text("{}")
    # another process is writing in -2
    with locked(base.with_name(base.name + "-2")), claim_first_free(base) as folder:
        assert folder == base.with_name(base.name + "-3")
        assert (folder / LOCK).exists()
    with claim_first_free(base) as folder:  # -2 holds no results and is free now
        assert folder == base.with_name(base.name + "-2")


@pytest.mark.parametrize("out", ["", "."])
def test_an_empty_path_is_not_a_folder_to_write_in(tmp_path, out, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FolderUnusable, match="empty path"), claim(type(tmp_path)(out)):
        pass


# metrics.json read back ----------------------------------------------------------------------

GOOD = {
    "recipe": "fa-mlp",
    "dataset": "mnist",
    "epochs_requested": 3,
    "lr": 3e-4,
    "batch_size": 64,
    "seed": 0,
    "reshuffle": True,
    "limit": None,
    "clip_weights": None,
    "optimizer": "adam",
    "optimizer_options": {},
    "threads": 2,
    "resumed": [],
}


@pytest.mark.parametrize(
    ("field", "value", "wanted"),
    [
        ("batch_size", "64", "a positive int"),
        ("batch_size", True, "a positive int"),
        ("lr", "0.1", "a positive finite number"),
        ("lr", -1, "a positive finite number"),
        ("clip_weights", "1", "null or a positive finite number"),
        ("limit", -5, "null or a positive int"),
        ("seed", 2**70, f"an int from 0 to {2**64 - 1}"),
        ("seed", -1, f"an int from 0 to {2**64 - 1}"),
        ("epochs_requested", "2", "a positive int"),
        ("reshuffle", "yes", "true or false"),
        ("resumed", "notalist", "a list of objects"),
        ("optimizer", "lion", "one of adam, adamw, sgd"),
        ("optimizer_options", {"momentum": "0.9"}, "an object of names to numbers"),
        ("dataset", "cifar", "one of mnist, fashion-mnist, cifar10, cifar100, folder"),
    ],
)
def test_every_field_read_back_is_checked_and_named(tmp_path, field, value, wanted):
    (tmp_path / "metrics.json").write_text(json.dumps(GOOD | {field: value}))
    with pytest.raises(RecordError) as err:
        read_record(tmp_path)
    assert str(err.value) == (
        f"{tmp_path / 'metrics.json'}: field {field!r} must be {wanted}, got {value!r}"
    )


def test_a_missing_damaged_or_partial_record_is_named(tmp_path):
    with pytest.raises(RecordError, match=r"holds no metrics\.json"):
        read_record(tmp_path)
    (tmp_path / "metrics.json").write_text('{"recipe": "fa-m')
    with pytest.raises(RecordError, match="cannot be read as JSON"):
        read_record(tmp_path)
    (tmp_path / "metrics.json").write_text("[1, 2]")
    with pytest.raises(RecordError, match="must hold a JSON object, got list"):
        read_record(tmp_path)
    (tmp_path / "metrics.json").write_text(json.dumps({k: v for k, v in GOOD.items() if k != "lr"}))
    with pytest.raises(RecordError, match="does not say the run's lr"):
        read_record(tmp_path)
    (tmp_path / "metrics.json").write_text(json.dumps(GOOD))
    assert read_record(tmp_path) == GOOD


# repair ----------------------------------------------------------------------------------------


def _rows(epochs: int) -> list[dict]:
    return [
        dict(
            zip(
                COLUMNS,
                [e, 1 / (e + 2), 1 / (e + 3), 0.9 + e / 1e3, 0.8 + e / 7e3, 0.5],
                strict=True,
            )
        )
        for e in range(1, epochs + 1)
    ]


def test_repair_rewrites_the_derived_files_from_the_record(tmp_path):
    record = GOOD | {"epochs": _rows(3)}
    run_folder.write_table(tmp_path, pd.DataFrame(record["epochs"]), dict(record))
    original = (tmp_path / "metrics.csv").read_bytes()
    (tmp_path / "metrics.csv").unlink()
    (tmp_path / "curves.partial.png").write_bytes(b"half a png")
    done = repair(tmp_path, record, 3)
    assert done == ["removed curves.partial.png", "rewrote metrics.csv", "drew curves.png"]
    assert (tmp_path / "metrics.csv").read_bytes() == original  # every digit back
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert repair(tmp_path, record, 3) == []  # nothing left to do
    with pytest.raises(RecordError, match=r"rows of epochs \[1, 2, 3\], but the checkpoint has 4"):
        repair(tmp_path, record, 4)


# write_atomically --------------------------------------------------------------------------------


def test_write_atomically_syncs_the_file_before_the_rename_and_the_folder_after(
    tmp_path, monkeypatch
):
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append("fsync folder" if stat.S_ISDIR(os.fstat(fd).st_mode) else "fsync file")
        real_fsync(fd)

    def replace(src, dst):
        events.append("rename")
        real_replace(src, dst)

    monkeypatch.setattr(checkpoint.os, "fsync", fsync)
    monkeypatch.setattr(checkpoint.os, "replace", replace)
    write_atomically(tmp_path / "a.txt", lambda p: p.write_text("whole"))
    assert events == ["fsync file", "rename", "fsync folder"]
    assert (tmp_path / "a.txt").read_text() == "whole"


@pytest.mark.parametrize(
    "failure",
    [
        RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0"),
        OSError(28, "No space left on device"),
    ],
    ids=["torch-save", "oserror"],
)
def test_any_failed_write_is_one_oserror_and_the_old_file_stays(tmp_path, failure):
    path = tmp_path / "model.pt"
    torch.save({"w": torch.ones(2)}, path)

    def full_disk(partial):
        partial.write_bytes(b"half")
        raise failure

    with pytest.raises(WriteFailed, match=f"cannot write {path}: ") as err:
        write_atomically(path, full_disk)
    assert isinstance(err.value, OSError)
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.ones(2))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]  # no partial left


def test_a_link_in_the_locks_place_is_not_followed(tmp_path):
    precious = tmp_path / "precious.txt"
    precious.write_text("a user's file")
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / LOCK).symlink_to(precious)
    with pytest.raises(FolderUnusable, match=f"cannot write in {folder}"), locked(folder):
        pass
    assert precious.read_text() == "a user's file"
