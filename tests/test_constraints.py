import pytest
import torch
from torch import nn
from torch.nn.utils import prune
from torch.nn.utils.parametrizations import weight_norm

from bender import GenConv, GenDense, SignSTE, recipes
from bender.constraints import ClipBinaryWeights, binary_layers
from bender.training import train


def _spread(model: nn.Module) -> None:
    """Weights well outside [−1, 1], so that clipping shows."""
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.linspace(-3, 3, p.numel()).reshape(p.shape))


def test_clip_binary_weights_clamps_only_the_latent_weights_of_binary_layers():
    model = nn.Sequential(
        GenDense(4, 6, SignSTE(), forward="linear_binary_weights"),
        GenDense(6, 5, nn.ReLU(), forward="linear_asym_dx", feedback=True),
        nn.Unflatten(1, (5, 1)),
        GenConv(5, 2, (1,), forward="conv_binary_weights"),
    )
    _spread(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ClipBinaryWeights(0.5)(model)
    after = model.state_dict()
    for key in ("0.weight", "3.weight"):
        torch.testing.assert_close(after[key], before[key].clamp(-0.5, 0.5), rtol=0, atol=0)
    for key in ("0.bias", "1.weight", "1.bias", "1.feedback", "3.bias"):
        assert torch.equal(after[key], before[key])  # real weights, biases, feedback: as they were
    assert list(binary_layers(model)) == ["0", "3"]


def test_a_pruned_binary_layer_is_clamped_behind_its_mask():
    layer = GenDense(4, 3, forward="linear_binary_weights")
    _spread(layer)
    prune.l1_unstructured(layer, "weight", amount=0.5)
    ClipBinaryWeights()(layer)
    assert layer.weight_orig.abs().max() == 1.0
    assert torch.equal(layer.weight == 0, layer.weight_mask == 0)


def test_bad_bounds_and_models_are_refused():
    for bound in (0, -1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="bound must be positive and finite"):
            ClipBinaryWeights(bound)
    with pytest.raises(TypeError, match="bound must be a number"):
        ClipBinaryWeights("1")
    with pytest.raises(ValueError, match="no layer of this Sequential uses binary weights"):
        ClipBinaryWeights()(recipes.build("fa-mlp"))
    parametrized = weight_norm(GenDense(4, 3, forward="linear_binary_weights"))
    with pytest.raises(ValueError, match="parametrized weight"):
        ClipBinaryWeights()(nn.Sequential(parametrized))
    assert repr(ClipBinaryWeights(0.5)) == "ClipBinaryWeights(bound=0.5)"


def test_train_calls_after_step_after_every_optimizer_step(small_mnist):
    data = small_mnist.subset(640, 100)
    calls = []

    def after(model):
        calls.append(torch.is_grad_enabled())
        assert all(p.grad is not None for p in model.parameters())  # after backward and step

    model = recipes.build("binary-mlp")
    _spread(model)
    table = train(model, data, epochs=2, after_step=[ClipBinaryWeights(), after])
    assert calls == [False] * (2 * 640 // 64)  # every step, without grad
    for layer in model:
        assert layer.weight.abs().max() <= 1.0
    assert len(table) == 2
    single = recipes.build("binary-mlp")
    train(single, data, epochs=1, after_step=ClipBinaryWeights(0.01))  # one, not in a list
    assert all(layer.weight.abs().max() <= 0.01 for layer in single)
    with pytest.raises(TypeError, match="after_step must be a list of functions fn"):
        train(single, data, epochs=1, after_step=[1.0])
    with pytest.raises(TypeError, match="after_step must be a list of functions fn"):
        train(single, data, epochs=1, after_step=5)  # neither a function nor a list of them
