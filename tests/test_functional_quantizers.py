"""Every quantizer's forward and pseudo-gradient against its formula, written out here with
plain tensor arithmetic (batch 1 and 37, float32 and float64, per-channel scales)."""

from __future__ import annotations

import math

import pytest
import torch

from bender.functional.quantizers import (
    approx_sign,
    dorefa,
    magnitude_aware_sign,
    ste_heaviside,
    ste_sign,
    ste_tern,
    swish_sign,
)
from tests.conftest import close


def _inputs(batch: int, dtype: torch.dtype) -> torch.Tensor:
    """Values across ±2, exact zeros and the clip bounds ±1 included."""
    x = torch.randn(batch, 9, dtype=dtype) * 1.5
    x[0, :5] = torch.tensor([0.0, 1.0, -1.0, 0.5, -2.5], dtype=dtype)
    return x.requires_grad_()


def _forward_and_grad(quantize, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.randn_like(x)
    y = quantize(x)
    y.backward(g)
    return y.detach(), x.grad / g  # the pseudo-gradient, elementwise


def _pm1(x: torch.Tensor) -> torch.Tensor:
    """+1 for x ≥ 0, −1 below: written out elementwise."""
    return torch.tensor([1.0 if v >= 0 else -1.0 for v in x.flatten().tolist()], dtype=x.dtype)


def test_ste_sign_forward_and_clipped_gradient(batch, dtype):
    x = _inputs(batch, dtype)
    y, grad = _forward_and_grad(ste_sign, x)
    flat = x.detach().flatten()
    assert torch.equal(y.flatten(), _pm1(flat))
    expected = torch.tensor([1.0 if abs(v) <= 1 else 0.0 for v in flat.tolist()], dtype=dtype)
    close(grad.flatten(), expected)
    assert y[0, 0] == 1  # sign(0) = +1: always ±1


@pytest.mark.parametrize("clip", [None, 0.5])
def test_ste_sign_clip_value(clip, dtype):
    x = _inputs(4, dtype)
    _, grad = _forward_and_grad(lambda v: ste_sign(v, clip_value=clip), x)
    bound = math.inf if clip is None else clip
    expected = (x.detach().abs() <= bound).to(dtype)
    close(grad, expected)


def test_approx_sign(batch, dtype):
    x = _inputs(batch, dtype)
    y, grad = _forward_and_grad(approx_sign, x)
    flat = x.detach().flatten().tolist()
    assert torch.equal(y.flatten(), _pm1(x.detach().flatten()))
    expected = [2 - 2 * abs(v) if abs(v) <= 1 else 0.0 for v in flat]
    close(grad.flatten(), torch.tensor(expected, dtype=dtype))


@pytest.mark.parametrize("beta", [5.0, 1.5])
def test_swish_sign(batch, dtype, beta):
    x = _inputs(batch, dtype)
    y, grad = _forward_and_grad(lambda v: swish_sign(v, beta), x)
    assert torch.equal(y.flatten(), _pm1(x.detach().flatten()))
    expected = [
        beta * (2 - beta * v * math.tanh(beta * v / 2)) / (1 + math.cosh(beta * v))
        for v in x.detach().flatten().tolist()
    ]
    close(grad.flatten(), torch.tensor(expected, dtype=dtype))


def test_magnitude_aware_sign_scales_each_output_channel(dtype):
    w = torch.randn(6, 4, 3, 3, dtype=dtype) * 0.7
    w[0, 0, 0, 0] = 1.8  # outside the clip: no gradient there
    w.requires_grad_()
    y, grad = _forward_and_grad(magnitude_aware_sign, w)
    for j in range(6):
        channel = w.detach()[j].flatten().tolist()
        alpha = sum(abs(v) for v in channel) / len(channel)
        close(y[j].flatten(), alpha * _pm1(w.detach()[j].flatten()))
        expected = [alpha if abs(v) <= 1 else 0.0 for v in channel]
        close(grad[j].flatten(), torch.tensor(expected, dtype=dtype))


def test_magnitude_aware_sign_of_a_dense_weight(batch, dtype):
    w = _inputs(batch, dtype)
    y, _ = _forward_and_grad(magnitude_aware_sign, w)
    alpha = w.detach().abs().sum(1, keepdim=True) / w.shape[1]
    close(y, alpha * torch.where(w.detach() >= 0, 1.0, -1.0).to(dtype))


def _tern(values: list[float], delta: float) -> list[float]:
    return [1.0 if v > delta else -1.0 if v < -delta else 0.0 for v in values]


def test_ste_tern_with_a_fixed_threshold(batch, dtype):
    x = _inputs(batch, dtype)
    y, grad = _forward_and_grad(lambda v: ste_tern(v, threshold_value=0.6), x)
    flat = x.detach().flatten().tolist()
    close(y.flatten(), torch.tensor(_tern(flat, 0.6), dtype=dtype))
    close(grad.flatten(), torch.tensor([float(abs(v) <= 1) for v in flat], dtype=dtype))


def test_ste_tern_with_twns_threshold_and_per_channel_scale(dtype):
    w = (torch.randn(5, 8, dtype=dtype) * 0.5).requires_grad_()
    y, grad = _forward_and_grad(lambda v: ste_tern(v, ternary_weight_networks=True, scale=True), w)
    flat = w.detach().flatten().tolist()
    delta = 0.7 * sum(abs(v) for v in flat) / len(flat)
    for j in range(5):
        row = w.detach()[j].tolist()
        kept = [abs(v) for v in row if abs(v) > delta]
        alpha = sum(kept) / max(len(kept), 1)
        close(y[j], alpha * torch.tensor(_tern(row, delta), dtype=dtype))
        close(grad[j], torch.tensor([alpha * float(abs(v) <= 1) for v in row], dtype=dtype))


def test_ste_heaviside(batch, dtype):
    x = _inputs(batch, dtype)
    y, grad = _forward_and_grad(ste_heaviside, x)
    flat = x.detach().flatten().tolist()
    close(y.flatten(), torch.tensor([float(v > 0) for v in flat], dtype=dtype))
    close(grad.flatten(), torch.tensor([float(abs(v) <= 1) for v in flat], dtype=dtype))


@pytest.mark.parametrize("k_bit", [1, 2, 4])
def test_dorefa_activations(batch, dtype, k_bit):
    x = (torch.rand(batch, 9, dtype=dtype) * 1.6 - 0.3).requires_grad_()
    y, grad = _forward_and_grad(lambda v: dorefa(v, k_bit), x)
    n = 2**k_bit - 1
    flat = x.detach().flatten().tolist()
    expected = [round(min(max(v, 0.0), 1.0) * n) / n for v in flat]
    close(y.flatten(), torch.tensor(expected, dtype=dtype))
    close(grad.flatten(), torch.tensor([float(0 <= v <= 1) for v in flat], dtype=dtype))
    assert len(set(y.flatten().tolist())) <= 2**k_bit


@pytest.mark.parametrize("k_bit", [1, 3])
def test_dorefa_weights(dtype, k_bit):
    w = (torch.randn(4, 6, dtype=dtype) * 0.8).requires_grad_()
    n = 2**k_bit - 1
    y = dorefa(w, k_bit, mode="weights")
    t = [math.tanh(v) for v in w.detach().flatten().tolist()]
    top = max(abs(v) for v in t)
    expected = [2 * round((v / (2 * top) + 0.5) * n) / n - 1 for v in t]
    close(y.detach().flatten(), torch.tensor(expected, dtype=dtype))
    # the rounding passes straight through: the gradient is that of 2·w′ − 1, maximum included
    g = torch.randn_like(w)
    y.backward(g)
    straight = w.detach().clone().requires_grad_()
    tanh = torch.tanh(straight)
    (2 * (tanh / (2 * tanh.abs().max()) + 0.5) - 1).backward(g)
    close(w.grad, straight.grad)


@pytest.mark.parametrize(
    ("call", "says"),
    [
        (lambda x: dorefa(x, 0), r"k_bit must be an int from 1 to 8, got 0"),
        (lambda x: dorefa(x, 9), r"k_bit must be an int from 1 to 8, got 9"),
        (lambda x: dorefa(x, 2.0), r"k_bit must be an int from 1 to 8, got 2\.0"),
        (lambda x: dorefa(x, 2, mode="kernel"), r"mode must be 'activations' or 'weights'"),
        (lambda x: ste_sign(x, clip_value=0), r"clip_value must be a positive number or None"),
        (lambda x: swish_sign(x, beta=-1), r"beta must be a positive number, got -1"),
        (lambda x: ste_tern(x, threshold_value=-0.1), r"threshold_value must be a number ≥ 0"),
    ],
)
def test_bad_settings_are_refused(call, says):
    with pytest.raises(ValueError, match=says):
        call(torch.randn(3))


@pytest.mark.filterwarnings("error")  # no fallback to a slow per-sample loop under vmap
def test_quantizers_work_under_torch_func():
    x = torch.randn(4, 5)
    per_sample = torch.func.vmap(torch.func.grad(lambda v: ste_sign(v).sum()))(x)
    close(per_sample, (x.abs() <= 1).to(x.dtype))
    per_sample = torch.func.vmap(torch.func.grad(lambda v: ste_tern(v, 0.3).sum()))(x)
    close(per_sample, (x.abs() <= 1).to(x.dtype))
    per_sample = torch.func.vmap(torch.func.grad(lambda v: ste_heaviside(v).sum()))(x)
    close(per_sample, (x.abs() <= 1).to(x.dtype))
