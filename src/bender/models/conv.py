"""Small convolutional networks: bender's MNIST CNN and LeNet-5."""

from __future__ import annotations

from torch import nn


def cnn(in_channels: int, image_size: tuple[int, int], num_classes: int) -> nn.Sequential:
    """``[conv 5×5, 16 ch, relu, max-pool 2] → [conv 5×5, 32 ch, relu, max-pool 2] → dense``,
    padding 2 (the ``*-cnn`` recipes' network, as plain PyTorch layers)."""
    height, width = image_size
    return nn.Sequential(
        nn.Conv2d(in_channels, 16, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * (height // 4) * (width // 4), num_classes),
    )


def lenet5(in_channels: int, image_size: tuple[int, int], num_classes: int) -> nn.Sequential:
    """LeNet-5 on 32×32 images (LeCun et al. 1998), as in BioTorch's benchmark: ``conv 5×5,
    6 ch → relu → max-pool 2 → conv 5×5, 16 ch → relu → max-pool 2 → 400 → 120 → 84 →
    classes``, relu between the dense layers. MNIST-family images are padded to 32×32 for it."""
    if tuple(image_size) != (32, 32):
        raise ValueError(f"lenet5 takes 32×32 images, got {image_size[0]}×{image_size[1]}")
    return nn.Sequential(
        nn.Conv2d(in_channels, 6, 5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(16 * 5 * 5, 120),
        nn.ReLU(),
        nn.Linear(120, 84),
        nn.ReLU(),
        nn.Linear(84, num_classes),
    )
