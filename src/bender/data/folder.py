"""Image folders in torchvision's ``ImageFolder`` layout, streamed from disk in batches.

``root/train/<class>/*.png`` (or ``.jpg`` …) and ``root/val/<class>/...``: one folder per
class, the classes sorted by name and numbered from 0, as ``torchvision.datasets.ImageFolder``
numbers them. Only the file names and labels are held in memory; each batch is read, decoded
and resized by a ``torch.utils.data.DataLoader`` with worker processes, and moved to the
device as one tensor. This is for data that does not fit in memory (ImageNet); small datasets
stay in memory (:class:`bender.data.Split`).

With a ``size`` the standard ImageNet protocol applies (Szegedy et al. 2015; He et al. 2016):
for training a random crop of 8–100 % of the image's area and aspect ratio in [3/4, 4/3],
resized to ``size × size`` and flipped left to right with probability ½; for evaluation the
image resized so its shorter side is ``size / 0.875`` (256 for 224) and the centre
``size × size`` cut out. The random draws of example ``i`` in an epoch come from a generator
seeded with the epoch's seed and ``i``, so they do not depend on the number of workers or of
processes. Without a size, images are used as they are and must all have one size (checked
from their headers when the folder is read).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from bender.data.augment import normalized
from bender.functional._checks import check_positive_int

SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")
SPLITS = ("train", "val")
EVAL_RESIZE = 0.875  # the centre crop's share of the resized image's shorter side: 224 of 256
SCALE = (0.08, 1.0)  # the random crop's share of the image's area
RATIO = (3 / 4, 4 / 3)  # and its aspect ratio, width / height


class ImageError(ValueError):
    """An image file that cannot be decoded, or images of different sizes in one batch."""


def class_folders(folder: Path) -> list[str]:
    """The names of the class folders in ``folder``, sorted; errors as :func:`find_images`."""
    if not folder.is_dir():
        raise FileNotFoundError(
            f"{folder} is missing: an image folder dataset needs {folder}/<class>/<image> "
            "(torchvision's ImageFolder layout, one folder per class; images "
            f"{', '.join(SUFFIXES)})"
        )
    classes = sorted(entry.name for entry in os.scandir(folder) if entry.is_dir())
    if not classes:
        raise ValueError(
            f"{folder} holds no class folder: expected {folder}/<class>/<image>, one folder "
            "per class"
        )
    return classes


def images_in(folder: Path) -> list[str]:
    """The image files under a class folder (its subfolders too), sorted by path; a
    ``ValueError`` naming the folder when it holds none."""
    found = sorted(
        str(path)
        for path in folder.rglob("*")
        if path.suffix.lower() in SUFFIXES and path.is_file()
    )
    if not found:
        raise ValueError(
            f"{folder} holds no image ({', '.join(SUFFIXES)}): every class folder needs at "
            "least one"
        )
    return found


def describe_folder(root: str | os.PathLike, size: int | None = None) -> tuple[int, tuple]:
    """The number of classes and the ``(3, height, width)`` of the images that the image
    folder ``root`` gives, without reading it whole (its class folders, one image's header)."""
    root = Path(root).expanduser()
    classes = class_folders(root / "train")
    if size is not None:
        return len(classes), (3, size, size)
    width, height = image_sizes(images_in(root / "train" / classes[0])[:1])[0]
    return len(classes), (3, height, width)


def find_images(folder: Path) -> tuple[list[str], list[str], Tensor]:
    """The class names (sorted), the image files (by class, then path) and their labels.

    Raises ``FileNotFoundError`` naming the folder when it is missing, and ``ValueError`` when
    it holds no class folder or a class folder holds no image.
    """
    classes = class_folders(folder)
    files: list[str] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        found = images_in(folder / name)
        files += found
        labels += [label] * len(found)
    return classes, files, torch.tensor(labels, dtype=torch.long)


@contextmanager
def opened(path: str) -> Iterator[Image.Image]:
    """The image in ``path``, open; an :class:`ImageError` naming the file when it, or what is
    done with it, cannot be decoded."""
    try:
        with Image.open(path) as image:
            yield image
    except (OSError, SyntaxError, ValueError) as err:  # PIL's errors for a damaged file
        raise ImageError(f"{path} cannot be read as an image: {err}") from None


def read_image(path: str) -> Image.Image:
    """The image in ``path`` as RGB; an :class:`ImageError` naming the file if it cannot be
    decoded."""
    with opened(path) as image:
        return image.convert("RGB")


def image_sizes(files: Sequence[str]) -> list[tuple[int, int]]:
    """``(width, height)`` of each file, from its header alone."""
    sizes = []
    for path in files:
        with opened(path) as image:
            sizes.append(image.size)
    return sizes


def different_sizes(where: str, first: str, first_size, other: str, other_size) -> ImageError:
    """The error for two images of different sizes, each ``(width, height)``, used as they are."""
    return ImageError(
        f"images of different sizes{where}: {first} is {first_size[0]}×{first_size[1]}, {other} "
        f"is {other_size[0]}×{other_size[1]}; give a size to resize them to (--image-size)"
    )


def random_crop_box(
    width: int, height: int, generator: torch.Generator
) -> tuple[float, float, float, float]:
    """A box ``(left, top, right, bottom)`` of 8–100 % of the image's area and aspect ratio in
    [3/4, 4/3], placed at random (ten tries; then the whole image, aspect ratio clamped)."""
    area = width * height
    log_ratio = (math.log(RATIO[0]), math.log(RATIO[1]))
    for _ in range(10):
        draws = torch.rand(4, generator=generator, dtype=torch.float64).tolist()
        target = area * (SCALE[0] + (SCALE[1] - SCALE[0]) * draws[0])
        ratio = math.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * draws[1])
        w, h = round(math.sqrt(target * ratio)), round(math.sqrt(target / ratio))
        if 0 < w <= width and 0 < h <= height:
            left, top = int(draws[2] * (width - w + 1)), int(draws[3] * (height - h + 1))
            return left, top, left + w, top + h
    ratio = min(max(width / height, RATIO[0]), RATIO[1])
    w, h = (
        (width, round(width / ratio)) if width / height < ratio else (round(height * ratio), height)
    )
    left, top = (width - w) // 2, (height - h) // 2
    return left, top, left + w, top + h


def centre_crop_box(width: int, height: int) -> tuple[float, float, float, float]:
    """The centre square whose side is ``EVAL_RESIZE`` of the shorter side (224 of 256)."""
    side = min(width, height) * EVAL_RESIZE
    left, top = (width - side) / 2, (height - side) / 2
    return left, top, left + side, top + side


def to_tensor(image: Image.Image) -> Tensor:
    """An RGB image as a ``3 × H × W`` uint8 tensor."""
    return torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).contiguous()


class Images(torch.utils.data.Dataset):
    """Example ``i`` of ``files``: ``(image, label, i)``, the image a ``3 × H × W`` uint8
    tensor, cropped and resized to ``size`` (when given) at random from ``seed`` and ``i``
    (``seed`` given) or at the centre (``seed`` ``None``)."""

    def __init__(
        self, files: Sequence[str], labels: Tensor, size: int | None, seed: int | None
    ) -> None:
        self.files, self.labels, self.size, self.seed = files, labels, size, seed

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[Tensor, int, int]:
        image = read_image(self.files[i])
        if self.size is not None:
            width, height = image.size
            if self.seed is None:
                box = centre_crop_box(width, height)
                image = image.resize((self.size, self.size), Image.BILINEAR, box=box)
            else:
                generator = torch.Generator().manual_seed((self.seed * 1_000_003 + i) % 2**63)
                box = random_crop_box(width, height, generator)
                image = image.resize((self.size, self.size), Image.BILINEAR, box=box)
                if torch.rand(1, generator=generator).item() < 0.5:
                    image = image.transpose(Image.FLIP_LEFT_RIGHT)
        return to_tensor(image), int(self.labels[i]), i


def collate(examples: list[tuple[Tensor, int, int]], files: Sequence[str]) -> tuple[Tensor, Tensor]:
    """One batch: the images stacked, the labels; an :class:`ImageError` naming two files of
    different sizes (images used as they are must share one)."""
    first = examples[0][0]
    for image, _, i in examples:
        if image.shape != first.shape:
            sizes = (first.shape[2], first.shape[1]), (image.shape[2], image.shape[1])
            raise different_sizes(
                " in one batch", files[examples[0][2]], sizes[0], files[i], sizes[1]
            )
    images = torch.stack([image for image, _, _ in examples])
    return images, torch.tensor([label for _, label, _ in examples], dtype=torch.long)


class FolderSplit:
    """One split of an image folder: file names and labels in memory, images read per batch.

    It stands where a :class:`bender.data.Split` stands (in a :class:`bender.data.Dataset`,
    given to :func:`bender.train`): ``len``, ``y``, :meth:`select`, :meth:`subset`, :meth:`to`
    and :meth:`batches`. Images arrive on ``device`` as ``dtype`` in [0, 1], or normalized per
    channel once ``mean`` and ``std`` are set (:func:`bender.data.normalize`).
    """

    def __init__(
        self,
        files: Sequence[str],
        y: Tensor,
        *,
        size: int | None = None,
        random_crop: bool = False,
        workers: int = 0,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        mean: list[float] | None = None,
        std: list[float] | None = None,
    ) -> None:
        if size is not None:
            check_positive_int("image size", size)
        if random_crop and size is None:
            raise ValueError("a random crop needs the size to resize the crops to")
        if workers != 0:
            check_positive_int("workers", workers)
        if len(files) != len(y):
            raise ValueError(f"{len(files)} files but {len(y)} labels")
        self.files, self.y = tuple(files), y.long().cpu()
        self.size, self.random_crop, self.workers = size, random_crop, workers
        self.device, self.dtype = torch.device(device), dtype
        self.mean, self.std = mean, std

    def _with(self, **changes) -> FolderSplit:
        settings = {
            "size": self.size,
            "random_crop": self.random_crop,
            "workers": self.workers,
            "device": self.device,
            "dtype": self.dtype,
            "mean": self.mean,
            "std": self.std,
        }
        files, y = changes.pop("files", self.files), changes.pop("y", self.y)
        return FolderSplit(files, y, **settings | changes)

    def __len__(self) -> int:
        return len(self.files)

    def __repr__(self) -> str:
        size = "as they are" if self.size is None else f"{self.size}×{self.size}"
        return f"FolderSplit({len(self)} images, {size}, workers={self.workers})"

    def select(self, index: Tensor) -> FolderSplit:
        """The examples at ``index``, in that order."""
        index = index.cpu()
        return self._with(files=[self.files[i] for i in index.tolist()], y=self.y[index])

    def subset(self, n: int) -> FolderSplit:
        """``n`` examples drawn by a permutation seeded with 0, in their folder order (the
        files are sorted by class, so the first ``n`` would hold the first classes only)."""
        check_positive_int("subset size", n)
        if n >= len(self):
            return self
        chosen = torch.randperm(len(self), generator=torch.Generator().manual_seed(0))[:n]
        return self.select(chosen.sort().values)

    def with_stats(self, mean: list[float], std: list[float]) -> FolderSplit:
        """The same examples, normalized per channel by ``mean`` and ``std`` as they are read."""
        return self._with(mean=mean, std=std)

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> FolderSplit:
        return self._with(device=torch.device(device), dtype=dtype or self.dtype)

    def for_evaluation(self) -> FolderSplit:
        """The same examples with the evaluation transform only (a validation split)."""
        return self._with(random_crop=False)

    def batches(
        self, order: Tensor | None, batch_size: int, seed: int | None = None
    ) -> Iterator[tuple[Tensor, Tensor]]:
        """Batches of the examples at ``order`` (all, in order, when ``None``), read by the
        workers: with ``seed``, cropped at random (when the split takes random crops)."""
        order = torch.arange(len(self)) if order is None else order.cpu()
        chunks = [chunk.tolist() for chunk in order.split(batch_size)]
        random = seed if self.random_crop else None
        images = Images(self.files, self.y, self.size, random)
        loader = torch.utils.data.DataLoader(
            images,
            batch_sampler=chunks,
            num_workers=self.workers,
            collate_fn=_Collate(self.files),
            pin_memory=self.device.type == "cuda",
        )
        for x, y in loader:
            x = x.to(self.device, non_blocking=True).to(self.dtype).div_(255)
            if self.mean is not None:
                x = normalized(x, self.mean, self.std)
            yield x, y.to(self.device, non_blocking=True)

    def image_shape(self) -> tuple[int, int, int]:
        """``(3, height, width)`` of the images the batches hold."""
        if self.size is not None:
            return (3, self.size, self.size)
        width, height = image_sizes(self.files[:1])[0]
        return (3, height, width)


class _Collate:
    """:func:`collate` with the file names, picklable for the worker processes."""

    def __init__(self, files: Sequence[str]) -> None:
        self.files = files

    def __call__(self, examples):
        return collate(examples, self.files)


def load_folder(
    root: str | os.PathLike,
    *,
    size: int | None = None,
    random_crop: bool | None = None,
    workers: int = 0,
) -> tuple[list[str], FolderSplit, FolderSplit]:
    """The classes and the ``train`` and ``val`` splits of the image folder ``root``.

    ``random_crop`` (default: when a ``size`` is given) trains on the random resized crops
    described above. Without a size, the headers of all images are read now and a
    ``ValueError`` names two files of different sizes. Raises ``FileNotFoundError`` naming
    the missing part of the layout, and ``ValueError`` when the two splits' classes differ.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(
            f"image folder {root} does not exist; expected {root}/train/<class>/<image> and "
            f"{root}/val/<class>/<image>"
        )
    random_crop = size is not None if random_crop is None else random_crop
    found = {split: find_images(root / split) for split in SPLITS}
    classes = found["train"][0]
    if found["val"][0] != classes:
        only_train = sorted(set(classes) - set(found["val"][0]))
        only_val = sorted(set(found["val"][0]) - set(classes))
        raise ValueError(
            f"{root}: train and val must have the same class folders; only in train: "
            f"{', '.join(only_train) or 'none'}; only in val: {', '.join(only_val) or 'none'}"
        )
    if size is None:
        files = found["train"][1] + found["val"][1]
        sizes = image_sizes(files)
        for path, image_size in zip(files, sizes, strict=True):
            if image_size != sizes[0]:
                raise different_sizes(f" in {root}", files[0], sizes[0], path, image_size)
    train = FolderSplit(
        found["train"][1], found["train"][2], size=size, random_crop=random_crop, workers=workers
    )
    val = FolderSplit(found["val"][1], found["val"][2], size=size, workers=workers)
    return classes, train, val
