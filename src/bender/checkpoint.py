"""Training checkpoints: all that :func:`bender.training.train` needs to continue a run.

``train(..., checkpoint=path)`` writes one file after every completed epoch; ``train(...,
resume=path)`` takes it up again. The file holds the model's, optimizer's and scheduler's
states, the random states (the batch order's, the global ones and those of generators the
layers keep), the table so far, and the settings that shape the run. Resumed on the same
machine with the same thread count (CPU sums depend on it), the run gives the table of a run
that never stopped, to the last digit.
"""

from __future__ import annotations

import contextlib
import os
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bender._random import layer_generators
from bender.data import Batches

FORMAT = 1  # raise when the layout of the file changes
KEYS = ("format", "epoch", "rows", "settings", "model", "optimizer", "scheduler", "batches", "rng")


class WriteFailed(OSError):
    """A result file could not be written (a full disk, a read-only folder, ...); the file it
    was to replace is left as it was."""


def _fsync(path: Path) -> None:
    """Flush ``path`` (a file or a folder) to the disk; folders only where the system lets
    them be opened (not on Windows)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except (IsADirectoryError, PermissionError):
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(path: str | os.PathLike, write: Callable[[Path], object]) -> None:
    """``write`` a temporary sibling of ``path``, flush it to the disk, rename it over ``path``.

    The rename is atomic and comes after the ``fsync``, and the folder is synced after it, so
    neither a write cut short (Ctrl-C, ``kill -9``, a full disk) nor a power loss leaves a
    truncated or empty ``path``: it is the previous file or the new one, whole. Any failure of
    the write (``torch.save`` reports a full disk as a ``RuntimeError``) is raised as
    :class:`WriteFailed`, an ``OSError`` naming ``path``; the temporary file is removed.
    """
    path = Path(path)
    partial = path.with_name(f"{path.stem}.partial{path.suffix}")  # keeps the format suffix
    try:
        write(partial)
        _fsync(partial)
        os.replace(partial, path)
        _fsync(path.parent)
    except (OSError, RuntimeError) as err:
        raise WriteFailed(f"cannot write {path}: {err}") from err
    finally:
        with contextlib.suppress(OSError):  # a read-only disk: there is nothing to remove
            partial.unlink(missing_ok=True)


def random_states(model: nn.Module, device: torch.device) -> dict[str, Any]:
    """The generators a training step may draw from: the global CPU one, CUDA's on a GPU, and
    the layers' own."""
    states: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        states["cuda"] = torch.cuda.get_rng_state(device)
    states["layers"] = {name: g.get_state() for name, g in layer_generators(model).items()}
    return states


def _set_random_states(states: dict[str, Any], model: nn.Module, device: torch.device) -> None:
    own = layer_generators(model)
    if own.keys() != states["layers"].keys():
        raise ValueError(
            f"the checkpoint holds the generators of layers {sorted(states['layers'])}, this "
            f"model has them in {sorted(own)}; build the model the run was started with"
        )
    for name, generator in own.items():
        generator.set_state(states["layers"][name])
    torch.set_rng_state(states["cpu"])
    if device.type == "cuda" and "cuda" in states:
        torch.cuda.set_rng_state(states["cuda"], device)


def capture(
    epoch: int,
    rows: list[dict],
    settings: dict[str, Any],
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    batches: Batches,
    device: torch.device,
) -> dict[str, Any]:
    """The state of a run after ``epoch`` completed epochs, as :func:`save` writes it."""
    return {
        "format": FORMAT,
        "epoch": epoch,
        "rows": list(rows),
        "settings": settings,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": None if scheduler is None else scheduler.state_dict(),
        "batches": batches.state_dict(),
        "rng": random_states(model, device),
    }


def save(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` with :func:`torch.save`, replacing the last one atomically."""
    write_atomically(path, lambda p: torch.save(state, p))


def load(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint written by ``train(..., checkpoint=path)`` (tensors on the CPU).

    Loaded with ``weights_only=True``: the file holds tensors, numbers and strings only.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"no checkpoint at {path}; train(..., checkpoint=path) writes one after every epoch"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # torch's refusal of anything but tensors and plain data
        raise ValueError(
            f"{path} is not a bender checkpoint: it holds Python objects other than tensors, "
            "numbers and strings, and bender loads no such file"
        ) from None
    except Exception as err:  # a damaged file: a zip that does not open, a record cut short
        reason = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        if "weights_only" in reason:  # never pass on a hint to load unsafely
            reason = "torch refused to load it"
        raise ValueError(
            f"{path} is not a readable bender checkpoint: it is damaged or of another kind "
            f"({reason})"
        ) from None
    missing = [k for k in KEYS if k not in state] if isinstance(state, dict) else list(KEYS)
    if missing or state["format"] != FORMAT:
        found = f"format {state['format']!r}" if not missing else f"no {', '.join(missing)}"
        raise ValueError(
            f"{path} is not a bender training checkpoint of format {FORMAT} ({found}); "
            "it is written by train(..., checkpoint=path)"
        )
    for key, ok, wanted in _FIELDS:
        if not ok(state[key]):
            raise ValueError(f"{path}: {key!r} must be {wanted}, got {state[key]!r:.80}")
    if len(state["rows"]) != state["epoch"]:
        raise ValueError(
            f"{path}: 'rows' must hold one row per epoch, {state['epoch']}, got "
            f"{len(state['rows'])}"
        )
    return state


def _count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


# key, check, what it must be: the fields read before the states are handed to torch
_FIELDS = (
    ("epoch", _count, "an int ≥ 0"),
    ("rows", lambda v: isinstance(v, list) and all(isinstance(r, dict) for r in v), "a list"),
    ("settings", lambda v: isinstance(v, dict), "a dict"),
    ("model", lambda v: isinstance(v, dict), "a state dict"),
    ("optimizer", lambda v: isinstance(v, dict), "a state dict"),
    ("batches", lambda v: isinstance(v, dict) and {"generator", "order"} <= v.keys(), "a dict"),
    ("rng", lambda v: isinstance(v, dict) and {"cpu", "layers"} <= v.keys(), "a dict"),
)


# settings recorded since a later version: what a checkpoint written before them was run with
DEFAULT_SETTINGS: dict[str, Any] = {"optimizer_options": {}}


def check_resumable(state: dict[str, Any], settings: dict[str, Any], epochs: int) -> None:
    """Refuse to resume with other settings than the run's, or with no epoch left to train."""
    was = DEFAULT_SETTINGS | state["settings"]
    changed = [f"{k}={was.get(k)!r} (now {v!r})" for k, v in settings.items() if was.get(k) != v]
    if changed:
        raise ValueError(
            "resume continues a run with the settings it was started with; the checkpoint was "
            f"written with {', '.join(changed)}"
        )
    if state["epoch"] >= epochs:
        raise ValueError(
            f"the checkpoint already holds {state['epoch']} epoch(s) and epochs={epochs} in "
            f"all were asked for; ask for more than {state['epoch']} to train on"
        )


def restore(
    state: dict[str, Any],
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    batches: Batches,
    device: torch.device,
) -> list[dict]:
    """Put the run's states back into freshly built objects; returns the table's rows so far."""
    if (scheduler is None) != (state["scheduler"] is None):
        had = "a" if state["scheduler"] is not None else "no"
        raise ValueError(
            f"the checkpoint was written with {had} learning-rate scheduler; resume with "
            f"{'the same scheduler' if had == 'a' else 'none'}"
        )
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as err:
        raise ValueError(
            "the checkpoint holds the weights of another model; build the model the run was "
            f"started with: {err}"
        ) from err
    optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None:
        scheduler.load_state_dict(state["scheduler"])
    batches.load_state_dict(state["batches"])
    _set_random_states(state["rng"], model, device)
    return list(state["rows"])
