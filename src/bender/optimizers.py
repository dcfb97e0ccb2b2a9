"""Optimizers for binary weights: Bop, and what sets it up beside an optimizer for the rest.

Bop (Helwegen, Widdicombe, Geiger, Liu, Cheng, Nusselder, "Latent weights do not exist:
rethinking binarized neural network optimization", NeurIPS 2019, arXiv:1906.02107) trains
binary weights directly, without latent real weights: a weight flips its sign when the
exponential moving average of its gradient is strong enough and points the same way as the
weight (a step of gradient descent would push it through zero).

In bender a binary weight is the latent weight of a layer with a 1-bit kernel quantizer
(``GenDense(..., kernel_quantizer="ste_sign")``) held at ``±1``: :func:`binarize_latent` sets the
latent weights to their signs, after which ``ste_sign`` passes the gradient through
(``|w| = 1 ≤ clip_value``) and Bop flips them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import Tensor, nn

from bender.constraints import binary_layers, kernel_quantized_binary_layers
from bender.functional._checks import check_positive_number


def binary_weights(model: nn.Module) -> list[Tensor]:
    """The latent weights of ``model``'s layers with a 1-bit kernel quantizer, in module order."""
    return [layer.latent_weight() for layer in kernel_quantized_binary_layers(model).values()]


@torch.no_grad()
def binarize_latent(model: nn.Module) -> list[Tensor]:
    """Set every latent weight of a 1-bit kernel-quantized layer to its sign (``0 → +1``), the
    form Bop trains; returns those weights. A clear error if ``model`` has none."""
    weights = binary_weights(model)
    if not weights:
        raise ValueError(
            f"this {type(model).__name__} has no layer with a 1-bit kernel quantizer "
            '(GenDense(..., kernel_quantizer="ste_sign")), so there are no binary weights'
        )
    for w in weights:
        w.copy_(torch.where(w >= 0, 1.0, -1.0).to(w.dtype))
    return weights


class Bop(torch.optim.Optimizer):
    """Bop: flip a binary weight when its gradient's moving average is strong and agrees with it.

    For each weight ``w ∈ {−1, +1}`` with gradient ``g``, at every step::

        m ← (1 − γ) m + γ g
        w ← −w   where  w · m > τ      (|m| > τ and sign(m) = sign(w))

    ``m`` starts at zero. ``γ`` (``gamma``, the adaptivity rate) sets how far back the average
    reaches; ``τ`` (``threshold``) how strong it must be. Every parameter given must hold only
    ``±1`` (see :func:`binarize_latent`); anything else is refused, naming it. After each step,
    ``last_flips`` is the number of weights flipped and ``last_total`` the number of weights.

    Args:
        params: the binary weights, or parameter groups of them (each group may set its own
            ``threshold`` and ``gamma``).
        threshold: ``τ > 0`` (default ``1e-8``, Larq's).
        gamma: ``0 < γ ≤ 1`` (default ``1e-4``, Larq's).
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict],
        threshold: float = 1e-8,
        gamma: float = 1e-4,
    ) -> None:
        check_positive_number("threshold", threshold)
        if check_positive_number("gamma", gamma) > 1:
            raise ValueError(f"gamma must be in (0, 1], got {gamma!r}")
        super().__init__(params, {"threshold": threshold, "gamma": gamma})
        for g, group in enumerate(self.param_groups):
            for i, p in enumerate(group["params"]):
                if not bool(((p == 1) | (p == -1)).all()):
                    found = p.detach().flatten()[((p != 1) & (p != -1)).flatten()][0].item()
                    raise ValueError(
                        f"Bop trains binary weights holding only ±1; parameter {i} of group {g} "
                        f"(shape {tuple(p.shape)}) holds {found!r}. Give it the latent weights "
                        "of layers with a 1-bit kernel quantizer after "
                        "bender.optimizers.binarize_latent(model), and the other parameters "
                        "to another optimizer (bender.optimizers.bop_with)"
                    )
        self.last_flips, self.last_total = 0, 0

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        flips = total = 0
        for group in self.param_groups:
            gamma, threshold = group["gamma"], group["threshold"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "momentum" not in state:
                    state["momentum"] = torch.zeros_like(p)
                m = state["momentum"]
                m.mul_(1 - gamma).add_(p.grad, alpha=gamma)
                flip = (p * m).gt_(threshold)  # 1.0 where w·m > τ, else 0.0
                p.mul_(1 - 2 * flip)
                flips += int(flip.sum())
                total += p.numel()
        self.last_flips, self.last_total = flips, total
        return loss


class OptimizerPair:
    """Bop for the binary weights and another optimizer for the other parameters, used as one
    optimizer (``zero_grad``, ``step``, ``state_dict``, ``load_state_dict``, ``param_groups``):
    what :func:`bop_with` builds for :func:`bender.training.train`. Larq's ``CaseOptimizer``
    plays this part there. Learning-rate schedulers need a ``torch.optim.Optimizer``: give one
    to the other optimizer directly if you need one."""

    def __init__(self, bop: Bop, other: torch.optim.Optimizer) -> None:
        self.bop, self.other = bop, other

    @property
    def param_groups(self) -> list[dict]:
        return self.bop.param_groups + self.other.param_groups

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.bop.zero_grad(set_to_none)
        self.other.zero_grad(set_to_none)

    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = self.other.step(closure)
        self.bop.step()
        return loss

    def state_dict(self) -> dict:
        return {"bop": self.bop.state_dict(), "other": self.other.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.bop.load_state_dict(state["bop"])
        self.other.load_state_dict(state["other"])


def bop_with(
    model: nn.Module,
    other: Callable[..., torch.optim.Optimizer] = torch.optim.Adam,
    threshold: float = 1e-8,
    gamma: float = 1e-4,
) -> Callable[..., OptimizerPair]:
    """An optimizer factory for ``train(..., optimizer=bop_with(model))``: Bop (``threshold``,
    ``gamma``) for the binary weights of ``model`` (set to their signs here, see
    :func:`binarize_latent`), ``other`` (default Adam, with ``train``'s ``lr`` and
    ``optimizer_options``) for every other parameter."""
    check_positive_number("threshold", threshold)
    check_positive_number("gamma", gamma)
    binary = {id(w) for w in binarize_latent(model)}

    def make(params: Iterable[Tensor], lr: float, **options) -> OptimizerPair:
        params = list(params)
        bop = Bop([p for p in params if id(p) in binary], threshold, gamma)
        return OptimizerPair(
            bop, other([p for p in params if id(p) not in binary], lr=lr, **options)
        )

    make.__qualname__ = f"bop_with({getattr(other, '__name__', other)!s})"
    return make


class FlipRatio:
    """After every epoch, the share of binary weights whose sign changed during it, added to the
    epoch's row as ``flip_ratio`` and to the list ``ratios`` (a ``train`` callback:
    ``callbacks=[FlipRatio(model)]``; ``train``'s returned table keeps its own columns).

    Larq's ``FlipRatio`` metric, per epoch: a ratio near 0 says the binary weights have settled.
    The signs are those the forward pass uses (the quantized weights of layers with a 1-bit
    kernel quantizer, ``sign(W)`` for ``linear_binary_weights`` layers), read when the callback
    is made and after every epoch.
    """

    def __init__(self, model: nn.Module) -> None:
        self.ratios: list[float] = []
        self.signs = self._signs(model)
        if not self.signs:
            raise ValueError(
                f"FlipRatio counts sign flips of binary weights, but this {type(model).__name__} "
                "has no binary layer"
            )

    @staticmethod
    @torch.no_grad()
    def _signs(model: nn.Module) -> list[Tensor]:
        signs = []
        for layer in binary_layers(model).values():
            latent = layer.latent_weight() if hasattr(layer, "latent_weight") else layer.weight
            signs.append(latent.detach() >= 0)
        return signs

    def __call__(self, row: dict, model: nn.Module) -> None:
        now = self._signs(model)
        changed = sum(int((a != b).sum()) for a, b in zip(self.signs, now, strict=True))
        row["flip_ratio"] = changed / sum(s.numel() for s in now)
        self.ratios.append(row["flip_ratio"])
        self.signs = now
