"""direct_apply: the C ``apply`` in eager mode, ``Function.apply`` under torch.func transforms."""

import pytest
import torch
from torch.func import functional_call, grad

from bender import GenDense
from bender.functional._apply import direct_apply


class _Double(torch.autograd.Function):
    """Forward ``2x``; backward ``3g`` (a rule no exact gradient gives)."""

    @staticmethod
    def forward(ctx, x):
        return 2 * x

    @staticmethod
    def backward(ctx, g):
        return 3 * g


def test_eager_calls_skip_the_python_apply_and_keep_the_rule(monkeypatch, dtype, batch):
    apply = direct_apply(_Double)

    def python_apply_not_expected(*args):
        raise AssertionError("eager calls should not go through Function.apply")

    monkeypatch.setattr(_Double, "apply", python_apply_not_expected)
    x = torch.randn(batch, 3, dtype=dtype, requires_grad=True)
    y = apply(x)
    torch.testing.assert_close(y, 2 * x)
    y.backward(torch.ones_like(y))
    torch.testing.assert_close(x.grad, torch.full_like(x, 3.0))
    assert y.grad_fn.name() == "_DoubleBackward"


def test_torch_func_transforms_get_pytorchs_own_error():
    layer = GenDense(4, 3, forward="linear_asym_dx", feedback=True)
    params = {k: v.detach() for k, v in layer.named_parameters()}
    x = torch.randn(5, 4)

    def loss(p, x):  # x needs a gradient inside the transform, so BentLinear runs
        return functional_call(layer, p, (x,)).sum()

    with pytest.raises(RuntimeError, match="must override the setup_context staticmethod"):
        grad(loss, argnums=(0, 1))(params, x)


def test_while_compiling_the_transform_check_is_not_asked(monkeypatch):
    """Dynamo in torch 2.4 cannot trace ``_are_functorch_transforms_active``: the compile check
    comes first and, while tracing, decides alone."""
    import bender.functional._apply as module

    def transforms_check_not_expected():
        raise AssertionError("the transform check was asked while compiling")

    monkeypatch.setattr(module, "_is_compiling", lambda: True)
    monkeypatch.setattr(module, "_transforms_active", transforms_check_not_expected)
    x = torch.randn(3, requires_grad=True)
    y = direct_apply(_Double)(x)
    y.sum().backward()
    torch.testing.assert_close(x.grad, torch.full_like(x, 3.0))
