"""CIFAR-10 and CIFAR-100 from torchvision's folders, read without unpickling arbitrary objects.

The "python version" of CIFAR (Krizhevsky 2009) is a set of pickle files, each a dict with the
images as one ``N × 3072`` uint8 array (1024 red, 1024 green, 1024 blue values per image, rows
of 32) and the labels as a list of ints. Unpickling runs whatever a file names, so these files
are read by an unpickler that admits only what they hold: dicts, lists, strings, numbers and
NumPy's array reconstruction. A file that names any other object is refused, with its name.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

# folder, train files, test files, label key, classes
LAYOUTS = {
    "cifar10": (
        "cifar-10-batches-py",
        [f"data_batch_{i}" for i in range(1, 6)],
        ["test_batch"],
        b"labels",
        10,
    ),
    "cifar100": ("cifar-100-python", ["train"], ["test"], b"fine_labels", 100),
}

# what CIFAR's pickles may name: NumPy's array reconstruction, and the string codec that
# protocol 2 uses for bytes written by Python 3
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


class _ArraysOnly(pickle.Unpickler):
    """An unpickler that builds plain data and NumPy arrays, and refuses every other object."""

    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"it names the object {module}.{name}")


def read_batch(path: Path, label_key: bytes, num_classes: int) -> tuple[Tensor, Tensor]:
    """One CIFAR pickle file: images ``N × 3 × 32 × 32`` uint8 and labels int64; a
    ``ValueError`` naming the file when it holds anything else."""
    try:
        batch = _ArraysOnly(io.BytesIO(path.read_bytes()), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as err:
        raise ValueError(
            f"{path} is not a CIFAR batch file: {err} (only arrays, lists, strings and "
            "numbers are read from these files)"
        ) from None
    if not isinstance(batch, dict):
        raise ValueError(
            f"{path}: expected a dict of images and labels, got {type(batch).__name__}"
        )
    data, labels = batch.get(b"data"), batch.get(label_key)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2:
        raise ValueError(f"{path}: expected b'data', an N × 3072 array of uint8")
    if data.shape[1] != 3 * 32 * 32:
        raise ValueError(f"{path}: expected 3072 values per image, got {data.shape[1]}")
    if not isinstance(labels, list) or not all(
        isinstance(y, int) and not isinstance(y, bool) for y in labels
    ):
        raise ValueError(f"{path}: expected {label_key!r}, a list of integer labels")
    if len(labels) != len(data):
        raise ValueError(f"{path}: {len(data)} images but {len(labels)} labels")
    y = torch.tensor(labels, dtype=torch.long)
    if len(y) and not (int(y.min()) >= 0 and int(y.max()) < num_classes):
        raise ValueError(
            f"{path}: labels must lie in 0..{num_classes - 1}, got {int(y.min())}..{int(y.max())}"
        )
    return torch.from_numpy(data.copy()).view(-1, 3, 32, 32), y


def read_split(folder: Path, files: list[str], label_key: bytes, num_classes: int):
    """The batches ``files`` in ``folder``, concatenated."""
    parts = [read_batch(folder / name, label_key, num_classes) for name in files]
    return torch.cat([x for x, _ in parts]), torch.cat([y for _, y in parts])
