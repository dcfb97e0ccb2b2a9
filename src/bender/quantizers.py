"""Quantizers as modules, and by name: for ``GenDense``/``GenConv``'s ``input_quantizer`` and
``kernel_quantizer``, for ``nn.Sequential``, and for the command line.

Each module calls its function in :mod:`bender.functional.quantizers`, whose docstring states
the forward, the pseudo-gradient and the reference. ``bits`` says how many bits one quantized
value takes (``None``: not a low-bit quantizer), for :func:`bender.summary.summary`.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from bender.functional import quantizers as q


class Quantizer(nn.Module):
    """Base of bender's quantizer modules: ``bits`` per quantized value (1 for ``±1``).

    :meth:`parts` gives an elementwise quantizer's forward and pseudo-gradient, which
    ``GenDense`` fuses into its product; ``None`` for the others (a scale or threshold taken
    from the whole tensor)."""

    bits: int = 1

    def parts(self) -> q.Parts | None:
        return None


class SteSign(Quantizer):
    """``±1`` (``0 → +1``), pseudo-gradient ``1{|x| ≤ clip_value}``; see
    :func:`bender.functional.quantizers.ste_sign`."""

    def __init__(self, clip_value: float | None = 1.0) -> None:
        super().__init__()
        q.check_clip(clip_value)
        self.clip_value = clip_value

    def forward(self, x: Tensor) -> Tensor:
        return q.ste_sign(x, self.clip_value)

    def parts(self) -> q.Parts | None:
        return q.ste_sign_parts(self.clip_value)

    def extra_repr(self) -> str:
        return f"clip_value={self.clip_value}"


class ApproxSign(Quantizer):
    """``±1``, pseudo-gradient ``max(0, 2 − 2|x|)`` (Bi-Real Net); see
    :func:`bender.functional.quantizers.approx_sign`."""

    def forward(self, x: Tensor) -> Tensor:
        return q.approx_sign(x)

    def parts(self) -> q.Parts:
        return q.approx_sign_parts()


class SwishSign(Quantizer):
    """``±1``, the SignSwish pseudo-gradient with ``beta`` (BNN+); see
    :func:`bender.functional.quantizers.swish_sign`."""

    def __init__(self, beta: float = 5.0) -> None:
        super().__init__()
        q.check_beta(beta)
        self.beta = beta

    def forward(self, x: Tensor) -> Tensor:
        return q.swish_sign(x, self.beta)

    def parts(self) -> q.Parts:
        return q.swish_sign_parts(self.beta)

    def extra_repr(self) -> str:
        return f"beta={self.beta}"


class MagnitudeAwareSign(SteSign):
    """``α · sign(x)`` with ``α`` the mean ``|x|`` of each output channel; see
    :func:`bender.functional.quantizers.magnitude_aware_sign`."""

    def forward(self, x: Tensor) -> Tensor:
        return q.magnitude_aware_sign(x, self.clip_value)

    def parts(self) -> None:  # its scale is taken from the whole tensor
        return None


class SteTern(Quantizer):
    """``{−1, 0, +1}`` by threshold ``Δ`` (fixed, or TWN's ``0.7 · mean|x|``), optionally scaled
    per output channel; see :func:`bender.functional.quantizers.ste_tern`."""

    bits = 2

    def __init__(
        self,
        threshold_value: float = 0.05,
        ternary_weight_networks: bool = False,
        clip_value: float | None = 1.0,
        scale: bool = False,
    ) -> None:
        super().__init__()
        self.threshold_value, self.ternary_weight_networks = (
            threshold_value,
            ternary_weight_networks,
        )
        self.clip_value, self.scale = clip_value, scale
        q.check_threshold(threshold_value)
        q.check_clip(clip_value)

    def forward(self, x: Tensor) -> Tensor:
        return q.ste_tern(
            x, self.threshold_value, self.ternary_weight_networks, self.clip_value, self.scale
        )

    def extra_repr(self) -> str:
        threshold = "0.7·mean|x|" if self.ternary_weight_networks else self.threshold_value
        return f"threshold={threshold}, clip_value={self.clip_value}, scale={self.scale}"


class SteHeaviside(SteSign):
    """``{0, 1}`` (``x > 0``), pseudo-gradient ``1{|x| ≤ clip_value}``; see
    :func:`bender.functional.quantizers.ste_heaviside`."""

    def forward(self, x: Tensor) -> Tensor:
        return q.ste_heaviside(x, self.clip_value)

    def parts(self) -> q.Parts:
        return q.ste_heaviside_parts(self.clip_value)


class DoReFa(Quantizer):
    """DoReFa's ``k_bit`` quantization of activations or weights; see
    :func:`bender.functional.quantizers.dorefa`."""

    def __init__(self, k_bit: int = 2, mode: str = "activations") -> None:
        super().__init__()
        self.bits = q.check_bits(k_bit)
        q.check_mode(mode)
        self.k_bit, self.mode = k_bit, mode

    def forward(self, x: Tensor) -> Tensor:
        return q.dorefa(x, self.k_bit, self.mode)

    def parts(self) -> q.Parts | None:
        return q.dorefa_activation_parts(self.k_bit) if self.mode == "activations" else None

    def extra_repr(self) -> str:
        return f"k_bit={self.k_bit}, mode={self.mode}"


QUANTIZERS: dict[str, type[Quantizer]] = {
    "ste_sign": SteSign,
    "approx_sign": ApproxSign,
    "swish_sign": SwishSign,
    "magnitude_aware_sign": MagnitudeAwareSign,
    "ste_tern": SteTern,
    "ste_heaviside": SteHeaviside,
    "dorefa": DoReFa,
}

QuantizerLike = str | Callable[[Tensor], Tensor] | None


def resolve_quantizer(quantizer: QuantizerLike, role: str = "quantizer") -> nn.Module | None:
    """A quantizer module from a name in :data:`QUANTIZERS` (built with its defaults), a module
    or function (kept as given), or ``None``; a clear error otherwise, listing the names."""
    if quantizer is None or isinstance(quantizer, nn.Module):
        return quantizer
    if isinstance(quantizer, str):
        if quantizer not in QUANTIZERS:
            raise ValueError(
                f"unknown {role} {quantizer!r}; known quantizers: {', '.join(QUANTIZERS)}"
            )
        return QUANTIZERS[quantizer]()
    if isinstance(quantizer, type) or not callable(quantizer):
        raise TypeError(
            f"{role} must be a quantizer's name ({', '.join(QUANTIZERS)}), a module or a "
            f"function of a tensor, got {quantizer!r}"
        )
    return _Function(quantizer)


class _Function(nn.Module):
    """A quantizer given as a plain function, held as a module."""

    bits = None

    def __init__(self, fn: Callable[[Tensor], Tensor]) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: Tensor) -> Tensor:
        return self.fn(x)

    def extra_repr(self) -> str:
        return getattr(self.fn, "__qualname__", repr(self.fn))
