import pytest
import torch
from torch import nn

from bender import GenConv, GenDense, StocSignSTE, recipes, register_mapping
from bender.mappings import MAPPINGS, linear_binary_weights
from bender.summary import COLUMNS, summary
from tests.conftest import global_rng_state


def _rows(table):
    """The table's rows by layer name, without the total."""
    return {row["layer"]: row for row in table.to_dict("records") if row["layer"] != "total"}


@pytest.mark.parametrize("batch", [1, 5])
def test_binary_mlp_counts_1bit_weights_and_1bit_macs(batch):
    table = summary(recipes.build("binary-mlp"), torch.rand(batch, 784))
    assert list(table.columns) == list(COLUMNS)
    rows = _rows(table)
    sizes = [(784, 128), (128, 64), (64, 10)]
    for i, (n_in, n_out) in enumerate(sizes):
        row = rows[str(i)]
        assert (row["type"], row["rule"], row["output"]) == (
            "GenDense",
            "linear_binary_weights",
            str(n_out),
        )
        assert (row["params_1bit"], row["params_float"], row["feedback"]) == (
            n_in * n_out,
            n_out,
            0,
        )
        # pixels in [0, 1] reach layer 0; layers 1 and 2 get sign_ste's outputs
        one_bit = i > 0
        assert row["macs_1bit"] == (n_in * n_out if one_bit else 0)
        assert row["macs_float"] == (0 if one_bit else n_in * n_out)
        assert row["memory_kib"] == pytest.approx((n_in * n_out / 8 + 4 * n_out) / 1024)
    total = table.iloc[-1]
    assert total["layer"] == "total"
    assert total["params_1bit"] == sum(a * b for a, b in sizes)
    assert total["macs_1bit"] == 128 * 64 + 64 * 10 and total["macs_float"] == 784 * 128
    weights_kib = (sum(a * b for a, b in sizes) / 8 + 4 * (128 + 64 + 10)) / 1024
    assert total["memory_kib"] == pytest.approx(weights_kib)


def test_fa_cnn_counts_convolution_macs_and_feedback():
    rows = _rows(summary(recipes.build("fa-cnn"), torch.rand(2, 784)))
    assert list(rows) == ["1", "3", "6"]
    conv1, conv2, dense = rows["1"], rows["3"], rows["6"]
    assert conv1["output"] == "16×28×28" and conv2["output"] == "32×14×14"
    assert conv1["macs_float"] == 28 * 28 * 16 * (1 * 5 * 5)  # positions × C_out × C_in k²
    assert conv2["macs_float"] == 14 * 14 * 32 * (16 * 5 * 5)
    assert dense["macs_float"] == 1568 * 10
    assert [r["feedback"] for r in (conv1, conv2, dense)] == [16 * 25, 32 * 16 * 25, 15680]
    assert conv2["params_float"] == 32 * 16 * 25 + 32
    assert conv2["memory_kib"] == pytest.approx((32 * 16 * 25 + 32) * 4 / 1024)  # no feedback


def test_plain_torch_layers_float64_and_a_transposed_convolution():
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, stride=2, groups=1),  # 7×7 → 3×3
        nn.BatchNorm2d(4),
        nn.ConvTranspose2d(4, 2, 2, stride=2),  # 3×3 → 6×6
        nn.Flatten(),
        nn.Linear(72, 5, bias=False),
    ).double()
    rows = _rows(summary(model, torch.rand(3, 3, 7, 7)))
    assert rows["0"]["macs_float"] == 3 * 3 * 4 * (3 * 3 * 3)
    assert rows["1"]["macs_float"] == 0 and rows["1"]["params_float"] == 8  # norms: no MACs
    assert rows["2"]["macs_float"] == 3 * 3 * 4 * (2 * 2 * 2)  # each input into 2×2×C_out
    assert rows["4"]["macs_float"] == 72 * 5 and rows["4"]["rule"] == ""
    assert rows["4"]["memory_kib"] == pytest.approx(72 * 5 * 8 / 1024)  # float64: 8 bytes


def test_a_layer_called_twice_and_a_shared_weight():
    layer = GenDense(4, 4, nn.Tanh())
    tied = nn.Linear(4, 4)
    tied.weight = layer.weight

    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.layer, self.tied = layer, tied

        def forward(self, x):
            return self.tied(self.layer(self.layer(x)))

    table = summary(Twice(), torch.rand(3, 4))
    rows = _rows(table)
    assert rows["layer"]["macs_float"] == 2 * 16  # two calls
    assert rows["layer"]["params_float"] == 16 + 4
    assert rows["tied"]["params_float"] == 4  # its weight is the layer's, counted there
    assert table.iloc[-1]["params_float"] == 16 + 4 + 4


def test_the_summary_leaves_modes_statistics_and_random_state_alone():
    generator = torch.Generator().manual_seed(3)
    model = nn.Sequential(
        GenDense(6, 5, StocSignSTE(), forward="linear_stoc_binary_weights", generator=generator),
        nn.BatchNorm1d(5),
        nn.Dropout(0.5),
        GenDense(5, 3, forward="linear_brsf_dx"),
    )
    model[1].eval()  # the caller's choice, kept
    statistics = model[1].running_mean.clone()
    x = torch.rand(4, 6)
    state, own = global_rng_state(), generator.get_state()
    summary(model, x)
    assert torch.equal(global_rng_state(), state) and torch.equal(generator.get_state(), own)
    assert torch.equal(model[1].running_mean, statistics)
    assert model.training and model[0].training and not model[1].training


def test_parametrized_and_pruned_weights_are_counted_with_their_layer():
    from torch.nn.utils import prune
    from torch.nn.utils.parametrizations import weight_norm

    model = nn.Sequential(
        weight_norm(GenDense(6, 5, nn.ReLU(), forward=linear_binary_weights)),
        GenDense(5, 3, forward=linear_binary_weights),
    )
    prune.l1_unstructured(model[1], "weight", amount=0.4)
    rows = _rows(summary(model, torch.rand(2, 6)))
    assert list(rows) == ["0", "1"]  # the parametrization's originals belong to layer 0
    assert rows["0"]["params_1bit"] == 30 and rows["0"]["params_float"] == 5
    assert rows["1"]["params_1bit"] == 15 and rows["1"]["params_float"] == 3


def test_your_own_mapping_declares_binary_weights():
    @register_mapping(name="test_scaled_binary", binary_weights=True, layer="dense")
    def scaled_binary(layer, x):
        return 0.5 * linear_binary_weights(layer, x)

    try:
        rows = _rows(
            summary(nn.Sequential(GenDense(4, 3, forward=scaled_binary)), torch.rand(2, 4))
        )
        assert rows["0"]["params_1bit"] == 12 and rows["0"]["rule"] == "scaled_binary"
    finally:
        del MAPPINGS["test_scaled_binary"]


def test_a_model_without_a_batch_is_refused():
    with pytest.raises(ValueError, match="a batch of inputs"):
        summary(GenDense(3, 2), 3)
    with pytest.raises(ValueError, match="a batch of inputs"):
        summary(GenDense(3, 2), torch.tensor(1.0))


def test_a_conv_layer_with_binary_weights():
    model = nn.Sequential(
        GenConv(1, 4, 3, StocSignSTE(), padding=1, forward="conv_binary_weights"),
        GenConv(4, 2, 3, padding=1, forward="conv_binary_weights"),
    )
    rows = _rows(summary(model, torch.rand(2, 1, 5, 5)))
    assert rows["0"]["macs_float"] == 25 * 4 * 9 and rows["0"]["macs_1bit"] == 0
    assert rows["1"]["macs_1bit"] == 25 * 2 * 4 * 9 and rows["1"]["params_1bit"] == 72


@pytest.mark.parametrize("name", list(recipes.RECIPES))
def test_every_recipes_parameters_and_feedback_are_all_counted_once(name):
    model = recipes.build(name)
    total = summary(model, torch.rand(2, 784)).iloc[-1]
    tensors = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    feedback = sum(t.numel() for n, t in tensors.items() if n.endswith("feedback"))
    params = sum(p.numel() for n, p in model.named_parameters() if not n.endswith("feedback"))
    assert total["params_1bit"] + total["params_float"] == params
    assert total["feedback"] == feedback  # fixed (buffers) or learned (parameters)
    assert total["macs_1bit"] + total["macs_float"] > 0


def test_a_spectral_normed_binary_layer_keeps_its_power_iteration_state():
    from torch.nn.utils.parametrizations import spectral_norm

    model = nn.Sequential(spectral_norm(GenDense(6, 5, forward=linear_binary_weights)))
    u = model[0].parametrizations.weight[0]._u.clone()
    rows = _rows(summary(model, torch.rand(2, 6)))  # the model stays in train mode
    assert rows["0"]["params_1bit"] == 30
    assert torch.equal(model[0].parametrizations.weight[0]._u, u)


def test_a_learned_feedback_matrix_is_feedback_not_an_inference_parameter():
    model = nn.Sequential(
        GenDense(6, 4, nn.ReLU(), forward="linear_kp_dx", feedback=True),
        GenDense(4, 3, forward="linear_kp_dx", feedback=True),
    )
    assert sum(p.numel() for p in model.parameters()) == (2 * 6 * 4 + 4) + (2 * 4 * 3 + 3)
    rows = _rows(summary(model, torch.rand(2, 6)))
    for name, (n_in, n_out) in {"0": (6, 4), "1": (4, 3)}.items():
        row = rows[name]
        assert (row["rule"], row["params_float"], row["feedback"]) == (
            "linear_kp_dx",
            n_in * n_out + n_out,
            n_in * n_out,
        )
        assert row["memory_kib"] == pytest.approx((n_in * n_out + n_out) * 4 / 1024)
