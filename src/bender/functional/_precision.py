"""Autocast support for the custom backwards: compute in the incoming gradient's dtype."""

from __future__ import annotations

from torch import Tensor


def in_grad_dtype(grad: Tensor, x: Tensor, feedback: Tensor) -> tuple[Tensor, Tensor]:
    """``x`` and ``feedback`` cast to ``grad``'s dtype (unchanged when they already match).

    Under :func:`torch.autocast` the forward's product ran in float16/bfloat16, so the gradient
    arrives in that dtype while the saved float32 tensors did not change; the backward's
    products then run in the low precision too, as autograd's own do. The engine casts each
    returned gradient back to its input's dtype.
    """
    if grad.dtype == x.dtype == feedback.dtype:
        return x, feedback
    return x.to(grad.dtype), feedback.to(grad.dtype)
