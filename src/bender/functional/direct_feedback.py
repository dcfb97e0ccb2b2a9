"""Direct feedback alignment: the output error sent straight to every hidden layer.

With ``e = ∂L/∂y`` the error at the network output ``y`` (``N×C``) and ``B_i`` a fixed random
matrix of shape ``d_i × C`` per hidden output ``h_i`` (``d_i`` features per sample, feature maps
flattened), the backward pass gives ``h_i`` the gradient ``e B_iᵀ`` instead of the one
backpropagated from the layer above. With layers that pass no gradient to their input
(``linear_blocked_dx``), hidden layer ``i``'s local error is ``(e B_iᵀ) ⊙ σ'(a_i)``
(Nøkland, "Direct feedback alignment provides learning in deep neural networks", NeurIPS 2016,
arXiv:1609.01596).

An output with more leading dims, ``(*, C)`` (a dense net applied to every position of a
sequence), is treated row by row: each hidden output is then ``(*, …)`` with the same leading
dims, and each of its rows gets its own row's ``e B_iᵀ``.

A ``signal`` function changes what the hidden outputs receive to ``signal(e) B_iᵀ``, while the
output keeps ``e``: ``torch.sign`` gives sign-of-error DFA (sDFA: Frenkel, Lefebvre, Bol,
"Learning without feedback", Frontiers in Neuroscience 2021, arXiv:1909.01311), one bit per
output and sample instead of a real number.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from bender.functional._apply import direct_apply

Signal = Callable[[Tensor], Tensor]  # what hidden layers receive, from the output error


class DirectFeedback(torch.autograd.Function):
    """Identity on ``output``; backward: ``e`` to ``output``, ``s B_iᵀ`` to each ``hidden[i]``,
    with ``s = e``, or ``signal(e)`` for a ``signal`` function. When ``delivered`` is a list, the
    backward also puts the parts ``s B_iᵀ`` in it.

    ``feedback`` is all ``B_i`` stacked row-wise (``Σ d_i × C``), so every projection comes from
    one matrix product ``s · feedbackᵀ``, split afterwards. ``feedback`` gets no gradient.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(
        output: Tensor,
        feedback: Tensor,
        sizes: Sequence[int],
        signal: Signal | None,
        delivered: list | None,
        *hidden,
    ) -> Tensor:
        return output.view_as(output)

    @staticmethod
    def setup_context(ctx, inputs: tuple, result: Tensor) -> None:
        output, feedback, sizes, signal, delivered, *hidden = inputs
        ctx.save_for_backward(feedback)
        ctx.sizes = sizes
        ctx.signal = signal
        ctx.delivered = delivered
        # projections come out N×d_i; remember the shapes of feature maps and sequences
        flat = output.dim() == 2 and all(h.dim() == 2 for h in hidden)
        ctx.shapes = None if flat else [h.shape for h in hidden]

    @staticmethod
    def backward(ctx, error: Tensor):
        # Kept lean: this Python backward runs once per step. ``mm`` writes e·Bᵀ row-major
        # (N×Σd) whatever B's strides, so each part is a row-strided view, a layout the hidden
        # activations' backward handles at full speed (transposed, column-major parts made
        # relu's backward about 6× slower).
        (feedback,) = ctx.saved_tensors
        if error.dtype != feedback.dtype:  # an output computed under autocast
            feedback = feedback.to(error.dtype)
        error_2d = error if error.dim() == 2 else error.reshape(-1, feedback.shape[1])
        source = error_2d if ctx.signal is None else _signal_of(ctx.signal, error_2d)
        parts = source.mm(feedback.t()).split(ctx.sizes, dim=1)
        if ctx.shapes is not None:
            parts = [p.reshape(shape) for p, shape in zip(parts, ctx.shapes, strict=True)]
        if ctx.delivered is not None:  # for hooks that put the parts in place of other gradients
            ctx.delivered[:] = parts
        return (error, None, None, None, None, *parts)


def _signal_of(signal: Signal, error: Tensor) -> Tensor:
    """``signal(error)``, checked to be a tensor of the error's shape."""
    source = signal(error)
    if not isinstance(source, Tensor) or source.shape != error.shape:
        got = tuple(source.shape) if isinstance(source, Tensor) else type(source).__name__
        raise ValueError(
            f"the direct feedback signal must map the output error (shape {tuple(error.shape)}, "
            f"one row per output row) to a tensor of the same shape, got {got}"
        )
    return source


_direct_feedback_apply = direct_apply(DirectFeedback)


def features_per_row(hidden: Tensor, output: Tensor) -> int | None:
    """Features of ``hidden`` per row of ``output``.

    ``d`` when ``output`` is ``(*lead, C)`` and ``hidden`` is ``(*lead, …)`` with ``d`` elements
    after ``lead`` (``lead = (N,)`` for a batch); ``None`` when the leading dims differ.
    """
    lead = output.shape[:-1]
    if hidden.shape[: len(lead)] != lead:
        return None
    return math.prod(hidden.shape[len(lead) :])


def hidden_sizes(hidden: Sequence[Tensor], output: Tensor) -> list[int]:
    """``d_i`` of every hidden output (see :func:`features_per_row`); a clear error otherwise."""
    sizes = []
    for i, h in enumerate(hidden):
        size = features_per_row(h, output)
        if size is None:
            raise ValueError(
                f"hidden output {i} has shape {tuple(h.shape)}, which does not start with the "
                f"leading dims {tuple(output.shape[:-1])} of the network output "
                f"{tuple(output.shape)}: direct feedback sends each row of the output error to "
                "the same row of every hidden output"
            )
        sizes.append(size)
    return sizes


def check_feedback_shapes(feedback: Sequence[Tensor], hidden: Sequence[Tensor], output: Tensor):
    """Raise a ``ValueError`` naming the first ``B_i`` whose shape is not ``(d_i, C)``."""
    if len(feedback) != len(hidden):
        raise ValueError(
            f"direct feedback needs one matrix per hidden output: {len(hidden)} hidden outputs, "
            f"got {len(feedback)} feedback matrices"
        )
    sizes = hidden_sizes(hidden, output)
    for i, (b, h, size) in enumerate(zip(feedback, hidden, sizes, strict=True)):
        expected = (size, output.shape[-1])
        if tuple(b.shape) != expected:
            raise ValueError(
                f"feedback matrix {i} must have shape {expected} (features of hidden output {i} "
                f"of shape {tuple(h.shape)} × number of outputs), got {tuple(b.shape)}"
            )


def inject_direct_feedback(
    output: Tensor,
    hidden: Sequence[Tensor],
    feedback: Tensor,
    sizes: Sequence[int],
    signal: Signal | None = None,
    delivered: list | None = None,
) -> Tensor:
    """``output`` unchanged, wired so that backward sends ``e B_iᵀ`` (``signal(e) B_iᵀ``) to
    ``hidden[i]``, and puts those parts in the list ``delivered`` when one is given.

    ``sizes[i]`` is the number of rows of ``B_i`` in the stacked ``feedback``; each hidden output
    must have that many features per row of ``output`` (checked here, before any backward).
    """
    if not hidden:
        return output
    for i, (h, size) in enumerate(zip(hidden, sizes, strict=True)):
        if features_per_row(h, output) != size:
            raise ValueError(
                f"hidden output {i} has shape {tuple(h.shape)}, but its feedback matrix B_{i} has "
                f"{size} rows, one per feature of a row of the output {tuple(output.shape)}; "
                "was the input of another size than the one the feedback was made for?"
            )
    return _direct_feedback_apply(output, feedback, sizes, signal, delivered, *hidden)


def _check_target(target: Tensor, output: Tensor) -> None:
    classes = output.shape[-1]
    if target.is_floating_point():
        if target.shape != output.shape:
            raise ValueError(
                f"a floating-point target must have the output's shape {tuple(output.shape)} "
                f"({classes} classes), got {tuple(target.shape)}"
            )
    elif target.shape != output.shape[:-1]:
        raise ValueError(
            f"class-index targets must have shape {tuple(output.shape[:-1])}, "
            f"got {tuple(target.shape)}"
        )
    elif target.numel() and (target.min() < 0 or target.max() >= classes):
        raise ValueError(
            f"targets must be class indices in [0, {classes}) for an output with {classes} "
            f"classes, got values in [{target.min().item()}, {target.max().item()}]"
        )


def direct_feedback_loss(
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    target: Tensor,
    outputs: Sequence[Tensor],
    feedback: Sequence[Tensor],
    signal: Signal | None = None,
) -> Tensor:
    """``loss_fn(outputs[-1], target)`` whose backward is direct feedback alignment.

    ``outputs`` is every layer's output (see :func:`bender.activations`), ``feedback`` one fixed
    matrix ``B_i`` of shape ``(d_i, C)`` per hidden output ``outputs[i]``, ``i < len − 1``.
    Backward: the last output gets its ordinary error ``e = ∂L/∂y``; hidden output ``i`` gets
    ``e B_iᵀ`` (``signal(e) B_iᵀ`` with a ``signal`` function such as ``torch.sign``), reshaped
    like that output (Bender.jl's ``direct_feedback_loss``). That is DFA
    when each layer passes nothing to its input (``linear_blocked_dx``); a layer that does pass
    a gradient adds it to the ``e B_iᵀ`` of the output below it (the :class:`~bender.DFA`
    wrapper replaces every other gradient at its targets instead, so there any mapping gives
    DFA).
    """
    if not outputs:
        raise ValueError("outputs must hold at least the network's output")
    *hidden, output = outputs
    _check_target(target, output)
    check_feedback_shapes(feedback, hidden, output)
    stacked = torch.cat(list(feedback)) if hidden else None
    sizes = [len(b) for b in feedback]
    check_signal(signal)
    return loss_fn(inject_direct_feedback(output, hidden, stacked, sizes, signal), target)


def check_signal(signal: object) -> None:
    """Raise ``TypeError`` unless ``signal`` is ``None`` or a function."""
    if signal is not None and not callable(signal):
        raise TypeError(
            "signal must be a function of the output error, such as torch.sign, or None, got "
            f"{type(signal).__name__}: {signal!r}"
        )
