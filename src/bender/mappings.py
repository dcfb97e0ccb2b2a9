"""Forward mappings: plain functions ``mapping(layer, x) -> pre-activation``.

A layer (:class:`~bender.layers.GenDense`, :class:`~bender.layers.GenConv`) calls its mapping
with itself and a batched input; the mapping reads what it needs from the layer (``weight``,
``feedback``, ``bias``, the extra slots ``alpha beta mu lambda_``, conv settings) and returns
the pre-activation. Writing a new learning rule means writing one such function.

Dense mappings get ``x`` as ``N×in``; conv mappings get ``N×C×spatial``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bender.functional.conv import bent_conv, conv
from bender.functional.dense import bent_linear
from bender.functional.radial import bent_radial
from bender.functional.sign_concordant import random_magnitudes, sign_concordant
from bender.functional.ste import sign_ste, stoc_sign_ste

Mapping = Callable[[nn.Module, Tensor], Tensor]
FeedbackRule = Callable[[nn.Module], Tensor]

MAPPINGS: dict[str, Mapping] = {}
LAYER_KINDS = ("dense", "conv", None)
BUILT_IN: frozenset[str] = frozenset()  # set at the end of this module: bender's own mappings


def register_mapping(
    fn: Mapping | None = None,
    *,
    needs_feedback: bool = False,
    exact: Mapping | str | None = None,
    name: str = "",
    layer: str | None = None,
    feedback_matrix: FeedbackRule | None = None,
    binary_weights: bool = False,
    learned_feedback: bool = False,
):
    """Register ``fn`` under ``name`` (default: its ``__name__``) so layers accept the name.

    ``needs_feedback=True`` makes layers refuse this mapping at construction when they have no
    feedback matrix. ``exact`` is the mapping (or its registered name) with the same forward and
    backprop's gradient (``linear`` for ``linear_asym_dx``); :mod:`bender.alignment` swaps it in
    to compare the two rules. ``layer="dense"`` or ``"conv"`` makes the other kind of layer
    refuse the mapping at construction (``None``: any layer). ``feedback_matrix``, a function
    ``layer -> B``, names the matrix that takes ``W``'s place in ``∂x`` when that is not
    ``layer.feedback`` as stored (``sign(W)`` for ``linear_usf_dx``), so that
    :func:`bender.alignment.weight_alignment` measures ``∠(W, B)`` with it.
    ``binary_weights=True`` says that the forward pass uses ``sign(W)``, one bit per weight, for
    :func:`bender.summary.summary` to count. ``learned_feedback=True`` (with ``needs_feedback``)
    makes layers hold their feedback matrix as a parameter, which the optimizer updates with
    the gradient the mapping gives it (``linear_kp_dx``), instead of a fixed buffer. Usable bare
    (``@register_mapping``) or with arguments. Registering a name again replaces your earlier
    function (a notebook cell run twice); bender's own mappings, their names and the function
    objects, cannot be replaced or registered again.
    """
    if layer not in LAYER_KINDS:
        raise ValueError(f"layer must be one of {LAYER_KINDS}, got {layer!r}")
    if fn is not None and not callable(fn):
        hint = f" (for a name, write register_mapping(name={fn!r}))" if isinstance(fn, str) else ""
        raise TypeError(f"register_mapping registers a function (layer, x) -> y, got {fn!r}{hint}")
    if isinstance(exact, str):
        exact = resolve_mapping(exact)
    if exact is not None and not callable(exact):
        raise TypeError(f"exact must be a mapping, its registered name, or None, got {exact!r}")
    if learned_feedback and not needs_feedback:
        raise ValueError(
            "learned_feedback=True makes the layer's feedback matrix a parameter; it needs "
            "needs_feedback=True, so that layers without one are refused"
        )
    if feedback_matrix is not None and not callable(feedback_matrix):
        raise TypeError(
            f"feedback_matrix must be a function layer -> B, or None, got {feedback_matrix!r}"
        )

    def wrap(f: Mapping) -> Mapping:
        key = name or f.__name__
        if key in BUILT_IN:
            raise ValueError(
                f"{key!r} is one of bender's own mappings; register yours under another "
                "name (name=...) so that layers built by name keep their rule"
            )
        if any(f is MAPPINGS[built_in] for built_in in BUILT_IN):
            raise ValueError(
                f"{mapping_name(f)} is bender's own mapping, already registered; registering "
                "it again would change its settings for every layer that uses it. Register a "
                f"function that calls it: def my_rule(layer, x): return {mapping_name(f)}"
                "(layer, x)"
            )
        f.needs_feedback = needs_feedback  # type: ignore[attr-defined]
        f.exact = exact  # type: ignore[attr-defined]
        f.layer = layer  # type: ignore[attr-defined]
        f.feedback_matrix = feedback_matrix  # type: ignore[attr-defined]
        f.binary_weights = binary_weights  # type: ignore[attr-defined]
        f.learned_feedback = learned_feedback  # type: ignore[attr-defined]
        MAPPINGS[key] = f
        return f

    return wrap if fn is None else wrap(fn)


def resolve_mapping(forward: Mapping | str) -> Mapping:
    """Return the mapping for a callable or a registered name; raise a clear error otherwise."""
    if isinstance(forward, str):
        if forward not in MAPPINGS:
            known = ", ".join(sorted(MAPPINGS))
            raise ValueError(f"unknown forward mapping {forward!r}; known mappings: {known}")
        return MAPPINGS[forward]
    if not callable(forward):
        raise TypeError(
            "forward must be a callable (layer, x) -> pre-activation or the name of a "
            f"registered mapping, got {type(forward).__name__}: {forward!r}"
        )
    return forward


def mapping_name(forward: Mapping) -> str:
    """The name a mapping prints under."""
    return getattr(forward, "__name__", repr(forward))


def feedback_of(layer: nn.Module, mapping: str) -> Tensor:
    """The layer's feedback matrix; a clear error instead of an ``AttributeError`` on ``None``."""
    feedback = getattr(layer, "feedback", None)
    if feedback is None:
        raise ValueError(
            f"forward mapping {mapping} needs a feedback matrix, but this "
            f"{type(layer).__name__} has none; create the layer with feedback=True "
            "(random fixed matrix) or feedback=<tensor of the weight's shape>"
        )
    return feedback


def _conv_settings(layer: nn.Module) -> dict[str, Any]:
    return {
        "stride": layer.stride,
        "padding": layer.padding,
        "dilation": layer.dilation,
        "groups": layer.groups,
    }


@register_mapping(layer="dense")
def linear(layer: nn.Module, x: Tensor) -> Tensor:
    """``x Wᵀ + b`` with the exact gradient (ordinary backprop)."""
    return F.linear(x, layer.weight, layer.bias)


@register_mapping(needs_feedback=True, exact=linear, layer="dense")
def linear_asym_dx(layer: nn.Module, x: Tensor) -> Tensor:
    """``x Wᵀ + b`` with feedback alignment: ``∂x = δ B``, ``∂W = δᵀ x``, ``∂b = Σ δ``."""
    return bent_linear(x, layer.weight, feedback_of(layer, "linear_asym_dx"), layer.bias)


@register_mapping(needs_feedback=True, exact=linear, layer="dense", learned_feedback=True)
def linear_kp_dx(layer: nn.Module, x: Tensor) -> Tensor:
    """``x Wᵀ + b`` with Kolen–Pollack learning: ``∂x = δ B``, ``∂W = ∂B = δᵀ x``, ``∂b = Σ δ``;
    the layer's ``feedback`` is a parameter, and weight decay brings it to ``W``."""
    feedback = feedback_of(layer, "linear_kp_dx")
    return bent_linear(x, layer.weight, feedback, layer.bias, feedback_learns=True)


@register_mapping(exact=linear, layer="dense")
def linear_blocked_dx(layer: nn.Module, x: Tensor) -> Tensor:
    """``x Wᵀ + b``; ``W`` and ``b`` learn, no gradient reaches ``x`` (for DFA)."""
    return bent_linear(x, layer.weight, None, layer.bias)


@register_mapping(layer="dense")
def radial(layer: nn.Module, x: Tensor) -> Tensor:
    """``−‖x_n − W_j‖² + b_j`` (an RBF-like layer) with the exact gradient."""
    return bent_radial(x, layer.weight, layer.weight, layer.bias)


@register_mapping(needs_feedback=True, exact=radial, layer="dense")
def radial_asym_dx(layer: nn.Module, x: Tensor) -> Tensor:
    """``−‖x_n − W_j‖² + b_j`` with ``B`` in place of ``W`` in the backward pass."""
    return bent_radial(x, layer.weight, feedback_of(layer, "radial_asym_dx"), layer.bias)


@register_mapping(layer="dense", binary_weights=True)
def linear_binary_weights(layer: nn.Module, x: Tensor) -> Tensor:
    """``x sign(W)ᵀ + b``; the latent real ``W`` learns through the straight-through estimator."""
    return F.linear(x, sign_ste(layer.weight), layer.bias)


@register_mapping(layer="dense", binary_weights=True)
def linear_stoc_binary_weights(layer: nn.Module, x: Tensor, generator: Any | None = None) -> Tensor:
    """``x Sᵀ + b`` with ``S = stoc_sign_ste(W)`` drawn anew each call; STE backward.

    ``generator`` defaults to the layer's ``generator`` attribute (``None``: the global RNG).
    """
    generator = generator if generator is not None else getattr(layer, "generator", None)
    return F.linear(x, stoc_sign_ste(layer.weight, generator), layer.bias)


@register_mapping(layer="conv")
def conv_linear(layer: nn.Module, x: Tensor) -> Tensor:
    """Convolution with ``W`` plus bias, exact gradient."""
    return conv(x, layer.weight, layer.bias, **_conv_settings(layer))


@register_mapping(needs_feedback=True, exact=conv_linear, layer="conv")
def conv_linear_asym_dx(layer: nn.Module, x: Tensor) -> Tensor:
    """Convolution plus bias with feedback alignment: ``∂x`` through the feedback kernel ``B``."""
    feedback = feedback_of(layer, "conv_linear_asym_dx")
    return bent_conv(x, layer.weight, feedback, layer.bias, **_conv_settings(layer))


@register_mapping(needs_feedback=True, exact=conv_linear, layer="conv", learned_feedback=True)
def conv_linear_kp_dx(layer: nn.Module, x: Tensor) -> Tensor:
    """Convolution plus bias with Kolen–Pollack learning: ``∂x`` through the feedback kernel
    ``B``, a parameter with ``∂B = ∂W``; weight decay brings it to ``W``."""
    feedback = feedback_of(layer, "conv_linear_kp_dx")
    settings = _conv_settings(layer)
    return bent_conv(x, layer.weight, feedback, layer.bias, **settings, feedback_learns=True)


@register_mapping(exact=conv_linear, layer="conv")
def conv_linear_blocked_dx(layer: nn.Module, x: Tensor) -> Tensor:
    """Convolution plus bias; kernel and bias learn, no gradient reaches ``x`` (for DFA)."""
    return bent_conv(x, layer.weight, None, layer.bias, **_conv_settings(layer))


@register_mapping(layer="conv", binary_weights=True)
def conv_binary_weights(layer: nn.Module, x: Tensor) -> Tensor:
    """Convolution with ``sign(W)`` plus bias; latent ``W`` learns through the STE."""
    return conv(x, sign_ste(layer.weight), layer.bias, **_conv_settings(layer))


Magnitudes = Callable[[nn.Module, Tensor], Tensor | None]


def _uniform(layer: nn.Module, weight: Tensor) -> None:
    return None


def _fixed(layer: nn.Module, weight: Tensor) -> Tensor:
    return feedback_of(layer, mapping_name(layer.mapping))


def _drawn(layer: nn.Module, weight: Tensor) -> Tensor:
    return random_magnitudes(weight, getattr(layer, "generator", None))


def _with_sign_feedback(
    layer: nn.Module, x: Tensor, magnitudes: Magnitudes
) -> tuple[Tensor, Tensor]:
    """The weight (read once) and the feedback ``|M| ⊙ sign(W)`` for ``∂x``; the weight itself
    as feedback when no ``∂x`` will be computed (the first layer, or grad mode off), since the
    feedback then changes nothing: none is made, no magnitudes are drawn."""
    weight = layer.weight
    if x.requires_grad and torch.is_grad_enabled():
        return weight, sign_concordant(weight, magnitudes(layer, weight))
    return weight, weight


def _usf(layer: nn.Module) -> Tensor:
    return sign_concordant(layer.weight)


def _frsf(layer: nn.Module) -> Tensor:
    return sign_concordant(layer.weight, _fixed(layer, layer.weight))


@register_mapping(exact=linear, layer="dense", feedback_matrix=_usf)
def linear_usf_dx(layer: nn.Module, x: Tensor) -> Tensor:
    """``x Wᵀ + b`` with uniform sign-concordant feedback (uSF): ``∂x = δ sign(W)``,
    ``∂W = δᵀ x``."""
    weight, feedback = _with_sign_feedback(layer, x, _uniform)
    return bent_linear(x, weight, feedback, layer.bias)


@register_mapping(needs_feedback=True, exact=linear, layer="dense", feedback_matrix=_frsf)
def linear_frsf_dx(layer: nn.Module, x: Tensor) -> Tensor:
    """``x Wᵀ + b`` with fixed-random-magnitude sign-concordant feedback (frSF):
    ``∂x = δ (|V| ⊙ sign(W))``, ``V`` the layer's fixed ``feedback``; ``∂W = δᵀ x``."""
    weight, feedback = _with_sign_feedback(layer, x, _fixed)
    return bent_linear(x, weight, feedback, layer.bias)


@register_mapping(exact=linear, layer="dense")
def linear_brsf_dx(layer: nn.Module, x: Tensor) -> Tensor:
    """``x Wᵀ + b`` with batchwise-random-magnitude sign-concordant feedback (brSF):
    ``∂x = δ (|M| ⊙ sign(W))``, ``M`` Glorot-uniform drawn anew at each call from
    ``layer.generator`` (``None``: the global generator); ``∂W = δᵀ x``."""
    weight, feedback = _with_sign_feedback(layer, x, _drawn)
    return bent_linear(x, weight, feedback, layer.bias)


@register_mapping(exact=conv_linear, layer="conv", feedback_matrix=_usf)
def conv_linear_usf_dx(layer: nn.Module, x: Tensor) -> Tensor:
    """Convolution plus bias; ``∂x`` through the kernel ``sign(W)`` (uSF), ``∂W`` exact."""
    weight, feedback = _with_sign_feedback(layer, x, _uniform)
    return bent_conv(x, weight, feedback, layer.bias, **_conv_settings(layer))


@register_mapping(needs_feedback=True, exact=conv_linear, layer="conv", feedback_matrix=_frsf)
def conv_linear_frsf_dx(layer: nn.Module, x: Tensor) -> Tensor:
    """Convolution plus bias; ``∂x`` through ``|V| ⊙ sign(W)`` (frSF), ``∂W`` exact."""
    weight, feedback = _with_sign_feedback(layer, x, _fixed)
    return bent_conv(x, weight, feedback, layer.bias, **_conv_settings(layer))


@register_mapping(exact=conv_linear, layer="conv")
def conv_linear_brsf_dx(layer: nn.Module, x: Tensor) -> Tensor:
    """Convolution plus bias; ``∂x`` through ``|M| ⊙ sign(W)``, ``M`` Glorot-uniform drawn anew
    at each call from ``layer.generator`` (brSF); ``∂W`` exact."""
    weight, feedback = _with_sign_feedback(layer, x, _drawn)
    return bent_conv(x, weight, feedback, layer.bias, **_conv_settings(layer))


BUILT_IN = frozenset(MAPPINGS)
