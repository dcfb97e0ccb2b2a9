"""torch.func: ``grad`` and ``vmap`` over bender models keep each layer's rule.

Per-sample gradients (``vmap(grad(loss))``), as differential privacy needs, are checked against
the feedback-alignment formulas for each sample, and for every other rule against one eager
backward pass per sample.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call, grad, jacrev, vmap

from bender import DFA, GenConv, GenDense, HardtanhAdaSTE, SignSTE, StocSignSTE
from tests.conftest import close


def _per_sample_grads(model: nn.Module, x: torch.Tensor, delta: torch.Tensor, **vmap_kwargs):
    """``∂(Σ out_i · δ_i)/∂θ`` for each sample ``i``, by ``vmap(grad(...))``."""
    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = dict(model.named_buffers())

    def loss(p, xi, di):
        return (functional_call(model, (p, buffers), (xi[None],)) * di[None]).sum()

    return vmap(grad(loss), in_dims=(None, 0, 0), **vmap_kwargs)(params, x, delta)


def test_per_sample_feedback_alignment_gradients_follow_the_formula(dtype):
    torch.manual_seed(0)
    model = nn.Sequential(
        GenDense(6, 5, nn.Tanh(), forward="linear_asym_dx", feedback=True),
        GenDense(5, 4, forward="linear_asym_dx", feedback=True),
    ).to(dtype)
    x, delta = torch.randn(7, 6, dtype=dtype), torch.randn(7, 4, dtype=dtype)
    grads = _per_sample_grads(model, x, delta)

    w1, b1 = model[0].weight.detach(), model[0].bias.detach()
    h = torch.tanh(x @ w1.t() + b1)  # (7, 5)
    da1 = (delta @ model[1].feedback) * (1 - h**2)  # the error reaches layer 1 through B2
    close(grads["1.weight"], delta[:, :, None] * h[:, None, :])  # δ_iᵀ h_i, one per sample
    close(grads["1.bias"], delta)
    close(grads["0.weight"], da1[:, :, None] * x[:, None, :])
    close(grads["0.bias"], da1)


def _models() -> dict[str, nn.Module]:
    blocked = "linear_blocked_dx"
    return {
        "radial": nn.Sequential(
            GenDense(8, 5, nn.ReLU(), forward="radial_asym_dx", feedback=True),
            GenDense(5, 3, forward="radial"),
        ),
        "binary": nn.Sequential(
            GenDense(8, 5, SignSTE(), forward="linear_binary_weights"),
            GenDense(5, 3, HardtanhAdaSTE(), forward="linear_binary_weights"),
        ),
        "dfa": DFA(
            nn.Sequential(
                GenDense(8, 5, nn.ReLU(), forward=blocked), GenDense(5, 3, forward=blocked)
            ),
            3,
        ),
        "sign-concordant": nn.Sequential(
            GenDense(8, 6, nn.ReLU(), forward="linear_usf_dx"),
            nn.Unflatten(1, (3, 2)),
            GenConv(3, 4, (1,), nn.ReLU(), forward="conv_linear_frsf_dx", feedback=True),
            nn.Flatten(),
            GenDense(8, 3, forward="linear_frsf_dx", feedback=True),
        ),
        "kolen-pollack": nn.Sequential(
            nn.Unflatten(1, (2, 2, 2)),
            GenConv(2, 3, 1, nn.ReLU(), forward="conv_linear_kp_dx", feedback=True),
            nn.Flatten(),
            GenDense(12, 3, forward="linear_kp_dx", feedback=True),
        ),
        "conv": nn.Sequential(
            nn.Unflatten(1, (2, 2, 2)),
            GenConv(2, 3, 1, nn.ReLU(), forward="conv_linear_asym_dx", feedback=True),
            nn.Flatten(),
            GenDense(12, 3, forward="linear_asym_dx", feedback=True),
        ),
    }


@pytest.mark.parametrize("name", list(_models()))
def test_per_sample_gradients_equal_one_eager_backward_per_sample(name):
    torch.manual_seed(0)
    model = _models()[name].double()
    x, delta = torch.randn(5, 8, dtype=torch.float64), torch.randn(5, 3, dtype=torch.float64)
    grads = _per_sample_grads(model, x, delta)
    for i in range(len(x)):
        model.zero_grad()
        model(x[i : i + 1]).backward(delta[i : i + 1])
        for key, param in model.named_parameters():
            close(grads[key][i], param.grad)


def test_stochastic_sign_under_vmap_needs_pytorchs_randomness_flag():
    model = nn.Sequential(GenDense(8, 5, StocSignSTE(), forward="linear_asym_dx", feedback=True))
    x, delta = torch.randn(4, 8), torch.randn(4, 5)
    with pytest.raises(RuntimeError, match="randomness"):
        _per_sample_grads(model, x, delta)
    grads = _per_sample_grads(model, x, delta, randomness="different")
    close(grads["0.bias"], delta)  # straight-through: the error passes the sign unchanged


def test_brsf_under_vmap_needs_pytorchs_randomness_flag():
    model = nn.Sequential(
        GenDense(8, 5, nn.ReLU(), forward="linear_usf_dx"),
        GenDense(5, 3, forward="linear_brsf_dx"),
    )
    x, delta = torch.randn(4, 8), torch.randn(4, 3)
    with pytest.raises(RuntimeError, match="randomness"):
        _per_sample_grads(model, x, delta)
    torch.manual_seed(2)
    grads = _per_sample_grads(model, x, delta, randomness="same")  # one M for all samples
    close(grads["1.bias"], delta)
    for i in range(len(x)):  # each sample's eager backward, drawing that same M
        model.zero_grad()
        torch.manual_seed(2)
        model(x[i : i + 1]).backward(delta[i : i + 1])
        close(grads["0.weight"][i], model[0].weight.grad)


def test_grad_of_a_functional_loss_gives_the_bent_input_gradient():
    layer = GenDense(6, 4, forward="linear_asym_dx", feedback=True)
    params = {k: v.detach() for k, v in layer.named_parameters()}
    x, delta = torch.randn(3, 6), torch.randn(3, 4)

    def loss(p, x):
        return (functional_call(layer, p, (x,)) * delta).sum()

    grad_params, grad_x = grad(loss, argnums=(0, 1))(params, x)
    close(grad_x, delta @ layer.feedback)  # δ B, not δ W
    close(grad_params["weight"], delta.t() @ x)


def test_jacrev_of_a_feedback_alignment_layer_is_the_feedback_matrix():
    """Reverse mode builds the Jacobian from the rule's vector-Jacobian products: ``B``, not W."""
    layer = GenDense(4, 3, forward="linear_asym_dx", feedback=True)
    close(jacrev(layer)(torch.randn(4)), layer.feedback)
