"""Augmentation of whole batches on their device, and per-channel normalization.

``CropFlip`` is the CIFAR protocol of He et al. 2016 (section 4.2): each image padded by 4
pixels of zeros on every side, a random 32×32 crop taken, and the image flipped left to right
with probability ½. It runs on the batch tensor where it lies, one gather for all images, no
per-image Python; its random offsets and flips come from the global CPU generator, which
``train`` seeds and its checkpoints keep, so a run and its resumption see the same batches.
"""

from __future__ import annotations

import torch
from torch import Tensor

from bender.functional._checks import check_positive_int

# the command line's augmentations: CropFlip on the device, or an image folder's random
# resized crops as its workers read the images (bender.data.folder)
AUGMENTATIONS = ("none", "crop-flip", "resized-crop")


class CropFlip:
    """``x`` (``N × C × H × W``) → random ``H × W`` crops of ``x`` padded by ``padding``, each
    flipped horizontally with probability ½ when ``flip``."""

    def __init__(self, padding: int = 4, flip: bool = True) -> None:
        if padding != 0:
            check_positive_int("padding", padding)
        self.padding, self.flip = padding, bool(flip)

    def __call__(self, x: Tensor) -> Tensor:
        if x.dim() != 4:
            raise ValueError(f"CropFlip takes images N × C × H × W, got {tuple(x.shape)}")
        n, _, height, width = x.shape
        p = self.padding
        if p:
            offsets = torch.randint(0, 2 * p + 1, (2, n, 1), device="cpu").to(x.device)
            rows = offsets[0] + torch.arange(height, device=x.device)  # N × H
            cols = offsets[1] + torch.arange(width, device=x.device)  # N × W
            padded = torch.nn.functional.pad(x, (p, p, p, p))
            index = torch.arange(n, device=x.device).view(n, 1, 1, 1)
            channel = torch.arange(x.shape[1], device=x.device).view(1, -1, 1, 1)
            x = padded[index, channel, rows.view(n, 1, height, 1), cols.view(n, 1, 1, width)]
        if self.flip:
            flipped = (torch.rand(n, device="cpu") < 0.5).to(x.device).view(n, 1, 1, 1)
            x = torch.where(flipped, x.flip(-1), x)
        return x

    def __repr__(self) -> str:
        return f"CropFlip(padding={self.padding}, flip={self.flip})"


def channel_stats(x: Tensor) -> tuple[list[float], list[float]]:
    """Mean and standard deviation of each channel of images ``N × C × H × W``."""
    flat = x.transpose(0, 1).reshape(x.shape[1], -1).double()
    return flat.mean(1).tolist(), flat.std(1).tolist()


def normalized(x: Tensor, mean: list[float], std: list[float]) -> Tensor:
    """``(x − mean_c) / std_c`` for each channel ``c``."""
    shape = (1, -1) + (1,) * (x.dim() - 2)
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(shape)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(shape)
    return (x - m) / s
