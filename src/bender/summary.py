"""What a model holds and computes: parameters by precision, feedback matrices, MACs per sample.

After Larq's model summary (Geiger and Team, "Larq: An Open-Source Library for Training
Binarized Neural Networks", JOSS 2020): for a binary network what counts is how many weights
are stored in one bit, how much memory the weights take, and how many multiply-accumulates
(MACs) have both operands in ``{−1, +1}``, which hardware computes as XNOR and popcount.

- A layer's weights are **1-bit** when its mapping was registered with ``binary_weights=True``
  (``linear_binary_weights``, ``linear_stoc_binary_weights``, ``conv_binary_weights``), or its
  kernel quantizer is 1-bit (``kernel_quantizer="ste_sign"``, ...): the forward pass uses
  ``sign(W)``; the latent real ``W`` is needed for training only.
- A MAC is **1-bit** when the weights are 1-bit and the layer's input is: its input quantizer
  is 1-bit, or its input, in the pass the summary runs, holds no values but ``−1``, ``0`` and
  ``+1``: the output of ``sign_ste`` before it,
  whose ``sign(0) = 0`` (Bender.jl's, and Julia's, ``sign``) shows at exact ties, which binary
  weights and inputs make common. MACs are counted for dense and convolution layers:
  ``in × out`` per input row, and ``C_in/groups × ∏k × C_out`` per output position.
- **Memory** is that of the parameters for inference: one bit per 1-bit weight, the tensor's
  own element size for every other parameter. Feedback matrices, needed for training only,
  are counted apart.
"""

from __future__ import annotations

from collections.abc import Iterator

import pandas as pd
import torch
from torch import Tensor, nn
from torch.nn.modules.conv import _ConvNd
from torch.nn.utils import parametrize

from bender._modes import eval_mode
from bender._placement import inputs_for
from bender._random import from_current_random_state
from bender.constraints import binary_layers
from bender.layers import GenConv, GenDense
from bender.mappings import mapping_name

COLUMNS = (
    "layer",
    "type",
    "rule",
    "output",
    "params_1bit",
    "params_float",
    "feedback",
    "macs_1bit",
    "macs_float",
    "memory_kib",
)


def _own_parameters(module: nn.Module) -> Iterator[nn.Parameter]:
    """The parameters that belong to ``module``, with those its parametrizations hold."""
    yield from module.parameters(recurse=False)
    if parametrize.is_parametrized(module):
        yield from module.parametrizations.parameters()


def _weight_parameters(module: nn.Module) -> list[nn.Parameter]:
    """The parameters the weight is made of: itself, a parametrization's originals, or a pruned
    weight's ``weight_orig``."""
    if parametrize.is_parametrized(module, "weight"):
        return list(module.parametrizations.weight.parameters())
    weight = module._parameters.get("weight", module._parameters.get("weight_orig"))
    return [] if weight is None else [weight]


def _macs(module: nn.Module, x: Tensor, output: Tensor) -> int:
    """Multiply-accumulates of one call of a dense or convolution layer (0 for other modules)."""
    weight = getattr(module, "weight", None)
    if not isinstance(weight, Tensor) or not isinstance(output, Tensor):
        return 0
    if isinstance(module, (GenDense, nn.Linear)):
        return x.numel() // weight.shape[1] * weight.numel()
    if isinstance(module, _ConvNd) and module.transposed:  # each input position, every output
        return x.numel() * weight[0].numel()
    if isinstance(module, (GenConv, _ConvNd)):
        return output.numel() * weight[0].numel()
    return 0


def _is_binary(x: Tensor) -> bool:
    """Whether ``x`` holds no values but −1, 0 and +1 (``sign``'s outputs)."""
    return x.numel() > 0 and bool((x.abs() == 1).logical_or(x == 0).all())


def _listed(module: nn.Module) -> bool:
    """Whether ``module`` gets a row: it holds parameters or a feedback matrix."""
    if isinstance(module, parametrize.ParametrizationList):  # counted with its owner
        return False
    has_feedback = isinstance(getattr(module, "feedback", None), Tensor)
    return has_feedback or next(_own_parameters(module), None) is not None


def summary(model: nn.Module, x: Tensor) -> pd.DataFrame:
    """One row per module that holds parameters or a feedback matrix, then a ``total`` row.

    Columns (see the module's docstring): ``layer`` (name), ``type``, ``rule`` (the mapping),
    ``output`` (shape of one sample's output), ``params_1bit``, ``params_float``, ``feedback``
    (entries of the feedback matrix, fixed or learned: training needs it, inference does not,
    so it is not among the parameters), ``macs_1bit``, ``macs_float`` (per sample),
    ``memory_kib``. ``x`` is a batch the model accepts (first dim the batch). It runs one
    forward pass in eval mode without gradients, and leaves the model's modes, its random
    state and every generator as they were. A layer called twice counts its MACs twice and its
    parameters once; a parameter shared by two layers is counted in the first.
    """
    if not isinstance(x, Tensor) or x.dim() == 0:
        raise ValueError(
            f"summary needs a batch of inputs (a tensor, first dim the batch), got {x!r}"
        )
    x = inputs_for(model, x)
    listed = {name: m for name, m in model.named_modules() if _listed(m)}
    binary_weights = {id(m) for m in binary_layers(model).values()}
    calls: dict[str, dict] = {
        name: {"output": "", "macs_1bit": 0, "macs_float": 0} for name in listed
    }

    def record(name: str):
        def hook(module: nn.Module, args: tuple, output) -> None:
            inputs = args[0] if args and isinstance(args[0], Tensor) else None
            macs = _macs(module, inputs, output) if inputs is not None else 0
            quantized = getattr(getattr(module, "input_quantizer", None), "bits", None) == 1
            binary_inputs = inputs is not None and (quantized or _is_binary(inputs))
            binary = id(module) in binary_weights and binary_inputs
            calls[name]["macs_1bit" if binary else "macs_float"] += macs
            if isinstance(output, Tensor) and not calls[name]["output"]:
                calls[name]["output"] = "×".join(str(n) for n in output.shape[1:])

        return hook

    handles = [m.register_forward_hook(record(name)) for name, m in listed.items()]
    with torch.no_grad(), eval_mode(model), from_current_random_state(model, x.device):
        try:
            model(x)
        finally:
            for handle in handles:
                handle.remove()
        rows = _rows(listed, binary_weights, calls, len(x))  # reads weights: in eval mode too
    table = pd.DataFrame(rows, columns=list(COLUMNS))
    total = {c: table[c].sum() for c in COLUMNS[4:]}
    return pd.concat(
        [table, pd.DataFrame([{"layer": "total", "type": "", "rule": "", "output": ""} | total])],
        ignore_index=True,
    )


def _rows(
    listed: dict[str, nn.Module], binary_weights: set[int], calls: dict[str, dict], batch: int
) -> list[dict]:
    """The table's rows: each parameter counted in the first module that holds it; a binary
    layer's weight as one bit per entry (a parametrized one read as computed now)."""
    rows, seen = [], set()
    for name, module in listed.items():
        feedback = getattr(module, "feedback", None)
        params = [p for p in _own_parameters(module) if id(p) not in seen and p is not feedback]
        seen.update(id(p) for p in params)
        signed = set()  # the parameters behind sign(W): stored as one bit per weight
        if id(module) in binary_weights:
            signed = {id(p) for p in _weight_parameters(module)} & {id(p) for p in params}
        one_bit = module.weight.numel() if signed else 0
        full = [p for p in params if id(p) not in signed]
        rule = getattr(module, "mapping", None)
        rows.append(
            {
                "layer": name or "(model)",
                "type": type(module).__name__,
                "rule": mapping_name(rule) if rule is not None else "",
                "output": calls[name]["output"],
                "params_1bit": one_bit,
                "params_float": sum(p.numel() for p in full),
                "feedback": feedback.numel() if isinstance(feedback, Tensor) else 0,
                "macs_1bit": calls[name]["macs_1bit"] // batch,
                "macs_float": calls[name]["macs_float"] // batch,
                "memory_kib": (one_bit / 8 + sum(p.nbytes for p in full)) / 1024,
            }
        )
    return rows
