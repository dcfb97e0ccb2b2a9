import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bender import DFA, GenDense, convert
from bender.attention import GenAttention
from tests.conftest import BATCH_SIZES, DTYPES, close


def _torch_attention(dtype, batch_first=True, bias=True, kdim=None):
    torch.manual_seed(0)
    attention = nn.MultiheadAttention(
        8, 2, bias=bias, kdim=kdim, vdim=kdim, batch_first=batch_first, dtype=dtype
    )
    if bias:  # torch starts biases at zero; non-zero ones test that they are carried over
        nn.init.uniform_(attention.in_proj_bias, -0.5, 0.5)
        nn.init.uniform_(attention.out_proj.bias, -0.5, 0.5)
    return attention


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("need_weights", [True, False])
def test_same_outputs_and_weights_as_torch_attention_with_masks(dtype, batch_first, need_weights):
    attention = _torch_attention(dtype, batch_first)
    bent = GenAttention.from_module(attention, "linear_asym_dx")
    x = torch.randn(3, 5, 8, dtype=dtype)
    memory = torch.randn(3, 4, 8, dtype=dtype)
    if not batch_first:
        x, memory = x.transpose(0, 1), memory.transpose(0, 1)
    padding = torch.tensor([[False] * 4, [False, False, True, True], [False, True, False, False]])
    causal = torch.ones(5, 4, dtype=torch.bool).triu(1)
    for kwargs in ({}, {"key_padding_mask": padding}, {"attn_mask": causal}):
        expected, expected_weights = attention(
            x, memory, memory, need_weights=need_weights, **kwargs
        )
        out, weights = bent(x, memory, memory, need_weights=need_weights, **kwargs)
        close(out, expected)
        if need_weights:
            close(weights, expected_weights)
        else:
            assert weights is None


def test_separate_key_and_value_sizes_and_no_bias_are_carried_over():
    attention = _torch_attention(torch.float64, bias=False, kdim=6)
    bent = GenAttention.from_module(attention, "linear")
    assert bent.q_proj.bias is None and bent.k_proj.in_features == 6
    x, memory = torch.randn(2, 3, 8, dtype=torch.float64), torch.randn(2, 4, 6, dtype=torch.float64)
    close(bent(x, memory, memory)[0], attention(x, memory, memory)[0])


def _split(x, heads):
    n, length, e = x.shape
    return x.view(n, length, heads, e // heads).transpose(1, 2)


@pytest.mark.parametrize("batch", BATCH_SIZES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_feedback_alignment_gradients_of_each_projection_follow_the_formula(batch, dtype):
    """Self-attention with FA projections: ∂x = δq Bq + δk Bk + δv Bv, ∂W = δᵀ x for each
    projection, where the δ come from exact attention backprop of G B_o (G: the gradient at
    the output), all computed here from the weights with plain tensor operations."""
    torch.manual_seed(1)
    bent = GenAttention(
        8, 2, batch_first=True, forward="linear_asym_dx", feedback=True, dtype=dtype
    )
    for layer in (bent.q_proj, bent.k_proj, bent.v_proj, bent.out_proj):
        nn.init.uniform_(layer.bias, -0.5, 0.5)
    x = torch.randn(batch, 5, 8, dtype=dtype, requires_grad=True)
    grad_out = torch.randn(batch, 5, 8, dtype=dtype)
    out, _ = bent(x, x, x, need_weights=False)
    out.backward(grad_out)

    q_layer, k_layer, v_layer, o_layer = bent.q_proj, bent.k_proj, bent.v_proj, bent.out_proj
    with torch.no_grad():
        q, k, v = (x @ m.weight.T + m.bias for m in (q_layer, k_layer, v_layer))
    q, k, v = (t.detach().requires_grad_() for t in (q, k, v))
    scores = _split(q, 2) @ _split(k, 2).transpose(-2, -1) / math.sqrt(4)
    context = (scores.softmax(-1) @ _split(v, 2)).transpose(1, 2).reshape(batch, 5, 8)
    d_context = grad_out @ o_layer.feedback  # FA at the output projection
    dq, dk, dv = torch.autograd.grad(context, (q, k, v), d_context)
    expected_dx = dq @ q_layer.feedback + dk @ k_layer.feedback + dv @ v_layer.feedback
    close(x.grad, expected_dx)
    flat = x.detach().reshape(-1, 8)
    for layer, delta in ((q_layer, dq), (k_layer, dk), (v_layer, dv)):
        close(layer.weight.grad, delta.reshape(-1, 8).T @ flat)
        close(layer.bias.grad, delta.reshape(-1, 8).sum(0))
    close(o_layer.weight.grad, grad_out.reshape(-1, 8).T @ context.detach().reshape(-1, 8))
    close(o_layer.bias.grad, grad_out.reshape(-1, 8).sum(0))


def test_exact_mapping_passes_gradcheck():
    torch.manual_seed(0)
    bent = GenAttention(4, 2, batch_first=True, dtype=torch.float64)
    x = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: bent(t, t, t, need_weights=False)[0], (x,))


def test_dfa_reaches_every_parameter_of_a_converted_transformer():
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True)
    net = nn.Sequential(layer, nn.Flatten(), nn.Linear(5 * 8, 3))
    bent = convert(net, dense="linear_blocked_dx")
    model = DFA(bent, 3, input_shape=(5, 8))
    # q, k and v read the data, which needs no gradient; then the output projection, the
    # feed-forward layers and the classifier read hidden tensors
    assert model.targets == [
        "0.self_attn.out_proj input",
        "0.linear1 input",
        "0.linear2 input",
        "2 input",
    ]
    x = torch.randn(4, 5, 8, requires_grad=True)  # the input needs a gradient: still no target
    F.cross_entropy(model(x), torch.tensor([0, 1, 2, 0])).backward()
    assert all(p.grad is not None for p in model.parameters())


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="divisible by num_heads, got 8 and 3"):
        GenAttention(8, 3)
    with pytest.raises(ValueError, match="add_bias_kv or add_zero_attn"):
        GenAttention.from_module(nn.MultiheadAttention(4, 2, add_bias_kv=True), "linear")
    bent = GenAttention(4, 2, batch_first=True)
    x = torch.randn(2, 3, 4)
    with pytest.raises(ValueError, match=r"key_padding_mask must be \(N, S\) = \(2, 3\)"):
        bent(x, x, x, key_padding_mask=torch.zeros(3, 2, dtype=torch.bool))
    assert isinstance(
        convert(nn.Sequential(nn.MultiheadAttention(4, 2)), dense="linear")[0], GenAttention
    )
    assert isinstance(bent.q_proj, GenDense)


@pytest.mark.parametrize(("rule", "measured"), [("fa", 0.44), ("usf", 0.69), ("dfa", 0.34)])
def test_bent_rules_train_a_small_transformer_on_mnist_rows(mnist, rule, measured):
    """28 rows of 28 pixels as tokens, one pre-norm layer: well above chance (0.1) after three
    epochs on 2000 images (``measured``: the test accuracy seen on a CPU)."""
    from bender.models import VisionTransformer
    from bender.rules import apply_rule
    from bender.training import train

    images = mnist.subset(2000, 500)
    images.train.x = images.train.x.view(-1, 1, 28, 28)
    images.test.x = images.test.x.view(-1, 1, 28, 28)
    torch.manual_seed(0)
    net = VisionTransformer(1, (28, 28), 10, patch=(1, 28), dim=32, depth=1, heads=2, mlp_dim=64)
    model = apply_rule(net, rule, input_shape=(1, 28, 28))
    table = train(model, images, epochs=3, lr=3e-3, batch_size=32)
    assert table["acc_test"].iloc[-1] > 0.25
