import functools
from itertools import pairwise

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bender import GenDense, checkpoint, recipes
from bender._placement import parameter_dtype
from bender.alignment import AlignmentRecorder
from bender.data import Dataset, Split
from bender.training import (
    COLUMNS,
    check_seed,
    evaluate,
    make_optimizer,
    resolve_device,
    train,
)


def test_train_returns_per_epoch_table(small_mnist):
    seen = []
    table = train(
        recipes.build("bp-mlp"), small_mnist, epochs=2, callbacks=[lambda row, m: seen.append(row)]
    )
    assert list(table.columns) == COLUMNS
    assert table["epoch"].tolist() == [1, 2]
    assert table["loss_train"].iloc[1] < table["loss_train"].iloc[0]
    assert (
        ((table[["acc_train", "acc_test"]] >= 0) & (table[["acc_train", "acc_test"]] <= 1))
        .all()
        .all()
    )
    assert (table["seconds"] > 0).all()
    assert [r["epoch"] for r in seen] == [1, 2]


def test_evaluate_matches_a_direct_computation(small_mnist):
    model = recipes.build("bp-mlp")
    model.train()
    loss, acc = evaluate(model, small_mnist.test, batch_size=300)
    assert model.training  # mode restored
    with torch.no_grad():
        out = model(small_mnist.test.x)
    assert loss == pytest.approx(F.cross_entropy(out, small_mnist.test.y).item(), rel=1e-5)
    assert acc == pytest.approx((out.argmax(1) == small_mnist.test.y).float().mean().item())


def test_evaluate_puts_train_mode_back_after_an_error(small_mnist):
    def failing_loss(out, y):
        raise RuntimeError("not a number")

    model = nn.Sequential(nn.Linear(784, 10))
    with pytest.raises(RuntimeError, match="not a number"):
        evaluate(model, small_mnist.test, loss=failing_loss)
    assert model.training


def test_same_seed_same_numbers(small_mnist):
    runs = [recipes.run("fa-mlp", small_mnist, seed=5, epochs=2) for _ in range(2)]
    cols = COLUMNS[:-1]
    assert runs[0][cols].equals(runs[1][cols])
    other = recipes.run("fa-mlp", small_mnist, seed=6, epochs=2)
    assert not runs[0][cols].equals(other[cols])


@pytest.mark.parametrize("reshuffle", [True, False])
def test_batch_order_per_epoch(small_mnist, reshuffle):
    model = recipes.build("bp-mlp")
    seen: list[torch.Tensor] = []

    def recording_loss(out, y):
        if model.training:
            seen.append(y)
        return F.cross_entropy(out, y)

    train(model, small_mnist, epochs=2, loss=recording_loss, reshuffle=reshuffle)
    steps = len(small_mnist.train) // 64
    first, second = torch.cat(seen[:steps]), torch.cat(seen[steps:])
    assert len(seen) == 2 * steps
    assert torch.equal(first, second) is not reshuffle


def test_parameters_the_first_step_leaves_without_gradient_are_named(small_mnist):
    # blocked layers without the DFA wrapper: only the last layer learns
    blocked = functools.partial(GenDense, forward="linear_blocked_dx")
    net = nn.Sequential(blocked(784, 32, nn.ReLU()), blocked(32, 10))
    frozen_before = net[0].weight.detach().clone()
    with pytest.warns(UserWarning, match=r"first step gave no gradient to 0\.weight, 0\.bias, so"):
        train(net, small_mnist.subset(256, 64), epochs=1)
    assert torch.equal(net[0].weight.cpu(), frozen_before)  # as the warning says


@pytest.mark.filterwarnings("error::UserWarning")
def test_no_warning_when_every_trainable_parameter_gets_a_gradient(small_mnist):
    net = recipes.build("fa-mlp")
    net[0].requires_grad_(False)  # kept fixed on purpose
    train(net, small_mnist.subset(256, 64), epochs=1)
    train(recipes.build("dfa-mlp"), small_mnist.subset(256, 64), epochs=1)


def test_nan_loss_stops_and_keeps_completed_epochs(small_mnist):
    model = recipes.build("bp-mlp")
    steps_per_epoch = len(small_mnist.train) // 64
    calls = {"n": 0}

    def flaky_loss(out, y):
        if model.training:
            calls["n"] += 1
            if calls["n"] > steps_per_epoch + 5:  # breaks in epoch 2
                return F.cross_entropy(out, y) * float("nan")
        return F.cross_entropy(out, y)

    with pytest.warns(RuntimeWarning, match="training loss became nan in epoch 2"):
        table = train(model, small_mnist, epochs=3, loss=flaky_loss)
    assert table["epoch"].tolist() == [1]
    assert "stopped after 1 complete epoch" in table.attrs["stopped"]


@pytest.mark.parametrize("split", ["train", "test"])
def test_non_finite_inputs_are_refused_before_training(small_mnist, split):
    x = getattr(small_mnist, split).x.clone().reshape(-1, 1, 28, 28)  # any example shape
    x[7, 0, 3, 4], x[7, 0, 5, 5], x[30, 0, 0, 0] = float("nan"), float("inf"), -float("inf")
    splits = {"train": small_mnist.train, "test": small_mnist.test}
    splits[split] = Split(x.flatten(1), splits[split].y)
    data = Dataset("bad", splits["train"], splits["test"])
    model = recipes.build("fa-mlp")
    before = [p.clone() for p in model.parameters()]
    message = (
        rf"data.{split}.x holds 3 non-finite values \(NaN or ±inf\) in 2 example\(s\), "
        "the first at index 7"
    )
    with pytest.raises(ValueError, match=message):
        train(model, data, epochs=1)
    assert all(torch.equal(a, b.cpu()) for a, b in zip(before, model.parameters(), strict=True))


def test_large_finite_inputs_whose_sum_overflows_are_not_refused(small_mnist):
    x = small_mnist.train.x.clone()
    x[0] = 3e38  # finite, but the split's float32 sum is inf
    assert not torch.isfinite(x.sum()) and torch.isfinite(x).all()
    data = Dataset("big", Split(x, small_mnist.train.y), small_mnist.test)
    with pytest.warns(RuntimeWarning, match="training loss became"):  # trained, then stopped
        train(recipes.build("bp-mlp"), data, epochs=1)


def test_a_callback_returning_true_stops_after_that_epoch(small_mnist):
    seen, best = [], {"acc": 0.0, "stale": 0}

    def log(row, model):
        seen.append(row["epoch"])
        return row  # a truthy value that is not True does not stop

    def early_stop(row, model):  # patience 0: stop at the first epoch without a new best
        if row["acc_test"] > best["acc"]:
            best["acc"] = row["acc_test"]
            return None
        return True

    def stop_at_two(row, model):
        return row["epoch"] == 2

    table = train(recipes.build("bp-mlp"), small_mnist, epochs=5, callbacks=[stop_at_two, log])
    assert table["epoch"].tolist() == [1, 2] == seen  # the other callback still ran at epoch 2
    assert table.attrs["stopped"] == "stopped after epoch 2 of 5 by stop_at_two"

    table = train(recipes.build("bp-mlp"), small_mnist, epochs=6, lr=3e-2, callbacks=[early_stop])
    acc = table["acc_test"].tolist()
    if "stopped" in table.attrs:  # the last epoch was the first without a new best
        assert all(b > a for a, b in pairwise(acc[:-1])) and acc[-1] <= max(acc[:-1])
        assert table.attrs["stopped"].endswith("by early_stop")
    else:
        assert len(acc) == 6 and all(b > a for a, b in pairwise(acc))
    assert "stopped" not in train(recipes.build("bp-mlp"), small_mnist, epochs=2).attrs


def test_bad_arguments(small_mnist):
    model = nn.Sequential(nn.Linear(784, 10))
    with pytest.raises(ValueError, match="epochs must be a positive int, got 0"):
        train(model, small_mnist, epochs=0)
    with pytest.raises(ValueError, match=r"lr must be positive and finite, got -1\.0"):
        train(model, small_mnist, lr=-1.0)
    with pytest.raises(ValueError, match="lr must be positive and finite, got inf"):
        train(model, small_mnist, lr=float("inf"))
    seed_range = rf"seed must be an int from 0 to {2**64 - 1}, got"
    with pytest.raises(ValueError, match=rf"{seed_range} {10**20}"):
        train(model, small_mnist, seed=10**20)
    with pytest.raises(ValueError, match=rf"{seed_range} 1\.5"):
        train(model, small_mnist, seed=1.5)
    with pytest.raises(ValueError, match=rf"{seed_range} True"):
        train(model, small_mnist, seed=True)
    with pytest.raises(ValueError, match=rf"{seed_range} -1"):  # torch would wrap it to 2**64 − 1
        train(model, small_mnist, seed=-1)
    assert check_seed(2**64 - 1) == 2**64 - 1
    with pytest.raises(TypeError, match=r"lr must be a number, got str: '0\.1'"):
        train(model, small_mnist, lr="0.1")
    with pytest.raises(ValueError, match=r"momentum must be a number in \[0, 1\), got 5"):
        train(model, small_mnist, optimizer="sgd", optimizer_options={"momentum": 5})
    assert check_seed(np.int64(3)) == 3 and type(check_seed(np.int64(3))) is int
    with pytest.raises(
        ValueError, match="unknown optimizer 'adamm'; choose one of adam, adamw, sgd"
    ):
        train(model, small_mnist, optimizer="adamm")
    with pytest.raises(ValueError, match="unknown loss 'hinge'"):
        train(model, small_mnist, loss="hinge")
    with pytest.raises(ValueError, match=r"batch_size 64 is larger than the training set \(10 "):
        train(model, small_mnist.subset(10, 10), batch_size=64)
    with pytest.raises(ValueError, match="returns 5 scores per example, but the data has 10"):
        train(nn.Linear(784, 5), small_mnist)
    with pytest.raises(ValueError, match=r"shape \(64, 10\) for this batch, got \(640,\)"):
        train(nn.Sequential(nn.Linear(784, 10), nn.Flatten(0)), small_mnist)
    assert "stopped" not in train(nn.Linear(784, 12), small_mnist, epochs=1).attrs  # extra is fine
    per_example = functools.partial(F.cross_entropy, reduction="none")
    before = [t.clone() for t in model.parameters()]
    with pytest.raises(ValueError, match=r"one number for the batch .*got shape \(64,\); .*'mean'"):
        train(model, small_mnist, loss=per_example)
    assert all(torch.equal(a, b.cpu()) for a, b in zip(before, model.parameters(), strict=True))
    with pytest.raises(ValueError, match=r"one number for the batch .*got shape \(1000,\)"):
        evaluate(model, small_mnist.test, loss=per_example)
    with pytest.raises(ValueError, match=r"one number for the batch .*got float"):
        evaluate(model, small_mnist.test, loss=lambda out, y: 0.5)


def test_devices_that_cannot_hold_a_tensor_are_refused_up_front(small_mnist):
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="unknown device 'tpu7'"):
        resolve_device("tpu7")
    with pytest.raises(ValueError, match="device 'meta' holds no data"):
        resolve_device("meta")
    if not torch.backends.mps.is_available():  # a valid device name this torch cannot use
        with pytest.raises(ValueError, match="device 'mps' is not usable here: "):
            resolve_device("mps")
        with pytest.raises(ValueError, match="device 'mps' is not usable here: "):
            train(nn.Sequential(nn.Linear(784, 10)), small_mnist, device="mps")
    if torch.cuda.is_available():  # one past the last GPU
        missing = f"cuda:{torch.cuda.device_count()}"
        with pytest.raises(ValueError, match=f"device '{missing}' is not usable here: "):
            resolve_device(missing)
    else:
        with pytest.raises(ValueError, match="this torch sees no CUDA device"):
            resolve_device("cuda:0")


def test_own_tensors_train_as_a_dataset(small_mnist):
    # labels as int32 and classes 0-4 only: any integer labels below num_classes will do
    keep = small_mnist.train.y < 5
    train_split = Split(small_mnist.train.x[keep], small_mnist.train.y[keep].int())
    test_keep = small_mnist.test.y < 5
    test_split = Split(small_mnist.test.x[test_keep], small_mnist.test.y[test_keep].int())
    own = Dataset("mnist 0-4", train_split, test_split, num_classes=5)
    torch.manual_seed(0)
    table = train(nn.Sequential(nn.Linear(784, 5)), own, epochs=2, lr=1e-3)
    assert table["acc_test"].iloc[-1] > 0.9
    with pytest.raises(TypeError, match=r"data must be a bender\.data\.Dataset, got tuple; wrap"):
        train(nn.Sequential(nn.Linear(784, 5)), (train_split, test_split))
    no_test = Dataset("no test", train_split, train_split.subset(1))
    no_test.test = Split(train_split.x[:0], train_split.y[:0])
    with pytest.raises(ValueError, match=r"data\.test is empty"):
        train(nn.Sequential(nn.Linear(784, 5)), no_test)
    with pytest.raises(ValueError, match="cannot evaluate on an empty split"):
        evaluate(nn.Sequential(nn.Linear(784, 5)), no_test.test)
    with pytest.raises(ValueError, match="batch_size must be a positive int, got 0"):
        evaluate(nn.Sequential(nn.Linear(784, 5)), test_split, batch_size=0)


def test_plain_modules_and_other_optimizers_train(small_mnist):
    model = nn.Sequential(nn.Linear(784, 32), nn.ReLU(), nn.Linear(32, 10))
    table = train(model, small_mnist, epochs=1, optimizer="sgd", lr=0.1, loss="mse")
    assert table["acc_test"].iloc[0] > 0.3


def test_make_optimizer_uses_fused_adam_when_available():
    params = [torch.nn.Parameter(torch.randn(3))]
    opt = make_optimizer("adam", params, 1e-3)
    assert isinstance(opt, torch.optim.Adam) and opt.param_groups[0]["lr"] == 1e-3
    assert opt.defaults.get("fused") in (True, None)
    sgd = make_optimizer(torch.optim.SGD, params, 0.1)
    assert isinstance(sgd, torch.optim.SGD)


def test_evaluate_dfa_set_up_and_recorder_keep_each_submodules_mode(small_mnist):
    from bender import DFA, GenDense
    from bender.alignment import AlignmentRecorder

    def mixed() -> nn.Sequential:  # in train mode, but with a batch norm the user froze in eval
        net = nn.Sequential(
            GenDense(784, 16, forward="linear_asym_dx", feedback=True),
            nn.BatchNorm1d(16),
            nn.ReLU(),
            GenDense(16, 10, forward="linear_asym_dx", feedback=True),
        )
        net[1].eval()
        return net

    def modes(model: nn.Module) -> list[bool]:
        return [m.training for m in model.modules()]

    net = mixed()
    before = modes(net)
    evaluate(net, small_mnist.test)
    assert modes(net) == before
    AlignmentRecorder(small_mnist.test.x[:50], small_mnist.test.y[:50])({"epoch": 0}, net)
    assert modes(net) == before
    blocked = mixed()
    DFA(blocked, 10)
    assert modes(blocked) == before


def test_a_float64_model_trains_and_evaluates_on_float32_data(small_mnist):
    """The inputs are cast to the parameters' dtype: the same table as float64 data gives."""
    as_float64 = Dataset(
        "float64",
        Split(small_mnist.train.x.double(), small_mnist.train.y),
        Split(small_mnist.test.x.double(), small_mnist.test.y),
    )
    tables = []
    for dataset in (small_mnist, as_float64):
        torch.manual_seed(0)
        model = recipes.build("fa-mlp").double()
        tables.append(train(model, dataset, epochs=1))
        assert {p.dtype for p in model.parameters()} == {torch.float64}
    cols = COLUMNS[:-1]
    assert tables[0][cols].equals(tables[1][cols])
    assert small_mnist.train.x.dtype == torch.float32  # the caller's data is left as it was

    loss, acc = evaluate(model, small_mnist.test, batch_size=300)
    with torch.no_grad():
        out = model.cpu()(small_mnist.test.x.double())
    assert loss == pytest.approx(F.cross_entropy(out, small_mnist.test.y).item(), rel=1e-12)
    assert acc == (out.argmax(1) == small_mnist.test.y).double().mean().item()


def test_split_to_casts_floating_inputs_only():
    floats = Split(torch.rand(4, 3), torch.arange(4))
    cast = floats.to("cpu", torch.float64)
    assert (cast.x.dtype, cast.y.dtype) == (torch.float64, torch.int64)
    tokens = Split(torch.randint(0, 9, (4, 5)), torch.arange(4))
    assert tokens.to("cpu", torch.float64).x.dtype == torch.int64  # token ids stay ids
    model = nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 2).double())  # no one dtype: no cast
    assert parameter_dtype(model) is None
    assert parameter_dtype(nn.ReLU()) is None


def test_evaluate_sends_each_batch_to_the_models_device_and_dtype(small_mnist):
    """Here the meta device stands in for a GPU: the split stays on the CPU, each batch goes to
    the parameters' device and dtype, and the labels follow the outputs."""
    seen = []

    class Probe(nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = nn.Parameter(torch.ones((), device="meta", dtype=torch.float64))

        def forward(self, x):
            seen.append((x.device.type, x.dtype, len(x)))
            return torch.zeros(len(x), 10)  # on the CPU: uniform scores

    test = small_mnist.test
    loss, acc = evaluate(Probe(), test, batch_size=300)
    sizes = [len(b) for b in test.y.split(300)]
    assert seen == [("meta", torch.float64, n) for n in sizes]
    assert loss == pytest.approx(np.log(10))
    assert acc == (test.y == 0).double().mean().item()  # argmax of equal scores: class 0


def test_the_alignment_recorder_casts_its_batch_to_a_float64_model(small_mnist):
    torch.manual_seed(0)
    model = recipes.build("fa-mlp").double()
    recorder = AlignmentRecorder(small_mnist.test.x[:100], small_mnist.test.y[:100])
    recorder({"epoch": 0}, model)
    torch.manual_seed(0)
    twin = recipes.build("fa-mlp").double()
    exact = AlignmentRecorder(small_mnist.test.x[:100].double(), small_mnist.test.y[:100])
    exact({"epoch": 0}, twin)
    assert recorder.table().equals(exact.table())


def test_a_scheduler_sets_each_epochs_learning_rate(small_mnist):
    """Plain SGD and one batch order: two epochs with StepLR(gamma=0.5) end where one epoch at
    lr followed by one epoch at lr/2 ends."""
    torch.manual_seed(0)
    scheduled = recipes.build("fa-mlp")
    by_hand = recipes.build("fa-mlp")
    by_hand.load_state_dict(scheduled.state_dict())
    built = []

    def halving(opt):
        built.append(torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5))
        return built[-1]

    common = {"optimizer": "sgd", "reshuffle": False, "seed": 3}
    train(scheduled, small_mnist, epochs=2, lr=0.1, scheduler=halving, **common)
    assert built[0].last_epoch == 2
    assert built[0].optimizer.param_groups[0]["lr"] == pytest.approx(0.025)
    for lr in (0.1, 0.05):
        train(by_hand, small_mnist, epochs=1, lr=lr, **common)
    for a, b in zip(scheduled.parameters(), by_hand.parameters(), strict=True):
        torch.testing.assert_close(a, b)


def test_reduce_lr_on_plateau_sees_the_training_loss(small_mnist):
    seen = []

    class Recording(torch.optim.lr_scheduler.ReduceLROnPlateau):
        def step(self, metrics, *args, **kwargs):
            seen.append(metrics)
            return super().step(metrics, *args, **kwargs)

    table = train(recipes.build("bp-mlp"), small_mnist, epochs=2, scheduler=Recording)
    assert seen == table["loss_train"].tolist()
    with pytest.raises(TypeError, match=r"scheduler must build .* it returned float, which has no"):
        train(recipes.build("bp-mlp"), small_mnist, epochs=1, scheduler=lambda opt: 0.5)


def test_make_optimizer_passes_options_and_names_those_it_does_not_take():
    params = [torch.nn.Parameter(torch.randn(3))]
    sgd = make_optimizer("sgd", params, 0.1, {"momentum": 0.9, "weight_decay": 1e-3})
    group = sgd.param_groups[0]
    assert (group["lr"], group["momentum"], group["weight_decay"]) == (0.1, 0.9, 1e-3)
    adamw = make_optimizer("adamw", params, 1e-3, {"weight_decay": 0.5, "betas": (0.8, 0.9)})
    assert adamw.param_groups[0]["weight_decay"] == 0.5
    assert adamw.param_groups[0]["betas"] == (0.8, 0.9)
    with pytest.raises(ValueError, match=r"adam takes no option 'momentum'; its options are "):
        make_optimizer("adam", params, 1e-3, {"momentum": 0.9})
    with pytest.raises(ValueError, match="give the learning rate as lr="):
        make_optimizer("sgd", params, 0.1, {"lr": 0.2})


def test_train_builds_its_optimizer_with_the_options_given(small_mnist, tmp_path):
    path = tmp_path / "run.pt"
    data = small_mnist.subset(256, 100)
    options = {"momentum": 0.5, "weight_decay": 0.01}
    kwargs = {"optimizer": "sgd", "lr": 0.05, "epochs": 1}
    with_options = train(
        recipes.build("fa-mlp"), data, checkpoint=path, **kwargs, optimizer_options=options
    )
    state = checkpoint.load(path)
    assert state["settings"]["optimizer_options"] == options
    group = state["optimizer"]["param_groups"][0]
    assert (group["momentum"], group["weight_decay"]) == (0.5, 0.01)
    plain = train(recipes.build("fa-mlp"), data, **kwargs)
    numbers = ["loss_train", "loss_test", "acc_train", "acc_test"]
    assert not with_options[numbers].equals(plain[numbers])
    with pytest.raises(ValueError, match="sgd takes no option 'betas'"):
        train(recipes.build("fa-mlp"), data, **kwargs, optimizer_options={"betas": (0.9, 0.99)})


@pytest.mark.parametrize(
    ("precision", "dtype"), [("bf16", torch.bfloat16), ("fp16", torch.float16)]
)
def test_low_precision_runs_the_forward_pass_under_autocast(small_mnist, precision, dtype):
    from bender.models import build_model
    from bender.rules import apply_rule

    torch.manual_seed(0)
    model = apply_rule(build_model("mlp"), "fa")
    seen = []
    model[-1].register_forward_hook(lambda m, i, out: seen.append(out.dtype))
    images = small_mnist.subset(512, 256)
    table = train(model, images, epochs=2, precision=precision, lr=1e-3)
    assert seen[0] == dtype  # training steps under autocast
    assert seen[-1] == torch.float32  # evaluation in the parameters' dtype
    assert table["loss_train"].iloc[-1] < table["loss_train"].iloc[0]
    assert all(p.dtype == torch.float32 for p in model.parameters())
    with pytest.raises(ValueError, match="precision must be one of fp32, bf16, fp16, got 'fp8'"):
        train(model, images, precision="fp8")


def test_channels_last_trains_a_conv_net_in_that_layout_to_the_same_numbers(mnist):
    from bender.models import build_model
    from bender.rules import apply_rule

    images = Dataset(
        "mnist",
        *(Split(s.x[:256].view(-1, 1, 28, 28), s.y[:256]) for s in (mnist.train, mnist.test)),
    )
    layouts = []

    def model():
        torch.manual_seed(0)
        net = apply_rule(build_model("cnn"), "fa")
        net[3].register_forward_pre_hook(  # the second conv: 16 channels, unambiguous
            lambda m, i: layouts.append(i[0].is_contiguous(memory_format=torch.channels_last))
        )
        return net

    last, plain = model(), model()
    table_last = train(last, images, epochs=2, channels_last=True)
    assert layouts[0] and last[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert last[0].feedback.is_contiguous(memory_format=torch.channels_last)
    layouts.clear()
    table = train(plain, images, epochs=2)
    assert not layouts[0]
    numbers = ["loss_train", "loss_test", "acc_train", "acc_test"]
    pd.testing.assert_frame_equal(table_last[numbers], table[numbers], rtol=1e-4, atol=1e-5)
    for a, b in zip(last.parameters(), plain.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_many_classes_get_top5_accuracy_and_a_validation_split_its_columns():
    from bender.data import Dataset, Split
    from bender.training import evaluate, table_columns

    torch.manual_seed(0)
    x, y = torch.randn(400, 8), torch.randint(0, 30, (400,))
    data = Dataset("toy", Split(x, y), Split(x[:100], y[:100]), num_classes=30)
    data = data.with_validation(50)
    assert len(data.train) == 350 and len(data.val) == 50
    model = nn.Linear(8, 30)
    table = train(model, data, epochs=1, batch_size=50)
    assert (
        table.columns.tolist()
        == table_columns(True, 30)
        == [
            "epoch",
            "loss_train",
            "loss_test",
            "acc_train",
            "acc_test",
            "loss_val",
            "acc_val",
            "acc5_train",
            "acc5_test",
            "acc5_val",
            "seconds",
        ]
    )
    with torch.no_grad():
        scores = model(x[:100])
    top5 = (scores.topk(5).indices == y[:100, None]).any(1).float().mean().item()
    assert table["acc5_test"].iloc[0] == pytest.approx(top5)
    assert evaluate(model, data.test, top5=True)[2] == pytest.approx(top5)
