import math

import pytest
import torch
import torch.nn.functional as F

from bender import GenConv, GenDense, mappings
from bender.mappings import MAPPINGS, register_mapping, resolve_mapping
from tests.conftest import close, cpu_uniform, global_rng_state


def _dense(dtype, forward, feedback=True):
    return GenDense(6, 4, forward=forward, feedback=feedback, dtype=dtype)


def _run(layer, x, delta):
    x = x.clone().requires_grad_()
    y = layer(x)
    y.backward(delta)
    return x, y


def test_linear_is_backprop(batch, dtype):
    layer = _dense(dtype, mappings.linear, feedback=False)
    with torch.no_grad():
        layer.bias.normal_()
    x, delta = torch.randn(batch, 6, dtype=dtype), torch.randn(batch, 4, dtype=dtype)
    xg, y = _run(layer, x, delta)
    w = layer.weight.detach()
    close(y, x @ w.T + layer.bias.detach())
    close(xg.grad, delta @ w)
    close(layer.weight.grad, delta.T @ x)
    close(layer.bias.grad, delta.sum(0))


def test_linear_asym_dx(batch, dtype):
    layer = _dense(dtype, mappings.linear_asym_dx)
    x, delta = torch.randn(batch, 6, dtype=dtype), torch.randn(batch, 4, dtype=dtype)
    xg, y = _run(layer, x, delta)
    w, b = layer.weight.detach(), layer.feedback
    close(y, x @ w.T)
    close(xg.grad, torch.einsum("no,oi->ni", delta, b))
    close(layer.weight.grad, torch.einsum("no,ni->oi", delta, x))
    close(layer.bias.grad, delta.sum(0))


def test_linear_blocked_dx(batch, dtype):
    layer = _dense(dtype, mappings.linear_blocked_dx, feedback=False)
    x, delta = torch.randn(batch, 6, dtype=dtype), torch.randn(batch, 4, dtype=dtype)
    xg, y = _run(layer, x, delta)
    close(y, x @ layer.weight.detach().T)
    assert xg.grad is None
    close(layer.weight.grad, torch.einsum("no,ni->oi", delta, x))
    close(layer.bias.grad, delta.sum(0))


@pytest.mark.parametrize("asym", [False, True])
def test_radial_mappings(batch, dtype, asym):
    layer = _dense(dtype, mappings.radial_asym_dx if asym else mappings.radial, feedback=asym)
    x, delta = torch.randn(batch, 6, dtype=dtype), torch.randn(batch, 4, dtype=dtype)
    xg, y = _run(layer, x, delta)
    w = layer.weight.detach()
    f = layer.feedback if asym else w
    close(y, -(torch.cdist(x, w) ** 2))
    r, c = delta.sum(1, keepdim=True), delta.sum(0)
    close(xg.grad, 2 * torch.einsum("no,oi->ni", delta, f) - 2 * r * x)
    close(layer.weight.grad, 2 * torch.einsum("no,ni->oi", delta, x) - 2 * c[:, None] * f)
    close(layer.bias.grad, c)


def test_linear_binary_weights(batch, dtype):
    layer = _dense(dtype, mappings.linear_binary_weights, feedback=False)
    x, delta = torch.randn(batch, 6, dtype=dtype), torch.randn(batch, 4, dtype=dtype)
    xg, y = _run(layer, x, delta)
    s = torch.where(layer.weight.detach() > 0, 1.0, -1.0).to(dtype)
    close(y, x @ s.T)
    close(xg.grad, delta @ s)  # the input sees the binary weights
    close(layer.weight.grad, delta.T @ x)  # latent weights: straight-through


def test_linear_stoc_binary_weights_reproducible(batch, dtype):
    layer = _dense(dtype, "linear_stoc_binary_weights", feedback=False)
    x, delta = torch.randn(batch, 6, dtype=dtype), torch.randn(batch, 4, dtype=dtype)
    y1 = mappings.linear_stoc_binary_weights(layer, x, torch.Generator().manual_seed(3))
    y2 = mappings.linear_stoc_binary_weights(layer, x, torch.Generator().manual_seed(3))
    assert torch.equal(y1, y2)
    # reconstruct the drawn signs from the same generator, independently of the layer
    u = cpu_uniform(layer.weight.shape, 3, dtype)
    p = ((layer.weight.detach() + 1) / 2).clamp(0, 1)
    s = torch.where(u < p, 1.0, -1.0).to(dtype)
    close(y1, x @ s.T)
    layer.generator = torch.Generator().manual_seed(3)
    xg, _ = _run(layer, x, delta)
    close(xg.grad, delta @ s)
    close(layer.weight.grad, delta.T @ x)


def _signs(w):
    """sign(w) written out, for the sign-concordant rules' expected feedback."""
    return torch.where(w > 0, 1.0, torch.where(w < 0, -1.0, 0.0)).to(w.dtype)


def _expected_sign_feedback(rule, layer, seed):
    """The feedback B each sign-concordant rule should use, built here from its definition."""
    w = layer.weight.detach()
    if rule == "usf":
        return _signs(w)
    if rule == "frsf":
        return layer.feedback.abs() * _signs(w)
    fan = w.shape[0] * w[0, 0].numel() + w.shape[1] * w[0, 0].numel()  # fan_out + fan_in
    u = cpu_uniform(w.shape, seed, w.dtype)
    return u * math.sqrt(6 / fan) * _signs(w)


@pytest.mark.parametrize("rule", ["usf", "frsf", "brsf"])
def test_linear_sign_concordant_mappings(rule, batch, dtype):
    layer = GenDense(
        6,
        4,
        forward=f"linear_{rule}_dx",
        feedback=rule == "frsf",
        generator=torch.Generator().manual_seed(9),
        dtype=dtype,
    )
    with torch.no_grad():
        layer.bias.normal_()
        layer.weight[0, 0] = 0.0  # sign(0) = 0: no feedback through a zero weight
    b = _expected_sign_feedback(rule, layer, seed=9)
    x, delta = torch.randn(batch, 6, dtype=dtype), torch.randn(batch, 4, dtype=dtype)
    xg, y = _run(layer, x, delta)
    w = layer.weight.detach()
    close(y, x @ w.T + layer.bias.detach())
    close(xg.grad, delta @ b)
    close(layer.weight.grad, delta.T @ x)  # exact
    close(layer.bias.grad, delta.sum(0))
    assert not torch.allclose(xg.grad, delta @ w)  # not backprop's ∂x


def test_sign_concordant_feedback_follows_the_weight(dtype):
    layer = GenDense(5, 3, forward="linear_usf_dx", dtype=dtype)
    x, delta = torch.randn(4, 5, dtype=dtype), torch.randn(4, 3, dtype=dtype)
    before, _ = _run(layer, x, delta)
    with torch.no_grad():
        layer.weight.neg_()  # every sign flips, as training may flip some
    after, _ = _run(layer, x, delta)
    close(after.grad, -before.grad)


def test_brsf_draws_new_magnitudes_each_call_and_only_when_dx_is_needed():
    g = torch.Generator().manual_seed(4)
    layer = GenDense(5, 3, forward="linear_brsf_dx", generator=g)
    x, delta = torch.randn(4, 5), torch.randn(4, 3)
    first, _ = _run(layer, x, delta)
    second, _ = _run(layer, x, delta)
    assert not torch.allclose(first.grad, second.grad)  # M redrawn for each batch
    for dx in (first.grad, second.grad):  # ∂x = δ B; δ (4×3) has full column rank: solve for B
        b = torch.linalg.lstsq(delta.double(), dx.double()).solution
        assert torch.equal(torch.sign(b), torch.sign(layer.weight.detach().double()))
        assert b.abs().max() <= math.sqrt(6 / 8) + 1e-6  # |M| at most Glorot's bound
    state, global_state = g.get_state(), global_rng_state()
    layer(x).sum().backward()  # a first layer: x needs no ∂x
    with torch.no_grad():
        layer(x.requires_grad_())  # evaluation
    assert torch.equal(g.get_state(), state) and torch.equal(global_rng_state(), global_state)
    unseeded = GenDense(5, 3, forward="linear_brsf_dx")  # no generator: the global one
    _run(unseeded, x, delta)
    assert not torch.equal(global_rng_state(), global_state)


def test_frsf_needs_a_feedback_matrix_and_usf_brsf_do_not():
    with pytest.raises(ValueError, match="linear_frsf_dx needs a feedback matrix"):
        GenDense(3, 2, forward="linear_frsf_dx")
    with pytest.raises(ValueError, match="conv_linear_frsf_dx needs a feedback matrix"):
        GenConv(1, 2, 3, forward="conv_linear_frsf_dx")
    for name in ("linear_usf_dx", "linear_brsf_dx"):
        assert GenDense(3, 2, forward=name).feedback is None
    with pytest.raises(ValueError, match="linear_usf_dx is for dense layers"):
        GenConv(1, 2, 3, forward="linear_usf_dx")


CONV_PLAIN = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


@pytest.mark.parametrize("kernel", [(3,), (3, 3), (2, 2, 2)], ids=["1d", "2d", "3d"])
@pytest.mark.parametrize(
    "name", ["conv_linear", "conv_linear_asym_dx", "conv_linear_blocked_dx", "conv_binary_weights"]
)
def test_conv_mappings(name, kernel, batch, dtype):
    dims = len(kernel)
    layer = GenConv(
        2,
        3,
        kernel,
        forward=name,
        feedback=name.endswith("asym_dx"),
        stride=1,
        padding=1,
        dtype=dtype,
    )
    with torch.no_grad():
        layer.bias.normal_()
    conv = CONV_PLAIN[dims]
    x = torch.randn(batch, 2, *([5] * dims), dtype=dtype)
    w, bias = layer.weight.detach(), layer.bias.detach()
    used = torch.where(w > 0, 1.0, -1.0).to(dtype) if name == "conv_binary_weights" else w
    expected_y = conv(x, used, bias, 1, 1)
    delta = torch.randn_like(expected_y)
    xg, y = _run(layer, x, delta)
    close(y, expected_y)
    # expected gradients from plain convolutions: input grad through the kernel the rule names
    back = {"conv_linear": used, "conv_linear_asym_dx": layer.feedback, "conv_binary_weights": used}
    if name in back:
        xr = x.clone().requires_grad_()
        conv(xr, back[name], None, 1, 1).backward(delta)
        close(xg.grad, xr.grad)
    else:
        assert xg.grad is None
    wr = used.clone().requires_grad_()
    conv(x, wr, None, 1, 1).backward(delta)
    close(layer.weight.grad, wr.grad)
    close(layer.bias.grad, delta.sum([d for d in range(delta.dim()) if d != 1]))


@pytest.mark.parametrize("kernel", [(3,), (3, 3), (2, 2, 2)], ids=["1d", "2d", "3d"])
@pytest.mark.parametrize("rule", ["usf", "frsf", "brsf"])
def test_conv_sign_concordant_mappings(rule, kernel, batch, dtype):
    dims = len(kernel)
    layer = GenConv(
        4,
        2,
        kernel,
        forward=f"conv_linear_{rule}_dx",
        feedback=rule == "frsf",
        stride=2,
        padding=1,
        groups=2,
        generator=torch.Generator().manual_seed(6),
        dtype=dtype,
    )
    with torch.no_grad():
        layer.bias.normal_()
    b = _expected_sign_feedback(rule, layer, seed=6)
    conv = CONV_PLAIN[dims]
    x = torch.randn(batch, 4, *([6] * dims), dtype=dtype)
    w = layer.weight.detach()
    expected_y = conv(x, w, layer.bias.detach(), 2, 1, 1, 2)
    delta = torch.randn_like(expected_y)
    xg, y = _run(layer, x, delta)
    close(y, expected_y)
    xr = x.clone().requires_grad_()  # ∂x: backprop through a convolution with kernel B
    conv(xr, b, None, 2, 1, 1, 2).backward(delta)
    close(xg.grad, xr.grad)
    wr = w.clone().requires_grad_()
    conv(x, wr, None, 2, 1, 1, 2).backward(delta)
    close(layer.weight.grad, wr.grad)


def test_custom_mapping_is_a_plain_function():
    def scaled_linear(layer, x):
        return layer.alpha * F.linear(x, layer.weight, layer.bias)

    layer = GenDense(3, 2, forward=scaled_linear, alpha=2.0)
    x = torch.randn(4, 3)
    close(layer(x), 2.0 * (x @ layer.weight.detach().T))
    layer(x).sum().backward()
    assert layer.alpha.grad is not None


def test_register_and_resolve_by_name():
    @register_mapping(name="test_double_linear")
    def double(layer, x):
        return 2 * F.linear(x, layer.weight, layer.bias)

    try:
        assert resolve_mapping("test_double_linear") is double
        layer = GenDense(3, 2, forward="test_double_linear")
        assert "forward=double" in repr(layer)
    finally:
        del MAPPINGS["test_double_linear"]


def test_bender_own_mappings_cannot_be_replaced_or_changed():
    own = {name: MAPPINGS[name] for name in ("linear", "linear_asym_dx", "conv_linear")}
    with pytest.raises(ValueError, match="'linear' is one of bender's own mappings"):

        @register_mapping
        def linear(layer, x):
            return x

    with pytest.raises(ValueError, match="'linear_asym_dx' is one of bender's own mappings"):
        register_mapping(lambda layer, x: x, name="linear_asym_dx")
    with pytest.raises(ValueError, match="linear is bender's own mapping, already registered"):
        register_mapping(own["linear"], name="plain_alias", needs_feedback=True)
    assert {name: MAPPINGS[name] for name in own} == own and "plain_alias" not in MAPPINGS
    assert own["linear"].needs_feedback is False  # a default GenDense still builds
    assert GenDense(3, 2, forward="linear").mapping is own["linear"]


def test_registering_your_own_name_again_replaces_it():
    def first(layer, x):
        return F.linear(x, layer.weight, layer.bias)

    def second(layer, x):
        return 2 * F.linear(x, layer.weight, layer.bias)

    try:
        register_mapping(first, name="test_rerun_cell")
        register_mapping(second, name="test_rerun_cell")  # the cell, edited and run again
        assert GenDense(3, 2, forward="test_rerun_cell").mapping is second
    finally:
        del MAPPINGS["test_rerun_cell"]


def test_register_mapping_refuses_what_is_not_a_function():
    with pytest.raises(
        TypeError, match=r"got 'my_rule' \(for a name, write register_mapping\(name="
    ):
        register_mapping("my_rule")
    with pytest.raises(TypeError, match="exact must be a mapping, its registered name, or None"):
        register_mapping(lambda layer, x: x, exact=1)
    with pytest.raises(ValueError, match="unknown forward mapping 'lienar'"):
        register_mapping(lambda layer, x: x, exact="lienar")
    with pytest.raises(TypeError, match="feedback_matrix must be a function layer -> B"):
        register_mapping(lambda layer, x: x, feedback_matrix=torch.ones(2, 2))
    assert "my_rule" not in MAPPINGS and "<lambda>" not in MAPPINGS


def test_unknown_and_non_callable_forward():
    with pytest.raises(
        ValueError, match=r"unknown forward mapping 'lienar'; known mappings: .*linear_asym_dx"
    ):
        GenDense(3, 2, forward="lienar")
    with pytest.raises(TypeError, match="forward must be a callable"):
        GenDense(3, 2, forward=42)


def test_mapping_needing_feedback_on_layer_without_it():
    with pytest.raises(
        ValueError, match="linear_asym_dx needs a feedback matrix; pass feedback=True"
    ):
        GenDense(3, 2, forward="linear_asym_dx")
    layer = GenDense(3, 2)
    with pytest.raises(ValueError, match="needs a feedback matrix, but this GenDense has none"):
        mappings.linear_asym_dx(layer, torch.randn(1, 3))


@pytest.mark.parametrize("forward", ["linear_kp_dx", "conv_linear_kp_dx"])
def test_kolen_pollack_layers_hold_their_feedback_as_a_parameter(forward):
    given = torch.randn(4, 3) if forward == "linear_kp_dx" else torch.randn(4, 3, 2, 2)
    if forward == "linear_kp_dx":
        layer = GenDense(3, 4, forward=forward, feedback=given)
    else:
        layer = GenConv(3, 4, 2, forward=forward, feedback=given)
    assert isinstance(layer.feedback, torch.nn.Parameter)
    assert dict(layer.named_parameters())["feedback"] is layer.feedback
    assert "feedback" not in dict(layer.named_buffers())
    assert "feedback" in layer.state_dict()
    close(layer.feedback.detach(), given)
    assert layer.feedback.data_ptr() != given.data_ptr()  # trained in place: not the caller's
    assert "learned feedback" in repr(layer)
    fixed = GenDense(3, 4, forward="linear_asym_dx", feedback=True)
    assert "feedback" in dict(fixed.named_buffers()) and "learned" not in repr(fixed)


def test_linear_kp_dx_layer(batch, dtype):
    layer = _dense(dtype, "linear_kp_dx")
    with torch.no_grad():
        layer.bias.normal_()
    x, delta = torch.randn(batch, 6, dtype=dtype), torch.randn(batch, 4, dtype=dtype)
    xg, y = _run(layer, x, delta)
    w, b = layer.weight.detach(), layer.feedback.detach()
    close(y, x @ w.T + layer.bias.detach())
    close(xg.grad, delta @ b)
    close(layer.weight.grad, delta.T @ x)
    close(layer.feedback.grad, delta.T @ x)
    close(layer.bias.grad, delta.sum(0))


def test_kolen_pollack_needs_a_feedback_matrix():
    with pytest.raises(ValueError, match="linear_kp_dx needs a feedback matrix"):
        GenDense(3, 2, forward="linear_kp_dx")
    with pytest.raises(ValueError, match="conv_linear_kp_dx needs a feedback matrix"):
        GenConv(1, 2, 3, forward="conv_linear_kp_dx")
    with pytest.raises(ValueError, match=r"learned_feedback=True .* needs needs_feedback=True"):
        register_mapping(lambda layer, x: x, name="kp_without_feedback", learned_feedback=True)


def _kp_net(dtype):
    return torch.nn.Sequential(
        torch.nn.Unflatten(1, (1, 6, 6)),
        GenConv(1, 3, 3, torch.nn.ReLU(), forward="conv_linear_kp_dx", feedback=True, dtype=dtype),
        torch.nn.Flatten(),
        GenDense(48, 8, torch.nn.ReLU(), forward="linear_kp_dx", feedback=True, dtype=dtype),
        GenDense(8, 3, forward="linear_kp_dx", feedback=True, dtype=dtype),
    )


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_kolen_pollack_weight_decay_shrinks_w_minus_b_geometrically(optimizer, dtype):
    # Akrout et al. 2019: W and B get the same update, and decay shrinks W − B by (1 − ηλ) a
    # step. Exactly so for plain SGD with L2 decay and for AdamW (whose update depends on the
    # gradient history alone, the same for both); every layer, the first one too.
    model = _kp_net(dtype)
    layers = [m for m in model if isinstance(m, (GenDense, GenConv))]
    start = [(m.weight - m.feedback).detach().clone() for m in layers]
    weights = [m.weight.detach().clone() for m in layers]
    lr, decay, steps = 0.05, 0.5, 20
    make = torch.optim.SGD if optimizer == "sgd" else torch.optim.AdamW
    opt = make(model.parameters(), lr=lr, weight_decay=decay)
    for _ in range(steps):
        x, y = torch.randn(16, 36, dtype=dtype), torch.randint(0, 3, (16,))
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    shrink = (1 - lr * decay) ** steps
    for m, d0, w0 in zip(layers, start, weights, strict=True):
        assert not torch.allclose(m.weight.detach(), shrink * w0)  # the gradients moved W too
        close((m.weight - m.feedback).detach(), shrink * d0)


def test_kolen_pollack_brings_the_feedback_matrices_to_the_weights_while_learning():
    from bender.alignment import weight_alignment

    torch.manual_seed(0)
    model, teacher = _kp_net(torch.float32), torch.randn(36, 3)
    before = weight_alignment(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=0.02)
    for _ in range(300):
        x = torch.randn(32, 36)
        opt.zero_grad()
        F.cross_entropy(model(x), (x @ teacher).argmax(1)).backward()
        opt.step()
    x = torch.randn(1000, 36)
    assert (model(x).argmax(1) == (x @ teacher).argmax(1)).float().mean() > 0.6  # it learned
    after = weight_alignment(model)
    assert all(before[name] > 60 for name in before)  # two random matrices: near 90°
    assert all(after[name] < 10 for name in after), after
