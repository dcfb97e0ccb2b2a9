"""Learning rules by name: what each does to a model, its reference and its training settings.

``apply_rule(model, "fa")`` returns a copy of ``model`` in which every ``nn.Linear``,
``nn.Conv1d/2d/3d`` and ``nn.MultiheadAttention`` follows the rule, with whatever the rule
needs around it: the :class:`~bender.dfa.DFA` wrapper for ``dfa``, a
:class:`~bender.mirrors.WeightMirror` step after every optimizer step for ``wm``, the weight
clipping of ``binary``. The steps ride on the returned model as ``model.after_step`` (a tuple
of functions ``fn(model)``), which :func:`bender.training.train` runs after every optimizer
step. ``register_rule`` adds a rule of your own; ``RULES`` holds them all.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn.modules.conv import _ConvNd, _ConvTransposeNd
from torch.nn.modules.lazy import LazyModuleMixin

from bender.constraints import ClipBinaryWeights
from bender.conversion import convert
from bender.dfa import DFA
from bender.layers import GenConv, GenDense
from bender.mirrors import WeightMirror
from bender.quantizers import QUANTIZERS

StepFn = Callable[[nn.Module], object]

# the Bender.jl tutorials' optimizer: every rule trains with it unless it has its own settings
TUTORIAL_TRAINING: dict[str, Any] = {"optimizer": "adam", "lr": 3e-4, "optimizer_options": {}}
# Kolen–Pollack needs weight decay, and W and B to get the same update: SGD with momentum, as in
# Akrout et al. 2019 (with Adam at the tutorials' 3e-4 it falls behind feedback alignment).
KP_TRAINING: dict[str, Any] = {
    "optimizer": "sgd",
    "lr": 0.05,
    "optimizer_options": {"momentum": 0.9, "weight_decay": 1e-3},
}


@dataclass(frozen=True)
class Rule:
    """A learning rule: the forward mappings it gives dense and conv layers (``None``: they
    stay exact), whether it wraps the model in :class:`~bender.dfa.DFA`, whether it binarizes
    weights and activations, the functions it runs after every optimizer step (made fresh for
    each model by ``after_step``), and the ``train`` settings it is usually run with."""

    name: str
    summary: str
    reference: str
    dense: str | None = None
    conv: str | None = None
    direct_feedback: bool = False
    binary: bool = False
    after_step: Callable[[], tuple[StepFn, ...]] = tuple
    training: dict[str, Any] = field(default_factory=lambda: dict(TUTORIAL_TRAINING))


def _clip() -> tuple[StepFn, ...]:
    return (ClipBinaryWeights(1.0),)


def _mirror() -> tuple[StepFn, ...]:
    return (WeightMirror(),)


RULES: dict[str, Rule] = {}


def register_rule(rule: Rule, *, overwrite: bool = False) -> Rule:
    """Add ``rule`` to :data:`RULES` under its name (refused if taken, unless ``overwrite``)."""
    if not isinstance(rule, Rule):
        raise TypeError(f"register_rule takes a bender.rules.Rule, got {type(rule).__name__}")
    if rule.name in RULES and not overwrite:
        raise ValueError(f"a rule called {rule.name!r} exists; pass overwrite=True to replace it")
    RULES[rule.name] = rule
    return rule


for _rule in (
    Rule("bp", "backpropagation, the exact gradient (the baseline)", "Rumelhart et al. 1986"),
    Rule(
        "fa",
        "feedback alignment: ∂x = δ B with a fixed random B",
        "Lillicrap et al. 2016, Nature Communications, arXiv:1411.0247",
        "linear_asym_dx",
        "conv_linear_asym_dx",
    ),
    Rule(
        "dfa",
        "direct feedback alignment: e Bᵢᵀ straight to what each layer reads",
        "Nøkland 2016, arXiv:1609.01596; Launay et al. 2020, arXiv:2006.12878",
        "linear_blocked_dx",
        "conv_linear_blocked_dx",
        direct_feedback=True,
    ),
    Rule(
        "usf",
        "uniform sign-concordant feedback: B = sign(W)",
        "Liao, Leibo, Poggio 2016, AAAI, arXiv:1510.05067",
        "linear_usf_dx",
        "conv_linear_usf_dx",
    ),
    Rule(
        "frsf",
        "fixed random-magnitude sign-concordant feedback: B = |V| ⊙ sign(W), V fixed",
        "Moskovitz, Litwin-Kumar, Abbott 2018, arXiv:1811.03567",
        "linear_frsf_dx",
        "conv_linear_frsf_dx",
    ),
    Rule(
        "brsf",
        "batchwise random-magnitude sign-concordant feedback: |M| ⊙ sign(W), M drawn per batch",
        "Moskovitz, Litwin-Kumar, Abbott 2018, arXiv:1811.03567",
        "linear_brsf_dx",
        "conv_linear_brsf_dx",
    ),
    Rule(
        "kp",
        "Kolen–Pollack: B learns with W's update and weight decay, and so aligns with W",
        "Akrout et al. 2019, NeurIPS, arXiv:1904.05391",
        "linear_kp_dx",
        "conv_linear_kp_dx",
        training=KP_TRAINING,
    ),
    Rule(
        "wm",
        "weight mirrors: feedback alignment whose B learns W from noise after every step",
        "Akrout et al. 2019, NeurIPS, arXiv:1904.05391",
        "linear_asym_dx",
        "conv_linear_asym_dx",
        after_step=_mirror,
    ),
    Rule(
        "binary",
        "binary weights and activations: ste_sign kernels, ste_sign inputs but the first "
        "layer's, latent weights clipped to ±1",
        "Courbariaux et al. 2016, arXiv:1602.02830; Larq's practice",
        "linear",
        "conv_linear",
        binary=True,
        after_step=_clip,
    ),
):
    register_rule(_rule)


def get_rule(rule: str | Rule) -> Rule:
    """The rule called ``rule`` (a :class:`Rule` is returned as it is); an error listing the
    known names otherwise."""
    if isinstance(rule, Rule):
        return rule
    if rule not in RULES:
        raise ValueError(f"unknown rule {rule!r}; choose one of {', '.join(RULES)}")
    return RULES[rule]


def _unbendable(model: nn.Module) -> list[str]:
    """``path (type)`` of every module with weights that bender cannot make follow a rule:
    recurrent layers, transposed or lazy convolutions, bilinear layers, and subclasses of
    ``nn.Linear`` and the convolutions (other than the attention's own output projection)."""
    found = []
    attention_parts = {
        id(m.out_proj) for m in model.modules() if isinstance(m, nn.MultiheadAttention)
    }
    for path, module in model.named_modules():
        if isinstance(module, (GenDense, GenConv)) or id(module) in attention_parts:
            continue
        kind = type(module)
        if (
            isinstance(module, (nn.RNNBase, nn.Bilinear, _ConvTransposeNd, LazyModuleMixin))
            or (isinstance(module, nn.Linear) and kind is not nn.Linear)
            or (isinstance(module, _ConvNd) and kind not in (nn.Conv1d, nn.Conv2d, nn.Conv3d))
        ):
            found.append(f"{path or 'the model'} ({kind.__name__})")
    return found


def one_bit_quantizers() -> list[str]:
    """The names in :data:`bender.quantizers.QUANTIZERS` whose output takes two values."""
    return [name for name, make in QUANTIZERS.items() if getattr(make(), "bits", None) == 1]


def check_one_bit_quantizer(quantizer: str, owner: str) -> None:
    """Raise ``ValueError`` unless ``quantizer`` is one of :func:`one_bit_quantizers`; the
    message says that ``owner`` (a binary rule, a binary recipe) takes one."""
    known = one_bit_quantizers()
    if quantizer not in known:
        raise ValueError(
            f"{owner} takes a 1-bit quantizer, one of {', '.join(known)}; got {quantizer!r}"
        )


def _binarize(model: nn.Module, quantizer: str) -> None:
    """``quantizer`` as every bender layer's kernel quantizer, and as the input quantizer of
    every one but the first (in module order), which reads the real-valued image."""
    layers = [m for m in model.modules() if isinstance(m, (GenDense, GenConv))]
    for i, layer in enumerate(layers):
        layer.set_quantizers(quantizer if i else None, quantizer)


def apply_rule(
    model: nn.Module,
    rule: str | Rule,
    *,
    num_outputs: int | None = None,
    input_shape: Sequence[int] | None = None,
    input_dtype: torch.dtype | None = None,
    blocks: Sequence[str] | None = None,
    quantizer: str | None = None,
) -> nn.Module:
    """A copy of ``model`` that learns by ``rule`` (a name of :data:`RULES`, or a
    :class:`Rule`); ``model`` itself is not changed.

    Every ``nn.Linear``, ``nn.Conv1d/2d/3d`` and ``nn.MultiheadAttention`` gets the rule's
    mappings (:func:`~bender.conversion.convert`); ``bp`` keeps them exact. For ``dfa`` the
    copy is wrapped in :class:`~bender.dfa.DFA` (``num_outputs``, ``input_shape``,
    ``input_dtype`` and ``blocks`` go to it); with ``blocks``, the layers inside the blocks
    keep exact gradients (backprop inside a block, DFA between blocks, as Launay et al. 2020).
    The rule's steps after every optimizer step are in ``result.after_step``, which ``train``
    runs. ``quantizer`` names the 1-bit quantizer of a binary rule (default ``ste_sign``; see
    :func:`one_bit_quantizers`). A layer the rule cannot take (an LSTM, a transposed
    convolution, a subclass of ``nn.Linear``) is refused with its path; embeddings and
    normalization layers keep their exact gradients, as in every rule's papers.
    """
    rule = get_rule(rule)
    if not isinstance(model, nn.Module):
        raise TypeError(f"apply_rule needs an nn.Module, got {type(model).__name__}")
    if blocks is not None and not rule.direct_feedback:
        raise ValueError(f"blocks is for direct feedback rules (dfa); {rule.name} takes none")
    if quantizer is not None and not rule.binary:
        raise ValueError(f"quantizer is for binary rules; {rule.name} quantizes nothing")
    quantizer = quantizer or "ste_sign"
    if rule.binary:
        check_one_bit_quantizer(quantizer, "a binary rule")
    unbendable = [] if rule.dense is None and rule.conv is None else _unbendable(model)
    if unbendable:
        raise ValueError(
            f"rule {rule.name} cannot be applied to {', '.join(unbendable)}: bender makes "
            "nn.Linear, nn.Conv1d/2d/3d and nn.MultiheadAttention follow a rule; build the "
            "model from those, or use rule bp"
        )
    exact_inside = rule.direct_feedback and blocks is not None
    if (rule.dense is None and rule.conv is None) or exact_inside:
        bent = copy.deepcopy(model)
    else:
        bent = _converted(model, rule)
    if rule.binary:
        _binarize(bent, quantizer)
    if rule.direct_feedback:
        bent = DFA(
            bent, num_outputs, blocks=blocks, input_shape=input_shape, input_dtype=input_dtype
        )
    bent.after_step = rule.after_step()
    return bent


def _converted(model: nn.Module, rule: Rule) -> nn.Module:
    """``convert`` with the rule's mappings, for the layer kinds the model has."""
    has_dense = any(isinstance(m, (nn.Linear, nn.MultiheadAttention)) for m in model.modules())
    has_conv = any(type(m) in (nn.Conv1d, nn.Conv2d, nn.Conv3d) for m in model.modules())
    if not (has_dense or has_conv):
        return copy.deepcopy(model)  # already bender layers, or nothing to bend
    return convert(
        model,
        dense=rule.dense if has_dense else None,
        conv=rule.conv if has_conv else None,
    )
