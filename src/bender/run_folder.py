"""A run's folder: one writer at a time, result files that survive a crash, a record read back
with care.

``bender train`` and ``bender resume`` write a run's results into one folder after every epoch
(:data:`RESULT_FILES`). This module holds what keeps them whole:

- :func:`locked` holds the folder's lock (``.bender.lock``) while a process writes there. On
  POSIX it is an ``flock`` on that file, which the system drops when the process ends, however
  it ends (``kill -9`` too); the file names the holder for the message a second process gets.
- :func:`claim` and :func:`claim_first_free` take the lock *before* they look for an earlier
  run's results, so two processes can never both find a folder free; results are removed only
  when asked (``overwrite=True``), under the lock.
- :func:`read_record` reads ``metrics.json`` back and checks the type and range of every field
  that a resumed run uses, naming the field, the file, what was expected and what was found.
- :func:`write_table`, :func:`plot_curves` and :func:`repair` write the derived files, and
  rewrite those a kill left missing.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import socket
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pandas as pd

from bender.checkpoint import write_atomically
from bender.data import SOURCES
from bender.data.augment import AUGMENTATIONS
from bender.schedules import parse_schedule
from bender.training import COLUMNS, OPTIMIZERS, PRECISIONS, SEED_RANGE

try:  # POSIX: a lock the system releases with its process
    import fcntl
except ImportError:  # pragma: no cover - Windows: an exclusively created file
    fcntl = None

LOCK = ".bender.lock"  # in a run's folder while a bender process writes there
# never follow a link put in the lock's place: the lock file is truncated and written
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
RESULT_FILES = (
    "metrics.csv",
    "metrics.json",
    "curves.png",
    "model.pt",
    "checkpoint.pt",
    "model-best.pt",
    "alignment.csv",
)


def table_of(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """The per-epoch table of ``rows``: their columns (validation and top-5 ones included),
    or :data:`COLUMNS` when there is no row yet."""
    if not rows:
        return pd.DataFrame(columns=COLUMNS)
    return pd.DataFrame(rows, columns=[c for c in rows[0] if isinstance(c, str)])


def _csv_columns(table: pd.DataFrame) -> list[str]:
    """The columns metrics.csv keeps: all but ``seconds``, which varies between runs."""
    return [c for c in table.columns if c != "seconds"]


class FolderBusy(Exception):
    """Another bender process holds the folder's lock."""


class FolderUnusable(Exception):
    """The folder cannot be written: a file in its place, no permission, a read-only disk."""


class FolderTaken(Exception):
    """The folder holds an earlier run's results and ``overwrite`` was not given."""


class RecordError(ValueError):
    """``metrics.json`` is missing, unreadable, or holds a field of the wrong type or range."""


def results_in(folder: Path) -> list[str]:
    """The result files present in ``folder``, in :data:`RESULT_FILES` order."""
    return [name for name in RESULT_FILES if (folder / name).exists()]


def lock_holder(lock: Path) -> str | None:
    """Who the lock file names (``"pid N on HOST"``), or ``None`` if that process has ended.

    Used for messages, and on systems without ``flock`` to decide whether a lock is stale.
    """
    try:
        host, pid = lock.read_text().split()
        pid = int(pid)
    except FileNotFoundError:  # its process ended just now
        return None
    except (OSError, ValueError):  # being written right now, or damaged: leave it alone
        return f"unknown, named in {lock}"
    if host == socket.gethostname() and os.name == "posix":
        try:
            os.kill(pid, 0)  # signal 0: is it alive? (nothing is sent)
        except ProcessLookupError:
            return None
        except PermissionError:  # alive, another user's
            pass
    return f"pid {pid} on {host}"


def _unusable(folder: Path, err: OSError) -> FolderUnusable:
    return FolderUnusable(f"cannot write in {folder}: {err.strerror or err}")


def check_can_be_folder(folder: Path) -> None:
    """:class:`FolderUnusable` if ``folder`` is an empty path, or it or a parent is a file."""
    if str(folder) in ("", "."):
        raise FolderUnusable("the output folder is an empty path; name a folder")
    taken = next((p for p in (folder, *folder.parents) if p.exists()), None)
    if taken is not None and not taken.is_dir():
        raise FolderUnusable(f"{folder} cannot be a folder: {taken} is a file")


def _make_folder(folder: Path) -> None:
    """Create ``folder`` and its parents; :class:`FolderUnusable` with the reason otherwise."""
    check_can_be_folder(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise FolderUnusable(f"cannot create the output folder {folder}: {err}") from None


def _take_flock(lock: Path) -> int:
    """An open descriptor of ``lock`` holding its ``flock``; :class:`FolderBusy` if another
    process holds it. Loops until the locked file is the one at the path (a process that
    released and removed it in between leaves a lock on a file nobody else can see)."""
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | _NOFOLLOW, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise FolderBusy(lock_holder(lock) or f"unknown, named in {lock}") from None
        try:
            same = os.stat(lock).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)


def _take_exclusive(lock: Path) -> int:
    """Without ``flock``: create ``lock`` exclusively, taking over one whose process ended."""
    while True:
        try:
            return os.open(lock, os.O_RDWR | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o644)
        except FileExistsError:
            holder = lock_holder(lock)
            if holder is not None:
                raise FolderBusy(holder) from None
            lock.unlink(missing_ok=True)


@contextmanager
def locked(folder: Path, create: bool = True) -> Iterator[Path]:
    """Hold ``folder``'s lock while the block runs; the folder is made first (``create``).

    Raises :class:`FolderBusy` (naming the holder) when another process holds it, and
    :class:`FolderUnusable` when the folder cannot be made or written (read-only, no
    permission). On leaving, the lock file is removed; where that fails (the disk turned
    read-only) it is left, which is harmless: a lock ends with the process that held it.
    """
    folder = Path(folder)
    if create:
        _make_folder(folder)
    elif not folder.is_dir():
        raise FolderUnusable(f"{folder} is not a folder")
    lock = folder / LOCK
    try:
        fd = _take_flock(lock) if fcntl is not None else _take_exclusive(lock)
    except FolderBusy as busy:
        raise FolderBusy(
            f"another bender process ({busy}) is writing to {folder}; wait for it to end"
        ) from None
    except OSError as err:
        raise _unusable(folder, err) from None
    try:
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{socket.gethostname()} {os.getpid()}".encode())
        except OSError as err:
            raise _unusable(folder, err) from None
        yield folder
    finally:
        with contextlib.suppress(OSError):  # a read-only disk: the file left holds no lock
            lock.unlink(missing_ok=True)
        os.close(fd)


def remove_partials(folder: Path) -> list[str]:
    """Remove the ``*.partial.*`` files a write cut short left behind (call under the lock)."""
    removed = []
    for path in folder.glob("*.partial*"):
        if path.is_file():
            path.unlink()
            removed.append(path.name)
    return removed


def check_free(folder: Path, overwrite: bool = False) -> list[str]:
    """The result files in ``folder``; :class:`FolderTaken` if there are any and not
    ``overwrite``. Decides only under the lock (:func:`claim`); before it, a hint."""
    found = results_in(folder)
    if found and not overwrite:
        raise FolderTaken(
            f"{folder} already holds an earlier run's results ({', '.join(found)}); "
            "pass another --out, or --overwrite to replace them"
        )
    return found


@contextmanager
def claim(folder: Path, overwrite: bool = False) -> Iterator[Path]:
    """``folder``, locked, with no earlier run's results in it.

    The lock is taken first, then the folder is looked at: with results in it this raises
    :class:`FolderTaken` unless ``overwrite``, which removes them (under the lock, so only
    once the process that wrote them has ended).
    """
    with locked(folder) as folder:
        found = check_free(folder, overwrite)
        for name in found:
            (folder / name).unlink()
        remove_partials(folder)
        yield folder


@contextmanager
def claim_first_free(base: Path) -> Iterator[Path]:
    """The first of ``base``, ``base-2``, ``base-3``, ... that no process holds and that holds
    no results, locked. A folder another process is writing to is passed over, as one with
    results is, so two runs started together get two folders."""
    for k in itertools.count(1):
        folder = base if k == 1 else base.with_name(f"{base.name}-{k}")
        with ExitStack() as stack:
            try:
                stack.enter_context(locked(folder))
            except FolderBusy:
                continue
            if results_in(folder):
                continue
            remove_partials(folder)
            yield folder
            return


# metrics.json: what each field a resumed run reads must be ---------------------------------


def _int(low: int, high: int | None = None) -> Callable[[Any], bool]:
    def ok(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and low <= v <= (high or v)

    return ok


def _positive_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < math.inf


def _optional(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: v is None or check(v)


def _options(v: Any) -> bool:
    return isinstance(v, dict) and all(
        isinstance(k, str) and isinstance(x, (int, float)) and not isinstance(x, bool)
        for k, x in v.items()
    )


def _schedule(v: Any) -> bool:
    if not isinstance(v, str):
        return False
    try:
        parse_schedule(v, 1_000_000)
    except ValueError:
        return False
    return True


def _names(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(name, str) for name in v)


def _resumptions(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(r, dict) for r in v)


# field: (required, check, what it must be)
RECORD_FIELDS: dict[str, tuple[bool, Callable[[Any], bool], str]] = {
    "recipe": (True, _optional(lambda v: isinstance(v, str)), "null or a recipe name (a string)"),
    "network": (False, _optional(lambda v: isinstance(v, str)), "null or a model name (a string)"),
    "rule": (False, _optional(lambda v: isinstance(v, str)), "null or a rule name (a string)"),
    "blocks": (False, _optional(_names), "null or a list of module names"),
    "augment": (False, lambda v: v in AUGMENTATIONS, f"one of {', '.join(AUGMENTATIONS)}"),
    "tensorboard": (False, lambda v: isinstance(v, bool), "true or false"),
    "channels_last": (False, lambda v: isinstance(v, bool), "true or false"),
    "compile": (False, lambda v: isinstance(v, bool), "true or false"),
    "flip_ratio": (False, lambda v: isinstance(v, bool), "true or false"),
    "precision": (False, lambda v: v in PRECISIONS, f"one of {', '.join(PRECISIONS)}"),
    "schedule": (False, _optional(_schedule), "null or a schedule such as step:50,75"),
    "dataset": (True, lambda v: v in SOURCES, f"one of {', '.join(SOURCES)}"),
    "image_size": (False, _optional(_int(1)), "null or a positive int"),
    "data_dir": (False, _optional(lambda v: isinstance(v, str)), "null or a folder (a string)"),
    "epochs_requested": (True, _int(1), "a positive int"),
    "lr": (True, _positive_number, "a positive finite number"),
    "batch_size": (True, _int(1), "a positive int"),
    "seed": (True, _int(*SEED_RANGE), f"an int from {SEED_RANGE[0]} to {SEED_RANGE[1]}"),
    "reshuffle": (True, lambda v: isinstance(v, bool), "true or false"),
    "limit": (False, _optional(_int(1)), "null or a positive int"),
    "clip_weights": (False, _optional(_positive_number), "null or a positive finite number"),
    "optimizer": (False, lambda v: v in OPTIMIZERS, f"one of {', '.join(OPTIMIZERS)}"),
    "optimizer_options": (False, _options, "an object of names to numbers"),
    "threads": (False, _int(1), "a positive int"),
    "processes": (False, _int(1), "a positive int"),
    "val": (False, _optional(_int(1)), "null or a positive int"),
    "quantizer": (False, _optional(lambda v: isinstance(v, str)), "null or a quantizer's name"),
    "resumed": (False, _resumptions, "a list of objects"),
    "alignment_probe": (False, lambda v: isinstance(v, str), "a string"),
    "epochs": (False, lambda v: isinstance(v, list), "a list of rows"),
}


def read_record(folder: Path) -> dict[str, Any]:
    """``folder/metrics.json``, every field a resumed run reads checked; :class:`RecordError`
    naming the field, the file, what it must be and what was found."""
    path = folder / "metrics.json"
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        raise RecordError(f"{folder} holds no metrics.json: it is not a bender train run") from None
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise RecordError(f"{path} cannot be read as JSON: {err}") from None
    if not isinstance(record, dict):
        raise RecordError(f"{path} must hold a JSON object, got {type(record).__name__}")
    for field, (required, check, wanted) in RECORD_FIELDS.items():
        if field not in record:
            if required:
                raise RecordError(f"{path} does not say the run's {field} ({wanted})")
            continue
        if not check(record[field]):
            raise RecordError(f"{path}: field {field!r} must be {wanted}, got {record[field]!r}")
    if record["recipe"] is None and not (record.get("network") and record.get("rule")):
        raise RecordError(
            f"{path} names no recipe, so it must say the run's network and rule (model and "
            "rule names)"
        )
    return record


# the files derived from the table ------------------------------------------------------------


def write_table(folder: Path, table: pd.DataFrame, record: dict[str, Any]) -> None:
    """metrics.csv holds the numbers that depend only on the seed; metrics.json adds timings
    and the record of the run (``record["epochs"]`` becomes the table's rows)."""
    write_atomically(
        folder / "metrics.csv", lambda p: table[_csv_columns(table)].to_csv(p, index=False)
    )
    record["epochs"] = table.to_dict(orient="records")
    write_atomically(folder / "metrics.json", lambda p: p.write_text(json.dumps(record, indent=2)))


def plot_curves(table: pd.DataFrame, path: Path, title: str) -> None:
    """Loss and accuracy per epoch, train vs test (and validation), side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    for ax, metric in zip(axes, ("loss", "acc"), strict=True):
        for split in ("train", "test", "val"):
            if f"{metric}_{split}" in table:
                ax.plot(table["epoch"], table[f"{metric}_{split}"], marker="o", label=split)
        ax.set_xlabel("epoch")
        ax.set_ylabel("accuracy" if metric == "acc" else "cross-entropy loss")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def experiment_name(record: dict[str, Any]) -> str:
    """The recipe's name, or ``network+rule`` for a run of a model and a rule."""
    return record["recipe"] or f"{record['network']}+{record['rule']}"


def curves_title(record: dict[str, Any]) -> str:
    return f"{experiment_name(record)} on {record['dataset']}, seed {record['seed']}"


def write_curves(folder: Path, table: pd.DataFrame, record: dict[str, Any]) -> None:
    """``curves.png`` of ``table``, written atomically."""
    title = curves_title(record)
    write_atomically(folder / "curves.png", lambda p: plot_curves(table, p, title))


def repair(folder: Path, record: dict[str, Any], epochs: int) -> list[str]:
    """Rewrite the derived files of a run whose ``epochs`` epochs are all saved: metrics.csv
    from metrics.json's rows when missing or short, curves.png when missing; remove stale
    ``*.partial.*`` files. Returns what it did, one phrase per file."""
    done = [f"removed {name}" for name in remove_partials(folder)]
    rows = record.get("epochs") or []
    try:
        table = table_of(rows)
        missing = [c for c in COLUMNS if c not in table.columns]
    except (TypeError, ValueError, AttributeError):
        missing = COLUMNS
    if missing:
        raise RecordError(
            f"{folder / 'metrics.json'}: its rows lack the columns {', '.join(missing)}"
        )
    if len(table) != epochs or table["epoch"].tolist() != list(range(1, epochs + 1)):
        raise RecordError(
            f"{folder / 'metrics.json'} holds the rows of epochs {table['epoch'].tolist()}, "
            f"but the checkpoint has {epochs} epoch(s): it cannot be repaired from it"
        )
    csv_path = folder / "metrics.csv"
    whole = False
    if csv_path.exists():
        try:
            whole = pd.read_csv(csv_path)["epoch"].tolist() == table["epoch"].tolist()
        except (OSError, ValueError, KeyError):
            whole = False
    if not whole:
        write_atomically(csv_path, lambda p: table[_csv_columns(table)].to_csv(p, index=False))
        done.append("rewrote metrics.csv")
    if not (folder / "curves.png").exists():
        write_curves(folder, table, record)
        done.append("drew curves.png")
    return done
