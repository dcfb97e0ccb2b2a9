"""MNIST, Fashion-MNIST, CIFAR-10 and CIFAR-100 as in-memory tensors, batched on the device;
image folders (ImageNet) streamed from disk (:mod:`bender.data.folder`).

Files are read from torchvision's layout, ``<root>/MNIST/raw/train-images-idx3-ubyte``,
``<root>/cifar-10-batches-py/data_batch_1`` etc. (CIFAR: see :mod:`bender.data.cifar`). The
root is the ``root`` argument, else the ``BENDER_DATA`` environment variable, else a per-user
cache (``$XDG_CACHE_HOME/bender`` or ``~/.cache/bender``) where torchvision, when installed
(``pip install bender-torch[download]``) and online, may download the files.
"""

from __future__ import annotations

import gzip
import math
import os
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from bender.data import cifar
from bender.data.augment import channel_stats, normalized
from bender.data.folder import FolderSplit, load_folder
from bender.functional._checks import check_positive_int

# name: torchvision's dataset class, which also names the MNIST family's folder
DATASETS = {
    "mnist": "MNIST",
    "fashion-mnist": "FashionMNIST",
    "cifar10": "CIFAR10",
    "cifar100": "CIFAR100",
}
IMAGE_SHAPES = {
    "mnist": (1, 28, 28),
    "fashion-mnist": (1, 28, 28),
    "cifar10": (3, 32, 32),
    "cifar100": (3, 32, 32),
}
# --dataset's names: those above, and an image folder (:func:`load_image_folder`)
SOURCES = (*DATASETS, "folder")
NUM_CLASSES = {"mnist": 10, "fashion-mnist": 10, "cifar10": 10, "cifar100": 100}
CIFAR = tuple(cifar.LAYOUTS)
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def data_root(root: str | os.PathLike | None = None) -> Path:
    """The data folder: ``root``, else ``$BENDER_DATA``, else the per-user cache."""
    if root is not None:
        return Path(root).expanduser()
    if os.environ.get("BENDER_DATA"):
        return Path(os.environ["BENDER_DATA"]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "bender"


def _read_bytes(path: Path) -> bytes:
    """The file's bytes, decompressed for ``.gz``; a ``ValueError`` naming the file if the
    compressed stream is damaged (``FileNotFoundError`` and other ``OSError``s pass on)."""
    raw = path.read_bytes()
    if path.suffix != ".gz":
        return raw
    try:
        return gzip.decompress(raw)
    except (gzip.BadGzipFile, EOFError, zlib.error) as err:
        what = "ends early" if isinstance(err, EOFError) else f"is damaged ({err})"
        raise ValueError(f"{path}: the gzip stream {what}; download the file again") from None


def read_idx(path: str | os.PathLike) -> Tensor:
    """Read one IDX file (the MNIST format; ``.gz`` too) into a tensor of its stored dtype.

    Raises ``ValueError`` naming the file when it is not a whole IDX file: a bad magic number,
    a header longer than the file, or a size that does not match the header's shape.
    """
    path = Path(path)
    raw = _read_bytes(path)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(f"{path} is not an IDX file (bad magic number {raw[:4].hex()})")
    ndim = raw[3]
    if len(raw) < 4 + 4 * ndim:
        raise ValueError(
            f"{path}: the header declares {ndim} dims ({4 + 4 * ndim} header bytes), but the "
            f"file has {len(raw)} bytes"
        )
    shape = tuple(int(d) for d in np.frombuffer(raw, ">i4", ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = 4 + 4 * ndim + dtype.itemsize * math.prod(shape)
    if len(raw) != expected:
        raise ValueError(f"{path}: header says {shape} ({expected} bytes), file has {len(raw)}")
    array = np.frombuffer(raw, dtype, offset=4 + 4 * ndim).reshape(shape)
    return torch.from_numpy(array.astype(dtype.newbyteorder("="), copy=True))


def read_images(path: Path, size: tuple[int, int] = (28, 28)) -> Tensor:
    """An MNIST-family image file: ``N × 28 × 28`` unsigned bytes, as uint8.

    Other element types are refused rather than guessed at: dividing by 255 puts only bytes
    in [0, 1] (an int32 file of values near ±2e9 would not be), and float files may hold NaN.
    """
    images = read_idx(path)
    if images.dtype != torch.uint8:
        raise ValueError(
            f"{path}: MNIST-family images are unsigned bytes (IDX type 0x08), got "
            f"{str(images.dtype).removeprefix('torch.')}; convert the file to bytes 0-255"
        )
    if images.dim() != 3 or tuple(images.shape[1:]) != size:
        raise ValueError(
            f"{path}: expected images of shape (N, {size[0]}, {size[1]}), got {tuple(images.shape)}"
        )
    return images


def read_labels(path: Path, num_classes: int = 10) -> Tensor:
    """An MNIST-family label file: ``N`` class indices ``0 … num_classes − 1`` as int64."""
    labels = read_idx(path)
    if labels.dim() != 1 or labels.dtype.is_floating_point:
        raise ValueError(
            f"{path}: expected a 1-D array of integer labels, got shape "
            f"{tuple(labels.shape)} of {str(labels.dtype).removeprefix('torch.')}"
        )
    labels = labels.long()
    if len(labels) and not (labels.min() >= 0 and labels.max() < num_classes):
        raise ValueError(
            f"{path}: labels must lie in 0..{num_classes - 1}, got "
            f"{int(labels.min())}..{int(labels.max())}"
        )
    return labels


@dataclass
class Split:
    """One split in memory: inputs ``x`` (one example per row) and class labels ``y``.

    ``y`` is a 1-D tensor of integer class indices (any integer dtype; stored as int64, which
    the cross-entropy loss needs), on ``x``'s device, with ``len(y) == len(x)``.
    """

    x: Tensor
    y: Tensor

    def __post_init__(self) -> None:
        x, y = self.x, self.y
        if not (isinstance(x, Tensor) and isinstance(y, Tensor)):
            raise TypeError(
                f"Split needs tensors x and y, got {type(x).__name__} and {type(y).__name__}"
            )
        integer = not (y.dtype.is_floating_point or y.dtype.is_complex or y.dtype == torch.bool)
        if y.dim() != 1 or not integer:
            hint = " (one-hot labels? pass y.argmax(1))" if y.dim() == 2 else ""
            raise ValueError(
                "Split.y must be a 1-D tensor of integer class labels, got shape "
                f"{tuple(y.shape)} and dtype {y.dtype}{hint}"
            )
        if x.dim() == 0 or len(x) != len(y):
            raise ValueError(
                f"Split.x must hold one example per label: {len(y)} labels, x of shape "
                f"{tuple(x.shape)}"
            )
        if x.device != y.device:
            raise ValueError(f"Split.x is on {x.device} but Split.y on {y.device}")
        self.y = y.long()

    def __len__(self) -> int:
        return len(self.y)

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> Split:
        """On ``device``; with ``dtype``, floating-point ``x`` also in that dtype (labels stay)."""
        cast = dtype is not None and self.x.is_floating_point()
        return Split(self.x.to(device, dtype if cast else None), self.y.to(device))

    def subset(self, n: int) -> Split:
        """The first ``n`` examples, or all of them when there are fewer (for quick runs)."""
        check_positive_int("subset size", n)
        return Split(self.x[:n], self.y[:n])

    def select(self, index: Tensor) -> Split:
        """The examples at ``index``, in that order."""
        index = index.to(self.y.device)
        return Split(self.x.index_select(0, index), self.y.index_select(0, index))

    def batches(
        self, order: Tensor | None, batch_size: int, seed: int | None = None
    ) -> Iterator[tuple[Tensor, Tensor]]:
        """Batches of the examples at ``order`` (all, in order, when ``None``); ``seed`` is
        for splits that draw at random per example (:class:`bender.data.folder.FolderSplit`)."""
        if order is None:
            yield from zip(self.x.split(batch_size), self.y.split(batch_size), strict=True)
            return
        for idx in order.to(self.y.device).split(batch_size):
            yield self.x.index_select(0, idx), self.y.index_select(0, idx)


@dataclass
class Dataset:
    """A train and a test split with the dataset's name and number of classes, and optionally
    a validation split (see :meth:`with_validation`)."""

    name: str
    train: Split | FolderSplit
    test: Split | FolderSplit
    num_classes: int = 10
    val: Split | FolderSplit | None = None

    def __post_init__(self) -> None:
        for split in ("train", "test", "val"):
            if split == "val" and self.val is None:
                continue
            if not isinstance(getattr(self, split), Split | FolderSplit):
                got = type(getattr(self, split)).__name__
                raise TypeError(
                    f"Dataset.{split} must be a bender.data.Split (or FolderSplit), got {got}"
                )
        check_positive_int("num_classes", self.num_classes)
        k = self.num_classes
        for split in ("train", "test", "val"):
            if getattr(self, split) is None:
                continue
            y = getattr(self, split).y
            if len(y) and not (int(y.min()) >= 0 and int(y.max()) < k):
                raise ValueError(
                    f"{self.name} {split} labels must lie in 0..{k - 1} (num_classes={k}), "
                    f"got {int(y.min())}..{int(y.max())}"
                )

    def map_splits(self, fn: Callable[[Split], Split]) -> Dataset:
        """The dataset with ``fn`` applied to each of its splits (the validation one too)."""
        val = None if self.val is None else fn(self.val)
        return Dataset(self.name, fn(self.train), fn(self.test), self.num_classes, val)

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> Dataset:
        return self.map_splits(lambda split: split.to(device, dtype))

    def subset(self, n_train: int, n_test: int) -> Dataset:
        return Dataset(
            self.name,
            self.train.subset(n_train),
            self.test.subset(n_test),
            self.num_classes,
            self.val,
        )

    def with_validation(self, n: int, seed: int = 0) -> Dataset:
        """``n`` training examples, chosen by a permutation seeded with ``seed``, set apart as
        the validation split (BioTorch's 45k/5k of CIFAR); the rest, in their order, train."""
        check_positive_int("validation size", n)
        if n >= len(self.train):
            raise ValueError(
                f"a validation split of {n} leaves no training examples of {len(self.train)}"
            )
        order = torch.randperm(len(self.train), generator=torch.Generator().manual_seed(seed))
        held = torch.zeros(len(self.train), dtype=torch.bool)
        held[order[:n]] = True
        train = self.train.select(torch.nonzero(~held).flatten())
        val = self.train.select(torch.nonzero(held).flatten())
        if isinstance(val, FolderSplit):  # evaluated: centre crops, not training's random ones
            val = val.for_evaluation()
        return Dataset(self.name, train, self.test, self.num_classes, val)


def _find(folder: Path, name: str) -> Path | None:
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _download(name: str, root: Path) -> bool:
    """Let torchvision fetch the raw files; ``False`` when it is not installed or offline."""
    try:
        from torchvision import datasets
    except Exception:
        return False
    cls = getattr(datasets, DATASETS[name])
    try:
        for train in (True, False):
            cls(str(root), train=train, download=True)
    except Exception:
        return False
    return True


def load(
    name: str = "mnist",
    root: str | os.PathLike | None = None,
    *,
    flatten: bool = True,
    download: bool = True,
    dtype: torch.dtype = torch.float32,
) -> Dataset:
    """Load MNIST, Fashion-MNIST, CIFAR-10 or CIFAR-100 into memory.

    ``x`` is ``N×784`` (``flatten=True``, for dense nets) or ``N×1×28×28`` (for conv nets),
    CIFAR's ``N×3072`` or ``N×3×32×32``, scaled to [0, 1]; ``y`` holds int64 class labels.
    Raises ``FileNotFoundError`` naming the folder and the expected files when they are missing
    and cannot be downloaded, and ``ValueError`` naming the file when one is damaged or not of
    the dataset's kind (see :func:`read_images`, :func:`read_labels`,
    :func:`bender.data.cifar.read_batch`).
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    if name in cifar.LAYOUTS:
        return _load_cifar(name, data_root(root), flatten, download, dtype)
    base = data_root(root)
    folder = base / DATASETS[name] / "raw"
    needed = [f for pair in FILES.values() for f in pair]
    paths = {f: _find(folder, f) for f in needed}
    if None in paths.values() and download and _download(name, base):
        paths = {f: _find(folder, f) for f in needed}
    if None in paths.values():
        missing = [f for f, path in paths.items() if path is None]
        raise FileNotFoundError(
            f"{name} not found: expected the files {', '.join(needed)} in {folder} "
            f"(missing: {', '.join(missing)}). Put them there (torchvision's layout), or point "
            "bender at another data root with --data-dir / load(root=...) / BENDER_DATA."
        )
    splits = {}
    for split, (images, labels) in FILES.items():
        x = read_images(paths[images]).to(dtype).div_(255)
        y = read_labels(paths[labels])
        if len(x) != len(y):
            raise ValueError(
                f"{folder}: {len(x)} images in {paths[images].name} but {len(y)} labels in "
                f"{paths[labels].name} ({split} split)"
            )
        splits[split] = Split(x.reshape(len(x), -1) if flatten else x.unsqueeze(1), y)
    return Dataset(name, splits["train"], splits["test"])


def load_image_folder(
    root: str | os.PathLike,
    *,
    size: int | None = None,
    workers: int = 0,
    random_crop: bool | None = None,
) -> Dataset:
    """An image folder, ``root/train/<class>/...`` and ``root/val/<class>/...``, streamed from
    disk by ``workers`` processes (see :mod:`bender.data.folder`): ``val`` is the test split.

    With ``size``, training takes random resized crops of ``size × size``, flipped at random,
    and evaluation centre crops (ImageNet's protocol); without, images are used as they are and
    must all have one size; ``random_crop=False`` trains on centre crops too.
    ``dataset.classes`` holds the class names, in label order.
    """
    classes, train, val = load_folder(root, size=size, workers=workers, random_crop=random_crop)
    dataset = Dataset(Path(root).expanduser().resolve().name, train, val, len(classes))
    dataset.classes = classes
    return dataset


def image_shape(dataset: Dataset) -> tuple[int, int, int]:
    """``(channels, height, width)`` of the dataset's images (``N×C×H×W`` inputs)."""
    if isinstance(dataset.train, FolderSplit):
        return dataset.train.image_shape()
    x = dataset.train.x
    if x.dim() != 4:
        raise ValueError(
            f"{dataset.name}: expected images of shape (N, C, H, W), got inputs of shape "
            f"{tuple(x.shape)}; load it with flatten=False"
        )
    return tuple(x.shape[1:])


STATS_SAMPLE = 1000  # training images an image folder's channel statistics are taken from


def normalize(dataset: Dataset) -> Dataset:
    """The dataset with each channel of its images shifted and scaled by the training split's
    mean and standard deviation (``dataset.stats`` holds them), for CIFAR's protocol. For an
    image folder they are taken from ``STATS_SAMPLE`` training images (a permutation seeded
    with 0, centre-cropped as for evaluation) and applied as each batch is read."""
    if isinstance(dataset.train, FolderSplit):
        sample = dataset.train.for_evaluation().subset(STATS_SAMPLE)
        images = torch.cat([x for x, _ in sample.batches(None, 100)])
        mean, std = channel_stats(images)
        result = dataset.map_splits(lambda split: split.with_stats(mean, std))
    else:
        mean, std = channel_stats(dataset.train.x)
        result = dataset.map_splits(lambda split: Split(normalized(split.x, mean, std), split.y))
    result.stats = {"mean": mean, "std": std}
    return result


def pad_images(dataset: Dataset, size: tuple[int, int]) -> Dataset:
    """The dataset with its images padded with zeros, evenly on each side, to ``size``
    (MNIST's 28×28 to LeNet-5's 32×32). Images already that size are returned as they are."""
    _, height, width = image_shape(dataset)
    target_h, target_w = size
    if (height, width) == (target_h, target_w):
        return dataset
    if height > target_h or width > target_w or isinstance(dataset.train, FolderSplit):
        raise ValueError(
            f"{dataset.name}'s {height}×{width} images cannot be padded to {target_h}×{target_w}"
        )
    top, left = (target_h - height) // 2, (target_w - width) // 2
    pad = (left, target_w - width - left, top, target_h - height - top)
    return dataset.map_splits(lambda split: Split(torch.nn.functional.pad(split.x, pad), split.y))


def _load_cifar(
    name: str, base: Path, flatten: bool, download: bool, dtype: torch.dtype
) -> Dataset:
    folder_name, train_files, test_files, label_key, classes = cifar.LAYOUTS[name]
    folder = base / folder_name
    needed = [*train_files, *test_files]
    missing = [f for f in needed if not (folder / f).is_file()]
    if missing and download and _download(name, base):
        missing = [f for f in needed if not (folder / f).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{name} not found: expected the files {', '.join(needed)} in {folder} "
            f"(missing: {', '.join(missing)}). Put them there (torchvision's layout: the "
            "python version of CIFAR), or point bender at another data root with --data-dir / "
            "load(root=...) / BENDER_DATA."
        )
    splits = {}
    for split, files in (("train", train_files), ("test", test_files)):
        x, y = cifar.read_split(folder, files, label_key, classes)
        x = x.to(dtype).div_(255)
        splits[split] = Split(x.reshape(len(x), -1) if flatten else x, y)
    return Dataset(name, splits["train"], splits["test"], classes)


class Batches:
    """Mini-batches of a :class:`Split` (or :class:`FolderSplit`), reshuffled every epoch.

    Iterating once is one epoch. The order comes from a generator seeded with ``seed``, so a
    fresh ``Batches`` with the same seed yields the same sequence of epochs. With
    ``reshuffle=False`` the first epoch's order is kept for every epoch: that is how Bender.jl's
    tutorials train, since their ``gpu.(train_data)`` collects the shuffled DataLoader's batches
    once. With ``drop_last`` (Bender.jl's ``partial=false``) the last incomplete batch is skipped.
    With ``part=(rank, world)`` each batch is cut into ``world`` equal parts and only part
    ``rank`` is read (a process's share under torchrun). A :class:`FolderSplit` also gets a
    seed per epoch, drawn from the same generator, for its random crops.
    """

    def __init__(
        self,
        split: Split | FolderSplit,
        batch_size: int,
        *,
        shuffle: bool = True,
        reshuffle: bool = True,
        drop_last: bool = True,
        seed: int = 0,
        part: tuple[int, int] = (0, 1),
    ) -> None:
        check_positive_int("batch_size", batch_size)
        rank, world = part
        if not 0 <= rank < world or batch_size % world or (world > 1 and not drop_last):
            raise ValueError(
                f"part {part}: a batch of {batch_size} cannot be cut into {world} equal parts "
                "(each batch whole: drop_last=True)"
            )
        self.split, self.batch_size, self.part = split, batch_size, part
        self.shuffle, self.reshuffle, self.drop_last = shuffle, reshuffle, drop_last
        self.generator = torch.Generator().manual_seed(seed)
        self._order: Tensor | None = None

    def __len__(self) -> int:
        n, b = len(self.split), self.batch_size
        return n // b if self.drop_last else -(-n // b)

    def _examples(self) -> int:
        """How many examples one epoch uses: all, or all but the last partial batch."""
        return len(self) * self.batch_size if self.drop_last else len(self.split)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        n = self._examples()
        if n == 0:  # splitting an empty tensor would still give one (empty) batch
            return
        if not self.shuffle:
            order = None if n == len(self.split) else torch.arange(n)
        else:
            if self.reshuffle or self._order is None:
                drawn = torch.randperm(len(self.split), generator=self.generator, device="cpu")
                self._order = drawn[:n].to(self.split.y.device)
            order = self._order
        streamed = isinstance(self.split, FolderSplit)
        seed = int(torch.randint(2**62, (), generator=self.generator)) if streamed else None
        size = self.batch_size
        rank, world = self.part
        if world > 1:
            order = torch.arange(n, device=self.split.y.device) if order is None else order
            size //= world
            order = order.view(-1, self.batch_size)[:, rank * size : (rank + 1) * size].flatten()
        yield from self.split.batches(order, size, seed)

    def state_dict(self) -> dict[str, Tensor | None]:
        """What the next epochs' order depends on: the generator's state and, with
        ``reshuffle=False``, the order kept from the first epoch (``None`` before it)."""
        keep = self._order is not None and not self.reshuffle  # else drawn anew each epoch
        order = self._order.cpu() if keep else None
        return {"generator": self.generator.get_state(), "order": order}

    def load_state_dict(self, state: dict[str, Tensor | None]) -> None:
        """Continue from :meth:`state_dict`: the following epochs come in the order they would
        have come in the ``Batches`` it was taken from."""
        order = state["order"]
        if order is not None and len(order) != self._examples():
            raise ValueError(
                f"the saved batch order covers {len(order)} examples, but these batches use "
                f"{self._examples()} of {len(self.split)} (batch size {self.batch_size})"
            )
        self.generator.set_state(state["generator"])
        self._order = None if order is None else order.to(self.split.y.device)
