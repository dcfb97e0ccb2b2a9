"""A small vision transformer, over image patches or image rows.

Dosovitskiy et al. 2021, "An image is worth 16x16 words", arXiv:2010.11929: the image is cut
into patches, each patch is embedded by one linear map (a convolution with the patch as its
kernel and stride), a learned position embedding is added, pre-norm transformer encoder
layers follow (torch's ``nn.TransformerEncoderLayer``), and the mean over tokens, normalized,
goes to a dense classifier (mean pooling in place of a class token).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class VisionTransformer(nn.Module):
    """Patches ``patch = (ph, pw)`` of an ``image_size`` image as tokens; ``(1, width)`` makes
    each row a token (MNIST: 28 tokens of 28 pixels)."""

    def __init__(
        self,
        in_channels: int,
        image_size: tuple[int, int],
        num_classes: int,
        *,
        patch: tuple[int, int] = (4, 4),
        dim: int = 64,
        depth: int = 4,
        heads: int = 4,
        mlp_dim: int = 128,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        (height, width), (ph, pw) = image_size, patch
        if height % ph or width % pw:
            raise ValueError(
                f"the image size {height}×{width} must be a multiple of the patch size {ph}×{pw}"
            )
        self.patch_size = (ph, pw)
        self.embed = nn.Conv2d(in_channels, dim, (ph, pw), stride=(ph, pw))
        self.position = nn.Parameter(torch.zeros(1, (height // ph) * (width // pw), dim))
        nn.init.trunc_normal_(self.position, std=0.02)
        layer = nn.TransformerEncoderLayer(
            dim, heads, mlp_dim, dropout, activation="gelu", batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        tokens = self.embed(x).flatten(2).transpose(1, 2) + self.position
        return self.head(self.norm(self.encoder(tokens)).mean(1))
