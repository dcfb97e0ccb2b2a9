import warnings
from functools import partial

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bender import DFA, GenConv, GenDense, convert
from bender.attention import GenAttention
from bender.training import train
from tests.conftest import close, cpu_uniform


def test_converted_mlp_computes_the_same_outputs_and_feedback_alignment_gradients(batch, dtype):
    mlp = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 4)).to(dtype)
    fa = convert(mlp, dense="linear_asym_dx")
    assert [type(m) for m in fa] == [GenDense, nn.Tanh, GenDense]
    x = torch.randn(batch, 6, dtype=dtype, requires_grad=True)
    delta = torch.randn(batch, 4, dtype=dtype)
    out = fa(x)
    close(out, mlp(x))
    out.backward(delta)

    (w1, b1, b1_fb), (w2, _, b2_fb) = [(m.weight, m.bias, m.feedback) for m in (fa[0], fa[2])]
    h = torch.tanh(x.detach() @ w1.detach().t() + b1.detach())
    dh = delta @ b2_fb  # feedback alignment: B2 in place of W2
    da1 = dh * (1 - h**2)
    close(fa[2].weight.grad, delta.t() @ h)
    close(fa[2].bias.grad, delta.sum(0))
    close(fa[0].weight.grad, da1.t() @ x.detach())
    close(x.grad, da1 @ b1_fb)
    assert not torch.equal(b2_fb, w2.detach())


@pytest.mark.parametrize(
    ("make", "shape"),
    [
        (lambda: nn.Conv1d(4, 6, 3, stride=2, padding=1, bias=False), (2, 4, 11)),
        (lambda: nn.Conv2d(4, 6, 3, padding="same", dilation=2, groups=2), (2, 4, 9, 9)),
        (lambda: nn.Conv2d(4, 6, (3, 1), padding="valid"), (2, 4, 7, 5)),
        (lambda: nn.Conv3d(2, 3, 3, padding=(1, 0, 1)), (2, 2, 5, 5, 5)),
    ],
)
def test_converted_convs_keep_their_settings_and_use_the_feedback_kernel(make, shape):
    layer = make().double()
    bent = convert(nn.Sequential(layer), conv="conv_linear_asym_dx")[0]
    assert type(bent) is GenConv and bent.feedback.shape == layer.weight.shape
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    out = bent(x)
    close(out, layer(x))
    delta = torch.randn_like(out)
    out.backward(delta)
    dims = len(shape) - 2
    conv_input = getattr(torch.nn.grad, f"conv{dims}d_input")
    conv_weight = getattr(torch.nn.grad, f"conv{dims}d_weight")
    settings = (bent.stride, bent.padding, bent.dilation, bent.groups)
    close(x.grad, conv_input(shape, bent.feedback, delta, *settings))
    close(bent.weight.grad, conv_weight(x.detach(), layer.weight.shape, delta, *settings))


def test_the_original_model_is_left_alone():
    mlp = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 4))
    before = {k: v.clone() for k, v in mlp.state_dict().items()}
    fa = convert(mlp, dense="linear_asym_dx")
    opt = torch.optim.SGD(fa.parameters(), lr=0.5)
    fa(torch.randn(3, 6)).sum().backward()
    opt.step()
    assert [type(m) for m in mlp] == [nn.Linear, nn.ReLU, nn.Linear]
    assert all(torch.equal(mlp.state_dict()[k], v) for k, v in before.items())
    assert not torch.equal(fa[0].weight, mlp[0].weight)  # the copy learned on its own


def test_frozen_layers_eval_mode_and_feedback_in_the_state_dict():
    mlp = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 4, bias=False)).eval()
    mlp[0].weight.requires_grad_(False)
    torch.manual_seed(7)
    fa = convert(mlp, dense="linear_asym_dx")
    torch.manual_seed(7)
    again = convert(mlp, dense="linear_asym_dx")
    assert not fa[0].weight.requires_grad and fa[0].bias.requires_grad
    assert fa[2].bias is None and not fa.training and not fa[0].training
    assert set(fa.state_dict()) == {"0.weight", "0.bias", "0.feedback", "2.weight", "2.feedback"}
    assert torch.equal(fa[2].feedback, again[2].feedback)  # the global seed fixes B
    assert "feedback" not in dict(fa.named_parameters())


def test_only_the_layers_given_a_mapping_change():
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(2 * 26 * 26, 10))
    assert [type(m) for m in convert(net, dense="linear_blocked_dx")] == [
        nn.Conv2d,
        nn.Flatten,
        GenDense,
    ]
    assert type(convert(net, conv="conv_binary_weights")[0]) is GenConv
    single = convert(nn.Linear(3, 2), dense="linear_binary_weights")
    assert type(single) is GenDense and single.feedback is None


def test_a_layer_used_twice_stays_one_layer():
    shared = nn.Linear(4, 4)
    net = nn.Sequential(shared, nn.Tanh(), shared)
    fa = convert(net, dense="linear_asym_dx")
    assert type(fa[0]) is GenDense and fa[0] is fa[2]
    assert len(list(fa.parameters())) == 2
    x = torch.randn(3, 4)
    close(fa(x), net(x))


def test_converted_plain_mlp_takes_direct_feedback_alignment(batch):
    mlp = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    dfa = DFA(convert(mlp, dense="linear_blocked_dx"), 2)
    x, delta = torch.randn(batch, 5), torch.randn(batch, 2)
    out = dfa(x)
    close(out, mlp(x))
    out.backward(delta)

    w1, w2 = mlp[0].weight.detach(), mlp[2].weight.detach()
    b1, b2 = mlp[0].bias.detach(), mlp[2].bias.detach()
    fb1, fb2 = dfa.feedback[:4], dfa.feedback[4:]  # stacked per hidden layer: 4×2 and 3×2
    a1 = x @ w1.t() + b1
    h1 = a1.relu()
    a2 = h1 @ w2.t() + b2
    da2 = (delta @ fb2.t()) * (a2 > 0)  # e B_iᵀ straight to each hidden layer
    da1 = (delta @ fb1.t()) * (a1 > 0)
    close(dfa.model[4].weight.grad, delta.t() @ a2.relu())
    close(dfa.model[2].weight.grad, da2.t() @ h1)
    close(dfa.model[0].weight.grad, da1.t() @ x)
    close(dfa.model[0].bias.grad, da1.sum(0))


def test_transposed_and_lazy_convolutions_are_left_with_a_warning_that_names_them():
    autoencoder = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.ConvTranspose2d(4, 1, 3))
    autoencoder.append(nn.LazyConv2d(2, 1))
    with pytest.warns(
        UserWarning, match=r"as they are.*: 2 \(ConvTranspose2d\), 3 \(LazyConv2d\)$"
    ):
        bent = convert(autoencoder, conv="conv_linear_asym_dx")
    assert [type(m) for m in bent[:3]] == [GenConv, nn.ReLU, nn.ConvTranspose2d]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # only dense layers asked for: no word on convolutions
        convert(nn.Sequential(nn.Linear(3, 3), nn.ConvTranspose1d(1, 1, 2)), dense="linear")


def test_converted_plain_mlp_learns_mnist_with_dfa(small_mnist):
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 10))
    table = train(DFA(convert(mlp, dense="linear_blocked_dx"), 10), small_mnist, epochs=3)
    assert table["loss_test"].is_monotonic_decreasing
    assert table["acc_test"].iloc[-1] > 0.4  # chance is 0.1; DFA starts slowly (0.63 here)


@pytest.mark.filterwarnings("error::UserWarning")
def test_layers_inside_other_modules_are_found_and_attention_is_converted_whole():
    block = nn.TransformerEncoderLayer(8, 2, dim_feedforward=16, dropout=0.0, batch_first=True)
    bent = convert(block, dense="linear_asym_dx")
    assert type(bent.linear1) is GenDense and type(bent.linear2) is GenDense
    assert type(bent.self_attn) is GenAttention and type(bent.self_attn.out_proj) is GenDense
    x = torch.randn(2, 5, 8)
    close(bent(x), block(x))
    bent.eval(), block.eval()
    with torch.no_grad():  # torch's fused inference path is off for it, with the same result
        close(bent(x), block(x))


def test_bad_requests_are_refused():
    mlp = nn.Sequential(nn.Linear(3, 2))
    with pytest.raises(ValueError, match=r"needs a mapping for dense layers \(dense=\.\.\.\)"):
        convert(mlp)
    with pytest.raises(ValueError, match="unknown forward mapping 'linear_asym'"):
        convert(mlp, dense="linear_asym")
    with pytest.raises(ValueError, match=r"found no nn\.Conv1d/2d/3d layer to give conv_linear in"):
        convert(mlp, conv="conv_linear")
    with pytest.raises(TypeError, match=r"convert needs an nn\.Module, got function"):
        convert(lambda x: x, dense="linear")


def _spectral_u(layer: nn.Module) -> torch.Tensor:
    return layer.parametrizations.weight[0]._u


def test_parametrized_layers_are_converted_with_their_parametrizations_and_state():
    from torch.nn.utils.parametrizations import orthogonal, spectral_norm, weight_norm

    torch.manual_seed(0)
    model = nn.Sequential(
        weight_norm(nn.Conv2d(1, 3, 3)),
        nn.ReLU(),
        nn.Flatten(),
        spectral_norm(nn.Linear(48, 8)),
        nn.Tanh(),
        orthogonal(nn.Linear(8, 8)),
        spectral_norm(weight_norm(nn.Linear(8, 3))),
    )
    model[0].parametrizations.weight.original0.requires_grad_(False)  # lengths frozen
    before = {k: v.clone() for k, v in model.state_dict().items()}
    bent = convert(model, dense="linear_asym_dx", conv="conv_linear_asym_dx")

    trainable = {n for n, p in bent.named_parameters() if p.requires_grad}
    assert trainable == {n for n, p in model.named_parameters() if p.requires_grad}
    assert "0.parametrizations.weight.original0" not in trainable
    assert [type(bent[i]).__name__ for i in (0, 3, 5, 6)] == [
        "ParametrizedGenConv",
        *["ParametrizedGenDense"] * 3,
    ]
    # the same unparametrized tensors and state under the same names: only feedback is new
    state = bent.state_dict()
    assert set(state) - set(before) == {f"{i}.feedback" for i in (0, 3, 5, 6)}
    for key, value in before.items():
        assert torch.equal(state[key], value), key
        assert torch.equal(model.state_dict()[key], value), key  # the source is left alone
    assert "weight parametrized by _WeightNorm then _SpectralNorm" in repr(bent[6])
    assert torch.equal(_spectral_u(bent[3]), before["3.parametrizations.weight.0._u"])
    x = torch.randn(5, 1, 6, 6)
    for mode in (False, True):  # eval first: train mode takes a power step in both
        model.train(mode), bent.train(mode)
        close(bent(x), model(x))
    close(_spectral_u(bent[3]), _spectral_u(model[3]))


def test_a_weight_normed_feedback_layer_learns_through_its_parametrization(batch, dtype):
    from torch.nn.utils.parametrizations import weight_norm

    layer = weight_norm(nn.Linear(6, 4)).to(dtype)
    bent = convert(layer, dense="linear_asym_dx")
    g = bent.parametrizations.weight.original0  # (4, 1), one length per output row
    v = bent.parametrizations.weight.original1  # (4, 6), the direction
    x = torch.randn(batch, 6, dtype=dtype, requires_grad=True)
    delta = torch.randn(batch, 4, dtype=dtype)
    bent(x).backward(delta)

    # W = g v / ‖v‖ row by row; ∂W = δᵀx; ∂x = δ B (feedback alignment)
    norm = v.detach().norm(dim=1, keepdim=True)
    direction = v.detach() / norm
    dw = delta.t() @ x.detach()
    close(x.grad, delta @ bent.feedback)
    radial = (dw * direction).sum(1, keepdim=True) * direction
    # torch's fused CUDA weight-norm backward, which turns ∂W into ∂g and ∂v, is good to about
    # 4e-7 relative in float64 (H200, torch 2.11); ∂W itself is checked exactly elsewhere
    near = close
    if g.is_cuda and dtype == torch.float64:
        near = partial(torch.testing.assert_close, rtol=1e-5, atol=1e-6)
    near(g.grad, (dw * direction).sum(1, keepdim=True))
    near(v.grad, g.detach() / norm * (dw - radial))
    close(bent.bias.grad, delta.sum(0))


def test_pruned_layers_keep_their_masks_and_learn_only_where_unpruned(batch, dtype):
    from torch.nn.utils import prune

    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 4)).to(dtype)
    prune.l1_unstructured(mlp[0], "weight", amount=0.5)
    prune.random_unstructured(mlp[0], "weight", amount=0.2)  # a container of two methods
    prune.l1_unstructured(mlp[2], "bias", amount=2)
    x = torch.randn(batch, 6, dtype=dtype, requires_grad=True)
    mlp(x)  # after a forward pass the pruned weight is a non-leaf tensor, which deepcopy refuses
    fa = convert(mlp, dense="linear_asym_dx")

    state, before = fa.state_dict(), mlp.state_dict()
    assert set(state) - set(before) == {"0.feedback", "2.feedback"}
    assert all(torch.equal(state[k], v) for k, v in before.items())
    out = fa(x)
    close(out, mlp(x))
    delta = torch.randn(batch, 4, dtype=dtype)
    out.backward(delta)
    mask = fa[0].weight_mask
    h = torch.tanh(x.detach() @ (fa[0].weight_orig.detach() * mask).t() + fa[0].bias.detach())
    da1 = (delta @ fa[2].feedback) * (1 - h**2)  # feedback alignment through B2
    close(fa[0].weight_orig.grad, (da1.t() @ x.detach()) * mask)  # nothing where pruned
    close(x.grad, da1 @ fa[0].feedback)
    close(fa[2].bias_orig.grad, delta.sum(0) * fa[2].bias_mask)

    torch.optim.SGD(fa.parameters(), lr=0.5).step()
    assert torch.all(fa[0].weight[mask == 0] == 0)  # still pruned after a step


def test_hook_based_norms_are_refused_and_other_hooks_named():
    from torch.nn.utils import weight_norm  # the old, hook-based one

    with warnings.catch_warnings():  # newer torch says it is deprecated
        warnings.simplefilter("ignore")
        old = nn.Sequential(weight_norm(nn.Linear(6, 5)), nn.ReLU(), nn.Linear(5, 3))
    old(torch.randn(2, 6))
    with pytest.raises(
        ValueError,
        match=r"^0: .*hook-based torch\.nn\.utils\.weight_norm.*"
        r"parametrizations\.weight_norm",
    ):
        convert(old, dense="linear_asym_dx")

    def log_output(module, args, output):
        pass

    model = nn.Sequential(nn.Linear(6, 5))
    model[0].register_forward_hook(log_output)
    with pytest.warns(UserWarning, match=r"does not carry the hooks of a Linear.*\(log_output\)"):
        converted = convert(model, dense="linear_asym_dx")
    assert not converted[0]._forward_hooks


@pytest.mark.parametrize("mode", ["reflect", "replicate", "circular"])
def test_convs_with_other_padding_modes_convert_and_send_dx_through_the_pad(mode):
    layer = nn.Conv2d(2, 3, 3, padding=(1, 2), padding_mode=mode, groups=1).double()
    bent = convert(nn.Sequential(layer), conv="conv_linear_asym_dx")[0]
    assert bent.padding_mode == mode and bent.padding == (0, 0)
    assert f"padding=(1, 2), padding_mode='{mode}'" in repr(bent)
    x = torch.randn(2, 2, 6, 7, dtype=torch.float64, requires_grad=True)
    out = bent(x)
    close(out, layer(x))
    delta = torch.randn_like(out)
    out.backward(delta)

    # independent: pad as F.pad does, the feedback kernel's transposed conv, back through the pad
    xd = x.detach().requires_grad_()
    padded = F.pad(xd, (2, 2, 1, 1), mode=mode)
    dpadded = torch.nn.grad.conv2d_input(padded.shape, bent.feedback, delta)
    (expected_dx,) = torch.autograd.grad(padded, xd, grad_outputs=dpadded)
    close(x.grad, expected_dx)
    close(bent.weight.grad, torch.nn.grad.conv2d_weight(padded.detach(), layer.weight.shape, delta))


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
@pytest.mark.parametrize(
    ("make", "shape"),
    [
        (lambda: nn.Conv1d(2, 3, 4, padding="same"), (3, 2, 9)),
        (lambda: nn.Conv2d(2, 4, (2, 3), padding="same", groups=2), (1, 2, 6, 5)),
        (
            lambda: nn.Conv3d(
                2, 3, (2, 3, 2), padding="same", dilation=(1, 2, 3), padding_mode="circular"
            ),
            (2, 2, 5, 6, 7),
        ),
    ],
)
def test_convs_with_uneven_same_padding_convert(make, shape):
    """Even kernels pad one more row after than before; PyTorch's own layer, given ``B`` as its
    weight, computes the feedback-alignment ``∂x`` independently."""
    layer = make().double()
    bent = convert(nn.Sequential(layer), conv="conv_linear_asym_dx")[0]
    twin = make().double()
    with torch.no_grad():
        twin.weight.copy_(bent.feedback)
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    out = bent(x)
    close(out, layer(x))
    assert out.shape == shape[:1] + out.shape[1:2] + shape[2:]  # "same": the input's size
    delta = torch.randn_like(out)
    out.backward(delta)
    exact_x, twin_x = (x.detach().requires_grad_() for _ in range(2))
    layer(exact_x).backward(delta)
    twin(twin_x).backward(delta)
    close(x.grad, twin_x.grad)
    close(bent.weight.grad, layer.weight.grad)
    close(bent.bias.grad, layer.bias.grad)


class _TiedLM(nn.Module):
    """Token embedding tied to the output layer, as in many language models."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.body = nn.Linear(4, 4)
        self.head = nn.Linear(4, 10, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.body(self.embed(tokens))))


def test_tied_weights_stay_tied_and_get_both_gradients():
    torch.manual_seed(0)
    model = _TiedLM().double()
    bent = convert(model, dense="linear_asym_dx")
    assert bent.head.weight is bent.embed.weight  # one parameter, as before
    assert len(list(bent.parameters())) == len(list(model.parameters())) == 3
    assert type(model.head) is nn.Linear and model.head.weight is model.embed.weight  # untouched

    tokens = torch.tensor([1, 3, 3, 7])
    out = bent(tokens)
    delta = torch.randn_like(out)
    out.backward(delta)

    # independent: the head's exact ∂W plus the embedding rows' share, which reaches them
    # through the feedback matrices B_head and B_body
    e = model.embed.weight.detach()[tokens]
    a = e @ model.body.weight.detach().t() + model.body.bias.detach()
    h = torch.relu(a)
    dh = delta @ bent.head.feedback
    de = (dh * (a > 0)) @ bent.body.feedback
    expected = delta.t() @ h + torch.zeros(10, 4, dtype=torch.float64).index_add(0, tokens, de)
    close(bent.embed.weight.grad, expected)


def test_a_weight_shared_by_two_linear_layers_stays_shared():
    first, second = nn.Linear(3, 3), nn.Linear(3, 3)
    second.weight = first.weight
    bent = convert(nn.Sequential(first, nn.Tanh(), second), dense="linear_asym_dx")
    assert bent[0].weight is bent[2].weight and bent[0].bias is not bent[2].bias
    opt = torch.optim.SGD(bent.parameters(), lr=0.1)
    bent(torch.randn(2, 3)).sum().backward()
    opt.step()
    assert torch.equal(bent[0].weight, bent[2].weight)


@pytest.mark.parametrize("rule", ["usf", "frsf", "brsf"])
def test_converted_layers_take_sign_concordant_feedback(rule):
    linear, conv = nn.Linear(6, 4).double(), nn.Conv2d(2, 3, 3, padding="same").double()
    bent = convert(
        nn.Sequential(conv, nn.Flatten(), linear.double()),
        dense=f"linear_{rule}_dx",
        conv=f"conv_linear_{rule}_dx",
    )
    assert (bent[0].feedback is not None) == (rule == "frsf") == (bent[2].feedback is not None)
    for layer, shape, backprop in [
        (bent[0], (5, 2, 4, 4), lambda b, d: torch.nn.grad.conv2d_input((5, 2, 4, 4), b, d, 1, 1)),
        (bent[2], (5, 6), lambda b, d: d @ b),
    ]:
        x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
        torch.manual_seed(5)  # brSF draws from the global generator: seeded, then drawn again
        out = layer(x)
        delta = torch.randn_like(out)
        out.backward(delta)
        w = layer.weight.detach()
        receptive = w[0, 0].numel()  # the kernel's size; 1 for a dense weight
        glorot = (6 / ((w.shape[0] + w.shape[1]) * receptive)) ** 0.5
        drawn = cpu_uniform(w.shape, 5, w.dtype)
        magnitude = drawn * glorot if rule == "brsf" else torch.ones_like(w)
        if rule == "frsf":
            magnitude = layer.feedback.abs()
        close(x.grad, backprop(magnitude * torch.sign(w), delta))


def test_converted_layers_learn_their_feedback_with_kolen_pollack():
    torch.manual_seed(0)
    linear, conv = nn.Linear(6, 4), nn.Conv2d(2, 3, 3, padding=1)
    bent = convert(
        nn.Sequential(conv, nn.Flatten(), nn.Linear(3 * 4 * 4, 6), nn.ReLU(), linear),
        dense="linear_kp_dx",
        conv="conv_linear_kp_dx",
    )
    learned = [bent[0], bent[2], bent[4]]
    assert all(isinstance(m.feedback, nn.Parameter) for m in learned)
    names = {name for name, _ in bent.named_parameters()}
    assert {"0.feedback", "2.feedback", "4.feedback"} <= names
    out = bent(torch.randn(5, 2, 4, 4))
    out.sum().backward()
    for m in learned:
        close(m.feedback.grad, m.weight.grad)
