import io
from itertools import pairwise

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from bender import DFA, GenConv, GenDense, activations, direct_feedback_loss
from bender.training import train
from tests.conftest import close


def _mlp(sizes, dtype=torch.float32):
    layers = [
        GenDense(
            a,
            b,
            nn.ReLU() if i < len(sizes) - 2 else None,
            forward="linear_blocked_dx",
            dtype=dtype,
        )
        for i, (a, b) in enumerate(pairwise(sizes))
    ]
    for layer in layers:  # non-zero biases so σ'(a) is not trivially tied to the weights
        nn.init.uniform_(layer.bias, -0.1, 0.1)
    return nn.Sequential(*layers)


def _expected_grads(net, feedback, x, target, reduction="mean", signal=lambda e: e):
    """Independent DFA gradients: e = ∂L/∂y of softmax cross-entropy, then per-layer formulas;
    hidden layers get ``signal(e)`` projected."""
    with torch.no_grad():
        inputs, pre = [x], []
        for layer in net:
            a = inputs[-1] @ layer.weight.T + layer.bias
            pre.append(a)
            inputs.append(torch.relu(a) if layer.activation is not None else a)
        y = inputs[-1]
        e = torch.softmax(y, -1) - F.one_hot(target, y.shape[-1]).to(y.dtype)
        if reduction == "mean":
            e = e / len(x)
        grads = []
        for i in range(len(net)):
            # output layer: the ordinary error; hidden layer i: (e B_iᵀ) ⊙ relu'(a_i)
            last = i == len(net) - 1
            local = e if last else (signal(e) @ feedback[i].T) * (pre[i] > 0).to(e.dtype)
            grads.append((local.T @ inputs[i], local.sum(0)))
        return grads, e


@pytest.mark.parametrize("use_wrapper", [False, True], ids=["direct_feedback_loss", "DFA"])
def test_dfa_weight_gradients_match_the_formulas(batch, dtype, use_wrapper):
    net = _mlp([12, 9, 7, 4], dtype)
    x = torch.randn(batch, 12, dtype=dtype)
    target = torch.randint(0, 4, (batch,))
    if use_wrapper:
        model = DFA(net, 4)
        feedback = model.feedback_matrices
        loss = F.cross_entropy(model(x), target)
    else:
        feedback = [torch.randn(9, 4, dtype=dtype), torch.randn(7, 4, dtype=dtype)]
        loss = direct_feedback_loss(F.cross_entropy, target, activations(net, x), feedback)
    close(loss, F.cross_entropy(net(x), target))
    loss.backward()
    expected, _ = _expected_grads(net, feedback, x, target)
    for layer, (dw, db) in zip(net, expected, strict=True):
        close(layer.weight.grad, dw)
        close(layer.bias.grad, db)


def _ternary(e):
    """−1, 0 or 1: the sign of errors larger than a tenth of the row's largest."""
    return torch.where(e.abs() > 0.1 * e.abs().amax(-1, keepdim=True), e.sign(), 0)


@pytest.mark.parametrize("signal", [torch.sign, _ternary], ids=["sign", "ternary"])
@pytest.mark.parametrize("use_wrapper", [False, True], ids=["direct_feedback_loss", "DFA"])
def test_a_signal_function_changes_what_hidden_layers_get_and_only_that(
    batch, dtype, use_wrapper, signal
):
    net = _mlp([12, 9, 7, 4], dtype)
    x = torch.randn(batch, 12, dtype=dtype)
    target = torch.randint(0, 4, (batch,))
    if use_wrapper:
        model = DFA(net, 4, signal=signal)
        feedback = model.feedback_matrices
        loss = F.cross_entropy(model(x), target)
    else:
        feedback = [torch.randn(9, 4, dtype=dtype), torch.randn(7, 4, dtype=dtype)]
        outputs = activations(net, x)
        loss = direct_feedback_loss(F.cross_entropy, target, outputs, feedback, signal=signal)
    loss.backward()
    # sDFA: the hidden layers see sign(e), ±1 whatever the batch size; the output layer sees e
    expected, _ = _expected_grads(net, feedback, x, target, signal=signal)
    for layer, (dw, db) in zip(net, expected, strict=True):
        close(layer.weight.grad, dw)
        close(layer.bias.grad, db)


def test_a_signal_of_another_shape_or_type_is_refused():
    net = _mlp([6, 5, 3])
    x, target = torch.randn(4, 6), torch.randint(0, 3, (4,))
    with pytest.raises(ValueError, match=r"error \(shape \(2, 3\).*same shape, got \(2,\)"):
        DFA(net, 3, signal=lambda e: e.sum(-1))  # refused by the set-up pass, before training
    with pytest.raises(TypeError, match="signal must be a function of the output error"):
        DFA(_mlp([6, 5, 3]), 3, signal="sign")
    with pytest.raises(TypeError, match="signal must be a function of the output error"):
        direct_feedback_loss(F.cross_entropy, target, activations(net, x), [torch.ones(5, 3)], 1)
    assert "hidden targets 5, signal=torch.sign, model=" in repr(DFA(net, 3, signal=torch.sign))
    assert "signal=_ternary, model=" in repr(DFA(net, 3, signal=_ternary))
    assert "signal" not in repr(DFA(net, 3))


def test_output_layer_gradient_equals_backprop(dtype):
    net = _mlp([10, 8, 3], dtype)
    x, target = torch.randn(16, 10, dtype=dtype), torch.randint(0, 3, (16,))
    F.cross_entropy(DFA(net, 3)(x), target).backward()
    dfa_grad = net[1].weight.grad.clone()
    net.zero_grad()
    hidden = net[0](x).detach()
    bp = F.linear(hidden, net[1].weight, net[1].bias)
    F.cross_entropy(bp, target).backward()
    close(dfa_grad, net[1].weight.grad)


def test_hidden_outputs_get_exactly_the_projection_and_nothing_from_above(dtype):
    net = _mlp([10, 8, 6, 3], dtype)
    x, target = torch.randn(5, 10, dtype=dtype), torch.randint(0, 3, (5,))
    feedback = [torch.randn(8, 3, dtype=dtype), torch.randn(6, 3, dtype=dtype)]
    outs = activations(net, x)
    for h in outs:
        h.retain_grad()
    direct_feedback_loss(F.cross_entropy, target, outs, feedback).backward()
    _, e = _expected_grads(net, feedback, x, target)
    close(outs[2].grad, e)
    close(outs[0].grad, e @ feedback[0].T)  # nothing added by layer 2's backward
    close(outs[1].grad, e @ feedback[1].T)


def test_batch_gradient_is_sum_of_single_sample_gradients(dtype):
    net = _mlp([12, 9, 7, 4], dtype)
    model = DFA(net, 4)
    x, target = torch.randn(64, 12, dtype=dtype), torch.randint(0, 4, (64,))
    F.cross_entropy(model(x), target, reduction="sum").backward()
    batch_grads = [p.grad.clone() for p in net.parameters()]
    net.zero_grad()
    for i in range(64):
        F.cross_entropy(model(x[i : i + 1]), target[i : i + 1], reduction="sum").backward()
    for batch_grad, p in zip(batch_grads, net.parameters(), strict=True):
        close(batch_grad, p.grad)


@pytest.mark.parametrize("use_wrapper", [False, True], ids=["direct_feedback_loss", "DFA"])
def test_sequence_outputs_get_direct_feedback_row_by_row(batch, dtype, use_wrapper):
    # a dense net on every position of (N, T, features): each of the N·T rows is one "sample"
    net = _mlp([12, 9, 7, 4], dtype)
    x = torch.randn(batch, 5, 12, dtype=dtype)
    target = torch.randint(0, 4, (batch, 5))

    def loss_of(output, target):
        return F.cross_entropy(output.reshape(-1, 4), target.reshape(-1))

    if use_wrapper:
        model = DFA(net, 4)
        feedback = model.feedback_matrices
        loss = loss_of(model(x), target)
    else:
        feedback = [torch.randn(9, 4, dtype=dtype), torch.randn(7, 4, dtype=dtype)]
        loss = direct_feedback_loss(loss_of, target, activations(net, x), feedback)
    loss.backward()
    expected, _ = _expected_grads(net, feedback, x.reshape(-1, 12), target.reshape(-1))
    for layer, (dw, db) in zip(net, expected, strict=True):
        close(layer.weight.grad, dw)
        close(layer.bias.grad, db)


def test_input_of_another_size_than_the_feedback_was_made_for_is_refused():
    net = nn.Sequential(
        GenConv(1, 2, 3, nn.ReLU(), padding=1, forward="conv_linear_blocked_dx"),
        GenConv(2, 3, 3, forward="conv_linear_blocked_dx"),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    )
    model = DFA(net, 3, input_shape=(1, 8, 8))
    assert model.sizes == [2 * 8 * 8]
    F.cross_entropy(model(torch.randn(4, 1, 8, 8)), torch.tensor([0, 1, 2, 0])).backward()
    with pytest.raises(
        ValueError,
        match=r"hidden output 0 has shape \(4, 2, 10, 10\), but its "
        r"feedback matrix B_0 has 128 rows",
    ):
        model(torch.randn(4, 1, 10, 10))


class _CountMatmuls(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket in (torch.ops.aten.mm, torch.ops.aten.addmm, torch.ops.aten.bmm):
            self.count += 1
        return func(*args, **(kwargs or {}))


def test_all_hidden_projections_come_from_one_matmul():
    net = _mlp([20, 16, 12, 8, 4])  # 3 hidden outputs
    model = DFA(net, 4)
    assert model.feedback.shape == (16 + 12 + 8, 4)
    loss = F.cross_entropy(model(torch.randn(32, 20)), torch.randint(0, 4, (32,)))
    with _CountMatmuls() as counter:
        loss.backward()
    assert counter.count == 1 + len(net)  # one projection + one weight gradient per layer


def test_conv_feature_maps_are_flattened_for_the_projection():
    torch.manual_seed(0)
    net = nn.Sequential(
        GenConv(1, 3, 3, nn.ReLU(), padding=1, forward="conv_linear_blocked_dx"),
        nn.MaxPool2d(2),
        nn.Flatten(),
        GenDense(3 * 4 * 4, 5, forward="linear_blocked_dx"),
    )
    model = DFA(net, 5, input_shape=(1, 8, 8))
    assert model.sizes == [48]
    x, target = torch.randn(6, 1, 8, 8), torch.randint(0, 5, (6,))
    F.cross_entropy(model(x), target).backward()
    # expected: the pooled, flattened block output receives e Bᵀ, reshaped to (6, 3, 4, 4)
    conv = net[0]
    w = conv.weight.detach().clone().requires_grad_()
    pooled = F.max_pool2d(torch.relu(F.conv2d(x, w, conv.bias.detach(), padding=1)), 2)
    with torch.no_grad():
        logits = net[3](pooled.flatten(1))
        e = (torch.softmax(logits, -1) - F.one_hot(target, 5)) / 6
    pooled.backward((e @ model.feedback.T).reshape(6, 3, 4, 4))
    close(conv.weight.grad, w.grad)


def test_dfa_trains_and_keeps_feedback_fixed(mnist):
    model = DFA(_mlp([784, 64, 32, 10]), 10)
    before = model.feedback.clone()
    table = train(model, mnist.subset(10_000, 2_000), epochs=3, lr=1e-3)
    assert table["loss_train"].iloc[-1] < table["loss_train"].iloc[0]
    assert table["acc_test"].iloc[-1] > 0.7  # chance 0.1; 0.83 on the CPU, 0.73 from CUDA's draws
    assert torch.equal(model.feedback.cpu(), before)  # train moved it to its device
    assert "feedback" not in dict(model.named_parameters())


def test_state_dict_round_trip():
    a = DFA(_mlp([6, 5, 3]), 3)
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    b = DFA(_mlp([6, 5, 3]), 3)
    b.load_state_dict(torch.load(buf, weights_only=True))
    assert torch.equal(a.feedback, b.feedback)
    assert torch.equal(a.model[0].weight, b.model[0].weight)
    assert "DFA(feedback 5×3" in repr(a)


def test_no_grad_forward_is_the_plain_model():
    net = _mlp([6, 5, 3])
    x = torch.randn(4, 6)
    with torch.no_grad():
        torch.testing.assert_close(DFA(net)(x), net(x))


def test_bad_inputs_raise_clear_errors():
    net = _mlp([6, 5, 4, 3])
    with pytest.raises(
        ValueError, match=r"feedback matrix 1 must have shape \(4, 3\).*got \(3, 4\)"
    ):
        DFA(net, 3, feedback=[torch.randn(5, 3), torch.randn(3, 4)])
    with pytest.raises(ValueError, match="2 hidden outputs, got 1 feedback matrices"):
        DFA(net, 3, feedback=[torch.randn(5, 3)])
    with pytest.raises(ValueError, match="output has 3 features, but num_outputs=10"):
        DFA(net, 10)
    with pytest.raises(TypeError, match=r"wraps an nn\.Module, got str"):
        DFA("net")
    with pytest.raises(TypeError, match="at least one module with parameters"):
        DFA(nn.Sequential(nn.ReLU()))
    with pytest.raises(ValueError, match="pass input_shape"):
        DFA(nn.Sequential(GenConv(1, 2, 3), nn.Flatten(), GenDense(2 * 6 * 6, 3)))
    conv_net = nn.Sequential(GenConv(1, 2, 3), nn.Flatten(), GenDense(2 * 6 * 6, 3))
    with pytest.raises(ValueError, match=r"expects inputs of shape \(\*, 72\), got \(2, 18\)"):
        DFA(conv_net, input_shape=(1, 5, 5))  # its dry run fails in the dense layer
    assert conv_net.training  # the dry run's eval mode is undone
    outs = activations(net, torch.randn(2, 6))
    fb = [torch.randn(5, 3), torch.randn(4, 3)]
    with pytest.raises(ValueError, match=r"class indices in \[0, 3\).*got values in \[0, 12\]"):
        direct_feedback_loss(F.cross_entropy, torch.tensor([0, 12]), outs, fb)
    with pytest.raises(ValueError, match=r"output's shape \(2, 3\) \(3 classes\), got \(2, 5\)"):
        direct_feedback_loss(F.cross_entropy, torch.zeros(2, 5), outs, fb)
    with pytest.raises(ValueError, match=r"hidden output 1 has shape \(3, 4\), which does not "):
        direct_feedback_loss(
            F.cross_entropy, torch.tensor([0, 1]), [outs[0], outs[1][:1].expand(3, 4), outs[2]], fb
        )
    with pytest.raises(ValueError, match=r"feedback matrix 0 must have shape \(5, 3\)"):
        direct_feedback_loss(
            F.cross_entropy, torch.tensor([0, 1]), outs, [torch.randn(3, 5), fb[1]]
        )


def test_dfa_over_spectral_normed_layers_keeps_their_state_until_training():
    from torch.nn.utils.parametrizations import spectral_norm

    torch.manual_seed(0)
    net = _mlp([6, 5, 4, 3])
    net[0], net[1] = spectral_norm(net[0]), spectral_norm(net[1])
    vectors = net[0].parametrizations.weight[0]._u.clone()
    dfa = DFA(net, 3)  # its dry run reads the first weight and runs the net in eval mode
    assert torch.equal(net[0].parametrizations.weight[0]._u, vectors)
    assert dfa.training and net[0].parametrizations.weight[0].training
    x, y = torch.randn(7, 6), torch.randint(0, 3, (7,))
    F.cross_entropy(dfa(x), y).backward()
    originals = [m.parametrizations.weight.original for m in net[:2]]
    assert all(w.grad is not None and w.grad.abs().sum() > 0 for w in originals)


def test_reset_parameters_draws_the_feedback_again_and_keeps_given_matrices():
    torch.manual_seed(0)
    net = _mlp([6, 5, 4, 3])
    dfa = DFA(net, 3)
    built = {k: v.clone() for k, v in dfa.state_dict().items()}
    with torch.no_grad():
        dfa.feedback.add_(1.0)
        net[0].weight.add_(1.0)
    torch.manual_seed(0)
    for m in net:  # construction order: the layers, then the wrapper's feedback
        m.reset_parameters()
    nn.init.uniform_(net[0].bias, -0.1, 0.1), nn.init.uniform_(net[1].bias, -0.1, 0.1)
    nn.init.uniform_(net[2].bias, -0.1, 0.1)  # as _mlp does after building
    dfa.reset_parameters()
    for key, value in built.items():
        assert torch.equal(dfa.state_dict()[key], value), key

    given = [torch.randn(5, 3), torch.randn(4, 3)]
    fixed = DFA(_mlp([6, 5, 4, 3]), 3, feedback=given)
    fixed.reset_parameters()
    assert torch.equal(fixed.feedback, torch.cat(given))


def test_plain_linear_layers_are_blocks_that_learn_like_blocked_dense_layers(dtype):
    torch.manual_seed(0)
    reference = _mlp([12, 9, 7, 4], dtype)  # GenDense layers, for the formulas
    linears = [nn.Linear(m.in_features, m.out_features, dtype=dtype) for m in reference]
    for linear, layer in zip(linears, reference, strict=True):
        linear.load_state_dict(layer.state_dict())
    model = DFA(nn.Sequential(linears[0], nn.ReLU(), linears[1], nn.ReLU(), linears[2]), 4)
    x, target = torch.randn(5, 12, dtype=dtype), torch.randint(0, 4, (5,))
    F.cross_entropy(model(x), target).backward()
    expected, _ = _expected_grads(reference, model.feedback_matrices, x, target)
    for linear, (dw, db) in zip(linears, expected, strict=True):
        close(linear.weight.grad, dw)
        close(linear.bias.grad, db)


def test_a_sub_network_block_learns_by_backprop_inside_from_the_feedback_at_its_output():
    torch.manual_seed(0)
    block = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 5))  # one block
    head = nn.Linear(5, 3)
    model = DFA(nn.Sequential(block, nn.ReLU(), head), 3, blocks=["1"])  # after the relu
    assert model.sizes == [5] and model.targets == ["1 output"]
    x, target = torch.randn(4, 6, dtype=torch.float64), torch.randint(0, 3, (4,))
    model.double()
    F.cross_entropy(model(x), target).backward()

    # reference: plain autograd on copies, the block's output given e B₁ᵀ as its gradient
    w1, b1, w2, b2, w3, b3 = [p.detach().clone().requires_grad_() for p in model.parameters()]
    h = torch.relu(torch.tanh(x @ w1.T + b1) @ w2.T + b2)
    y = h.detach() @ w3.T + b3
    e = (torch.softmax(y, -1) - F.one_hot(target, 3).double()) / len(x)
    grads = torch.autograd.grad(h, [w1, b1, w2, b2], grad_outputs=e @ model.feedback.T)
    for param, expected in zip(block.parameters(), grads, strict=True):
        close(param.grad, expected)
    close(head.weight.grad, e.T @ h.detach())


def test_a_model_that_starts_with_an_embedding_takes_an_input_dtype():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Embedding(20, 4), nn.Flatten(), nn.Linear(3 * 4, 5), nn.ReLU())
    net.append(nn.Linear(5, 2))
    model = DFA(net, 2, input_shape=(3,), input_dtype=torch.long)
    assert model.sizes == [12, 5]  # the embedding's output (3 tokens × 4) gets feedback too
    tokens = torch.randint(0, 20, (6, 3))
    F.cross_entropy(model(tokens), torch.randint(0, 2, (6,))).backward()
    assert all(p.grad is not None for p in net.parameters())


def test_a_norm_layer_stays_in_the_block_of_the_layer_before_it():
    torch.manual_seed(0)
    dense = GenDense(6, 5, forward="linear_blocked_dx")
    norm = nn.BatchNorm1d(5)
    model = DFA(nn.Sequential(dense, norm, nn.ReLU(), GenDense(5, 3)), 3).double()
    assert model.sizes == [5]  # one hidden block: dense, norm, relu
    x, target = torch.randn(8, 6, dtype=torch.float64), torch.randint(0, 3, (8,))
    F.cross_entropy(model(x), target).backward()

    w, b, gamma, beta = [
        p.detach().clone().requires_grad_() for p in (*dense.parameters(), *norm.parameters())
    ]
    a = x @ w.T + b
    h = torch.relu((a - a.mean(0)) / torch.sqrt(a.var(0, unbiased=False) + norm.eps) * gamma + beta)
    y = model.model[3](h.detach())
    e = (torch.softmax(y, -1) - F.one_hot(target, 3).double()).detach() / len(x)
    expected = torch.autograd.grad(h, [w, b, gamma, beta], grad_outputs=e @ model.feedback.T)
    for param, grad in zip((*dense.parameters(), *norm.parameters()), expected, strict=True):
        close(param.grad, grad)


def _stage(forward, feedback=False):
    """Two layers in one DFA block: the first learns only through the second."""
    return nn.Sequential(
        GenDense(6, 8, nn.ReLU(), forward=forward, feedback=feedback),
        GenDense(8, 5, forward=forward, feedback=feedback),
    )


def test_parameters_no_gradient_can_reach_are_named_in_a_warning():
    cut_off = nn.Sequential(_stage("linear_blocked_dx"), nn.ReLU(), GenDense(5, 3))
    with pytest.warns(UserWarning, match=r"no gradient reaches them: 0\.0\.weight, 0\.0\.bias\. "):
        model = DFA(cut_off, 3, blocks=["1"])
    F.cross_entropy(model(torch.randn(4, 6)), torch.randint(0, 3, (4,))).backward()
    first, second = cut_off[0]
    assert first.weight.grad is None and first.bias.grad is None  # what the warning said
    assert second.weight.grad is not None


def _frozen_first(stage):
    stage[0].requires_grad_(False)
    return stage


@pytest.mark.filterwarnings("error::UserWarning")
@pytest.mark.parametrize(
    "stage",
    [
        lambda: _stage("linear"),
        lambda: _stage("linear_asym_dx", feedback=True),
        lambda: _frozen_first(_stage("linear_blocked_dx")),  # cut off on purpose
        lambda: GenDense(6, 5, forward="linear_blocked_dx"),  # one layer per block: DFA itself
    ],
    ids=["backprop", "feedback-alignment", "frozen", "one-layer"],
)
def test_no_warning_when_every_trainable_parameter_is_reached(stage):
    DFA(nn.Sequential(stage(), nn.ReLU(), GenDense(5, 3)), 3, blocks=["1"])


def test_direct_feedback_loss_adds_the_projection_to_what_a_layer_passes_down(dtype):
    # Bender.jl's semantics: without blocked layers (or the DFA wrapper's detach), a hidden
    # output gets the backpropagated gradient plus e B_iᵀ
    net = nn.Sequential(GenDense(5, 4, dtype=dtype), GenDense(4, 3, dtype=dtype))
    x, target = torch.randn(2, 5, dtype=dtype), torch.randint(0, 3, (2,))
    feedback = [torch.randn(4, 3, dtype=dtype)]
    outputs = activations(net, x)
    outputs[0].retain_grad()
    direct_feedback_loss(F.cross_entropy, target, outputs, feedback).backward()
    y = outputs[1].detach()
    e = (torch.softmax(y, -1) - F.one_hot(target, 3).to(dtype)) / len(x)
    close(outputs[0].grad, e @ net[1].weight.detach() + e @ feedback[0].T)


def test_a_block_that_returns_a_tuple_is_named():
    class WithAux(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(4, 3)

        def forward(self, x):
            return self.linear(x), x

    with pytest.raises(TypeError, match=r"block '0' \(WithAux\) returned tuple"):
        DFA(nn.Sequential(WithAux(), nn.Linear(3, 2)), 2, blocks=["0"], input_shape=(4,))


@pytest.mark.parametrize(
    ("feedback", "error", "says"),
    [
        (
            torch.randn(3, 2),
            TypeError,
            r"a list of matrices B_i, one per hidden output, got one tensor of shape \(3, 2\)",
        ),
        ([torch.empty(3, 2, device="meta")], ValueError, "matrix 0 is on the meta device"),
        ([torch.full((3, 2), float("nan"))], ValueError, "matrix 0 holds NaN or infinite"),
        ([[1.0, 2.0]], TypeError, "feedback matrix 0 must be a tensor, got list"),
    ],
    ids=["stacked", "meta", "nan", "list"],
)
def test_feedback_that_is_not_a_list_of_finite_matrices_is_refused(feedback, error, says):
    net = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    with pytest.raises(error, match=says):
        DFA(net, 2, feedback=feedback)


class _Residual(nn.Module):
    """A ResNet basic block: relu(bn2(conv2(relu(bn1(conv1 x)))) + x)."""

    def __init__(self, channels, dtype):
        super().__init__()
        conv = {"padding": 1, "forward": "conv_linear_blocked_dx", "dtype": dtype}
        self.conv1, self.conv2 = (
            GenConv(channels, channels, 3, **conv),
            GenConv(channels, channels, 3, **conv),
        )
        self.bn1, self.bn2 = (
            nn.BatchNorm2d(channels, dtype=dtype),
            nn.BatchNorm2d(channels, dtype=dtype),
        )

    def forward(self, x):
        return torch.relu(self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))) + x)


def _batch_norm(z, gamma, beta, eps):
    mean = z.mean((0, 2, 3), keepdim=True)
    var = z.var((0, 2, 3), unbiased=False, keepdim=True)
    return (z - mean) / torch.sqrt(var + eps) * gamma.view(1, -1, 1, 1) + beta.view(1, -1, 1, 1)


def _leaves(*tensors):
    return [t.detach().clone().requires_grad_() for t in tensors]


def test_residual_net_with_batch_norm_gets_the_projection_at_what_each_layer_reads(batch, dtype):
    torch.manual_seed(0)
    stem = GenConv(1, 4, 3, padding=1, forward="conv_linear_blocked_dx", dtype=dtype)
    block = _Residual(4, dtype)
    head = GenDense(16, 3, forward="linear_blocked_dx", dtype=dtype)
    norm = nn.BatchNorm2d(4, dtype=dtype)
    net = nn.Sequential(stem, norm, nn.ReLU(), block, nn.AvgPool2d(2), nn.Flatten(), head)
    for m in net.modules():  # non-trivial scales and shifts
        if isinstance(m, nn.BatchNorm2d):
            nn.init.uniform_(m.weight, 0.5, 1.5), nn.init.uniform_(m.bias, -0.5, 0.5)
    model = DFA(net, 3, input_shape=(1, 4, 4))
    assert model.targets == ["3.conv1 input", "3.conv2 input", "6 input"]
    assert model.sizes == [64, 64, 16]
    x, target = torch.randn(batch, 1, 4, 4, dtype=dtype), torch.randint(0, 3, (batch,))
    F.cross_entropy(model(x), target).backward()

    # independent reference: plain tensor operations on copies of the weights
    b_h, b_r, b_p = model.feedback_matrices
    w0, c0, g0, s0 = _leaves(stem.weight, stem.bias, norm.weight, norm.bias)
    h = torch.relu(_batch_norm(F.conv2d(x, w0, c0, padding=1), g0, s0, norm.eps))
    w1, c1, g1, s1 = _leaves(block.conv1.weight, block.conv1.bias, block.bn1.weight, block.bn1.bias)
    r = torch.relu(_batch_norm(F.conv2d(h.detach(), w1, c1, padding=1), g1, s1, norm.eps))
    w2, c2, g2, s2 = _leaves(block.conv2.weight, block.conv2.bias, block.bn2.weight, block.bn2.bias)
    z2 = _batch_norm(F.conv2d(r.detach(), w2, c2, padding=1), g2, s2, norm.eps)
    p = F.avg_pool2d(torch.relu(z2 + h.detach()), 2).flatten(1)  # the skip carries nothing back
    with torch.no_grad():
        y = p @ head.weight.T + head.bias
        e = (torch.softmax(y, -1) - F.one_hot(target, 3).to(dtype)) / batch
    close(head.weight.grad, e.T @ p.detach())  # the classifier: backprop's gradient
    close(head.bias.grad, e.sum(0))
    for out, b, params, layers in (
        (p, b_p, (w2, c2, g2, s2), (block.conv2, block.bn2)),
        (r, b_r, (w1, c1, g1, s1), (block.conv1, block.bn1)),
        (h, b_h, (w0, c0, g0, s0), (stem, norm)),
    ):
        projection = (e @ b.T).reshape(out.shape)  # (e Bᵢᵀ) arrives at what the layer reads
        expected = torch.autograd.grad(out, params, grad_outputs=projection)
        actual = [p.grad for layer in layers for p in layer.parameters()]
        for got, want in zip(actual, expected, strict=True):
            close(got, want)


def test_torchvision_resnet18_unchanged_gets_a_gradient_for_every_parameter():
    torchvision = pytest.importorskip("torchvision")
    from bender import convert

    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=10)
    bent = convert(net, dense="linear_blocked_dx", conv="conv_linear_blocked_dx")
    model = DFA(bent, 10, input_shape=(3, 32, 32))
    assert len(model.targets) == 17  # every conv but the stem's, and the classifier
    x, target = torch.randn(2, 3, 32, 32), torch.tensor([3, 7])
    F.cross_entropy(model(x), target).backward()
    assert len(list(model.parameters())) == 62
    assert all(p.grad is not None for p in model.parameters())
    # the classifier's gradient equals backprop's
    with torch.no_grad():
        features = torch.flatten(
            bent.avgpool(
                bent.layer4(
                    bent.layer3(
                        bent.layer2(bent.layer1(bent.maxpool(bent.relu(bent.bn1(bent.conv1(x))))))
                    )
                )
            ),
            1,
        )
    e = (torch.softmax(features @ bent.fc.weight.T + bent.fc.bias, -1) - F.one_hot(target, 10)) / 2
    close(bent.fc.weight.grad, e.T @ features)


def test_block_names_that_do_not_exist_are_listed():
    net = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    with pytest.raises(ValueError, match=r"blocks names 'layer1', not a submodule .* are 0, 1, 2"):
        DFA(net, 2, blocks=["layer1"])
    with pytest.raises(TypeError, match="blocks must be a list of module names"):
        DFA(net, 2, blocks="1")


def test_a_model_that_returns_no_tensor_is_refused():
    class Pair(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(4, 2)

        def forward(self, x):
            return {"logits": self.linear(x)}

    with pytest.raises(TypeError, match="returns one tensor of class scores, got dict"):
        DFA(Pair(), 2, input_shape=(4,))
