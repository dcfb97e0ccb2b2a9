"""Binary weights for inference: one bit per weight, and back into a model.

A trained binary layer's forward pass reads only the signs of its latent weights, so for
inference those latent floats (32 bits each) can be stored as one bit each. :func:`export`
packs the signs of every layer with a 1-bit kernel quantizer (``GenDense(...,
kernel_quantizer="ste_sign")``) into bytes (``numpy.packbits``, 8 weights a byte) and keeps
every other parameter and buffer the model needs for inference as it is; training-only tensors
(feedback matrices) are left out. :func:`load_exported` puts such a file into a freshly built
model of the same architecture, whose predictions are then those of the trained one: each
latent weight becomes ``±1``, whose sign is the bit stored.

The file is written with :func:`torch.save` and read back with ``weights_only=True``: it holds
tensors, strings and ints only.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from bender.checkpoint import write_atomically
from bender.constraints import kernel_quantized_binary_layers

FORMAT = 1


def export(model: nn.Module) -> dict[str, Any]:
    """``model``'s inference state with 1-bit weights packed: ``{"format", "bits", "shapes",
    "tensors"}``. ``bits[name]`` holds the signs (``w ≥ 0`` as 1) of layer ``name``'s latent
    weight, packed 8 to a byte; ``tensors`` every other entry of the ``state_dict`` except
    feedback matrices. Raises ``ValueError`` when ``model`` has no layer with a 1-bit kernel
    quantizer (nothing to pack)."""
    layers = kernel_quantized_binary_layers(model)
    if not layers:
        raise ValueError(
            f"this {type(model).__name__} has no layer with a 1-bit kernel quantizer "
            '(GenDense(..., kernel_quantizer="ste_sign")): it has no binary weights to export'
        )
    packed = {f"{name}.parametrizations.weight.original" for name in layers}
    bits, shapes = {}, {}
    for name, layer in layers.items():
        signs = (layer.latent_weight().detach() >= 0).cpu().numpy().ravel()
        bits[name] = torch.from_numpy(np.packbits(signs))
        shapes[name] = list(layer.latent_weight().shape)
    tensors = {
        key: value.detach().cpu()
        for key, value in model.state_dict().items()
        if key not in packed and not (key == "feedback" or key.endswith(".feedback"))
    }
    return {"format": FORMAT, "bits": bits, "shapes": shapes, "tensors": tensors}


def save(model: nn.Module, path: str | os.PathLike) -> None:
    """:func:`export` ``model`` to ``path`` (written atomically)."""
    state = export(model)
    write_atomically(path, lambda p: torch.save(state, p))


def load_exported(model: nn.Module, exported: dict[str, Any] | str | os.PathLike) -> nn.Module:
    """Fill ``model`` (built as the exported one was) from :func:`export`'s state or a file
    :func:`save` wrote; returns ``model``. Each packed weight becomes ``±1``; feedback matrices
    keep the values the new model has (inference does not read them)."""
    if not isinstance(exported, dict):
        path = Path(exported)
        try:
            exported = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:
            raise ValueError(
                f"{path} is not a readable bender export ({type(err).__name__})"
            ) from None
    if not isinstance(exported, dict) or exported.get("format") != FORMAT:
        raise ValueError(f"not a bender export of format {FORMAT}")
    layers = kernel_quantized_binary_layers(model)
    if sorted(layers) != sorted(exported["bits"]):
        raise ValueError(
            f"the export holds the binary layers {sorted(exported['bits'])}, this model has "
            f"{sorted(layers)}; build the model the export was made from"
        )
    state = model.state_dict()
    for name, layer in layers.items():
        shape = exported["shapes"][name]
        if list(layer.latent_weight().shape) != shape:
            own = list(layer.latent_weight().shape)
            raise ValueError(f"layer {name}: the export's weight is {shape}, the model's {own}")
        count = int(np.prod(shape))
        signs = np.unpackbits(exported["bits"][name].numpy())[:count].reshape(shape)
        weight = torch.from_numpy(signs.astype(np.float32) * 2 - 1)
        state[f"{name}.parametrizations.weight.original"] = weight
    missing = [k for k in state if k not in exported["tensors"] and ".parametrizations." not in k]
    missing = [k for k in missing if not (k == "feedback" or k.endswith(".feedback"))]
    if missing:
        raise ValueError(f"the export lacks {', '.join(missing)}; build the model it was made from")
    state.update(exported["tensors"])
    model.load_state_dict(state)
    return model
