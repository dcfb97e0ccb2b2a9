from itertools import pairwise

import pytest
import torch
from torch import nn

from bender import DFA, GenConv, GenDense, SignSTE, checkpoint, mappings, recipes
from bender.mirrors import WeightMirror, mirrored_layers


@pytest.mark.parametrize(
    ("name", "sizes", "mapping"),
    [
        ("fa-mlp", [784, 128, 64, 10], mappings.linear_asym_dx),
        ("fa-mlp-large", [784, 512, 256, 10], mappings.linear_asym_dx),
        ("binary-mlp", [784, 128, 64, 10], mappings.linear_binary_weights),
        ("bp-mlp", [784, 128, 64, 10], mappings.linear),
        ("bp-mlp-large", [784, 512, 256, 10], mappings.linear),
        ("dfa-mlp", [784, 128, 64, 10], mappings.linear_blocked_dx),
        ("dfa-mlp-large", [784, 512, 256, 10], mappings.linear_blocked_dx),
        ("usf-mlp", [784, 128, 64, 10], mappings.linear_usf_dx),
        ("frsf-mlp", [784, 128, 64, 10], mappings.linear_frsf_dx),
        ("brsf-mlp", [784, 128, 64, 10], mappings.linear_brsf_dx),
        ("kp-mlp", [784, 128, 64, 10], mappings.linear_kp_dx),
        ("wm-mlp", [784, 128, 64, 10], mappings.linear_asym_dx),
    ],
)
def test_recipe_architectures(name, sizes, mapping):
    model = recipes.build(name)
    if name.startswith("dfa"):
        assert isinstance(model, DFA)
        assert model.feedback.shape == (sum(sizes[1:-1]), 10)
        model = model.model
    layers = list(model)
    assert all(isinstance(layer, GenDense) for layer in layers)
    assert [layers[0].in_features] + [layer.out_features for layer in layers] == sizes
    assert all(layer.mapping is mapping for layer in layers)
    hidden = SignSTE if name == "binary-mlp" else nn.ReLU
    assert all(isinstance(layer.activation, hidden) for layer in layers[:-1])
    assert layers[-1].activation is None
    held = name.startswith(("fa", "frsf", "kp", "wm"))
    assert all((layer.feedback is not None) == held for layer in layers)
    assert model(torch.rand(3, 784)).shape == (3, 10)


@pytest.mark.parametrize(
    ("name", "conv_mapping", "dense_mapping"),
    [
        ("fa-cnn", mappings.conv_linear_asym_dx, mappings.linear_asym_dx),
        ("dfa-cnn", mappings.conv_linear_blocked_dx, mappings.linear_blocked_dx),
        ("bp-cnn", mappings.conv_linear, mappings.linear),
        ("usf-cnn", mappings.conv_linear_usf_dx, mappings.linear_usf_dx),
        ("frsf-cnn", mappings.conv_linear_frsf_dx, mappings.linear_frsf_dx),
        ("brsf-cnn", mappings.conv_linear_brsf_dx, mappings.linear_brsf_dx),
        ("kp-cnn", mappings.conv_linear_kp_dx, mappings.linear_kp_dx),
        ("wm-cnn", mappings.conv_linear_asym_dx, mappings.linear_asym_dx),
    ],
)
def test_cnn_recipes(name, conv_mapping, dense_mapping):
    model = recipes.build(name)
    if name == "dfa-cnn":
        assert isinstance(model, DFA)
        assert model.sizes == [16 * 14 * 14, 32 * 7 * 7]  # after each pooling
        model = model.model
    learning = [m for m in model if isinstance(m, (GenConv, GenDense))]
    assert [type(m) for m in learning] == [GenConv, GenConv, GenDense]
    assert [tuple(m.weight.shape) for m in learning] == [(16, 1, 5, 5), (32, 16, 5, 5), (10, 1568)]
    assert [m.mapping for m in learning] == [conv_mapping, conv_mapping, dense_mapping]
    held = name in ("fa-cnn", "frsf-cnn", "kp-cnn", "wm-cnn")
    assert all((m.feedback is not None) == held for m in learning)
    x = torch.rand(3, 784, requires_grad=True)  # the MLPs' flattened input
    out = recipes.build(name)(x)
    assert out.shape == (3, 10)
    out.sum().backward()


def test_build_is_seeded():
    a, b, c = recipes.build("fa-mlp", 1), recipes.build("fa-mlp", 1), recipes.build("fa-mlp", 2)
    assert torch.equal(a[0].weight, b[0].weight) and torch.equal(a[0].feedback, b[0].feedback)
    assert not torch.equal(a[0].weight, c[0].weight)
    with pytest.raises(ValueError, match="seed must be an int from"):
        recipes.build("fa-mlp", 2**64)


def test_unknown_recipe_lists_valid_ones():
    with pytest.raises(KeyError, match="unknown recipe 'fa'; valid recipes: fa-mlp, fa-mlp-large"):
        recipes.get("fa")


@pytest.mark.parametrize("name", ["kp-mlp", "kp-cnn"])
def test_kolen_pollack_recipes_learn_their_feedback_with_sgd_and_weight_decay(name):
    model = recipes.build(name)
    learned = [m for m in model.modules() if isinstance(m, (GenConv, GenDense))]
    assert all(isinstance(m.feedback, nn.Parameter) for m in learned)
    assert recipes.train_settings(name) == {
        "optimizer": "sgd",
        "lr": 0.05,
        "optimizer_options": {"momentum": 0.9, "weight_decay": 1e-3},
    }
    # another optimizer than the recipe's: the recipe's lr and options go with it
    assert recipes.train_settings(name, "adam") == {
        "optimizer": "adam",
        "lr": 3e-4,
        "optimizer_options": {},
    }
    settings = recipes.train_settings(name)
    settings["optimizer_options"]["momentum"] = 0.0  # a copy: the recipe keeps its own
    assert recipes.train_settings(name)["optimizer_options"]["momentum"] == 0.9


def test_the_other_recipes_train_with_the_tutorials_adam():
    for name in recipes.RECIPES:
        if not name.startswith("kp"):
            assert recipes.train_settings(name) == {
                "optimizer": "adam",
                "lr": 3e-4,
                "optimizer_options": {},
            }


def test_run_trains_with_the_recipes_settings_unless_told_otherwise(small_mnist, tmp_path):
    data = small_mnist.subset(256, 100)
    path = tmp_path / "run.pt"
    recipes.run("kp-mlp", data, epochs=1, checkpoint=path)
    settings = checkpoint.load(path)["settings"]
    assert (settings["optimizer"], settings["lr"]) == ("sgd", 0.05)
    assert settings["optimizer_options"] == {"momentum": 0.9, "weight_decay": 1e-3}
    recipes.run("kp-mlp", data, epochs=1, checkpoint=path, lr=0.01)
    assert checkpoint.load(path)["settings"]["lr"] == 0.01


@pytest.mark.parametrize("name", ["wm-mlp", "wm-cnn"])
def test_weight_mirror_recipes_mirror_their_feedback_after_every_step(name):
    (mirror,) = recipes.get(name).after_step
    assert isinstance(mirror, WeightMirror)
    model = recipes.build(name)
    learning = [str(i) for i, m in enumerate(model) if isinstance(m, (GenConv, GenDense))]
    assert list(mirrored_layers(model)) == learning
    others = [r for r in recipes.RECIPES.values() if not r.name.startswith("wm")]
    clipped = ["binary-mlp-bn", "binary-cnn"]  # their weight clip
    assert [r.name for r in others if r.after_step] == clipped


def test_the_cnn_mirrors_its_conv_kernels_and_its_dense_layer(small_mnist):
    start = recipes.build("wm-cnn")
    calls = []
    recipes.run("wm-cnn", small_mnist.subset(128, 50), epochs=1, after_step=calls.append)
    model = calls[-1]
    layers = mirrored_layers(model)
    assert list(layers) == ["1", "3", "6"]
    for name, layer in layers.items():
        before = dict(start.named_modules())[name]
        assert not torch.equal(layer.feedback.cpu(), before.feedback)  # two mirror steps: B moved
        assert layer.feedback.shape == before.feedback.shape


def test_run_adds_the_callers_after_step_functions_to_the_recipes(small_mnist):
    data = small_mnist.subset(256, 100)
    seen = []  # the last layer's B as the caller's function sees it, after each step

    def look(model):
        seen.append(model[2].feedback.clone())

    recipes.run("wm-mlp", data, epochs=1, after_step=look)
    assert len(seen) == 256 // 64
    start = recipes.build("wm-mlp")[2].feedback
    assert not torch.equal(seen[0].cpu(), start)  # the recipe's mirror ran first, at every step
    assert all(not torch.equal(a, b) for a, b in pairwise(seen))
    with pytest.raises(TypeError, match="after_step must be a list of functions fn"):
        recipes.run("wm-mlp", data, epochs=1, after_step=5)


@pytest.mark.parametrize("name", [n for n, r in recipes.RECIPES.items() if r.model])
def test_a_recipe_is_the_zoo_model_it_names_by_its_rule(name):
    """What `bender recipes` says a recipe equals: the same layers, weights and feedback
    shapes, the same kind of DFA wrapper (the initialisation differs: Bender.jl's Glorot)."""
    recipe = recipes.get(name)
    built = recipes.build(name)
    network = recipes.build_network(recipe.model, recipe.rule, (1, 28, 28), 10)
    for a, b in ((built.parameters(), network.parameters()), (built.buffers(), network.buffers())):
        assert [t.shape for t in a] == [t.shape for t in b]
    assert isinstance(built, DFA) == isinstance(network, DFA)
    if isinstance(built, DFA):
        assert built.sizes == network.sizes
    mappings = [m.mapping for m in built.modules() if hasattr(m, "mapping")]
    if recipe.rule == "bp":  # exact bender layers there, PyTorch's own layers here
        assert {m.__name__ for m in mappings} <= {"linear", "conv_linear"}
    else:
        assert mappings == [m.mapping for m in network.modules() if hasattr(m, "mapping")]
