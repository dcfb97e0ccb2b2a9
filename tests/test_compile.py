"""torch.compile: every mapping, activation and DFA over a chain traces into one graph and keeps
its rule (DFA's hooks on other models run eagerly).

``backend="aot_eager"`` runs Dynamo and AOTAutograd, which trace the custom backwards into the
joint graph (where an incompatibility would show), without needing a C++ compiler; Inductor only
lowers that graph to kernels. ``fullgraph=True`` turns any graph break into an error.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bender import DFA, GenConv, GenDense
from bender.nonlinearities import HardSigmoid, HardtanhAdaSTE, SignSTE, StocSignSTE
from tests.conftest import close

pytestmark = pytest.mark.skipif(
    not torch._dynamo.is_dynamo_supported(), reason="torch.compile is not supported here"
)

DENSE_MAPPINGS = [
    "linear",
    "linear_asym_dx",
    "linear_blocked_dx",
    "radial",
    "radial_asym_dx",
    "linear_binary_weights",
    "linear_stoc_binary_weights",
    "linear_usf_dx",
    "linear_frsf_dx",
    "linear_kp_dx",
]
CONV_MAPPINGS = [
    "conv_linear",
    "conv_linear_asym_dx",
    "conv_linear_blocked_dx",
    "conv_binary_weights",
    "conv_linear_usf_dx",
    "conv_linear_frsf_dx",
    "conv_linear_kp_dx",
]
ACTIVATIONS = [SignSTE, StocSignSTE, HardSigmoid, HardtanhAdaSTE]


def _dense(mapping: str = "linear", activation: nn.Module | None = None) -> nn.Module:
    return nn.Sequential(
        GenDense(6, 5, nn.ReLU(), forward="linear_asym_dx", feedback=True),
        GenDense(5, 4, activation, forward=mapping, feedback=True),
    )


def _conv(mapping: str) -> nn.Module:
    return nn.Sequential(
        GenConv(2, 3, 3, nn.ReLU(), padding=1, forward="conv_linear_asym_dx", feedback=True),
        GenConv(3, 4, (3, 3), forward=mapping, feedback=True),
    )


def _dfa() -> nn.Module:
    blocked = "linear_blocked_dx"
    net = nn.Sequential(GenDense(6, 5, nn.ReLU(), forward=blocked), GenDense(5, 4, forward=blocked))
    return DFA(net, num_outputs=4)


def _assert_compiled_matches_eager(
    make, shape: tuple[int, ...], dtype: torch.dtype, fullgraph: bool = True
) -> None:
    torch.manual_seed(0)
    eager = make().to(dtype)
    compiled_model = make().to(dtype)
    compiled_model.load_state_dict(eager.state_dict())
    compiled = torch.compile(compiled_model, backend="aot_eager", fullgraph=fullgraph)
    x = torch.randn(*shape, dtype=dtype)
    torch.manual_seed(1)  # the same draws for the stochastic rules
    out_eager = eager(x)
    torch.manual_seed(1)
    out_compiled = compiled(x)
    close(out_compiled, out_eager)
    delta = torch.randn_like(out_eager)
    out_eager.backward(delta)
    out_compiled.backward(delta)
    grads = 0
    for (name, p), q in zip(eager.named_parameters(), compiled_model.parameters(), strict=True):
        assert (q.grad is None) == (p.grad is None), name  # a blocked rule blocks both
        if p.grad is not None:
            close(q.grad, p.grad)
            grads += 1
    assert grads >= 2  # at least the last layer's weight and bias learned


@pytest.mark.parametrize("mapping", DENSE_MAPPINGS)
def test_dense_mappings_compile(mapping, dtype):
    torch._dynamo.reset()
    _assert_compiled_matches_eager(lambda: _dense(mapping), (3, 6), dtype)


@pytest.mark.parametrize("mapping", CONV_MAPPINGS)
def test_conv_mappings_compile(mapping):
    torch._dynamo.reset()
    _assert_compiled_matches_eager(lambda: _conv(mapping), (2, 2, 5, 5), torch.float32)


@pytest.mark.parametrize("activation", ACTIVATIONS, ids=lambda a: a.__name__)
def test_activations_compile(activation):
    torch._dynamo.reset()
    _assert_compiled_matches_eager(lambda: _dense(activation=activation()), (3, 6), torch.float32)


def test_dfa_compiles(dtype):
    torch._dynamo.reset()
    _assert_compiled_matches_eager(_dfa, (3, 6), dtype)


def test_feedback_alignment_survives_compile():
    """Compiled, ∂x still goes through B: the input gradient is δ B, not δ W."""
    torch._dynamo.reset()
    layer = GenDense(6, 4, forward="linear_asym_dx", feedback=True)
    x = torch.randn(3, 6, requires_grad=True)
    delta = torch.randn(3, 4)
    torch.compile(layer, backend="aot_eager", fullgraph=True)(x).backward(delta)
    close(x.grad, delta @ layer.feedback)
    assert not torch.allclose(x.grad, delta @ layer.weight.detach())


def test_stochastic_mapping_with_its_own_generator_compiles_with_a_graph_break():
    """Dynamo cannot trace a torch.Generator argument: the graph breaks, the draws stay right."""
    torch._dynamo.reset()

    def make() -> GenDense:
        generator = torch.Generator().manual_seed(7)
        return GenDense(6, 4, forward="linear_stoc_binary_weights", generator=generator)

    eager, compiled_layer = make(), make()
    compiled_layer.load_state_dict(eager.state_dict())
    compiled = torch.compile(compiled_layer, backend="aot_eager")
    x = torch.randn(3, 6)
    for _ in range(2):  # the second call draws anew from the generator, in both
        out_eager, out_compiled = eager(x), compiled(x)
        torch.testing.assert_close(out_compiled, out_eager)
    out_eager.sum().backward()
    out_compiled.sum().backward()
    close(compiled_layer.weight.grad, eager.weight.grad)
    explanation = torch._dynamo.explain(make())(x)
    assert explanation.graph_break_count >= 1


@pytest.mark.parametrize(
    ("make", "shape"),
    [
        (lambda: GenDense(6, 4, forward="linear_brsf_dx"), (3, 6)),
        (lambda: GenConv(2, 3, 3, padding=1, forward="conv_linear_brsf_dx"), (2, 2, 5, 5)),
    ],
    ids=["dense", "conv"],
)
def test_brsf_compiles_and_draws_its_magnitudes_from_the_global_generator(make, shape):
    """Compiled, brSF's ``M`` may be drawn in the backward pass, where ``B`` is used (AOTAutograd
    places it there): the same rule and distribution, drawn at another point of the random
    stream. With no other draw in between, the numbers are eager's too."""
    torch._dynamo.reset()
    eager = make()
    compiled_layer = make()
    compiled_layer.load_state_dict(eager.state_dict())
    compiled = torch.compile(compiled_layer, backend="aot_eager", fullgraph=True)
    x = torch.randn(*shape)
    grads = []
    for layer in (eager, compiled):
        xr = x.clone().requires_grad_()
        torch.manual_seed(1)
        out = layer(xr)
        out.backward(torch.linspace(-1, 1, out.numel()).reshape(out.shape))  # no draw here
        grads.append(xr.grad)
    close(grads[1], grads[0])


class _Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(6, 6), nn.Linear(6, 4)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)) + x)


def test_dfa_on_any_model_runs_its_hooks_eagerly_under_compile_with_the_same_result():
    """Outside an nn.Sequential chain, DFA's per-pass hooks run eagerly (a graph break); the
    gradients equal the eager ones."""
    torch._dynamo.reset()
    _assert_compiled_matches_eager(
        lambda: DFA(_Residual(), 4, input_shape=(6,)), (3, 6), torch.float64, fullgraph=False
    )


NUMBERS = ["loss_train", "loss_test", "acc_train", "acc_test"]


@pytest.mark.parametrize("recipe", ["fa-mlp", "dfa-mlp", "binary-mlp-bn"])
def test_training_compiled_gives_the_eager_numbers(small_mnist, recipe):
    """``train(compile=...)`` traces every step (custom backwards and all) and trains to the
    numbers of eager training; evaluation and the checkpoint use the model itself."""
    from bender import recipes
    from bender.training import train

    torch._dynamo.reset()
    data = small_mnist.subset(512, 256)
    steps = list(recipes.get(recipe).after_step)
    eager_model, compiled_model = recipes.build(recipe), recipes.build(recipe)
    eager = train(eager_model, data, epochs=2, after_step=steps)
    compiled = train(compiled_model, data, epochs=2, after_step=steps, compile="aot_eager")
    close(torch.tensor(compiled[NUMBERS].values), torch.tensor(eager[NUMBERS].values))
    assert compiled_model.state_dict().keys() == eager_model.state_dict().keys()
    for p, q in zip(eager_model.parameters(), compiled_model.parameters(), strict=True):
        close(q, p)


def test_training_compiled_by_inductor_trains_and_resumes(small_mnist, tmp_path):
    """The default backend (Inductor: the C++ compiler on a CPU) trains a binary net, whose
    checkpoint resumes with or without compiling."""
    from bender import recipes
    from bender.training import train

    torch._dynamo.reset()
    data = small_mnist.subset(1024, 256)
    clip = list(recipes.get("binary-mlp-bn").after_step)
    path = tmp_path / "checkpoint.pt"
    model = recipes.build("binary-mlp-bn")
    first = train(model, data, epochs=1, after_step=clip, compile=True, checkpoint=path)
    assert first["acc_test"].iloc[0] > 0.2  # 16 steps (0.30 here): above chance (0.1)
    table = train(recipes.build("binary-mlp-bn"), data, epochs=2, after_step=clip, resume=path)
    assert len(table) == 2 and table["loss_train"].iloc[1] < table["loss_train"].iloc[0]


@pytest.mark.parametrize("value", ["inductorr", 1, None])
def test_training_refuses_an_unknown_compile_backend(small_mnist, value):
    from bender import recipes
    from bender.training import train

    with pytest.raises(ValueError, match=f"compile must be True .*got {value!r}"):
        train(recipes.build("fa-mlp"), small_mnist, compile=value)
