import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bender import DFA, GenConv, GenDense
from bender.attention import GenAttention
from bender.constraints import ClipBinaryWeights
from bender.mirrors import WeightMirror
from bender.models import build_model, model_image_size
from bender.rules import RULES, Rule, apply_rule, get_rule, register_rule
from bender.training import train

MODELS = ["mlp", "cnn", "lenet5", "resnet20", "transformer"]


def _built(name, rule, **kwargs):
    size = model_image_size(name) or (28, 28)
    torch.manual_seed(0)
    model = build_model(name, image_size=size)
    return model, apply_rule(model, rule, num_outputs=10, input_shape=(1, *size), **kwargs), size


@pytest.mark.filterwarnings("error::UserWarning")  # no parameter is left untrained
@pytest.mark.parametrize("model_name", MODELS)
@pytest.mark.parametrize("rule", list(RULES))
def test_every_rule_gives_every_parameter_of_every_model_a_gradient(model_name, rule):
    original, model, size = _built(model_name, rule)
    x, y = torch.rand(3, 1, *size), torch.tensor([1, 4, 9])
    if not get_rule(rule).binary:  # the same function before training (binary: not so)
        with torch.no_grad():
            torch.testing.assert_close(_plain(model, x), _plain(original, x))
    F.cross_entropy(model(x), y).backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing
    assert all(p.grad is None for p in original.parameters())  # the original is untouched


def _plain(model, x):
    model.eval()
    try:
        return model(x)
    finally:
        model.train()


@pytest.mark.parametrize("rule", list(RULES))
def test_torchvision_resnet18_follows_every_rule(rule):
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=10)
    model = apply_rule(net, rule, num_outputs=10, input_shape=(3, 32, 32))
    F.cross_entropy(model(torch.rand(2, 3, 32, 32)), torch.tensor([0, 1])).backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_rules_put_their_layers_and_wrappers_in_place():
    _, fa, _ = _built("resnet20", "fa")
    convs = [m for m in fa.modules() if isinstance(m, GenConv)]
    assert len(convs) == 19 and all(c.mapping.__name__ == "conv_linear_asym_dx" for c in convs)
    assert isinstance(fa.fc, GenDense) and fa.after_step == ()
    _, dfa, _ = _built("resnet20", "dfa")
    assert isinstance(dfa, DFA) and len(dfa.targets) == 19  # every conv but the stem, and fc
    _, vit, _ = _built("transformer", "usf")
    attention = vit.encoder.layers[0].self_attn
    assert (
        isinstance(attention, GenAttention) and attention.q_proj.mapping.__name__ == "linear_usf_dx"
    )
    _, wm, _ = _built("mlp", "wm")
    assert len(wm.after_step) == 1 and isinstance(wm.after_step[0], WeightMirror)
    _, binary, _ = _built("cnn", "binary")
    layers = [m for m in binary.modules() if isinstance(m, (GenDense, GenConv))]
    assert layers[0].input_quantizer is None  # the image stays real
    assert all(m.kernel_quantizer is not None for m in layers)
    assert all(m.input_quantizer is not None for m in layers[1:])
    assert isinstance(binary.after_step[0], ClipBinaryWeights)
    assert get_rule("kp").training["optimizer"] == "sgd"


def test_dfa_with_blocks_trains_backprop_inside_each_named_block():
    blocks = [f"layer{s}.{b}" for s in (1, 2, 3) for b in range(3)]
    _, model, _ = _built("resnet20", "dfa", blocks=blocks)
    assert model.targets == [f"{b} output" for b in blocks]
    assert all(type(m) is not GenConv for m in model.modules())  # the layers stay exact
    F.cross_entropy(model(torch.rand(2, 1, 28, 28)), torch.tensor([0, 1])).backward()
    assert all(p.grad is not None for p in model.parameters())


def test_weight_mirror_steps_ride_on_the_model_into_train(small_mnist):
    torch.manual_seed(0)
    model = apply_rule(build_model("mlp"), "wm")
    before = model[1].feedback.clone()
    images = copy.copy(small_mnist)
    images = type(small_mnist)(
        "mnist",
        type(small_mnist.train)(small_mnist.train.x.view(-1, 1, 28, 28), small_mnist.train.y),
        type(small_mnist.test)(small_mnist.test.x.view(-1, 1, 28, 28), small_mnist.test.y),
    )
    train(model, images.subset(256, 64), epochs=1)
    assert not torch.equal(model[1].feedback, before)  # the mirror taught B


def test_a_rule_of_ones_own_is_registered_and_applied():
    rule = Rule("fa-dense-only", "FA on dense layers only", "a test", dense="linear_asym_dx")
    register_rule(rule)
    try:
        model = apply_rule(build_model("cnn"), "fa-dense-only")
        assert isinstance(model[7], GenDense) and type(model[0]) is nn.Conv2d
        with pytest.raises(ValueError, match="a rule called 'fa-dense-only' exists"):
            register_rule(rule)
    finally:
        del RULES["fa-dense-only"]


def test_bad_requests_are_refused_with_what_was_expected():
    with pytest.raises(ValueError, match=r"unknown rule 'feedback'; choose one of bp, fa, dfa"):
        apply_rule(build_model("mlp"), "feedback")
    lstm = nn.Sequential()
    lstm.add_module("encoder", nn.Sequential(nn.LSTM(4, 4)))
    with pytest.raises(ValueError, match=r"rule fa cannot be applied to encoder\.0 \(LSTM\)"):
        apply_rule(lstm, "fa")
    transposed = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ConvTranspose2d(2, 1, 3))
    with pytest.raises(ValueError, match=r"cannot be applied to 1 \(ConvTranspose2d\)"):
        apply_rule(transposed, "usf")
    with pytest.raises(ValueError, match="blocks is for direct feedback rules"):
        apply_rule(build_model("mlp"), "fa", blocks=["1"])
    with pytest.raises(ValueError, match=r"blocks names 'layer9'"):
        apply_rule(build_model("resnet20"), "dfa", input_shape=(1, 28, 28), blocks=["layer9"])
    with pytest.raises(TypeError, match=r"apply_rule needs an nn\.Module, got str"):
        apply_rule("resnet20", "fa")


def test_a_model_whose_output_is_not_a_tensor_is_refused_by_dfa():
    class Named(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            return (self.fc(x), x)

    with pytest.raises(TypeError, match="returns one tensor of class scores, got tuple"):
        apply_rule(Named(), "dfa", input_shape=(4,))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        apply_rule(Named(), "bp")  # other rules do not look at the output


def test_the_binary_rule_takes_any_one_bit_quantizer_and_refuses_others():
    from bender.rules import one_bit_quantizers

    assert "approx_sign" in one_bit_quantizers() and "ste_tern" not in one_bit_quantizers()
    model = apply_rule(build_model("mlp"), "binary", quantizer="approx_sign")
    layers = [m for m in model.modules() if isinstance(m, GenDense)]
    assert all(type(m.kernel_quantizer).__name__ == "ApproxSign" for m in layers)
    with pytest.raises(ValueError, match="a binary rule takes a 1-bit quantizer"):
        apply_rule(build_model("mlp"), "binary", quantizer="ste_tern")
    with pytest.raises(ValueError, match="quantizer is for binary rules"):
        apply_rule(build_model("mlp"), "fa", quantizer="ste_sign")
