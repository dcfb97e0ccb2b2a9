"""Turn an existing PyTorch model into a bent one: its Linear and Conv layers become bender layers.

``convert(model, dense="linear_asym_dx", conv="conv_linear_asym_dx")`` copies ``model`` and
replaces every ``nn.Linear`` with a :class:`~bender.layers.GenDense` and every ``nn.Conv1d/2d/3d``
with a :class:`~bender.layers.GenConv` that holds the same weight and bias and computes the same
forward pass; only the backward pass changes, as the mapping says. Feedback matrices, where the
mapping needs one, are drawn fresh (Glorot-uniform, as Bender.jl, unless ``init`` is given).
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.nn.modules.conv import _ConvNd
from torch.nn.utils import parametrize, prune
from torch.nn.utils.spectral_norm import SpectralNorm
from torch.nn.utils.weight_norm import WeightNorm

from bender.attention import GenAttention
from bender.layers import GenConv, GenDense, Init
from bender.mappings import Mapping, mapping_name, resolve_mapping

CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _needs_feedback(mapping: Mapping) -> bool:
    return bool(getattr(mapping, "needs_feedback", False))


def _carried_over(layer: nn.Module, mapping: Mapping, init: Init | None) -> dict:
    """The keyword arguments a new bender layer takes from ``layer`` and the mapping."""
    return {
        "forward": mapping,
        "feedback": _needs_feedback(mapping),
        "bias": layer.bias is not None,
        "init": init,
        "device": layer.weight.device,
        "dtype": layer.weight.dtype,
    }


def _dense(linear: nn.Linear, mapping: Mapping, init: Init | None) -> GenDense:
    return GenDense(linear.in_features, linear.out_features, **_carried_over(linear, mapping, init))


def _conv(layer: nn.Module, mapping: Mapping, init: Init | None) -> GenConv:
    return GenConv(
        layer.in_channels,
        layer.out_channels,
        layer.kernel_size,
        stride=layer.stride,
        padding=layer.padding,
        dilation=layer.dilation,
        groups=layer.groups,
        padding_mode=layer.padding_mode,
        **_carried_over(layer, mapping, init),
    )


def _layer_class(module: nn.Module) -> type:
    """The module's class; for a parametrized one (``weight_norm``, ``spectral_norm``, ...) the
    class the parametrizations were registered on, not the ``Parametrized…`` class made for it."""
    cls = type(module)
    return cls.__bases__[0] if parametrize.is_parametrized(module) else cls


def _rebuilt(old: nn.Module, build: Callable[[nn.Module], GenDense | GenConv]) -> nn.Module:
    """``build(old)``, given the weight, bias, parametrizations, pruning masks, trainability and
    train/eval mode of ``old``.

    The new layer holds ``old``'s parameters themselves, not copies, so a weight that ``old``
    shares with another module (an embedding tied to the output layer) stays shared.
    """
    training = old.training
    old.eval()  # in train mode, reading a parametrized weight runs spectral_norm's power step
    masks = _pruning_masks(old)
    new = build(old)
    for name in ("weight", "bias"):  # a pruned tensor's unpruned values are in <name>_orig
        source = getattr(old, f"{name}_orig" if name in masks else name)
        if isinstance(source, nn.Parameter):
            setattr(new, name, source)
        elif source is not None:  # parametrized: its value, which the parametrizations'
            # right_inverse sees when registered below; then old's originals replace it
            target = getattr(new, name)
            with torch.no_grad():
                target.copy_(source)
            target.requires_grad_(source.requires_grad)
    if parametrize.is_parametrized(old):
        _carry_parametrizations(new, old)
    for name, mask in masks.items():
        prune.custom_from_mask(new, name, mask)
    return new.train(training)


def _pruning_masks(layer: nn.Module) -> dict[str, Tensor]:
    """``{tensor name: mask}`` for the tensors ``torch.nn.utils.prune`` pruned in ``layer``.

    Other hooks cannot be carried over: hook-based weight or spectral norm is refused, and any
    other hook is named in a warning.
    """
    masks, others = {}, []
    for hook in layer._forward_pre_hooks.values():
        if isinstance(hook, prune.BasePruningMethod):
            masks[hook._tensor_name] = getattr(layer, f"{hook._tensor_name}_mask")
        elif isinstance(hook, (WeightNorm, SpectralNorm)):
            kind = "weight_norm" if isinstance(hook, WeightNorm) else "spectral_norm"
            raise ValueError(
                f"it uses the hook-based torch.nn.utils.{kind}, which convert cannot carry "
                f"over; apply torch.nn.utils.parametrizations.{kind} instead (the same math)"
            )
        else:
            others.append(hook)
    others += [*layer._forward_hooks.values(), *layer._backward_hooks.values()]
    others += layer._backward_pre_hooks.values()
    if others:
        names = ", ".join(getattr(h, "__name__", type(h).__name__) for h in others)
        warnings.warn(
            f"convert does not carry the hooks of a {type(layer).__name__} over to the bender "
            f"layer that replaces it ({names}); register them on the converted model",
            stacklevel=4,
        )
    return masks


def _copy(model: nn.Module) -> nn.Module:
    """``copy.deepcopy(model)``, also where a hook sets a computed tensor as a plain attribute
    before each forward (pruning's ``weight``), which deepcopy refuses: those are copied
    detached, as the hook computes them anew."""
    computed = {
        id(value): value.detach().clone()
        for module in model.modules()
        for value in vars(module).values()
        if isinstance(value, Tensor) and not value.is_leaf
    }
    return copy.deepcopy(model, computed)


def _carry_parametrizations(new: nn.Module, old: nn.Module) -> None:
    """Register ``old``'s parametrizations (the same modules, in order) on ``new`` and give
    ``new`` the unparametrized tensors of ``old`` (``original``, or ``original0``, ...): the
    parameters themselves, as in :func:`_rebuilt`, and copies of any buffers."""
    for name, chain in old.parametrizations.items():
        for parametrization in chain:
            parametrize.register_parametrization(new, name, parametrization, unsafe=True)
        kept = new.parametrizations[name]
        for key, source in chain.named_parameters(recurse=False):
            setattr(kept, key, source)
        for key, source in chain.named_buffers(recurse=False):
            getattr(kept, key).copy_(source)


def convert(
    model: nn.Module,
    dense: Mapping | str | None = None,
    conv: Mapping | str | None = None,
    *,
    init: Init | None = None,
) -> nn.Module:
    """A copy of ``model`` whose Linear and Conv layers use the given forward mappings.

    Every module of type exactly ``nn.Linear`` becomes a ``GenDense(forward=dense)``, and every
    ``nn.Conv1d``, ``nn.Conv2d`` or ``nn.Conv3d`` a ``GenConv(forward=conv)``, with the same
    weight, bias, stride, padding, dilation and groups, so the converted model computes the same
    outputs. Where the mapping needs a feedback matrix (``linear_asym_dx``,
    ``conv_linear_asym_dx``, ...) a fixed random one is drawn, with ``init`` (default
    Glorot-uniform) and the global RNG: seed it for reproducible feedback. Leave ``dense`` or
    ``conv`` at ``None`` to keep those layers as they are. ``model`` itself is not changed.
    Weights shared between modules (an output layer tied to the embedding) stay shared.

    A parametrized layer (``weight_norm``, ``spectral_norm``, ...) keeps its parametrizations:
    the new layer gets the same parametrization modules and exact copies of their tensors and
    state, under the same names. A pruned layer (``torch.nn.utils.prune``) keeps its masks.
    Other hooks on a replaced layer are not carried over (a warning names them).

    Every ``nn.MultiheadAttention`` (those inside ``nn.TransformerEncoderLayer`` and
    ``nn.TransformerDecoderLayer`` too) becomes a :class:`~bender.attention.GenAttention` whose
    query, key, value and output projections are ``GenDense(forward=dense)`` layers with the
    same weights. Other subclasses of ``nn.Linear``, and transposed, lazy or subclassed
    convolutions, are left as they are, with a warning that names them.

    Example: feedback alignment or, wrapped in :class:`~bender.dfa.DFA`, direct feedback
    alignment for a plain MLP::

        mlp = nn.Sequential(nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 10))
        fa = convert(mlp, dense="linear_asym_dx")
        dfa = DFA(convert(mlp, dense="linear_blocked_dx"), 10)
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"convert needs an nn.Module, got {type(model).__name__}")
    if dense is None and conv is None:
        raise ValueError(
            "convert needs a mapping for dense layers (dense=...), conv layers (conv=...) or both"
        )
    dense_map = resolve_mapping(dense) if dense is not None else None
    conv_map = resolve_mapping(conv) if conv is not None else None
    converted = _copy(model)
    replaced: dict[int, nn.Module] = {}  # a layer used twice stays one layer
    skipped, rebuilt_whole = [], []  # attention rebuilt as a whole: its parts are done
    for name, module in list(converted.named_modules(remove_duplicate=False)):
        if any(name.startswith(f"{whole}.") for whole in rebuilt_whole):
            continue
        try:
            if id(module) in replaced:
                new = replaced[id(module)]
            elif type(module) is nn.MultiheadAttention and dense_map is not None:
                new = GenAttention.from_module(module, dense_map, init)
                rebuilt_whole.append(name)
            elif _layer_class(module) is nn.Linear and dense_map is not None:
                new = _rebuilt(module, lambda m: _dense(m, dense_map, init))
            elif _layer_class(module) in CONVS and conv_map is not None:
                new = _rebuilt(module, lambda m: _conv(m, conv_map, init))
            else:  # a kind asked for, but not a type convert can rebuild: say so
                asked = (nn.Linear, dense_map), (_ConvNd, conv_map)
                if any(isinstance(module, kind) and m is not None for kind, m in asked):
                    skipped.append(f"{name} ({type(module).__name__})")
                continue
        except ValueError as err:  # say which layer could not be converted
            raise ValueError(f"{name or type(module).__name__}: {err}") from err
        if name == "":  # the model is itself one layer
            return new
        replaced[id(module)] = new
        parent_name, _, child = name.rpartition(".")
        setattr(converted.get_submodule(parent_name), child, new)
    for module in converted.modules():  # its nested-tensor path assumes torch's attention
        if isinstance(module, nn.TransformerEncoder):
            module.use_nested_tensor = False
    if skipped:
        warnings.warn(
            "convert left these layers as they are, since it rebuilds only exact nn.Linear and "
            f"nn.Conv1d/2d/3d (not subclasses, transposed or lazy ones): {', '.join(skipped)}",
            stacklevel=2,
        )
    if not replaced:
        wanted = " or ".join(
            f"{kind} layer to give {mapping_name(m)}"
            for kind, m in (("nn.Linear", dense_map), ("nn.Conv1d/2d/3d", conv_map))
            if m is not None
        )
        raise ValueError(f"convert found no {wanted} in {type(model).__name__}")
    return converted
