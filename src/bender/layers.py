"""Generalised layers: a weight, an optional fixed feedback matrix, extra slots, and a mapping.

``layer(x) = activation(mapping(layer, x))``. The mapping decides the backward pass (see
:mod:`bender.mappings`); the layer only holds the tensors and checks shapes.

Mapping from Bender.jl: ``W`` → ``weight`` (``out×in`` here, as Flux), ``V`` → ``feedback``
(Bender.jl stores ``V`` with ``Wᵀ``'s shape because Julia is column-major and feature-first; here
it has ``weight``'s shape, as the feedback-alignment mappings need), ``b`` → ``bias``,
``α β μ λ`` → ``alpha beta mu lambda_``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from bender.functional._apply import _is_compiling, _transforms_active
from bender.functional._checks import check_positive_int
from bender.functional.conv import named_padding, pad_input
from bender.functional.quantized_linear import quantized_linear
from bender.mappings import MAPPINGS, Mapping, conv_linear, linear, mapping_name, resolve_mapping
from bender.quantizers import QuantizerLike, resolve_quantizer

Init = Callable[[Tensor], Tensor]
Activation = Callable[[Tensor], Tensor]
Feedback = bool | Tensor | tuple[int, ...] | None
EXTRA_SLOTS = ("alpha", "beta", "mu", "lambda_")
PADDING_MODES = ("zeros", "reflect", "replicate", "circular")


def _shape(t: Tensor) -> str:
    return "×".join(str(s) for s in t.shape)


class _GenLayer(nn.Module):
    """What GenDense and GenConv share: feedback buffer, extra slots, activation, mapping."""

    weight: nn.Parameter
    feedback: Tensor | None
    bias: nn.Parameter | None
    default_mapping: Mapping
    layer_kind: str  # which mappings fit: those registered with layer=None or this kind

    def _setup(
        self,
        weight_shape: tuple[int, ...],
        activation: Activation | None,
        forward: Mapping | str,
        feedback: Feedback,
        bias: bool,
        init: Init | None,
        extras: dict[str, float | Tensor | None],
        generator: torch.Generator | None,
        factory: dict,
    ) -> None:
        if init is not None and not callable(init):
            raise TypeError(
                f"init must fill a tensor in place, like nn.init.xavier_uniform_; got {init!r}"
            )
        self.init = init or nn.init.xavier_uniform_
        self.weight = nn.Parameter(torch.empty(weight_shape, **factory))
        self.bias = nn.Parameter(torch.empty(weight_shape[0], **factory)) if bias else None
        self.register_buffer("feedback", self._make_feedback(feedback))
        self._draws_feedback = feedback is True or isinstance(feedback, (tuple, list))
        self._extra_values = {}  # as given, for reset_parameters
        for name, value in extras.items():
            param = None
            if value is not None:
                param = nn.Parameter(torch.as_tensor(value, **factory).clone())
                self._extra_values[name] = (
                    value.detach().clone() if torch.is_tensor(value) else value
                )
            self.register_parameter(name, param)
        self._draw()
        if activation is not None and not callable(activation):
            raise TypeError(f"activation must be callable or None, got {activation!r}")
        if isinstance(activation, type):  # nn.ReLU(x) would build a module, not apply one
            name = activation.__name__
            raise TypeError(
                f"activation must be a module or a function, got the class {name}; pass an "
                f"instance such as {name}(), or a function such as torch.relu"
            )
        self.activation = activation
        self.mapping = resolve_mapping(forward)
        kind = getattr(self.mapping, "layer", None)
        if kind not in (None, self.layer_kind):
            fits = sorted(n for n, m in MAPPINGS.items() if getattr(m, "layer", None) != kind)
            raise ValueError(
                f"forward mapping {mapping_name(self.mapping)} is for {kind} layers, not "
                f"{type(self).__name__}; choose one of {', '.join(fits)}"
            )
        self.generator = generator
        if getattr(self.mapping, "needs_feedback", False):
            name = mapping_name(self.mapping)
            if self.feedback is None:
                raise ValueError(
                    f"forward mapping {name} needs a feedback matrix; pass feedback=True (fixed "
                    f"random, same init as the weight) or a tensor of shape {tuple(weight_shape)}"
                )
            if self.feedback.shape != self.weight.shape:
                raise ValueError(
                    f"forward mapping {name} needs a feedback matrix of the weight's shape "
                    f"{tuple(weight_shape)}, got {tuple(self.feedback.shape)}"
                )
        if getattr(self.mapping, "learned_feedback", False):  # trained: a parameter, not a buffer
            self.feedback = nn.Parameter(self.feedback.detach().clone())  # not the caller's

    def reset_parameters(self) -> None:
        """Initialise again, as when the layer was built: the weight drawn with ``init``, the
        bias zero, a random feedback matrix (``feedback=True`` or a shape) drawn again with
        ``init`` (a tensor given as ``feedback`` is kept), the extra slots set to the values
        given. As ``nn.Linear.reset_parameters``: to re-initialise a network between runs, or to
        fill a layer built on the meta device after ``to_empty``. Uses the global RNG.
        """
        self._draw()
        with torch.no_grad():
            for name, value in self._extra_values.items():
                if torch.is_tensor(value) and value.is_meta:
                    raise ValueError(
                        f"{name} was given as a tensor on the meta device, which holds no "
                        "values to reset it to; give it as a number or a tensor with data"
                    )
                getattr(self, name).copy_(torch.as_tensor(value))

    def set_quantizers(self, input_quantizer: QuantizerLike, kernel_quantizer: QuantizerLike):
        """Hold the quantizers: the input one is applied to every input before the mapping; the
        kernel one becomes a parametrization of ``weight`` (``torch.nn.utils.parametrize``), so
        that every mapping, your own included, reads the quantized weight as ``layer.weight``
        while the optimizer trains the latent ``layer.parametrizations.weight.original``. The
        weight's current value becomes the latent weight. A layer quantizes its kernel once:
        a second kernel quantizer is refused."""
        if getattr(self, "kernel_quantizer", None) is not None:
            raise ValueError(
                f"this layer's kernel is already quantized by {self.kernel_quantizer!r}; build "
                "the layer anew to quantize it otherwise"
            )
        self.input_quantizer = resolve_quantizer(input_quantizer, "input_quantizer")
        self.kernel_quantizer = resolve_quantizer(kernel_quantizer, "kernel_quantizer")
        if self.kernel_quantizer is not None:
            if getattr(self.mapping, "binary_weights", False):
                raise ValueError(
                    f"forward mapping {mapping_name(self.mapping)} binarizes the weight itself; "
                    "give a kernel_quantizer with a mapping that reads the weight as it is "
                    "(linear, linear_asym_dx, conv_linear, ...)"
                )
            parametrize.register_parametrization(self, "weight", self.kernel_quantizer)
        # whether the quantizers' classes say what they compute elementwise (Quantizer.parts),
        # so that a dense layer may fuse them into its product (GenDense._apply_mapping)
        self._fusable = self.kernel_quantizer is not None and all(
            _defines_parts(quantizer)
            for quantizer in (self.input_quantizer, self.kernel_quantizer)
            if quantizer is not None
        )

    def latent_weight(self) -> Tensor:
        """The weight the optimizer trains: ``weight`` itself, or, under a kernel quantizer,
        the latent real weight that it quantizes."""
        if getattr(self, "kernel_quantizer", None) is not None:
            return self.parametrizations.weight.original
        return self.weight

    @torch.no_grad()
    def _draw(self) -> None:
        """The weight (and a random feedback matrix) drawn with ``init``; the bias zero."""
        self.init(self.latent_weight())
        if self.bias is not None:
            self.bias.zero_()
        if self._draws_feedback:
            self.init(self.feedback)

    def _make_feedback(self, feedback: Feedback) -> Tensor | None:
        """``None``, the tensor given, or an empty buffer of the shape given (``True``: the
        weight's) that :meth:`reset_parameters` draws."""
        w = self.weight
        if feedback is None or feedback is False:
            return None
        if feedback is True:
            feedback = tuple(w.shape)
        if isinstance(feedback, Tensor):
            if not feedback.is_meta and not torch.isfinite(feedback).all():
                raise ValueError("the feedback matrix given holds NaN or infinite values")
            return feedback.detach().to(dtype=w.dtype, device=w.device)
        if not isinstance(feedback, (tuple, list)):
            raise TypeError(
                "feedback must be a bool, a shape (tuple of ints) or a Tensor, got "
                f"{type(feedback).__name__}"
            )
        if not feedback or not all(
            isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in feedback
        ):
            raise ValueError(f"feedback shape must be a tuple of positive ints, got {feedback!r}")
        return torch.empty(tuple(feedback), dtype=w.dtype, device=w.device)

    def _apply_mapping(self, x: Tensor) -> Tensor:
        if self.input_quantizer is not None:
            x = self.input_quantizer(x)
        y = self.mapping(self, x)
        return y if self.activation is None else self.activation(y)

    def _describe(self, sizes: str) -> str:
        parts = [sizes]
        if self.activation is not None:
            act = self.activation
            parts.append(repr(act) if isinstance(act, nn.Module) else mapping_name(act))
        if self.mapping is not self.default_mapping:
            parts.append(f"forward={mapping_name(self.mapping)}")
        if getattr(self, "input_quantizer", None) is not None:
            parts.append(f"input_quantizer={self.input_quantizer!r}")
        if parametrize.is_parametrized(self, "weight"):  # reading it could change its state
            chain = self.parametrizations.weight
            parts.append("weight parametrized by " + " then ".join(type(p).__name__ for p in chain))
        else:
            parts.append(f"weight {_shape(self.weight)}")
        if self.feedback is not None:
            learned = "learned " if isinstance(self.feedback, nn.Parameter) else ""
            parts.append(f"{learned}feedback {_shape(self.feedback)}")
        if self.bias is None:
            parts.append("bias=False")
        extras = [n for n in EXTRA_SLOTS if getattr(self, n) is not None]
        if extras:
            parts.append("extra " + " ".join(extras))
        return f"{type(self).__name__}({', '.join(parts)})"


class GenDense(_GenLayer):
    """Dense layer ``activation(forward(layer, x))``, by default ``x Wᵀ + b`` with backprop.

    Args:
        in_features, out_features: sizes; ``weight`` is ``out_features × in_features``.
        activation: callable or ``nn.Module`` applied to the pre-activation (``None``: identity).
        forward: a mapping ``(layer, x) -> pre-activation`` or its registered name.
        feedback: ``True`` makes a fixed random feedback matrix of the weight's shape with the
            weight's init; a tensor is used as given. Stored as a buffer, or, for a mapping
            that learns it (``linear_kp_dx``), as a parameter holding a copy. Mappings registered
            with ``needs_feedback`` (``linear_asym_dx``, ...) need the weight's shape; your own
            mapping may use another, drawn with ``init`` when given as a shape tuple. Bender.jl's
            ``GenDense(in=>out, in_asym=>out_asym)`` is ``feedback=(in_asym, out_asym)`` here
            (its tutorials' ``784=>128, 128=>784`` is the weight's shape: ``feedback=True``).
        bias: whether to learn a bias (initialised to zero).
        init: in-place initialiser for weight and feedback (default Glorot-uniform as Flux).
        alpha, beta, mu, lambda_: optional extra trainable slots for custom mappings.
        generator: RNG for stochastic mappings (``linear_stoc_binary_weights``).

    Shapes: input ``(*, in_features)`` → output ``(*, out_features)``, like ``nn.Linear``;
    leading dims are flattened into the batch for the mapping and restored afterwards.
    """

    default_mapping = staticmethod(linear)
    layer_kind = "dense"

    def __init__(
        self,
        in_features: int,
        out_features: int,
        activation: Activation | None = None,
        *,
        forward: Mapping | str = linear,
        feedback: Feedback = False,
        bias: bool = True,
        init: Init | None = None,
        alpha: float | Tensor | None = None,
        beta: float | Tensor | None = None,
        mu: float | Tensor | None = None,
        lambda_: float | Tensor | None = None,
        generator: torch.Generator | None = None,
        input_quantizer: QuantizerLike = None,
        kernel_quantizer: QuantizerLike = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        check_positive_int("in_features", in_features)
        check_positive_int("out_features", out_features)
        self.in_features = in_features
        self.out_features = out_features
        extras = {"alpha": alpha, "beta": beta, "mu": mu, "lambda_": lambda_}
        self._setup(
            (out_features, in_features),
            activation,
            forward,
            feedback,
            bias,
            init,
            extras,
            generator,
            {"device": device, "dtype": dtype},
        )
        self.set_quantizers(input_quantizer, kernel_quantizer)

    def _apply_mapping(self, x: Tensor) -> Tensor:
        if self._fusable and self._fuses(x):
            inputs = self.input_quantizer
            input_parts = None if inputs is None else inputs.parts()
            kernel_parts = self.kernel_quantizer.parts()
            if kernel_parts is not None and (inputs is None or input_parts is not None):
                latent = self.parametrizations.weight.original
                y = quantized_linear(x, latent, self.bias, input_parts, kernel_parts)
                return y if self.activation is None else self.activation(y)
        return super()._apply_mapping(x)

    def _fuses(self, x: Tensor) -> bool:
        """Whether this layer, whose quantizers are elementwise, runs its product as one
        :class:`~bender.functional.quantized_linear.QuantizedLinear`: with the exact mapping
        ``linear``, the kernel quantizer the weight's only parametrization, in eager mode without
        autocast. Otherwise the quantizers and the mapping run one after the other, to the same
        numbers."""
        return (
            self.mapping is linear
            and len(self.parametrizations.weight) == 1
            and not (_is_compiling() or _transforms_active())
            and not torch.is_autocast_enabled(x.device.type)
        )

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 0 or x.shape[-1] != self.in_features:
            raise ValueError(
                f"GenDense({self.in_features} → {self.out_features}) expects inputs of shape "
                f"(*, {self.in_features}), got {tuple(x.shape)}"
            )
        if x.dim() == 2:
            return self._apply_mapping(x)
        y = self._apply_mapping(x.reshape(-1, self.in_features))
        return y.reshape(*x.shape[:-1], y.shape[-1])

    def __repr__(self) -> str:
        return self._describe(f"{self.in_features} → {self.out_features}")


def _defines_parts(quantizer: nn.Module) -> bool:
    """Whether ``Quantizer.parts`` is defined by the class that defines the quantizer's
    ``forward`` (or one below it), so that the parts say what the forward does: not for a
    subclass that changes ``forward`` alone, nor for a module without ``parts``."""
    for cls in type(quantizer).__mro__:
        if "parts" in vars(cls):
            return True
        if "forward" in vars(cls):
            return False
    return False


def _tuple(name: str, value: int | Sequence[int], dims: int, minimum: int = 1) -> tuple[int, ...]:
    """``value`` as ``dims`` ints, each at least ``minimum``; a clear error otherwise."""
    kind = "positive ints" if minimum == 1 else f"ints ≥ {minimum}"
    t = (value,) * dims if isinstance(value, int) else value
    ok = isinstance(t, Sequence) and not isinstance(t, str) and len(t) == dims
    if ok:
        t = tuple(t)
        ok = all(isinstance(v, int) and not isinstance(v, bool) and v >= minimum for v in t)
    if not ok:
        raise ValueError(f"{name} must be an int or a tuple of {dims} {kind}, got {value!r}")
    return t


class GenConv(_GenLayer):
    """N-d convolution layer (1-, 2- or 3-d) ``activation(forward(layer, x))``.

    ``kernel_size`` is an int (a 2-d square kernel) or a tuple whose length (1, 2 or 3) sets the
    dimensionality. ``weight`` is ``out_channels × in_channels/groups × kernel_size``; stride,
    padding and dilation are ints or tuples, as in ``nn.Conv2d``, and padding may also be
    ``"valid"`` (none) or ``"same"`` (stride 1; where the total ``dilation·(k−1)`` is odd, the
    extra row goes after, as in PyTorch). ``padding_mode`` is ``"zeros"`` (default) or, as in
    ``nn.Conv2d``, ``"reflect"``, ``"replicate"`` or ``"circular"``. Symmetric zero padding is
    done by the mapping's convolution (``padding``). Otherwise the layer pads its input with
    :func:`torch.nn.functional.pad` (the ``(before, after)`` widths of each spatial dim are kept
    in ``input_padding``) and the mapping's convolution pads nothing (``padding`` is 0), so
    ``∂x`` of the padded input flows back through the pad.
    ``feedback``, ``init``, extra slots and ``generator`` as in :class:`GenDense`. Input
    ``(N, C_in, *spatial)`` or unbatched ``(C_in, *spatial)``.
    """

    default_mapping = staticmethod(conv_linear)
    layer_kind = "conv"

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Sequence[int],
        activation: Activation | None = None,
        *,
        stride: int | Sequence[int] = 1,
        padding: str | int | Sequence[int] = 0,
        dilation: int | Sequence[int] = 1,
        groups: int = 1,
        padding_mode: str = "zeros",
        forward: Mapping | str = conv_linear,
        feedback: Feedback = False,
        bias: bool = True,
        init: Init | None = None,
        alpha: float | Tensor | None = None,
        beta: float | Tensor | None = None,
        mu: float | Tensor | None = None,
        lambda_: float | Tensor | None = None,
        generator: torch.Generator | None = None,
        input_quantizer: QuantizerLike = None,
        kernel_quantizer: QuantizerLike = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        check_positive_int("in_channels", in_channels)
        check_positive_int("out_channels", out_channels)
        check_positive_int("groups", groups)
        kernel = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
        if isinstance(kernel, str) or not isinstance(kernel, Sequence):
            raise ValueError(
                f"kernel_size must be an int or a tuple of 1 to 3 ints, got {kernel_size!r}"
            )
        if not 1 <= len(kernel) <= 3:
            raise ValueError(
                f"kernel_size must describe a 1-, 2- or 3-d kernel, got {kernel_size!r} "
                f"({len(kernel)} dims)"
            )
        dims = len(kernel)
        if in_channels % groups or out_channels % groups:
            raise ValueError(
                f"in_channels ({in_channels}) and out_channels ({out_channels}) must both be "
                f"divisible by groups ({groups})"
            )
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size = _tuple("kernel_size", kernel_size, dims)
        self.stride = _tuple("stride", stride, dims)
        self.dilation = _tuple("dilation", dilation, dims)
        if padding_mode not in PADDING_MODES:
            raise ValueError(
                f"padding_mode must be one of {', '.join(PADDING_MODES)}, got {padding_mode!r}"
            )
        self.padding_mode = padding_mode
        widths = self._resolve_padding(padding, dims)
        self.input_padding: tuple[tuple[int, int], ...] | None
        if padding_mode == "zeros" and all(before == after for before, after in widths):
            self.input_padding = None  # the convolution pads
            self.padding = tuple(before for before, _ in widths)
        else:  # the layer pads its input itself; the convolution pads nothing
            self.input_padding = widths
            self.padding = (0,) * dims
        extras = {"alpha": alpha, "beta": beta, "mu": mu, "lambda_": lambda_}
        shape = (out_channels, in_channels // groups, *self.kernel_size)
        self._setup(
            shape,
            activation,
            forward,
            feedback,
            bias,
            init,
            extras,
            generator,
            {"device": device, "dtype": dtype},
        )
        self.set_quantizers(input_quantizer, kernel_quantizer)

    def _resolve_padding(
        self, padding: str | int | Sequence[int], dims: int
    ) -> tuple[tuple[int, int], ...]:
        """``(before, after)`` widths per spatial dim; ``"valid"`` is none, ``"same"`` keeps the
        input size, with the extra one after where ``dilation·(k−1)`` is odd (as PyTorch)."""
        if isinstance(padding, str):
            return named_padding(padding, self.kernel_size, self.stride, self.dilation)
        return tuple((p, p) for p in _tuple("padding", padding, dims, minimum=0))

    def forward(self, x: Tensor) -> Tensor:
        dims = len(self.kernel_size)
        batched = x.dim() == dims + 2
        if not (batched or x.dim() == dims + 1) or x.shape[-dims - 1] != self.in_channels:
            raise ValueError(
                f"GenConv with a {dims}-d kernel and {self.in_channels} input channels expects "
                f"inputs of shape (N, {self.in_channels}, {dims} spatial dims) or unbatched "
                f"({self.in_channels}, {dims} spatial dims), got {tuple(x.shape)}"
            )
        x = x if batched else x.unsqueeze(0)
        if self.input_padding is not None:
            mode = "constant" if self.padding_mode == "zeros" else self.padding_mode
            x = pad_input(x, self.input_padding, mode)
        y = self._apply_mapping(x)
        return y if batched else y.squeeze(0)

    def __repr__(self) -> str:
        k = "×".join(map(str, self.kernel_size))
        sizes = f"{self.in_channels} → {self.out_channels}, kernel {k}"
        widths = self.input_padding or tuple((p, p) for p in self.padding)
        padding = (  # ints where both sides are the same, else the (before, after) pairs
            tuple(before for before, _ in widths)
            if all(before == after for before, after in widths)
            else widths
        )
        if any(s != 1 for s in self.stride):
            sizes += f", stride={self.stride}"
        if any(w != 0 for pair in widths for w in pair):
            sizes += f", padding={padding}"
        if any(d != 1 for d in self.dilation):
            sizes += f", dilation={self.dilation}"
        if self.padding_mode != "zeros":
            sizes += f", padding_mode={self.padding_mode!r}"
        if self.groups != 1:
            sizes += f", groups={self.groups}"
        return self._describe(sizes)
