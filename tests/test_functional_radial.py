import pytest
import torch

from bender.functional import radial_sim, radial_sim_asym
from bender.functional.radial import BentRadial
from tests.conftest import close, dense_gradcheck_inputs, gradcheck_with_weight_as_feedback


def _reference(x, w):
    """−‖x_n − W_j‖² computed from pairwise differences (a different formula from the code)."""
    return -((x[:, None, :] - w[None, :, :]) ** 2).sum(-1)


def test_radial_sim_forward_and_exact_backward(batch, dtype):
    x = torch.randn(batch, 6, dtype=dtype, requires_grad=True)
    w = torch.randn(4, 6, dtype=dtype, requires_grad=True)
    delta = torch.randn(batch, 4, dtype=dtype)
    y = radial_sim(x, w)
    xr, wr = x.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    ref = _reference(xr, wr)
    close(y, ref)
    y.backward(delta)
    ref.backward(delta)
    close(x.grad, xr.grad)
    close(w.grad, wr.grad)


def test_radial_sim_asym_backward_formula(batch, dtype):
    x = torch.randn(batch, 6, dtype=dtype, requires_grad=True)
    w = torch.randn(4, 6, dtype=dtype, requires_grad=True)
    b = torch.randn(4, 6, dtype=dtype)
    delta = torch.randn(batch, 4, dtype=dtype)
    y = radial_sim_asym(x, w, b)
    close(y, _reference(x.detach(), w.detach()))
    y.backward(delta)
    xd = x.detach()
    # 2 x·W term through B, −‖x‖² term exact: ∂x_n = Σ_j δ[n,j] (2 B_j − 2 x_n)
    expected_dx = torch.stack(
        [sum(delta[n, j] * (2 * b[j] - 2 * xd[n]) for j in range(4)) for n in range(batch)]
    )
    # 2 x·W term exact, −‖W_j‖² term with B: ∂W_j = Σ_n δ[n,j] (2 x_n − 2 B_j)
    expected_dw = torch.stack(
        [sum(delta[n, j] * (2 * xd[n] - 2 * b[j]) for n in range(batch)) for j in range(4)]
    )
    close(x.grad, expected_dx)
    close(w.grad, expected_dw)


def test_gradcheck_radial_sim():
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(radial_sim, (x, w))


@pytest.mark.parametrize("batch", [1, 3])
def test_gradcheck_bent_radial_with_feedback_equal_to_the_weight(batch):
    # radial_sim differentiates native ops; the custom backward with B = a copy of W is exact too
    assert gradcheck_with_weight_as_feedback(BentRadial, *dense_gradcheck_inputs(batch))


def test_radial_rejects_bad_shapes():
    with pytest.raises(ValueError, match=r"shape of the weight W \(4, 6\), got \(6, 4\)"):
        radial_sim_asym(torch.randn(2, 6), torch.randn(4, 6), torch.randn(6, 4))
    with pytest.raises(ValueError, match="2-d input"):
        radial_sim(torch.randn(2, 3, 6), torch.randn(4, 6))
