import io
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bender import GenConv, GenDense, SignSTE


def test_gendense_defaults_follow_bender():
    layer = GenDense(300, 100, feedback=True)
    bound = math.sqrt(6 / (300 + 100))  # Glorot-uniform
    for t in (layer.weight, layer.feedback):
        assert t.shape == (100, 300)
        assert t.abs().max() <= bound
        assert t.abs().max() > 0.9 * bound  # actually spread over the range
    assert torch.equal(layer.bias, torch.zeros(100))
    assert not torch.equal(layer.weight, layer.feedback)
    assert [n for n, _ in layer.named_parameters()] == ["weight", "bias"]
    assert [n for n, _ in layer.named_buffers()] == ["feedback"]
    assert layer.activation is None


def test_gendense_feedback_tensor_and_shape_check():
    b = torch.randn(4, 3)
    layer = GenDense(3, 4, feedback=b)
    assert torch.equal(layer.feedback, b)
    with pytest.raises(
        ValueError, match=r"linear_asym_dx needs a feedback matrix of the weight's "
    ):
        GenDense(3, 4, forward="linear_asym_dx", feedback=torch.randn(3, 4))
    with pytest.raises(ValueError, match=r"weight's shape \(4, 3\), got \(10, 4\)"):
        GenDense(3, 4, forward="linear_asym_dx", feedback=(10, 4))
    with pytest.raises(
        TypeError, match=r"feedback must be a bool, a shape \(tuple of ints\) or a "
    ):
        GenDense(3, 4, feedback="yes")
    for shape in ((), (3, 0), (3, 2.0), (True, 2)):
        with pytest.raises(ValueError, match="feedback shape must be a tuple of positive ints"):
            GenDense(3, 4, feedback=shape)
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="feedback matrix given holds NaN or infinite"):
            GenDense(3, 4, forward="linear_asym_dx", feedback=torch.full((4, 3), bad))
    with pytest.raises(ValueError, match="feedback matrix given holds NaN or infinite"):
        GenConv(3, 1, 2, forward="conv_linear_asym_dx", feedback=torch.full((2, 1, 3, 3), bad))


def test_feedback_of_another_shape_for_your_own_mapping():
    # Bender.jl's GenDense(in=>out, in_asym=>out_asym): a second matrix of any shape, here one
    # that carries a 10-class error straight to this layer's 4 outputs
    def error_from_ten_classes(layer, x):
        return F.linear(x, layer.weight, layer.bias) + layer.alpha * layer.feedback.sum()

    layer = GenDense(3, 4, forward=error_from_ten_classes, feedback=(4, 10), alpha=0.0)
    assert layer.feedback.shape == (4, 10) and "feedback" in layer.state_dict()
    bound = math.sqrt(6 / (4 + 10))  # Glorot-uniform for a 4×10 matrix
    assert layer.feedback.abs().max() <= bound and layer.feedback.std() > bound / 4
    assert "feedback 4×10" in repr(layer)
    ones = GenConv(2, 3, 3, feedback=(5, 2, 1, 1), init=nn.init.ones_)
    assert torch.equal(ones.feedback, torch.ones(5, 2, 1, 1))
    layer(torch.randn(2, 3)).sum().backward()
    assert layer.weight.grad is not None


def test_gendense_custom_init_and_no_bias():
    layer = GenDense(3, 4, init=nn.init.ones_, bias=False, feedback=True)
    assert torch.equal(layer.weight, torch.ones(4, 3)) and torch.equal(
        layer.feedback, torch.ones(4, 3)
    )
    assert layer.bias is None
    assert torch.equal(layer(torch.ones(2, 3)), torch.full((2, 4), 3.0))


def test_gendense_input_shape_rule():
    layer = GenDense(5, 3, nn.Tanh())
    x = torch.randn(2, 4, 5)
    y = layer(x)
    assert y.shape == (2, 4, 3)
    torch.testing.assert_close(y, torch.tanh(x @ layer.weight.detach().T + layer.bias.detach()))
    assert layer(torch.randn(5)).shape == (3,)
    with pytest.raises(
        ValueError,
        match=r"GenDense\(5 → 3\) expects inputs of shape \(\*, 5\), got \(2, 1, 28, 28\)",
    ):
        layer(torch.randn(2, 1, 28, 28))


def test_extra_slots_are_trainable_parameters():
    layer = GenDense(3, 2, alpha=0.5, lambda_=torch.tensor([1.0, 2.0]))
    names = [n for n, _ in layer.named_parameters()]
    assert names == ["weight", "bias", "alpha", "lambda_"]
    assert layer.beta is None and layer.mu is None
    assert layer.alpha.item() == 0.5 and layer.alpha.requires_grad


def test_state_dict_round_trip_restores_everything():
    a = GenDense(6, 4, SignSTE(), forward="linear_asym_dx", feedback=True, alpha=1.0, mu=2.0)
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    b = GenDense(6, 4, SignSTE(), forward="linear_asym_dx", feedback=True, alpha=0.0, mu=0.0)
    b.load_state_dict(torch.load(buf, weights_only=True))
    for name in ("weight", "bias", "feedback", "alpha", "mu"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert set(a.state_dict()) == {"weight", "bias", "feedback", "alpha", "mu"}


def test_to_moves_feedback():
    layer = GenDense(3, 2, forward="linear_asym_dx", feedback=True).to(torch.float64)
    assert layer.feedback.dtype == torch.float64 and layer.weight.dtype == torch.float64
    conv = GenConv(1, 2, 3, forward="conv_linear_asym_dx", feedback=True).double()
    assert conv.feedback.dtype == torch.float64
    if torch.cuda.is_available():
        assert layer.cuda().feedback.is_cuda


def test_repr():
    layer = GenDense(784, 128, nn.ReLU(), forward="linear_asym_dx", feedback=True, alpha=1.0)
    assert repr(layer) == (
        "GenDense(784 → 128, ReLU(), forward=linear_asym_dx, weight 128×784, "
        "feedback 128×784, extra alpha)"
    )
    assert repr(GenDense(3, 2, torch.relu)) == "GenDense(3 → 2, relu, weight 2×3)"
    conv = GenConv(3, 8, (5, 5), stride=2, groups=1, forward="conv_linear_asym_dx", feedback=True)
    assert repr(conv) == (
        "GenConv(3 → 8, kernel 5×5, stride=(2, 2), forward=conv_linear_asym_dx, "
        "weight 8×3×5×5, feedback 8×3×5×5)"
    )


def test_repr_of_a_spectral_normed_layer_names_it_and_leaves_its_state_alone():
    from torch.nn.utils.parametrizations import spectral_norm

    layer = spectral_norm(GenDense(4, 3, forward="linear_asym_dx", feedback=True))
    vectors = layer.parametrizations.weight[0]._u.clone()
    assert repr(layer) == (
        "ParametrizedGenDense(4 → 3, forward=linear_asym_dx, weight parametrized by "
        "_SpectralNorm, feedback 3×4)"
    )
    assert torch.equal(layer.parametrizations.weight[0]._u, vectors)  # no power step taken


@pytest.mark.parametrize("kernel", [3, (3,), (3, 3), (1, 3, 3)])
def test_genconv_dims_and_shapes(kernel):
    dims = 2 if isinstance(kernel, int) else len(kernel)
    layer = GenConv(4, 6, kernel, nn.ReLU(), padding=1, groups=2, feedback=True)
    assert layer.weight.shape == (
        6,
        2,
        *((kernel,) * 2 if dims == 2 and isinstance(kernel, int) else kernel),
    )
    assert layer.feedback.shape == layer.weight.shape
    x = torch.randn(2, 4, *([7] * dims))
    y = layer(x)
    assert y.shape[:2] == (2, 6) and (y >= 0).all()
    assert layer(x[0]).shape == y.shape[1:]


def test_genconv_errors():
    with pytest.raises(ValueError, match=r"1-, 2- or 3-d kernel, got \(1, 1, 1, 1\) \(4 dims\)"):
        GenConv(1, 1, (1, 1, 1, 1))
    with pytest.raises(ValueError, match="divisible by groups"):
        GenConv(3, 4, 3, groups=2)
    with pytest.raises(ValueError, match=r"padding must be 'valid', 'same', an int .*got 'full'"):
        GenConv(3, 4, 3, padding="full")
    for kwargs, message in [
        ({"in_channels": 0}, "in_channels must be a positive int, got 0"),
        ({"out_channels": 2.0}, "out_channels must be a positive int, got 2.0"),
        ({"groups": 0}, "groups must be a positive int, got 0"),
        ({"kernel_size": 0}, "kernel_size must be an int or a tuple of 2 positive ints, got 0"),
        ({"kernel_size": "3"}, "kernel_size must be an int or a tuple of 1 to 3 ints, got '3'"),
        ({"kernel_size": 3.0}, "kernel_size must be an int or a tuple of 1 to 3 ints, got 3.0"),
        ({"stride": 1.5}, "stride must be an int or a tuple of 2 positive ints, got 1.5"),
        ({"kernel_size": (3, True)}, r"tuple of 2 positive ints, got \(3, True\)"),
        ({"stride": 0}, "stride must be an int or a tuple of 2 positive ints, got 0"),
        ({"dilation": (1, 0)}, r"dilation must be .* 2 positive ints, got \(1, 0\)"),
        ({"padding": -1}, "padding must be an int or a tuple of 2 ints ≥ 0, got -1"),
    ]:
        sizes = {"in_channels": 2, "out_channels": 4, "kernel_size": 3}
        with pytest.raises(ValueError, match=message):
            GenConv(**(sizes | kwargs))
    with pytest.raises(ValueError, match=r"padding='same' needs stride 1, got stride \(2, 2\)"):
        GenConv(3, 4, 3, padding="same", stride=2)
    with pytest.raises(ValueError, match=r"weight's shape \(4, 3, 3, 3\)"):
        GenConv(3, 4, 3, forward="conv_linear_asym_dx", feedback=torch.randn(4, 3, 2, 2))
    layer = GenConv(3, 4, 3)
    with pytest.raises(
        ValueError, match=r"expects inputs of shape \(N, 3, 2 spatial dims\).*got \(2, 1, 8, 8\)"
    ):
        layer(torch.randn(2, 1, 8, 8))


def test_genconv_padding_modes_match_nn_conv_and_unbatched_inputs():
    torch.manual_seed(0)
    for dims, mode in ((1, "circular"), (2, "reflect"), (3, "replicate")):
        conv = getattr(nn, f"Conv{dims}d")(2, 3, 3, padding=1, padding_mode=mode)
        layer = GenConv(2, 3, (3,) * dims, padding=1, padding_mode=mode)
        layer.load_state_dict(conv.state_dict())
        x = torch.randn(2, 2, *(5,) * dims)
        torch.testing.assert_close(layer(x), conv(x))
        torch.testing.assert_close(layer(x[0]), conv(x[:1])[0])  # unbatched
    with pytest.raises(ValueError, match="padding_mode must be one of zeros, reflect, replicate"):
        GenConv(1, 1, 3, padding_mode="mirror")


def test_bad_sizes_and_activation():
    with pytest.raises(ValueError, match="in_features must be a positive int, got 0"):
        GenDense(0, 3)
    with pytest.raises(ValueError, match="out_features must be a positive int, got True"):
        GenDense(3, True)
    with pytest.raises(TypeError, match="activation must be callable"):
        GenDense(3, 2, "relu")
    for layer in (lambda act: GenDense(3, 2, act), lambda act: GenConv(1, 2, 3, act)):
        with pytest.raises(TypeError, match=r"the class ReLU; pass an instance such as ReLU\(\)"):
            layer(nn.ReLU)  # nn.ReLU(x) would return a module, not the activation of x
    with pytest.raises(TypeError, match=r"init must fill a tensor in place.*got 0\.1"):
        GenDense(3, 2, init=0.1)


def test_fa_sequential_trains_with_adam_and_feedback_stays_fixed():
    torch.manual_seed(0)
    model = nn.Sequential(
        GenDense(20, 32, nn.ReLU(), forward="linear_asym_dx", feedback=True),
        GenDense(32, 16, nn.ReLU(), forward="linear_asym_dx", feedback=True),
        GenDense(16, 3, forward="linear_asym_dx", feedback=True),
    )
    feedback_before = [m.feedback.clone() for m in model]
    x = torch.randn(256, 20)
    y = (x[:, :3] * torch.tensor([1.0, -2.0, 0.5])).argmax(1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(60):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    for m, before in zip(model, feedback_before, strict=True):
        assert torch.equal(m.feedback, before)


def test_a_mapping_for_the_other_kind_of_layer_is_refused():
    from bender import register_mapping
    from bender.mappings import MAPPINGS

    with pytest.raises(ValueError, match="conv_linear_asym_dx is for conv layers, not GenDense; "):
        GenDense(4, 3, forward="conv_linear_asym_dx", feedback=True)
    with pytest.raises(ValueError, match="linear is for dense layers, not GenConv; choose one of "):
        GenConv(1, 2, 3, forward="linear")
    with pytest.raises(ValueError, match="layer must be one of"):
        register_mapping(layer="dense2d")

    def doubled(layer, x):  # untagged: any layer may use it
        return 2 * layer.default_mapping(layer, x)

    assert GenDense(4, 3, forward=doubled)(torch.ones(2, 4)).shape == (2, 3)
    assert GenConv(1, 2, 3, forward=doubled)(torch.ones(2, 1, 5, 5)).shape == (2, 2, 3, 3)
    built_in = [m for m in MAPPINGS.values() if m.__module__ == "bender.mappings"]
    assert len(built_in) == 19
    assert all(m.layer == ("conv" if m.__name__.startswith("conv") else "dense") for m in built_in)


@pytest.mark.parametrize(
    ("kernel", "dilation", "padding", "input_padding"),
    [
        (3, 1, (1, 1), None),
        ((5, 3), (1, 2), (2, 2), None),
        ((4, 3), 1, (0, 0), ((1, 2), (1, 1))),  # odd total: PyTorch puts the extra row after
        ((2, 2), (3, 2), (0, 0), ((1, 2), (1, 1))),
    ],
)
@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
def test_genconv_same_and_valid_padding_match_nn_conv2d(kernel, dilation, padding, input_padding):
    x = torch.randn(2, 3, 9, 8)
    for mode in ("same", "valid"):
        reference = nn.Conv2d(3, 4, kernel, padding=mode, dilation=dilation)
        layer = GenConv(3, 4, kernel, padding=mode, dilation=dilation)
        if mode == "same":
            assert (layer.padding, layer.input_padding) == (padding, input_padding)
        else:
            assert (layer.padding, layer.input_padding) == ((0, 0), None)
        with torch.no_grad():
            layer.weight.copy_(reference.weight)
            layer.bias.copy_(reference.bias)
        torch.testing.assert_close(layer(x), reference(x))
        assert layer(x[0]).shape == reference(x[0]).shape  # unbatched


@pytest.mark.parametrize("padding_mode", ["zeros", "reflect"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n", [1, 3])
def test_genconv_feedback_alignment_with_uneven_same_padding(padding_mode, dtype, n):
    """An even kernel with ``padding="same"`` pads 1 before and 2 after: ``∂x`` is ``δ``'s
    transposed convolution with ``B`` on the padded input, sent back through the pad."""
    torch.manual_seed(0)
    layer = GenConv(
        2,
        3,
        (4, 3),
        padding="same",
        padding_mode=padding_mode,
        forward="conv_linear_asym_dx",
        feedback=True,
        dtype=dtype,
    )
    x = torch.randn(n, 2, 7, 6, dtype=dtype, requires_grad=True)
    out = layer(x)
    assert out.shape == (n, 3, 7, 6)
    delta = torch.randn_like(out)
    out.backward(delta)

    # independent: pad by hand (rows 1 before, 2 after; columns 1 and 1), then the formulas
    xd = x.detach().requires_grad_()
    padded = F.pad(xd, (1, 1, 1, 2), mode="constant" if padding_mode == "zeros" else padding_mode)
    p = padded.detach()
    torch.testing.assert_close(out, F.conv2d(p, layer.weight, layer.bias))
    flipped = layer.feedback.detach().flip(2, 3).transpose(0, 1)  # transposed conv as a conv
    dpadded = F.conv2d(F.pad(delta, (2, 2, 3, 3)), flipped)
    (expected_dx,) = torch.autograd.grad(padded, xd, grad_outputs=dpadded)
    torch.testing.assert_close(x.grad, expected_dx)
    windows = F.unfold(p, (4, 3))  # n × (2·4·3) × (7·6): each output position's input patch
    expected_dw = torch.einsum("nop,nkp->ok", delta.flatten(2), windows).view_as(layer.weight)
    torch.testing.assert_close(layer.weight.grad, expected_dw)
    torch.testing.assert_close(layer.bias.grad, delta.sum((0, 2, 3)))


@pytest.mark.parametrize("padding_mode", ["zeros", "circular"])
def test_gradcheck_genconv_with_uneven_same_padding(padding_mode):
    layer = GenConv(2, 3, (2, 3), padding="same", padding_mode=padding_mode, dtype=torch.float64)
    x = torch.randn(2, 2, 4, 5, dtype=torch.float64, requires_grad=True)

    def exact(x, weight, bias):
        return torch.func.functional_call(layer, {"weight": weight, "bias": bias}, (x,))

    assert torch.autograd.gradcheck(exact, (x, layer.weight, layer.bias))


ALPHA = torch.ones(5)  # made outside any meta-device block, so it holds values


def _layers() -> nn.Sequential:
    return nn.Sequential(
        GenDense(6, 5, nn.ReLU(), forward="linear_asym_dx", feedback=True, alpha=ALPHA),
        GenDense(5, 4, feedback=(3, 7), beta=0.5),
        nn.Unflatten(1, (1, 2, 2)),
        GenConv(1, 2, 2, forward="conv_linear_asym_dx", feedback=True),
    )


def test_reset_parameters_draws_again_as_when_built():
    torch.manual_seed(0)
    model = _layers()
    given = torch.randn(4, 3)
    kept = GenDense(3, 4, forward="linear_asym_dx", feedback=given)
    with torch.no_grad():  # as after training: every tensor moved away from its start
        for t in [*model.parameters(), *model.buffers(), *kept.parameters()]:
            t.add_(1.0)
    torch.manual_seed(0)
    for m in model.modules():  # the usual idiom, in construction order
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()
    kept.reset_parameters()
    torch.manual_seed(0)
    fresh = _layers()
    for key, value in fresh.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    assert torch.all(model[0].bias == 0) and torch.all(model[0].alpha == 1)
    assert torch.equal(kept.feedback, given)  # a feedback tensor given is not redrawn
    assert torch.all(kept.bias == 0)


def test_a_model_built_on_the_meta_device_materialises_with_reset_parameters():
    with torch.device("meta"):
        model = _layers()
    assert model[0].weight.is_meta and model[0].feedback.is_meta
    model.to_empty(device=torch.get_default_device())  # the test device (conftest)
    torch.manual_seed(0)
    for m in model.modules():
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()
    torch.manual_seed(0)
    for key, value in _layers().state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key

    with torch.device("meta"):
        valueless = GenDense(2, 3, alpha=torch.ones(3))
    with pytest.raises(ValueError, match="alpha was given as a tensor on the meta device"):
        valueless.to_empty(device="cpu").reset_parameters()
