"""Weight mirrors: feedback matrices that learn the forward weights from noise.

Akrout, Wilson, Humphreys, Lillicrap, Tweed, *Deep learning without weight transport*, NeurIPS
2019 (arXiv:1904.05391), Sec. 4. Between training steps the network switches to *mirror mode*:
the neurons that feed a layer fire zero-mean noise ``ξ`` of variance ``σ²``, the layer passes
it through its weights, ``y = ξ Wᵀ``, and the feedback synapses learn Hebbian-ly from the
product of the two, with decay (their eq. 7 plus weight decay)::

    B ← (1 − λ) B + η yᵀ ξ / N

``E[ξᵀ ξ] / N = σ² I``, so ``E[yᵀ ξ / N] = σ² W``: ``B`` moves towards ``B* = (η σ² / λ) W``,
the direction of ``W`` without ``W`` being sent anywhere. With the defaults ``σ = 1`` and
``η = λ``, ``B*`` is ``W`` itself and the update is an exponential moving average of unbiased
estimates of ``W``. Unlike Kolen–Pollack learning (``linear_kp_dx``), the feedback learns
without the training data and its gradients.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from bender.functional._checks import check_positive_int, check_positive_number
from bender.mappings import conv_linear, linear


def mirror_signal(weight: Tensor, noise: Tensor, groups: int = 1) -> Tensor:
    """``yᵀ ξ / N`` with ``y = ξ Wᵀ``: the Hebbian product of mirror mode, shaped like ``W``.

    Dense ``W`` (``out × in``): ``noise`` is ``N × in``. Conv ``W`` (``out × in/groups ×
    kernel``): ``noise`` is ``N × in × kernel``, noise at the kernel's taps, so that each
    sample is one output position of the convolution (its dilation, padding and stride play no
    part); output channel ``o`` sees the input channels of its group only.
    Expected value ``σ² W`` for i.i.d. zero-mean noise of variance ``σ²``.
    """
    return _hebbian(weight, noise, groups) / noise.shape[0]


def _hebbian(weight: Tensor, noise: Tensor, groups: int) -> Tensor:
    """``yᵀ ξ``, summed over the ``N`` samples (see :func:`mirror_signal`)."""
    if weight.dim() < 2:
        raise ValueError(f"weight must be out × in (× kernel), got shape {tuple(weight.shape)}")
    out, taps = weight.shape[0], weight[0].numel()  # taps: the inputs of one output
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1 or out % groups:
        raise ValueError(
            f"groups must be a positive int that divides {out} outputs, got {groups!r}"
        )
    expected = (weight.shape[1] * groups, *weight.shape[2:])
    if noise.dim() != weight.dim() or tuple(noise.shape[1:]) != expected:
        raise ValueError(
            f"noise for a weight of shape {tuple(weight.shape)} with groups={groups} must be "
            f"N × {' × '.join(map(str, expected))}, got {tuple(noise.shape)}"
        )
    n = noise.shape[0]
    w = weight.reshape(groups, out // groups, taps)  # per group: a dense out/g × taps matrix
    xi = noise.reshape(n, groups, taps).transpose(0, 1)  # groups × N × taps
    y = xi @ w.mT  # groups × N × out/g
    return (y.mT @ xi).reshape(weight.shape)


def mirrored_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The submodules (by name) whose fixed ``feedback`` stands in for ``W`` in a linear
    layer's ``∂x``: mappings registered with ``needs_feedback``, the exact counterpart
    ``linear`` or ``conv_linear`` (``linear_asym_dx``, ``conv_linear_asym_dx``), no
    ``feedback_matrix`` rule (sign-concordant feedback) and no learned feedback (Kolen–Pollack)."""
    layers = {}
    for name, module in model.named_modules():
        mapping = getattr(module, "mapping", None)
        if (
            getattr(mapping, "needs_feedback", False)
            and getattr(mapping, "exact", None) in (linear, conv_linear)
            and getattr(mapping, "feedback_matrix", None) is None
            and not getattr(mapping, "learned_feedback", False)
            and isinstance(getattr(module, "feedback", None), Tensor)
        ):
            layers[name] = module
    return layers


class WeightMirror:
    """One step of mirror mode for every feedback-alignment layer of a model.

    Call it after every optimizer step, ``train(..., after_step=[WeightMirror()])``. For each
    layer of :func:`mirrored_layers`, draw noise ``ξ`` (``batch_size`` samples, standard
    deviation ``noise_std``, from the global random generator, which ``train`` seeds and its
    checkpoints keep) and update the feedback in place::

        B ← (1 − weight_decay) B + lr · mirror_signal(W, ξ)

    ``B`` tends to ``(lr · noise_std² / weight_decay) W``; the defaults make that ``W``. The
    estimate's noise shrinks with ``batch_size / weight_decay`` samples: after ``1/weight_decay``
    steps the angle ``∠(W, B)`` is roughly ``atan(√(weight_decay · fan_in / (2 batch_size)))``
    for a fixed ``W``.

    ``layers`` names the layers to mirror (their names in ``model.named_modules()``, as
    :func:`~bender.alignment.weight_alignment` prints them); by default every one of
    :func:`mirrored_layers`. A first layer's ``B`` carries no gradient, since nothing is sent
    below it: ``layers=["1", "2"]`` spares ``fa-mlp``'s 784-input layer, most of the cost.
    """

    def __init__(
        self,
        lr: float = 0.01,
        weight_decay: float = 0.01,
        noise_std: float = 1.0,
        batch_size: int = 64,
        layers: Sequence[str] | None = None,
    ) -> None:
        self.lr = check_positive_number("lr", lr)
        self.weight_decay = check_positive_number("weight_decay", weight_decay)
        if self.weight_decay >= 1:
            raise ValueError(
                f"weight_decay must be below 1 (B keeps 1 − weight_decay of itself each step), "
                f"got {weight_decay!r}"
            )
        self.noise_std = check_positive_number("noise_std", noise_std)
        check_positive_int("batch_size", batch_size)
        self.batch_size = batch_size
        if layers is not None and (
            isinstance(layers, str) or not all(isinstance(name, str) for name in layers)
        ):
            raise TypeError(f"layers must be a list of layer names, got {layers!r}")
        self.layers = None if layers is None else tuple(dict.fromkeys(layers))  # each once
        if self.layers == ():
            raise ValueError("layers is empty: name at least one layer to mirror, or pass None")

    def __call__(self, model: nn.Module) -> None:
        layers = mirrored_layers(model)
        if not layers:
            raise ValueError(
                f"WeightMirror teaches fixed feedback matrices, but no layer of this "
                f"{type(model).__name__} has one; expected GenDense/GenConv layers with "
                "linear_asym_dx or conv_linear_asym_dx (Kolen–Pollack layers learn theirs from "
                "the gradient, sign-concordant ones compute theirs from W)"
            )
        if self.layers is not None:
            unknown = [name for name in self.layers if name not in layers]
            if unknown:
                raise ValueError(
                    f"WeightMirror(layers=...) names {', '.join(map(repr, unknown))}, not a "
                    f"layer with a fixed feedback matrix; this {type(model).__name__} has "
                    f"{', '.join(map(repr, layers))}"
                )
            layers = {name: layers[name] for name in self.layers}
        with torch.no_grad():
            for layer in layers.values():
                weight, feedback = layer.weight, layer.feedback
                groups = getattr(layer, "groups", 1)
                shape = (self.batch_size, weight.shape[1] * groups, *weight.shape[2:])
                noise = torch.randn(shape, dtype=weight.dtype, device=weight.device)
                product = _hebbian(weight, noise.mul_(self.noise_std), groups)
                feedback.mul_(1 - self.weight_decay)
                feedback.add_(product.to(feedback.dtype), alpha=self.lr / self.batch_size)

    def __repr__(self) -> str:
        return (
            f"WeightMirror(lr={self.lr:g}, weight_decay={self.weight_decay:g}, "
            f"noise_std={self.noise_std:g}, batch_size={self.batch_size}"
            + ("" if self.layers is None else f", layers={list(self.layers)!r}")
            + ")"
        )
