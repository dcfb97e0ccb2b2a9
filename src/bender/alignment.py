"""How close a bent rule is to backprop: angles between weights and feedback, and gradients.

Feedback alignment learns because the forward weights come to point roughly the way the fixed
feedback matrices do, so the error each layer receives approaches the one backprop would send
(Lillicrap et al. 2016, arXiv:1411.0247, Fig. 2); direct feedback alignment likewise (Nøkland
2016, arXiv:1609.01596, Fig. 3). Both measures here are angles in degrees between tensors seen
as flat vectors, ``∠(a, b) = arccos(⟨a, b⟩ / (‖a‖ ‖b‖))``: 0° is the same direction, 90° no
relation, 180° opposite.

- :func:`weight_alignment`: ``∠(W, B)`` for every layer with a feedback matrix (held, or
  computed from ``W`` by sign-concordant feedback).
- :func:`gradient_alignment`: ``∠(∂W bent, ∂W backprop)`` for every bent layer, on one batch.
- :class:`AlignmentRecorder`: a training callback that records both after every epoch.

A *bent layer* is a ``GenDense``/``GenConv`` whose mapping names its exact counterpart
(``register_mapping(exact=...)``: ``linear_asym_dx`` and ``linear_blocked_dx`` → ``linear``,
``radial_asym_dx`` → ``radial``, the conv ones → ``conv_linear``). Inside :func:`backprop` each
bent layer runs its counterpart and each :class:`~bender.dfa.DFA` runs its network plainly, so
the same weights give backprop's gradient.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize

from bender._modes import eval_mode
from bender._placement import inputs_for
from bender._random import from_current_random_state
from bender.dfa import DFA


def angle(a: Tensor, b: Tensor) -> float:
    """``arccos(⟨a, b⟩ / (‖a‖ ‖b‖))`` in degrees, in float64; NaN if either tensor is zero."""
    if a.shape != b.shape:
        raise ValueError(
            f"angle needs two tensors of one shape, got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    a, b = a.detach().flatten().double(), b.detach().flatten().double()
    norms = (a.norm() * b.norm()).item()
    if norms == 0.0:
        return math.nan
    cosine = min(1.0, max(-1.0, (a @ b).item() / norms))
    return math.degrees(math.acos(cosine))


def _mapping_says(layer: nn.Module, attribute: str):
    """What the layer's mapping was registered with (``None`` for modules without a mapping)."""
    return getattr(getattr(layer, "mapping", None), attribute, None)


def _named(model: nn.Module, keep: Callable[[nn.Module], bool], wanted: str) -> dict:
    layers = {name: m for name, m in model.named_modules() if keep(m)}
    if not layers:
        raise ValueError(
            f"no layer of this {type(model).__name__} {wanted}; expected GenDense/GenConv "
            "layers with a bent mapping such as linear_asym_dx (feedback alignment) or "
            "linear_blocked_dx (inside DFA)"
        )
    return layers


def _uses_feedback(m: nn.Module) -> bool:
    if _mapping_says(m, "feedback_matrix") is not None:
        return True
    return bool(_mapping_says(m, "needs_feedback")) and getattr(m, "feedback", None) is not None


def feedback_matrix(layer: nn.Module) -> Tensor:
    """The matrix ``B`` that takes ``W``'s place in the layer's ``∂x``: what its mapping's
    ``feedback_matrix`` computes (``sign(W)`` for ``linear_usf_dx``), else ``layer.feedback``."""
    rule = _mapping_says(layer, "feedback_matrix")
    return layer.feedback if rule is None else rule(layer)


def feedback_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The submodules (by name) whose mapping sends the error back through a feedback matrix
    that is fixed or follows the weight: one they hold (``linear_asym_dx``, ``linear_frsf_dx``)
    or one computed from the weight (``linear_usf_dx``). Not ``linear_brsf_dx``, whose matrix
    is drawn anew for each batch."""
    return _named(model, _uses_feedback, "uses a feedback matrix")


def bent_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The submodules (by name) that learn by a bent rule: those whose mapping has an exact
    counterpart, and every module with a ``weight`` inside a ``DFA`` (bender layers,
    ``nn.Linear``, the layers of a sub-network block)."""
    in_dfa = {
        id(layer)
        for dfa in model.modules()
        if isinstance(dfa, DFA)
        for layer in dfa.model.modules()
        if isinstance(getattr(layer, "weight", None), Tensor)
    }

    def is_bent(m: nn.Module) -> bool:
        return _mapping_says(m, "exact") is not None or id(m) in in_dfa

    return _named(model, is_bent, "learns by a bent rule")


def weight_alignment(model: nn.Module) -> dict[str, float]:
    """``∠(W, B)`` in degrees for each layer with a feedback matrix, keyed by layer name.

    For feedback alignment about 90° at initialisation (two independent random matrices), below
    90° once the weights have aligned with their feedback. Sign-concordant feedback starts well
    below 90° (``B`` shares ``W``'s signs): about 30° for ``sign(W)`` of a uniform ``W``.
    """
    return {name: angle(m.weight, feedback_matrix(m)) for name, m in feedback_layers(model).items()}


@contextmanager
def backprop(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block, ``model`` computes backprop's gradients with its current weights.

    Every bent layer runs its mapping's exact counterpart (``∂x = δ W`` instead of ``δ B``, or
    instead of nothing), and every ``DFA`` inside runs its network without direct feedback.
    Everything is put back when the block ends, also after
    an error. Layers without an exact counterpart (binary weights) keep their rule.
    """
    layers = {name: m for name, m in bent_layers(model).items() if hasattr(m, "mapping")}
    mappings = {name: m.mapping for name, m in layers.items()}
    wrappers = [m for m in model.modules() if isinstance(m, DFA)]
    try:
        for m in layers.values():
            m.mapping = _mapping_says(m, "exact") or m.mapping
        for dfa in wrappers:  # an instance attribute shadows DFA.forward until deleted
            dfa.forward = dfa.model.forward
        yield model
    finally:
        for name, m in layers.items():
            m.mapping = mappings[name]
        for dfa in wrappers:
            vars(dfa).pop("forward", None)


def gradient_alignment(
    model: nn.Module,
    x: Tensor,
    target: Tensor,
    loss: Callable[[Tensor, Tensor], Tensor] = F.cross_entropy,
) -> dict[str, float]:
    """``∠(∂W with the model's rule, ∂W with backprop)`` in degrees, on the batch ``(x, target)``.

    Keyed by layer name, for each bent layer. The network's last layer gets the true error, so
    its angle is 0; the layers below show how far the error they receive is from the true one.
    A layer that the rule gives no gradient at all (blocked layers above it, outside ``DFA``)
    gets NaN: the angle to a zero gradient is undefined.
    Two forward and backward passes, both starting from the caller's random state (the global
    generators and those the layers keep), so that dropout masks and stochastic layers draw the
    same in both; the random state, and the parameters' ``.grad``, are left as they were. The
    model runs in its current mode: in train mode batch norm updates its running statistics, as
    in any forward pass (the :class:`AlignmentRecorder` measures in eval mode). ``x`` goes to
    the model's device and dtype, and ``target`` with it, as in
    :func:`bender.training.evaluate`.
    """
    layers = bent_layers(model)
    x = inputs_for(model, x)
    target = target.to(x.device)
    with from_current_random_state(model, x.device):
        bent = _weight_gradients(model, layers, x, target, loss)
    with from_current_random_state(model, x.device), backprop(model):
        exact = _weight_gradients(model, layers, x, target, loss)
    return {name: angle(b, e) for name, b, e in zip(layers, bent, exact, strict=True)}


def _weight_gradients(
    model: nn.Module,
    layers: dict[str, nn.Module],
    x: Tensor,
    target: Tensor,
    loss: Callable[[Tensor, Tensor], Tensor],
) -> tuple[Tensor, ...]:
    """``∂loss/∂W`` of each layer for one forward and backward pass of ``model``.

    Taken with respect to the weight tensor each layer used in that pass, whatever made it:
    a parameter, a parametrization (``weight_norm``, ``spectral_norm``; computed once for the
    pass) or a pruning mask (``torch.nn.utils.prune`` sets ``weight`` before each forward). A
    layer that is not called, but whose weight is read (attention's ``out_proj``), counts with
    its ``weight`` as it is.
    """
    used: dict[int, Tensor] = {}

    def record(layer: nn.Module, args: tuple) -> None:  # runs after any pruning hook
        used[id(layer)] = layer.weight

    handles = [m.register_forward_pre_hook(record) for m in layers.values()]
    try:
        with parametrize.cached():
            out = model(x)
    finally:
        for handle in handles:
            handle.remove()
    # a layer whose weight is read without calling it (attention's out_proj): its parameter
    weights = [used.get(id(m), m.weight) for m in layers.values()]
    grads = torch.autograd.grad(loss(out, target), weights, allow_unused=True)
    unused = [
        name
        for (name, m), g in zip(layers.items(), grads, strict=True)
        if g is None and id(m) not in used
    ]
    if unused:
        raise ValueError(f"the forward pass did not use the weight of: {', '.join(unused)}")
    # a layer that ran but that no gradient reached (cut off by a blocked layer above it
    # outside DFA): its gradient is zero, and its angle NaN
    return tuple(
        torch.zeros_like(w) if g is None else g for w, g in zip(weights, grads, strict=True)
    )


class AlignmentRecorder:
    """Training callback: both alignments after every epoch, as one row of a table.

    Columns: ``epoch``, then ``weight_angle_<layer>`` (``∠(W, B)``, for layers with a feedback
    matrix) and ``grad_angle_<layer>`` (``∠(∂W bent, ∂W backprop)`` on the fixed batch
    ``(x, target)``), in degrees. Call it once with ``{"epoch": 0}`` before training for the
    starting point. Pass it in ``train(..., callbacks=[recorder])``; it changes nothing in the
    training: it measures in eval mode, like the epoch's metrics (no dropout, batch norm's
    running statistics used and not updated), and leaves the random state as it found it.
    """

    def __init__(
        self, x: Tensor, target: Tensor, loss: Callable[[Tensor, Tensor], Tensor] = F.cross_entropy
    ) -> None:
        self.x, self.target, self.loss = x, target, loss
        self.rows: list[dict[str, float]] = []

    def __call__(self, row: dict, model: nn.Module) -> None:
        angles: dict[str, float] = {"epoch": row["epoch"]}
        with eval_mode(model):  # also keeps a spectral_norm weight from a power step when read
            if any(_uses_feedback(m) for m in model.modules()):
                angles |= {f"weight_angle_{k}": a for k, a in weight_alignment(model).items()}
            grads = gradient_alignment(model, self.x, self.target, self.loss)
        angles |= {f"grad_angle_{k}": a for k, a in grads.items()}
        self.rows.append(angles)

    def table(self) -> pd.DataFrame:
        """The rows recorded so far."""
        return pd.DataFrame(self.rows)
