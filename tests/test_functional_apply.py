"""direct_apply: the ``forward(ctx, ...)`` twin's C ``apply`` in eager mode, ``Function.apply``
under torch.func and compile."""

import pytest
import torch

from bender.functional._apply import ctx_form, direct_apply


class _Double(torch.autograd.Function):
    """Forward ``2x``; backward ``3g`` (a rule no exact gradient gives)."""

    @staticmethod
    def forward(x):
        return 2 * x

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, g):
        return 3 * g


def test_eager_calls_skip_the_python_apply_and_keep_the_rule(monkeypatch, dtype, batch):
    apply = direct_apply(_Double)

    def not_expected(*args):
        raise AssertionError("eager calls should take neither Function.apply nor setup_context")

    monkeypatch.setattr(_Double, "apply", not_expected)
    monkeypatch.setattr(_Double, "setup_context", not_expected)  # the twin calls its own copy
    x = torch.randn(batch, 3, dtype=dtype, requires_grad=True)
    y = apply(x)
    torch.testing.assert_close(y, 2 * x)
    y.backward(torch.ones_like(y))
    torch.testing.assert_close(x.grad, torch.full_like(x, 3.0))
    assert y.grad_fn.name() == "_DoubleBackward"


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


def test_a_forward_with_default_arguments_is_refused():
    class WithDefault(torch.autograd.Function):
        @staticmethod
        def forward(x, scale=2.0):
            return scale * x

        @staticmethod
        def setup_context(ctx, inputs, output):
            pass

        @staticmethod
        def backward(ctx, g):
            return g, None

    with pytest.raises(TypeError, match=r"WithDefault\.forward has default arguments \(scale\)"):
        direct_apply(WithDefault)


class _Square(torch.autograd.Function):
    """Forward ``x²``; ``setup_context`` saves ``x``; backward ``∂x = 2 x g``, exact."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x):
        return x * x

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[0])
        ctx.scale = 2.0

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return ctx.scale * x * g


class _SquareSpelled(_Square):
    """``_Square`` whose ``eager_forward`` does forward and ``setup_context`` in one."""

    @staticmethod
    def eager_forward(ctx, x):
        ctx.save_for_backward(x)
        ctx.scale = 2.0
        return x * x


def test_the_ctx_form_twin_runs_forward_then_setup_context_on_one_ctx(dtype, batch):
    twin = ctx_form(_Square)
    assert issubclass(twin, torch.autograd.Function) and twin.__name__ == "_Square"
    x = torch.randn(batch, 3, dtype=dtype, requires_grad=True)
    g = torch.randn(batch, 3, dtype=dtype)
    twin.apply(x).backward(g)
    torch.testing.assert_close(x.grad, 2 * x.detach() * g)
    x64 = torch.randn(batch, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(twin.apply, (x64,))


def test_an_eager_forward_spelled_out_is_the_twins_forward(dtype, batch):
    assert ctx_form(_SquareSpelled).forward is _SquareSpelled.eager_forward
    apply = direct_apply(_SquareSpelled)
    x = torch.randn(batch, 3, dtype=dtype, requires_grad=True)
    g = torch.randn(batch, 3, dtype=dtype)
    apply(x).backward(g)  # eager: the spelled-out forward
    torch.testing.assert_close(x.grad, 2 * x.detach() * g)
    per_sample = torch.func.vmap(torch.func.grad(lambda v: apply(v).sum()))(x.detach())
    torch.testing.assert_close(per_sample, 2 * x.detach())  # torch.func: setup_context form
