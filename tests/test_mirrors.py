import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bender import GenConv, GenDense, recipes
from bender.alignment import weight_alignment
from bender.mirrors import WeightMirror, mirror_signal, mirrored_layers
from bender.training import train
from tests.conftest import close

CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
CONV_WEIGHT = {
    1: torch.nn.grad.conv1d_weight,
    2: torch.nn.grad.conv2d_weight,
    3: torch.nn.grad.conv3d_weight,
}


def test_dense_signal_is_the_mean_outer_product_of_output_and_input(batch, dtype):
    weight = torch.randn(5, 7, dtype=dtype)
    noise = torch.randn(batch, 7, dtype=dtype)
    expected = torch.zeros(5, 7, dtype=dtype)
    for xi in noise:  # one sample at a time: y = W ξ, then y ξᵀ
        expected += torch.outer(weight @ xi, xi)
    close(mirror_signal(weight, noise), expected / batch)


@pytest.mark.parametrize("dims", [1, 2, 3])
@pytest.mark.parametrize("groups", [1, 2])
def test_conv_signal_is_the_kernel_gradient_of_one_output_position(dims, groups, batch, dtype):
    kernel = (3, 2, 2)[:dims]
    weight = torch.randn(4, 6 // groups, *kernel, dtype=dtype)
    noise = torch.randn(batch, 6, *kernel, dtype=dtype)
    # the convolution of a patch the kernel's size is one output position per sample, and the
    # kernel's gradient of ½‖y‖² is Σ_n y_n ξ_nᵀ
    y = CONV[dims](noise, weight, groups=groups)
    assert y.shape == (batch, 4, *[1] * dims)
    expected = CONV_WEIGHT[dims](noise, weight.shape, y, groups=groups) / batch
    close(mirror_signal(weight, noise, groups), expected)


def test_the_signal_estimates_noise_variance_times_w():
    weight = torch.randn(3, 4, dtype=torch.float64)
    noise = 0.5 * torch.randn(400_000, 4, dtype=torch.float64)
    torch.testing.assert_close(mirror_signal(weight, noise), 0.25 * weight, rtol=0, atol=0.01)


def test_noise_of_the_wrong_shape_is_refused():
    with pytest.raises(ValueError, match=r"must be N × 7, got \(3, 6\)"):
        mirror_signal(torch.randn(5, 7), torch.randn(3, 6))
    with pytest.raises(ValueError, match=r"must be N × 6 × 3, got \(2, 3, 3\)"):
        mirror_signal(torch.randn(4, 3, 3), torch.randn(2, 3, 3), groups=2)
    with pytest.raises(ValueError, match="weight must be out × in"):
        mirror_signal(torch.randn(5), torch.randn(3, 5))
    for groups in (0, 3, 2.0):
        with pytest.raises(ValueError, match="groups must be a positive int that divides 4"):
            mirror_signal(torch.randn(4, 3, 3), torch.randn(2, 6, 3), groups=groups)


def _mixed_model(dtype=torch.float32) -> nn.Sequential:
    """Layers of every kind; only 0 (dense FA) and 4 (conv FA) have a fixed feedback for W."""
    return nn.Sequential(
        GenDense(6, 8, nn.ReLU(), forward="linear_asym_dx", feedback=True, dtype=dtype),
        GenDense(8, 8, nn.ReLU(), forward="linear_kp_dx", feedback=True, dtype=dtype),
        GenDense(8, 8, nn.ReLU(), forward="linear_frsf_dx", feedback=True, dtype=dtype),
        nn.Unflatten(1, (2, 4)),
        GenConv(
            2,
            4,
            (3,),
            padding=1,
            dilation=2,
            groups=2,
            forward="conv_linear_asym_dx",
            feedback=True,
            dtype=dtype,
        ),
        nn.Flatten(),
        GenDense(8, 3, forward="radial_asym_dx", feedback=True, dtype=dtype),
        GenDense(3, 2, forward="linear", dtype=dtype),
    )


def test_a_mirror_step_decays_b_and_adds_the_signal_of_fresh_noise(dtype):
    model = _mixed_model(dtype)
    assert list(mirrored_layers(model)) == ["0", "4"]
    assert model(torch.randn(3, 6, dtype=dtype)).shape == (3, 2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    mirror = WeightMirror(lr=0.3, weight_decay=0.2, noise_std=1.5, batch_size=5)
    torch.manual_seed(7)
    mirror(model)
    after = model.state_dict()
    torch.manual_seed(7)  # the same draws, in the model's order: N × in, then N × in × kernel
    for key, shape, groups in (("0", (5, 6), 1), ("4", (5, 2, 3), 2)):
        noise = 1.5 * torch.randn(shape, dtype=dtype)
        signal = mirror_signal(before[f"{key}.weight"], noise, groups)
        close(after[f"{key}.feedback"], 0.8 * before[f"{key}.feedback"] + 0.3 * signal)
        assert after[f"{key}.feedback"].dtype == dtype
    changed = {k for k in after if not torch.equal(after[k], before[k])}
    assert changed == {"0.feedback", "4.feedback"}  # W, KP's B, frSF's magnitudes: untouched


@pytest.mark.parametrize("scale", [1.0, 2.0])
def test_repeated_steps_bring_b_to_lr_sigma2_over_decay_times_w(scale):
    layer = GenDense(20, 10, forward="linear_asym_dx", feedback=True)
    assert weight_alignment(layer)[""] > 60  # random B: far from W
    mirror = WeightMirror(lr=0.05 * scale, weight_decay=0.05, batch_size=256)
    for _ in range(300):
        mirror(layer)
    assert weight_alignment(layer)[""] < 8
    ratio = (layer.feedback.norm() / layer.weight.norm()).item()
    assert ratio == pytest.approx(scale, rel=0.1)


def test_layers_chooses_which_feedback_matrices_learn():
    model = _mixed_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    mirror = WeightMirror(layers=["4", "4"])  # named twice, mirrored once a step
    assert repr(mirror).endswith("batch_size=64, layers=['4'])")
    mirror(model)
    after = model.state_dict()
    assert {k for k in after if not torch.equal(after[k], before[k])} == {"4.feedback"}
    with pytest.raises(ValueError, match=r"names '1', 'x', not a layer .* has '0', '4'"):
        WeightMirror(layers=["0", "1", "x"])(model)
    with pytest.raises(TypeError, match="layers must be a list of layer names"):
        WeightMirror(layers="0")
    with pytest.raises(TypeError, match="layers must be a list of layer names"):
        WeightMirror(layers=[0])
    with pytest.raises(ValueError, match="layers is empty"):
        WeightMirror(layers=[])


def test_a_model_without_fixed_feedback_is_refused_with_the_reason():
    with pytest.raises(ValueError, match=r"no layer of this Sequential has one.*linear_asym_dx"):
        WeightMirror()(recipes.build("kp-mlp"))
    with pytest.raises(ValueError, match="no layer"):
        WeightMirror()(recipes.build("bp-mlp"))


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("lr", 0.0, "lr must be positive and finite"),
        ("lr", math.nan, "lr must be positive and finite"),
        ("noise_std", -1.0, "noise_std must be positive"),
        ("weight_decay", 1.0, "weight_decay must be below 1"),
        ("weight_decay", math.inf, "weight_decay must be positive and finite"),
        ("batch_size", 0, "batch_size must be a positive int"),
        ("batch_size", 2.0, "batch_size must be a positive int"),
    ],
)
def test_bad_settings_are_refused(option, value, message):
    with pytest.raises(ValueError, match=message):
        WeightMirror(**{option: value})


def test_settings_must_be_numbers():
    with pytest.raises(TypeError, match="lr must be a number, got str"):
        WeightMirror(lr="0.1")
    with pytest.raises(TypeError, match="weight_decay must be a number, got bool"):
        WeightMirror(weight_decay=True)
    assert repr(WeightMirror(noise_std=0.5)) == (
        "WeightMirror(lr=0.01, weight_decay=0.01, noise_std=0.5, batch_size=64)"
    )


def test_mirrors_align_b_with_w_while_the_net_learns(small_mnist):
    data = small_mnist.subset(1024, 500)
    plain, mirrored = recipes.build("fa-mlp"), recipes.build("fa-mlp")
    train(plain, data, epochs=3, lr=1e-3)
    mirror = WeightMirror(lr=0.05, weight_decay=0.05, batch_size=256)
    table = train(mirrored, data, epochs=3, lr=1e-3, after_step=[mirror])
    assert table["acc_test"].iloc[-1] > 0.6
    assert all(angle > 80 for angle in weight_alignment(plain).values())  # B fixed: 48 steps do
    # not turn W towards it; 48 mirror steps leave 0.95⁴⁸ = 0.09 of B's random start
    assert all(angle < 25 for angle in weight_alignment(mirrored).values())


def test_a_resumed_mirrored_run_equals_one_that_never_stopped(small_mnist, tmp_path):
    data = small_mnist.subset(512, 200)
    path = tmp_path / "run.pt"
    whole = recipes.run("wm-mlp", data, epochs=2).drop(columns="seconds")
    recipes.run("wm-mlp", data, epochs=1, checkpoint=path)  # the noise's random state is kept
    resumed = recipes.run("wm-mlp", data, epochs=2, resume=path).drop(columns="seconds")
    assert resumed.equals(whole)
    plain = recipes.run("fa-mlp", data, epochs=2).drop(columns="seconds")  # the same net, no mirror
    assert not plain.equals(whole)
