import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bender import DFA, GenConv, GenDense, recipes
from bender.alignment import (
    angle,
    exact_feedback,
    feedback_layers,
    gradient_alignment,
    weight_alignment,
)
from tests.conftest import close


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


def test_exact_feedback_gives_backprop_gradients_and_restores_b(batch, dtype):
    fa = recipes.build("fa-mlp", seed=0).to(dtype)
    bp = recipes.build("bp-mlp", seed=1).to(dtype)
    bp.load_state_dict({k: v for k, v in fa.state_dict().items() if "feedback" not in k})
    feedbacks = [layer.feedback for layer in fa]
    x, y = torch.rand(batch, 784, dtype=dtype), torch.randint(0, 10, (batch,))
    with exact_feedback(fa):
        F.cross_entropy(fa(x), y).backward()
    F.cross_entropy(bp(x), y).backward()
    for p, q in zip(fa.parameters(), bp.parameters(), strict=True):
        close(p.grad, q.grad)
    assert all(layer.feedback is b for layer, b in zip(fa, feedbacks, strict=True))
    assert "0.feedback" in fa.state_dict()


def test_exact_feedback_restores_b_after_an_error():
    model = recipes.build("fa-mlp", seed=0)
    before = model[0].feedback
    with pytest.raises(RuntimeError, match="boom"), exact_feedback(model):
        assert model[0].feedback is not before
        raise RuntimeError("boom")
    assert model[0].feedback is before


def test_gradient_alignment_against_backprop(batch):
    torch.manual_seed(0)
    fa = recipes.build("fa-mlp", seed=0)
    bp = recipes.build("bp-mlp", seed=1)
    bp.load_state_dict({k: v for k, v in fa.state_dict().items() if "feedback" not in k})
    x, y = torch.rand(batch, 784), torch.randint(0, 10, (batch,))
    angles = gradient_alignment(fa, x, y)
    assert all(p.grad is None for p in fa.parameters())  # .grad untouched
    F.cross_entropy(fa(x), y).backward()
    F.cross_entropy(bp(x), y).backward()
    for i, name in enumerate(("0", "1", "2")):
        assert angles[name] == pytest.approx(_degrees(fa[i].weight.grad, bp[i].weight.grad))
    assert angles["2"] == pytest.approx(0.0, abs=1e-3)  # the output layer gets the true error
    assert angles["0"] > 1.0  # a random B sends another error


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


def test_models_without_feedback_layers_are_refused():
    with pytest.raises(ValueError, match="no layer of this model uses a feedback matrix"):
        weight_alignment(recipes.build("bp-mlp"))
    dfa = DFA(nn.Sequential(GenDense(4, 3, forward="linear_blocked_dx")), num_outputs=3)
    with pytest.raises(ValueError, match="got DFA without any"):
        gradient_alignment(dfa, torch.rand(2, 4), torch.tensor([0, 1]))
