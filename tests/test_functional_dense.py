import pytest
import torch
import torch.nn.functional as F

from bender.functional import matmul, matmul_asym_dx, matmul_blocked_dx, matmul_kp_dx
from bender.functional.dense import (
    BentLinear,
    KolenPollackLinear,
    bent_linear,
)
from tests.conftest import close, dense_gradcheck_inputs, gradcheck_with_weight_as_feedback


def _tensors(batch, dtype, n_in=7, n_out=5):
    x = torch.randn(batch, n_in, dtype=dtype, requires_grad=True)
    w = torch.randn(n_out, n_in, dtype=dtype, requires_grad=True)
    b = torch.randn(n_out, n_in, dtype=dtype)
    delta = torch.randn(batch, n_out, dtype=dtype)
    return x, w, b, delta


def test_matmul_exact(batch, dtype):
    x, w, _, delta = _tensors(batch, dtype)
    y = matmul(x, w)
    close(y, x.detach() @ w.detach().T)
    y.backward(delta)
    close(x.grad, torch.einsum("no,oi->ni", delta, w.detach()))
    close(w.grad, torch.einsum("no,ni->oi", delta, x.detach()))


def test_matmul_asym_dx_uses_feedback_for_input_only(batch, dtype):
    x, w, b, delta = _tensors(batch, dtype)
    y = matmul_asym_dx(x, w, b)
    close(y, x.detach() @ w.detach().T)
    y.backward(delta)
    close(x.grad, torch.einsum("no,oi->ni", delta, b))
    close(w.grad, torch.einsum("no,ni->oi", delta, x.detach()))


def test_fa_differs_from_backprop_in_dx_but_not_dw(dtype):
    x, w, b, delta = _tensors(16, dtype)
    matmul_asym_dx(x, w, b).backward(delta)
    fa_dx, fa_dw = x.grad.clone(), w.grad.clone()
    x.grad = w.grad = None
    F.linear(x, w).backward(delta)
    assert not torch.allclose(fa_dx, x.grad)
    close(fa_dw, w.grad)


def test_matmul_blocked_dx_sends_nothing_to_input(batch, dtype):
    x, w, _, delta = _tensors(batch, dtype)
    y = matmul_blocked_dx(x, w)
    close(y, x.detach() @ w.detach().T)
    y.backward(delta)
    assert x.grad is None
    close(w.grad, torch.einsum("no,ni->oi", delta, x.detach()))


def test_bias_and_leading_dims(dtype):
    x = torch.randn(3, 4, 7, dtype=dtype, requires_grad=True)
    w = torch.randn(5, 7, dtype=dtype, requires_grad=True)
    bias = torch.randn(5, dtype=dtype, requires_grad=True)
    fb = torch.randn(5, 7, dtype=dtype)
    delta = torch.randn(3, 4, 5, dtype=dtype)
    y = bent_linear(x, w, fb, bias)
    close(y, torch.einsum("abi,oi->abo", x.detach(), w.detach()) + bias.detach())
    y.backward(delta)
    close(x.grad, torch.einsum("abo,oi->abi", delta, fb))
    close(w.grad, torch.einsum("abo,abi->oi", delta, x.detach()))
    close(bias.grad, delta.sum((0, 1)))


def test_inputs_without_grad_and_feedback_gets_none():
    x = torch.randn(4, 7)
    w = torch.randn(5, 7, requires_grad=True)
    b = torch.randn(5, 7, requires_grad=True)
    matmul_asym_dx(x, w, b).sum().backward()
    assert w.grad is not None and b.grad is None


def test_gradcheck_matmul():
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(matmul, (x, w))
    assert matmul(x, w).grad_fn.name() == "MmBackward0"  # the exact rule: autograd's own kernels


@pytest.mark.parametrize("batch", [1, 3])
def test_gradcheck_bent_linear_with_feedback_equal_to_the_weight(batch):
    # B = a copy of W: the custom backward must then give the exact gradient
    assert gradcheck_with_weight_as_feedback(BentLinear, *dense_gradcheck_inputs(batch))


def test_wrong_feedback_shape_raises():
    with pytest.raises(ValueError, match=r"shape of the weight W \(5, 7\), got \(7, 5\)"):
        matmul_asym_dx(torch.randn(2, 7), torch.randn(5, 7), torch.randn(7, 5))


def test_wrong_input_features_raise():
    with pytest.raises(ValueError, match=r"7 features .* got input of shape \(2, 6\)"):
        matmul(torch.randn(2, 6), torch.randn(5, 7))


def test_missing_feedback_raises():
    with pytest.raises(ValueError, match="needs a feedback matrix"):
        matmul_asym_dx(torch.randn(2, 7), torch.randn(5, 7), None)


def test_input_without_grad_takes_the_plain_path_with_identical_weight_gradients(dtype):
    x = torch.randn(6, 7, dtype=dtype)  # needs no grad: no ∂x, so B is irrelevant
    w = torch.randn(5, 7, dtype=dtype, requires_grad=True)
    b = torch.randn(5, 7, dtype=dtype)
    delta = torch.randn(6, 5, dtype=dtype)
    y = matmul_asym_dx(x, w, b)
    assert y.grad_fn.name() != "BentLinearBackward"
    y.backward(delta)
    close(w.grad, torch.einsum("no,ni->oi", delta, x))


def test_matmul_asym_dx_backward_does_not_read_the_weight(dtype):
    # ∂x = δ B and ∂W = δᵀ x: a weight changed in place between forward and backward trips no
    # version check (as it would for backprop, whose ∂x reads W).
    x, w, b, delta = _tensors(3, dtype)
    y = matmul_asym_dx(x, w, b)
    with torch.no_grad():
        w.mul_(-3.0)
    y.backward(delta)
    close(x.grad, torch.einsum("no,oi->ni", delta, b))
    close(w.grad, torch.einsum("no,ni->oi", delta, x.detach()))


def test_matmul_kp_dx_gives_the_feedback_matrix_the_weight_gradient(batch, dtype):
    x, w, b, delta = _tensors(batch, dtype)
    b.requires_grad_()
    y = matmul_kp_dx(x, w, b)
    close(y, x.detach() @ w.detach().T)
    y.backward(delta)
    dw = torch.einsum("no,ni->oi", delta, x.detach())
    close(x.grad, torch.einsum("no,oi->ni", delta, b.detach()))
    close(w.grad, dw)
    close(b.grad, dw)


def test_kolen_pollack_linear_with_bias_and_leading_dims(dtype):
    x = torch.randn(3, 4, 7, dtype=dtype, requires_grad=True)
    w = torch.randn(5, 7, dtype=dtype, requires_grad=True)
    fb = torch.randn(5, 7, dtype=dtype, requires_grad=True)
    bias = torch.randn(5, dtype=dtype, requires_grad=True)
    delta = torch.randn(3, 4, 5, dtype=dtype)
    y = bent_linear(x, w, fb, bias, feedback_learns=True)
    close(y, torch.einsum("abi,oi->abo", x.detach(), w.detach()) + bias.detach())
    y.backward(delta)
    dw = torch.einsum("abo,abi->oi", delta, x.detach())
    close(x.grad, torch.einsum("abo,oi->abi", delta, fb.detach()))
    close(w.grad, dw)
    close(fb.grad, dw)
    close(bias.grad, delta.sum((0, 1)))


def test_kolen_pollack_feedback_learns_where_the_input_needs_no_gradient(dtype):
    # a first layer: no ∂x, but B still follows W (every layer's B converges to its W)
    x = torch.randn(6, 7, dtype=dtype)
    w = torch.randn(5, 7, dtype=dtype, requires_grad=True)
    fb = torch.randn(5, 7, dtype=dtype, requires_grad=True)
    delta = torch.randn(6, 5, dtype=dtype)
    matmul_kp_dx(x, w, fb).backward(delta)
    close(fb.grad, torch.einsum("no,ni->oi", delta, x))
    close(w.grad, fb.grad)


def test_kolen_pollack_gradients_are_separate_tensors():
    # the same ∂W goes to W and B: an in-place change of one (gradient clipping) must not
    # reach the other
    x, w, b, delta = _tensors(4, torch.float64)
    b.requires_grad_()
    matmul_kp_dx(x, w, b).backward(delta)
    assert w.grad.data_ptr() != b.grad.data_ptr()
    expected = b.grad.clone()
    w.grad.mul_(0.5)
    close(b.grad, expected)


def test_kolen_pollack_with_fixed_feedback_is_feedback_alignment(dtype):
    x, w, b, delta = _tensors(5, dtype)  # b requires no grad
    y = matmul_kp_dx(x, w, b)
    assert y.grad_fn.name() == "BentLinearBackward"
    y.backward(delta)
    close(x.grad, torch.einsum("no,oi->ni", delta, b))
    with torch.no_grad():
        assert matmul_kp_dx(x, w, b.requires_grad_()).grad_fn is None


@pytest.mark.parametrize("batch", [1, 3])
def test_gradcheck_kolen_pollack_linear_with_feedback_equal_to_the_weight(batch):
    assert gradcheck_with_weight_as_feedback(KolenPollackLinear, *dense_gradcheck_inputs(batch))


def test_kolen_pollack_errors():
    w, fb = torch.randn(5, 7), torch.randn(7, 5, requires_grad=True)
    with pytest.raises(ValueError, match=r"shape of the weight W \(5, 7\), got \(7, 5\)"):
        matmul_kp_dx(torch.randn(2, 7), w, fb)
    with pytest.raises(ValueError, match="matmul_kp_dx needs a feedback matrix"):
        matmul_kp_dx(torch.randn(2, 7), w, None)
    with pytest.raises(ValueError, match=r"7 features .* got input of shape \(2, 6\)"):
        matmul_kp_dx(torch.randn(2, 6), w, torch.randn(5, 7, requires_grad=True))
