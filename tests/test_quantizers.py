"""Quantizer modules by name, and layers with input and kernel quantizers: every mapping reads
the quantized weight, the latent weight learns through the quantizer's pseudo-gradient."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bender import GenConv, GenDense, recipes
from bender.constraints import ClipBinaryWeights, binary_layers
from bender.quantizers import QUANTIZERS, DoReFa, SteSign, SteTern, resolve_quantizer
from bender.training import train
from tests.conftest import close


def test_every_quantizer_is_known_by_name_and_builds_with_its_defaults():
    assert list(QUANTIZERS) == [
        "ste_sign",
        "approx_sign",
        "swish_sign",
        "magnitude_aware_sign",
        "ste_tern",
        "ste_heaviside",
        "dorefa",
    ]
    x = torch.randn(3, 4)
    for name, cls in QUANTIZERS.items():
        module = resolve_quantizer(name)
        assert isinstance(module, cls) and module(x).shape == x.shape
    assert SteTern().bits == 2 and DoReFa(k_bit=3).bits == 3 and SteSign().bits == 1


@pytest.mark.parametrize(
    ("given", "error", "says"),
    [
        ("ste_sing", ValueError, "unknown kernel_quantizer 'ste_sing'; known quantizers: ste_si"),
        (SteSign, TypeError, "kernel_quantizer must be a quantizer's name"),
        (3, TypeError, "kernel_quantizer must be a quantizer's name"),
    ],
)
def test_an_unknown_quantizer_is_refused_with_the_known_ones(given, error, says):
    with pytest.raises(error, match=says):
        GenDense(4, 3, kernel_quantizer=given)


def test_module_settings_are_checked_when_built():
    with pytest.raises(ValueError, match="k_bit must be an int from 1 to 8, got 9"):
        DoReFa(k_bit=9)
    with pytest.raises(ValueError, match="clip_value must be a positive number or None"):
        SteSign(clip_value=-1)


def test_a_dense_layer_computes_with_quantized_inputs_and_weights(batch, dtype):
    layer = GenDense(5, 3, input_quantizer="ste_sign", kernel_quantizer="ste_sign", dtype=dtype)
    latent = layer.latent_weight()
    assert latent is layer.parametrizations.weight.original
    x = torch.randn(batch, 5, dtype=dtype, requires_grad=True)
    y = layer(x)
    sx = torch.where(x.detach() >= 0, 1.0, -1.0).to(dtype)
    sw = torch.where(latent.detach() >= 0, 1.0, -1.0).to(dtype)
    close(y, sx @ sw.t() + layer.bias.detach())
    g = torch.randn(batch, 3, dtype=dtype)
    y.backward(g)
    # ∂W_latent = (δᵀ sx) ⊙ 1{|W| ≤ 1};  ∂x = (δ sw) ⊙ 1{|x| ≤ 1}
    close(latent.grad, (g.t() @ sx) * (latent.detach().abs() <= 1))
    close(x.grad, (g @ sw) * (x.detach().abs() <= 1))
    assert [n for n, _ in layer.named_parameters()] == ["bias", "parametrizations.weight.original"]


BETA = 5.0
# name: (forward q(v), pseudo-gradient p(v)), written out here from the quantizers' formulas
ELEMENTWISE = {
    "ste_sign": (lambda v: torch.where(v >= 0, 1.0, -1.0), lambda v: (v.abs() <= 1) * 1.0),
    "approx_sign": (
        lambda v: torch.where(v >= 0, 1.0, -1.0),
        lambda v: torch.clamp(2 - 2 * v.abs(), min=0),
    ),
    "swish_sign": (
        lambda v: torch.where(v >= 0, 1.0, -1.0),
        lambda v: BETA * (2 - BETA * v * torch.tanh(BETA * v / 2)) / (1 + torch.cosh(BETA * v)),
    ),
    "ste_heaviside": (lambda v: (v > 0) * 1.0, lambda v: (v.abs() <= 1) * 1.0),
    "dorefa": (
        lambda v: torch.round(3 * v.clamp(0, 1)) / 3,  # 2 bits: n = 3
        lambda v: ((v >= 0) & (v <= 1)) * 1.0,
    ),
}


@pytest.mark.parametrize("name", list(ELEMENTWISE))
def test_a_layer_fuses_elementwise_quantizers_into_one_product_with_their_gradients(
    name, batch, dtype
):
    """Eager training steps run q_in(x) q_w(W)ᵀ + b as one Function; its gradients are the
    quantizers' pseudo-gradients around the exact product, as unfused."""
    layer = GenDense(6, 4, input_quantizer=name, kernel_quantizer=name, dtype=dtype)
    latent = layer.latent_weight()
    with torch.no_grad():
        latent.copy_(torch.randn(4, 6, dtype=dtype) * 1.5)  # some |W| > 1: clipped there
        layer.bias.copy_(torch.randn(4, dtype=dtype))
    x = torch.randn(batch, 6, dtype=dtype, requires_grad=True)
    y = layer(x)
    assert type(y.grad_fn).__name__ == "QuantizedLinearBackward"
    q, p = ELEMENTWISE[name]
    w, v = latent.detach(), x.detach()
    close(y, q(v).to(dtype) @ q(w).to(dtype).t() + layer.bias.detach())
    g = torch.randn(batch, 4, dtype=dtype)
    y.backward(g)
    close(x.grad, (g @ q(w).to(dtype)) * p(v).to(dtype))
    close(latent.grad, (g.t() @ q(v).to(dtype)) * p(w).to(dtype))
    close(layer.bias.grad, g.sum(0))
    # the general path (taken under torch.func) gives the same gradients
    params = {"bias": layer.bias, "parametrizations.weight.original": latent}

    def loss(params, x):
        return (torch.func.functional_call(layer, params, (x,)) * g).sum()

    grads = torch.func.grad(loss, argnums=(0, 1))(
        {k: t.detach() for k, t in params.items()}, x.detach()
    )
    close(grads[1], x.grad)
    close(grads[0]["parametrizations.weight.original"], latent.grad)


def test_what_is_not_elementwise_or_not_plain_is_not_fused(dtype):
    x = torch.randn(3, 6, dtype=dtype, requires_grad=True)
    scaled = GenDense(6, 4, kernel_quantizer="magnitude_aware_sign", dtype=dtype)
    assert type(scaled(x).grad_fn).__name__ != "QuantizedLinearBackward"

    class Halved(SteSign):  # changes the forward only: its parts would not say what it does
        def forward(self, v):
            return super().forward(v) / 2

    halved = GenDense(6, 4, kernel_quantizer=Halved(), bias=False, dtype=dtype)
    sign = torch.where(halved.latent_weight().detach() >= 0, 1.0, -1.0).to(dtype)
    close(halved(x), x.detach() @ sign.t() / 2)
    fa = GenDense(6, 4, forward="linear_asym_dx", feedback=True, kernel_quantizer="ste_sign")
    assert type(fa(x.float()).grad_fn).__name__ != "QuantizedLinearBackward"
    normed = GenDense(6, 4, kernel_quantizer="ste_sign", dtype=dtype)
    torch.nn.utils.parametrize.register_parametrization(normed, "weight", nn.Identity())
    assert type(normed(x).grad_fn).__name__ != "QuantizedLinearBackward"
    with torch.autocast("cpu", dtype=torch.bfloat16):
        plain = GenDense(6, 4, kernel_quantizer="ste_sign")(x.float())
    assert type(plain.grad_fn).__name__ != "QuantizedLinearBackward"


def test_a_binary_weight_layer_trained_by_feedback_alignment_is_one_line(dtype):
    layer = GenDense(6, 4, forward="linear_asym_dx", feedback=True, kernel_quantizer="ste_sign")
    layer = layer.to(dtype)
    x = torch.randn(7, 6, dtype=dtype, requires_grad=True)
    g = torch.randn(7, 4, dtype=dtype)
    layer(x).backward(g)
    latent = layer.latent_weight().detach()
    close(x.grad, g @ layer.feedback)  # ∂x through B, not through sign(W)
    close(layer.latent_weight().grad, (g.t() @ x.detach()) * (latent.abs() <= 1))


def test_a_conv_layer_takes_quantizers_too(dtype):
    layer = GenConv(2, 3, 3, padding=1, input_quantizer=DoReFa(2), kernel_quantizer="ste_sign")
    layer = layer.to(dtype)
    x = torch.rand(2, 2, 5, 5, dtype=dtype)
    expected = F.conv2d(
        torch.round(x.clamp(0, 1) * 3) / 3,
        torch.where(layer.latent_weight() >= 0, 1.0, -1.0).to(dtype),
        layer.bias,
        padding=1,
    )
    close(layer(x), expected)


def test_a_mapping_that_binarizes_itself_refuses_a_kernel_quantizer():
    with pytest.raises(ValueError, match="linear_binary_weights binarizes the weight itself"):
        GenDense(4, 3, forward="linear_binary_weights", kernel_quantizer="ste_sign")


def test_reset_parameters_draws_the_latent_weight():
    layer = GenDense(50, 40, kernel_quantizer="ste_sign")
    before = layer.latent_weight().detach().clone()
    layer.reset_parameters()
    after = layer.latent_weight().detach()
    assert not torch.equal(before, after)
    bound = (6 / 90) ** 0.5  # Glorot-uniform
    assert after.abs().max() <= bound and after.abs().max() > 0.9 * bound


def test_clipping_bounds_the_latent_weights_of_quantized_layers():
    model = nn.Sequential(GenDense(4, 3, kernel_quantizer="ste_sign"), GenDense(3, 2))
    assert list(binary_layers(model)) == ["0"]
    with torch.no_grad():
        model[0].latent_weight().mul_(10)
    ClipBinaryWeights(0.5)(model)
    assert model[0].latent_weight().abs().max() <= 0.5
    assert model[0].weight.abs().unique().tolist() == [1.0]


def test_binary_mlp_bn_builds_larqs_practice():
    model = recipes.build("binary-mlp-bn")
    dense = [m for m in model if isinstance(m, GenDense)]
    assert [m.input_quantizer is None for m in dense] == [True, False, False]
    assert all(isinstance(m.kernel_quantizer, SteSign) and m.bias is None for m in dense)
    assert sum(isinstance(m, nn.BatchNorm1d) for m in model) == 3
    assert any(isinstance(f, ClipBinaryWeights) for f in recipes.get("binary-mlp-bn").after_step)
    y = model(torch.rand(8, 784))
    y.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_the_summary_counts_quantized_weights_and_macs_as_one_bit():
    from bender.summary import summary

    table = summary(recipes.build("binary-mlp-bn"), torch.rand(1, 784))
    dense = table[table["type"].str.endswith("GenDense")]
    assert dense["params_1bit"].tolist() == [784 * 128, 128 * 64, 64 * 10]
    # the image is real: layer 0's MACs are not 1-bit; the others take ste_sign's ±1
    assert dense["macs_1bit"].tolist() == [0, 128 * 64, 64 * 10]
    assert dense["macs_float"].tolist() == [784 * 128, 0, 0]


def test_export_packs_binary_weights_to_bits_and_loads_back_to_the_same_predictions(
    tmp_path, small_mnist
):
    from bender.export import export, load_exported, save

    model = recipes.build("binary-mlp-bn", seed=0)
    train(model, small_mnist.subset(512, 200), epochs=1, after_step=[ClipBinaryWeights()])
    model.eval()
    state = export(model)
    assert {n: t.dtype for n, t in state["bits"].items()} == dict.fromkeys(
        ["0", "2", "4"], torch.uint8
    )
    assert sum(t.numel() for t in state["bits"].values()) == (784 * 128 + 128 * 64 + 64 * 10) // 8
    save(model, tmp_path / "packed.pt")
    fresh = load_exported(recipes.build("binary-mlp-bn", seed=7).eval(), tmp_path / "packed.pt")
    x = small_mnist.test.x
    assert torch.equal(fresh(x).argmax(1), model(x).argmax(1))
    torch.testing.assert_close(fresh(x), model(x))
    with pytest.raises(ValueError, match="no layer with a 1-bit kernel quantizer"):
        export(recipes.build("fa-mlp"))
    with pytest.raises(ValueError, match=r"holds the binary layers \['0', '2', '4'\], this model"):
        load_exported(nn.Sequential(GenDense(784, 10, kernel_quantizer="ste_sign")), state)


def test_binary_cnn_builds_larqs_tutorial_net():
    model = recipes.build("binary-cnn")
    learning = [m for m in model if isinstance(m, (GenConv, GenDense))]
    assert [type(m).__name__.removeprefix("Parametrized") for m in learning] == [
        "GenConv",
        "GenConv",
        "GenConv",
        "GenDense",
        "GenDense",
    ]
    assert [m.input_quantizer is None for m in learning] == [True, False, False, False, False]
    assert len(binary_layers(model)) == 5
    y = model(torch.rand(4, 784))
    assert y.shape == (4, 10)
    y.sum().backward()
    assert all(p.grad is not None for p in model.parameters())
