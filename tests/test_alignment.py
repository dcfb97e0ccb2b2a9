import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bender import DFA, GenConv, GenDense, mappings, recipes, register_mapping
from bender.alignment import (
    AlignmentRecorder,
    angle,
    backprop,
    bent_layers,
    feedback_layers,
    gradient_alignment,
    weight_alignment,
)
from bender.functional.dense import bent_linear
from bender.training import train
from tests.conftest import close, global_rng_state


def _degrees(a: torch.Tensor, b: torch.Tensor) -> float:
    """The angle from torch's cosine similarity (a different computation from the code's)."""
    cos = F.cosine_similarity(a.reshape(1, -1).double(), b.reshape(1, -1).double()).item()
    return math.acos(max(-1.0, min(1.0, cos))) * 180 / math.pi


def test_angle_of_known_pairs():
    a = torch.tensor([1.0, 0.0])
    assert angle(a, torch.tensor([3.0, 0.0])) == pytest.approx(0.0, abs=1e-6)
    assert angle(a, torch.tensor([0.0, 2.0])) == pytest.approx(90.0)
    assert angle(a, torch.tensor([1.0, 1.0])) == pytest.approx(45.0)
    assert angle(a, torch.tensor([-2.0, 0.0])) == pytest.approx(180.0)
    m = torch.randn(4, 5)
    assert angle(m, -m) == pytest.approx(180.0, abs=1e-4)
    assert math.isnan(angle(a, torch.zeros(2)))
    with pytest.raises(ValueError, match=r"one shape, got \(2,\) and \(3,\)"):
        angle(a, torch.zeros(3))


def test_weight_alignment_of_each_feedback_layer(dtype):
    model = recipes.build("fa-mlp", seed=0).to(dtype)
    model[1].feedback.copy_(2 * model[1].weight.detach())  # aligned by construction
    angles = weight_alignment(model)
    assert list(angles) == ["0", "1", "2"]
    assert angles["1"] == pytest.approx(0.0, abs=1e-3)
    for name in ("0", "2"):
        layer = model[int(name)]
        assert angles[name] == pytest.approx(_degrees(layer.weight, layer.feedback))
    assert 80 < angles["0"] < 100  # two independent random matrices: close to orthogonal


def _bp_twin(model: nn.Module, dtype=torch.float32) -> nn.Module:
    """bp-mlp holding ``model``'s weights (an fa-mlp or a dfa-mlp): backprop, computed apart."""
    bp = recipes.build("bp-mlp", seed=1).to(dtype)
    weights = {k.removeprefix("model."): v for k, v in model.state_dict().items()}
    bp.load_state_dict({k: v for k, v in weights.items() if "feedback" not in k})
    return bp


@pytest.mark.parametrize("recipe", ["fa-mlp", "dfa-mlp"])
def test_backprop_gives_backprop_gradients_and_puts_the_rule_back(recipe, batch, dtype):
    model = recipes.build(recipe, seed=0).to(dtype)
    bp = _bp_twin(model, dtype)
    x, y = torch.rand(batch, 784, dtype=dtype), torch.randint(0, 10, (batch,))
    with backprop(model):
        F.cross_entropy(model(x), y).backward()
    F.cross_entropy(bp(x), y).backward()
    for p, q in zip(model.parameters(), bp.parameters(), strict=True):
        close(p.grad, q.grad)
    rule = "linear_asym_dx" if recipe == "fa-mlp" else "linear_blocked_dx"
    assert all(m.mapping.__name__ == rule for m in bent_layers(model).values())
    assert "forward" not in vars(model)  # a DFA is back to direct feedback
    for p in model.parameters():
        p.grad = None
    F.cross_entropy(model(x), y).backward()  # the bent rule again: ∂W of layer 0 differs
    assert not torch.allclose(next(model.parameters()).grad, next(bp.parameters()).grad)


def test_backprop_puts_the_rule_back_after_an_error():
    model = recipes.build("fa-mlp", seed=0)
    with pytest.raises(RuntimeError, match="boom"), backprop(model):
        assert model[0].mapping.__name__ == "linear"
        raise RuntimeError("boom")
    assert model[0].mapping.__name__ == "linear_asym_dx"


@pytest.mark.parametrize("recipe", ["fa-mlp", "dfa-mlp"])
def test_gradient_alignment_against_backprop(recipe, batch):
    model = recipes.build(recipe, seed=0)
    bp = _bp_twin(model)
    x, y = torch.rand(batch, 784), torch.randint(0, 10, (batch,))
    angles = gradient_alignment(model, x, y)
    assert all(p.grad is None for p in model.parameters())  # .grad untouched
    F.cross_entropy(model(x), y).backward()
    F.cross_entropy(bp(x), y).backward()
    prefix = "model." if recipe == "dfa-mlp" else ""
    assert list(angles) == [f"{prefix}{i}" for i in range(3)]
    layers = list(bent_layers(model).values())
    for i, name in enumerate(angles):
        expected = _degrees(layers[i].weight.grad, bp[i].weight.grad)
        assert angles[name] == pytest.approx(expected, abs=1e-3)  # acos is steep near 0°
    assert angles[f"{prefix}2"] == pytest.approx(0.0, abs=1e-3)  # the output gets the true error
    assert angles[f"{prefix}0"] > 1.0  # random feedback sends another error


def test_conv_and_radial_feedback_layers():
    conv = nn.Sequential(
        GenConv(1, 2, 3, nn.ReLU(), forward="conv_linear_asym_dx", feedback=True),
        nn.Flatten(),
        GenDense(2 * 4 * 4, 3, forward="radial_asym_dx", feedback=True),
        GenDense(3, 4, forward="linear_asym_dx", feedback=True),
    )
    x, y = torch.rand(5, 1, 6, 6), torch.randint(0, 4, (5,))
    assert list(feedback_layers(conv)) == ["0", "2", "3"]
    angles = gradient_alignment(conv, x, y)
    assert angles["3"] == pytest.approx(0.0, abs=1e-3) and angles["0"] > 1.0


def test_sign_concordant_layers_are_measured_with_the_feedback_they_use(dtype):
    net = nn.Sequential(
        GenDense(8, 7, nn.ReLU(), forward="linear_usf_dx", dtype=dtype),
        GenDense(7, 6, nn.ReLU(), forward="linear_frsf_dx", feedback=True, dtype=dtype),
        GenDense(6, 5, nn.ReLU(), forward="linear_brsf_dx", dtype=dtype),
        nn.Unflatten(1, (5, 1)),
        GenConv(5, 4, (1,), forward="conv_linear_usf_dx", dtype=dtype),
        nn.Flatten(),
    )
    w = [m.weight.detach() for m in (net[0], net[1], net[4])]
    angles = weight_alignment(net)
    assert list(angles) == ["0", "1", "4"]  # brSF's matrix is drawn anew each batch: not listed
    assert angles["0"] == pytest.approx(_degrees(w[0], torch.where(w[0] > 0, 1.0, -1.0)))
    frsf = net[1].feedback.abs() * torch.where(w[1] > 0, 1.0, -1.0)
    assert angles["1"] == pytest.approx(_degrees(w[1], frsf))
    assert angles["4"] == pytest.approx(_degrees(w[2], torch.where(w[2] > 0, 1.0, -1.0)))
    assert 20 < angles["0"] < 40  # sign(W) of a uniform W: about 30°, well below FA's 90°
    assert list(bent_layers(net)) == ["0", "1", "2", "4"]
    x, y = torch.rand(9, 8, dtype=dtype), torch.randint(0, 4, (9,))
    state = global_rng_state()
    grads = gradient_alignment(net, x, y)
    assert torch.equal(global_rng_state(), state)  # brSF's draws left no trace
    assert grads["4"] == pytest.approx(0.0, abs=1e-3) and grads["0"] > 1.0


def test_dfa_layers_count_as_bent_whatever_their_mapping():
    dfa = DFA(nn.Sequential(GenDense(4, 3, nn.ReLU()), GenDense(3, 2)), num_outputs=2)
    angles = gradient_alignment(dfa, torch.rand(5, 4), torch.tensor([0, 1, 1, 0, 1]))
    assert list(angles) == ["model.0", "model.1"] and angles["model.1"] < 1e-3


def test_custom_mapping_names_its_exact_counterpart():
    @register_mapping(needs_feedback=True, exact=mappings.linear, name="sign_feedback_test")
    def sign_feedback(layer, x):
        return bent_linear(x, layer.weight, torch.sign(layer.feedback), layer.bias)

    try:
        net = nn.Sequential(
            GenDense(6, 5, nn.ReLU(), forward=sign_feedback, feedback=True),
            GenDense(5, 3, forward=sign_feedback, feedback=True),
        )
        with backprop(net):
            assert net[1].mapping is mappings.linear
        assert net[1].mapping is sign_feedback
        assert set(gradient_alignment(net, torch.rand(4, 6), torch.tensor([0, 1, 2, 0]))) == {
            "0",
            "1",
        }
    finally:
        mappings.MAPPINGS.pop("sign_feedback_test")


def test_models_without_bent_layers_are_refused():
    with pytest.raises(ValueError, match="no layer of this Sequential uses a feedback matrix"):
        weight_alignment(recipes.build("bp-mlp"))
    with pytest.raises(ValueError, match="no layer of this Sequential learns by a bent rule"):
        gradient_alignment(recipes.build("binary-mlp"), torch.rand(2, 784), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="uses a feedback matrix"):
        weight_alignment(recipes.build("dfa-mlp"))  # DFA's feedback is not per layer


def test_alignment_recorder_rows_match_the_functions(small_mnist):
    model = recipes.build("fa-mlp", seed=0)
    probe = small_mnist.test.x[:200], small_mnist.test.y[:200]
    recorder = AlignmentRecorder(*probe)
    recorder({"epoch": 0}, model)
    table = train(model, small_mnist, epochs=2, callbacks=[recorder])
    plain = train(recipes.build("fa-mlp", seed=0), small_mnist, epochs=2)
    assert table.drop(columns="seconds").equals(plain.drop(columns="seconds"))  # unchanged
    angles = recorder.table()
    assert angles["epoch"].tolist() == [0, 1, 2]
    assert list(angles.columns)[1:] == [f"weight_angle_{i}" for i in range(3)] + [
        f"grad_angle_{i}" for i in range(3)
    ]
    last = angles.iloc[-1]
    for name, value in weight_alignment(model).items():
        assert last[f"weight_angle_{name}"] == pytest.approx(value)
    for name, value in gradient_alignment(model, *probe).items():
        assert last[f"grad_angle_{name}"] == pytest.approx(value, abs=1e-3)
    assert last["weight_angle_2"] < angles["weight_angle_2"].iloc[0]  # W turned towards B


def test_alignment_recorder_on_dfa_has_gradient_angles_only():
    recorder = AlignmentRecorder(torch.rand(6, 784), torch.randint(0, 10, (6,)))
    recorder({"epoch": 3}, recipes.build("dfa-mlp"))
    assert list(recorder.table().columns) == ["epoch"] + [f"grad_angle_model.{i}" for i in range(3)]


def _fa_net_with_dropout_and_batch_norm() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        GenDense(784, 32, forward="linear_asym_dx", feedback=True),
        nn.BatchNorm1d(32),
        nn.ReLU(),
        nn.Dropout(0.3),
        GenDense(32, 10, forward="linear_asym_dx", feedback=True),
    )


def test_gradient_alignment_passes_draw_alike_and_leave_the_random_state():
    model = _fa_net_with_dropout_and_batch_norm()  # train mode: dropout draws a mask per pass
    x, y = torch.rand(16, 784), torch.randint(0, 10, (16,))
    torch.manual_seed(5)
    angles = gradient_alignment(model, x, y)
    after = torch.rand(3)
    torch.manual_seed(5)
    assert torch.equal(after, torch.rand(3))  # the caller's random state was not consumed
    assert angles["4"] == pytest.approx(0.0, abs=1e-3)  # same mask in both: the true error


def _net_with_its_own_generators() -> nn.Sequential:
    """Stochastic binary weights and brSF magnitudes drawn from generators the layers keep."""
    torch.manual_seed(0)
    return nn.Sequential(
        GenDense(784, 32, nn.ReLU(), forward="linear_asym_dx", feedback=True),
        GenDense(
            32,
            16,
            nn.ReLU(),
            forward="linear_stoc_binary_weights",
            generator=torch.Generator().manual_seed(1),
        ),
        GenDense(16, 10, forward="linear_brsf_dx", generator=torch.Generator().manual_seed(2)),
    )


def test_gradient_alignment_passes_draw_alike_from_the_layers_own_generators():
    model = _net_with_its_own_generators()
    states = [m.generator.get_state() for m in model[1:]]
    x, y = torch.rand(16, 784), torch.randint(0, 10, (16,))
    angles = gradient_alignment(model, x, y)
    assert angles["2"] == pytest.approx(0.0, abs=1e-3)  # same binary weights in both passes
    assert angles == gradient_alignment(model, x, y)
    after = [m.generator.get_state() for m in model[1:]]
    assert all(torch.equal(a, b) for a, b in zip(after, states, strict=True))


def test_alignment_recorder_leaves_the_layers_own_generators_alone(small_mnist):
    model = _net_with_its_own_generators()
    recorder = AlignmentRecorder(small_mnist.test.x[:200], small_mnist.test.y[:200])
    recorder({"epoch": 0}, model)
    table = train(model, small_mnist, epochs=2, callbacks=[recorder])
    plain = train(_net_with_its_own_generators(), small_mnist, epochs=2)
    assert table.drop(columns="seconds").equals(plain.drop(columns="seconds"))


def test_alignment_recorder_leaves_dropout_batch_norm_and_randomness_alone(small_mnist):
    model = _fa_net_with_dropout_and_batch_norm()
    recorder = AlignmentRecorder(small_mnist.test.x[:200], small_mnist.test.y[:200])
    statistics = model[1].running_mean.clone()
    recorder({"epoch": 0}, model)
    assert torch.equal(model[1].running_mean, statistics)  # the probe does not enter them
    assert model.training
    table = train(model, small_mnist, epochs=2, callbacks=[recorder])
    plain = train(_fa_net_with_dropout_and_batch_norm(), small_mnist, epochs=2)
    assert table.drop(columns="seconds").equals(plain.drop(columns="seconds"))
    assert (recorder.table()["grad_angle_4"] < 1e-3).all()  # output layer: the true error


def _spectral_fa_net() -> nn.Sequential:
    from torch.nn.utils.parametrizations import spectral_norm, weight_norm

    torch.manual_seed(0)
    return nn.Sequential(
        weight_norm(GenDense(20, 12, nn.Tanh(), forward="linear_asym_dx", feedback=True)),
        spectral_norm(GenDense(12, 8, nn.Tanh(), forward="linear_asym_dx", feedback=True)),
        GenDense(8, 4, forward="linear_asym_dx", feedback=True),
    ).double()


def _plain_twin(model: nn.Sequential) -> nn.Sequential:
    """float64 GenDense layers whose plain weights are ``model``'s weights as its layers compute
    them now (through a parametrization or a pruning mask), with the same feedback and rule."""
    twin = nn.Sequential(
        *[
            GenDense(
                m.in_features, m.out_features, m.activation, forward=m.mapping, feedback=m.feedback
            )
            for m in model
        ]
    ).double()
    with torch.no_grad():
        for layer, m in zip(twin, model, strict=True):
            layer.weight.copy_(m.weight)
            layer.bias.copy_(m.bias)
    return twin


def test_gradient_alignment_of_parametrized_weights_is_taken_at_the_weight_used(batch):
    model = _spectral_fa_net().eval()  # eval: spectral_norm reuses its vectors, one W per pass
    plain = _plain_twin(model)  # the same weights, feedback and rule, no parametrizations
    x, y = torch.randn(batch, 20, dtype=torch.float64), torch.randint(0, 4, (batch,))
    angles = gradient_alignment(model, x, y)
    assert angles.keys() == {"0", "1", "2"}
    assert angles == pytest.approx(gradient_alignment(plain, x, y), abs=1e-4)
    assert angles["2"] == pytest.approx(0.0, abs=1e-4)  # acos near 1 leaves ~1e-6°


def test_alignment_recorder_does_not_step_spectral_norm():
    model = _spectral_fa_net()  # train mode: every read of its weight takes a power step
    vectors = model[1].parametrizations.weight[0]._u.clone()
    x, y = torch.randn(8, 20, dtype=torch.float64), torch.randint(0, 4, (8,))
    recorder = AlignmentRecorder(x, y)
    recorder({"epoch": 0}, model)
    assert torch.equal(model[1].parametrizations.weight[0]._u, vectors)
    assert model.training
    assert set(recorder.table().columns) >= {"weight_angle_1", "grad_angle_1"}


def test_gradient_alignment_of_pruned_weights_is_taken_at_the_masked_weight(batch):
    from torch.nn.utils import prune

    torch.manual_seed(0)
    model = nn.Sequential(
        GenDense(20, 12, nn.Tanh(), forward="linear_asym_dx", feedback=True),
        GenDense(12, 4, forward="linear_asym_dx", feedback=True),
    ).double()
    prune.l1_unstructured(model[0], "weight", amount=0.6)
    plain = _plain_twin(model)  # the masked weights as parameters, the same feedback
    x, y = torch.randn(batch, 20, dtype=torch.float64), torch.randint(0, 4, (batch,))
    angles = gradient_alignment(model, x, y)
    assert angles == pytest.approx(gradient_alignment(plain, x, y), abs=1e-4)


def test_a_bent_layer_the_forward_pass_skips_is_named():
    class SkipsOne(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.used = GenDense(6, 3, forward="linear_asym_dx", feedback=True)
            self.spare = GenDense(6, 3, forward="linear_asym_dx", feedback=True)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.used(x)

    x, y = torch.randn(4, 6), torch.randint(0, 3, (4,))
    with pytest.raises(ValueError, match=r"the forward pass did not use the weight of: spare$"):
        gradient_alignment(SkipsOne(), x, y)


def test_gradient_alignment_inside_dfa_blocks_of_plain_layers():
    torch.manual_seed(0)
    block = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 5))
    model = DFA(nn.Sequential(block, nn.ReLU(), nn.Linear(5, 3)), 3, blocks=["1"]).double()
    x, y = torch.randn(10, 6, dtype=torch.float64), torch.randint(0, 3, (10,))
    angles = gradient_alignment(model, x, y)
    assert angles.keys() == {"model.0.0", "model.0.2", "model.2"}

    w1, b1, w2, b2, w3, b3 = [p.detach().clone().requires_grad_() for p in model.parameters()]
    h = torch.relu(torch.tanh(x @ w1.T + b1) @ w2.T + b2)
    out = h @ w3.T + b3
    exact = torch.autograd.grad(F.cross_entropy(out, y), [w1, w2], retain_graph=True)
    e = (torch.softmax(out, -1) - F.one_hot(y, 3).double()).detach() / len(x)  # ∂L/∂y
    dfa = torch.autograd.grad(h, [w1, w2], grad_outputs=e @ model.feedback.T)
    assert angles["model.0.0"] == pytest.approx(_degrees(dfa[0], exact[0]), abs=1e-6)
    assert angles["model.0.2"] == pytest.approx(_degrees(dfa[1], exact[1]), abs=1e-6)
    assert angles["model.2"] == pytest.approx(0.0, abs=1e-4)


def test_dfa_over_transformer_layers_trains_and_is_measured_layer_by_layer():
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
    net = nn.Sequential(nn.Embedding(50, 16), layer, nn.Flatten(), nn.Linear(16 * 6, 4))
    model = DFA(net, 4, blocks=["0", "1"], input_shape=(6,), input_dtype=torch.long)
    assert model.sizes == [96, 96]  # the embedding's and the transformer layer's outputs
    tokens, y = torch.randint(0, 50, (8, 6)), torch.randint(0, 4, (8,))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(20):
        opt.zero_grad()
        loss = F.cross_entropy(model(tokens), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    angles = gradient_alignment(model, tokens, y)
    # attention's out_proj is read as a weight, never called: measured all the same
    assert {"model.0", "model.1.self_attn.out_proj", "model.1.linear1", "model.3"} <= set(angles)
    assert all(math.isfinite(a) for a in angles.values())
    assert angles["model.3"] == pytest.approx(0.0, abs=1e-3)


def test_a_layer_the_bent_rule_gives_no_gradient_gets_nan():
    # blocked layers without the DFA wrapper: layer 0 runs, but no gradient reaches it
    torch.manual_seed(0)
    net = nn.Sequential(
        GenDense(6, 8, nn.ReLU(), forward="linear_blocked_dx"),
        GenDense(8, 3, forward="linear_blocked_dx"),
    )
    angles = gradient_alignment(net, torch.randn(4, 6), torch.randint(0, 3, (4,)))
    assert math.isnan(angles["0"])
    assert angles["1"] == pytest.approx(0.0, abs=1e-4)  # the last layer: the true error
