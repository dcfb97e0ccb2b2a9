"""Custom backwards under autocast: the forward runs in low precision, the backward must follow.

On the CPU, autocast with bfloat16 stands in for CUDA's float16: the same dtype mismatch (a
low-precision incoming gradient against float32 saved tensors) arises on both. With
``BENDER_TEST_DEVICE=cuda`` the tests run CUDA's autocast with float16 itself. Expected values are
computed in float64 from the operands rounded to the low dtype, so the tolerance is bfloat16's
(8 mantissa bits; float16 has 10).
"""

import torch
import torch.nn.functional as F
from torch import nn

from bender import GenDense, activations, direct_feedback_loss
from bender.functional import conv_asym_dx, radial_sim_asym
from bender.functional.dense import bent_linear

DEVICE_TYPE = torch.get_default_device().type  # conftest sets it from BENDER_TEST_DEVICE
LOW = torch.float16 if DEVICE_TYPE == "cuda" else torch.bfloat16


def autocast():
    return torch.autocast(DEVICE_TYPE, dtype=LOW)


def as_low(t: torch.Tensor) -> torch.Tensor:
    """``t`` rounded to the low dtype, then widened to float64 for an exact reference product."""
    return t.detach().to(LOW).double()


def close_low(actual: torch.Tensor, expected: torch.Tensor, dtype=torch.float32) -> None:
    assert actual.dtype == dtype  # the engine returns gradients in the leaf's dtype
    scale = expected.abs().max().item()
    torch.testing.assert_close(actual.double(), expected, rtol=2e-2, atol=2e-2 * scale)


def test_feedback_alignment_linear(batch):
    x = torch.randn(batch, 7, requires_grad=True)
    w = torch.randn(5, 7, requires_grad=True)
    bias = torch.randn(5, requires_grad=True)
    fb = torch.randn(5, 7)
    with autocast():
        y = bent_linear(x, w, fb, bias)
    assert y.dtype == LOW
    delta = torch.randn(batch, 5).to(LOW)
    y.backward(delta)
    d = delta.double()
    close_low(x.grad, d @ as_low(fb))
    close_low(w.grad, d.T @ as_low(x))
    close_low(bias.grad, d.sum(0))
    assert not torch.allclose(x.grad.double(), d @ as_low(w), rtol=0.1, atol=0.1)


def test_feedback_alignment_layer_trains_a_step():
    layer = GenDense(7, 5, nn.ReLU(), forward="linear_asym_dx", feedback=True)
    head = GenDense(5, 3, forward="linear_asym_dx", feedback=True)
    model = nn.Sequential(layer, head)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x, target = torch.randn(16, 7), torch.randint(0, 3, (16,))
    before = [p.detach().clone() for p in model.parameters()]
    with autocast():
        loss = F.cross_entropy(model(x), target)
    loss.backward()
    opt.step()
    for p, old in zip(model.parameters(), before, strict=True):
        assert p.dtype == torch.float32 and torch.isfinite(p).all()
        assert not torch.equal(p, old)


def test_feedback_alignment_conv(batch):
    x = torch.randn(batch, 3, 8, 7, requires_grad=True)
    w = torch.randn(4, 3, 3, 2, requires_grad=True)
    fb = torch.randn_like(w)
    with autocast():
        y = conv_asym_dx(x, w, fb, stride=1, padding=1)
    assert y.dtype == LOW
    delta = torch.randn(y.shape).to(LOW)
    y.backward(delta)
    # Reference: autograd of plain float64 convolutions, one with B (for ∂x), one with W (for ∂W)
    xr = as_low(x).requires_grad_()
    F.conv2d(xr, as_low(fb), padding=1).backward(delta.double())
    wr = as_low(w).requires_grad_()
    F.conv2d(as_low(x), wr, padding=1).backward(delta.double())
    close_low(x.grad, xr.grad)
    close_low(w.grad, wr.grad)


def test_feedback_alignment_radial_on_a_low_precision_input(batch):
    # the input of a hidden layer under autocast is already in the low dtype
    x = torch.randn(batch, 6).to(LOW).requires_grad_()
    w = torch.randn(4, 6, requires_grad=True)
    fb = torch.randn(4, 6)
    with autocast():
        y = radial_sim_asym(x, w, fb)
    delta = torch.randn(y.shape).to(y.dtype)
    y.backward(delta)
    d, xl, bl = delta.double(), as_low(x), as_low(fb)
    close_low(x.grad, 2 * (d @ bl - d.sum(1, keepdim=True) * xl), dtype=LOW)
    close_low(w.grad, 2 * (d.T @ xl - d.sum(0).unsqueeze(1) * bl))


def test_direct_feedback_projection(batch):
    net = nn.Sequential(
        GenDense(9, 6, nn.ReLU(), forward="linear_blocked_dx"),
        GenDense(6, 4, nn.ReLU(), forward="linear_blocked_dx"),
        GenDense(4, 3, forward="linear_blocked_dx"),
    )
    feedback = [torch.randn(6, 3), torch.randn(4, 3)]
    x, target = torch.randn(batch, 9), torch.randint(0, 3, (batch,))
    with autocast():
        outs = activations(net, x)
        loss = direct_feedback_loss(F.cross_entropy, target, outs, feedback)
    for h in outs:
        assert h.dtype == LOW
        h.retain_grad()
    loss.backward()
    e = outs[-1].grad.double()
    for h, b in zip(outs[:-1], feedback, strict=True):
        assert h.grad.dtype == LOW
        torch.testing.assert_close(
            h.grad.double(), e @ as_low(b).T, rtol=2e-2, atol=2e-2 * e.abs().max().item()
        )
    for p in net.parameters():
        assert p.grad is not None and p.grad.dtype == torch.float32
