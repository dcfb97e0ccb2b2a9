import torch

from bender.functional import hard_sigmoid, hardtanh_adaste, sign_ste, stoc_sign_ste
from tests.conftest import close


def test_sign_ste_forward_sign_backward_identity(batch, dtype):
    x = torch.randn(batch, 9, dtype=dtype)
    x[0, 0] = 0.0
    x.requires_grad_()
    y = sign_ste(x)
    close(
        y,
        torch.tensor(
            [[1.0 if v > 0 else (-1.0 if v < 0 else 0.0) for v in row] for row in x.tolist()],
            dtype=dtype,
        ),
    )
    g = torch.randn_like(y)
    y.backward(g)
    assert torch.equal(x.grad, g)


def test_stoc_sign_ste_values_probability_and_identity_backward(dtype):
    x = torch.full((200_000,), 0.5, dtype=dtype, requires_grad=True)
    y = stoc_sign_ste(x, torch.Generator().manual_seed(0))
    assert set(y.unique().tolist()) == {-1.0, 1.0}
    assert abs((y == 1).to(dtype).mean().item() - 0.75) < 0.01  # hardσ(0.5) = 0.75
    g = torch.randn_like(y)
    y.backward(g)
    assert torch.equal(x.grad, g)
    edge = stoc_sign_ste(torch.tensor([-1.0, -3.0, 1.0, 4.0], dtype=dtype))
    assert edge.tolist() == [-1.0, -1.0, 1.0, 1.0]


def test_stoc_sign_ste_reproducible_with_generator(batch):
    x = torch.randn(batch, 50)
    a = stoc_sign_ste(x, torch.Generator().manual_seed(7))
    b = stoc_sign_ste(x, torch.Generator().manual_seed(7))
    c = stoc_sign_ste(x, torch.Generator().manual_seed(8))
    assert torch.equal(a, b)
    assert batch == 1 or not torch.equal(a, c)


def test_hard_sigmoid(batch, dtype):
    x = torch.linspace(-3, 3, 13 * batch, dtype=dtype).reshape(batch, 13).requires_grad_()
    y = hard_sigmoid(x)
    xd = x.detach()
    expected = torch.tensor(
        [max(0.0, min(1.0, (v + 1) / 2)) for v in xd.flatten().tolist()], dtype=dtype
    )
    close(y, expected.reshape(batch, 13))
    y.sum().backward()
    inside = (xd > -1) & (xd < 1)
    close(x.grad[inside], torch.full_like(x.grad[inside], 0.5))
    assert torch.all(x.grad[(xd < -1) | (xd > 1)] == 0)


def test_hard_sigmoid_gradient_at_and_next_to_the_kinks(dtype):
    below_one = torch.nextafter(torch.tensor(1.0, dtype=dtype), torch.tensor(0.0, dtype=dtype))
    x = torch.stack(
        [-below_one, below_one, torch.tensor(1.0, dtype=dtype), -torch.ones((), dtype=dtype)]
    )
    x.requires_grad_()
    y = hard_sigmoid(x)
    assert y[1] == 1.0  # (x + 1) / 2 rounds to 1 one ulp below the kink ...
    y.sum().backward()
    assert x.grad.tolist() == [0.5, 0.5, 0.0, 0.0]  # ... but x is inside (−1, 1): slope 1/2


def test_hardtanh_adaste_four_cases_and_interior(dtype):
    x = torch.tensor([-2.0, -3.0, 1.5, 3.0, 0.25, -0.5, -1.0, 1.0], dtype=dtype, requires_grad=True)
    g = torch.tensor([0.7, -0.6, -0.4, 0.9, 0.3, -0.8, 0.0, 0.0], dtype=dtype)
    y = hardtanh_adaste(x)
    close(y, torch.tensor([-1.0, -1.0, 1.0, 1.0, 0.25, -0.5, -1.0, 1.0], dtype=dtype))
    y.backward(g)
    expected = torch.tensor(
        [
            0.0,  # x ≤ −1, g ≥ 0 → 0
            -0.6 * 2 / (1 - -3.0),  # x ≤ −1, g < 0 → g·2/(1−x)
            0.0,  # x ≥ 1, g ≤ 0 → 0
            0.9 * 2 / (1 + 3.0),  # x ≥ 1, g > 0 → g·2/(1+x)
            0.3,  # inside → g
            -0.8,  # inside → g
            0.0,  # x = −1, g = 0 → 0
            0.0,  # x = 1, g = 0 → 0
        ],
        dtype=dtype,
    )
    close(x.grad, expected)


def test_hardtanh_adaste_batched(batch, dtype):
    x = (3 * torch.randn(batch, 11, dtype=dtype)).requires_grad_()
    g = torch.randn(batch, 11, dtype=dtype)
    hardtanh_adaste(x).backward(g)
    xd = x.detach()
    expected = torch.tensor(
        [
            0.0
            if (v <= -1 and gv >= 0) or (v >= 1 and gv <= 0)
            else gv * 2 / (1 - v)
            if v <= -1
            else gv * 2 / (1 + v)
            if v >= 1
            else gv
            for v, gv in zip(xd.flatten().tolist(), g.flatten().tolist(), strict=True)
        ],
        dtype=dtype,
    ).reshape(batch, 11)
    close(x.grad, expected)
