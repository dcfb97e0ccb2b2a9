"""train(checkpoint=..., resume=...): a resumed run equals the run that never stopped."""

import numpy as np
import pytest
import torch
from torch import nn

from bender import GenDense, StocSignSTE, checkpoint, recipes
from bender.training import COLUMNS, train

NUMBERS = [c for c in COLUMNS if c != "seconds"]  # seconds are measured, not computed


def _noisy_mlp() -> nn.Sequential:
    """Draws random numbers on every step: dropout and stochastic binarisation from the global
    generator, stochastic binary weights from a layer's own."""
    return nn.Sequential(
        GenDense(784, 32, nn.ReLU(), forward="linear_asym_dx", feedback=True),
        nn.Dropout(0.3),
        GenDense(32, 16, StocSignSTE(), forward="linear_stoc_binary_weights"),
        GenDense(
            16,
            10,
            forward="linear_stoc_binary_weights",
            generator=torch.Generator().manual_seed(int(torch.randint(1000, ()))),
        ),
    )


def _brsf_mlp() -> nn.Sequential:
    """Draws feedback magnitudes on every step (brSF): from the global generator in the middle
    layer, from its own in the last (the first layer sends no error back, so draws none)."""
    own = torch.Generator().manual_seed(int(torch.randint(1000, ())))
    return nn.Sequential(
        GenDense(784, 32, nn.ReLU(), forward="linear_brsf_dx"),
        GenDense(32, 16, nn.ReLU(), forward="linear_brsf_dx"),
        GenDense(16, 10, forward="linear_brsf_dx", generator=own),
    )


def _step_lr(opt):  # its state counts: the step after epoch 2 lowers lr, that after 1 not
    return torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.1)


RUNS = {
    "fa-mlp, fused Adam": (lambda: recipes.build("fa-mlp", seed=3), {}),
    "dropout and stochastic signs": (_noisy_mlp, {}),
    "brSF feedback drawn per batch": (_brsf_mlp, {}),
    "one batch order": (lambda: recipes.build("binary-mlp"), {"reshuffle": False}),
    "Kolen-Pollack, SGD momentum and weight decay": (
        lambda: recipes.build("kp-mlp"),
        {
            "optimizer": "sgd",
            "lr": 0.05,
            "optimizer_options": {"momentum": 0.9, "weight_decay": 0.01},
        },
    ),
    "SGD with a step scheduler": (
        lambda: recipes.build("dfa-mlp"),
        {"optimizer": "sgd", "lr": 0.05, "scheduler": _step_lr},
    ),
}


def _state(model: nn.Module) -> dict:
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("build, settings", RUNS.values(), ids=RUNS)
def test_a_resumed_run_equals_the_run_that_never_stopped(small_mnist, tmp_path, build, settings):
    data = small_mnist.subset(640, 300)
    torch.manual_seed(0)
    whole = build()
    expected = train(whole, data, epochs=3, seed=5, **settings)

    path = tmp_path / "run.pt"
    torch.manual_seed(0)
    first = train(build(), data, epochs=1, seed=5, checkpoint=path, **settings)
    assert first[NUMBERS].equals(expected[NUMBERS].iloc[:1])
    torch.manual_seed(123)  # a fresh process: other initial weights, other random state
    resumed_model = build()
    seen = []
    resumed = train(
        resumed_model,
        data,
        epochs=3,
        seed=5,
        checkpoint=path,
        resume=path,
        callbacks=[lambda row, model: seen.append(row["epoch"])],
        **settings,
    )
    assert resumed[NUMBERS].equals(expected[NUMBERS])  # bit for bit
    assert resumed["seconds"].iloc[0] == first["seconds"].iloc[0]  # epoch 1's row, as saved
    assert seen == [2, 3]  # callbacks see the new epochs only
    final = _state(resumed_model)
    assert all(torch.equal(final[k], v) for k, v in whole.state_dict().items())
    assert checkpoint.load(path)["epoch"] == 3  # the file follows the resumed run too


def test_the_checkpoint_holds_the_epoch_a_stopping_callback_ended(small_mnist, tmp_path):
    path = tmp_path / "run.pt"
    table = train(
        recipes.build("fa-mlp"),
        small_mnist.subset(256, 100),
        epochs=5,
        checkpoint=path,
        callbacks=[lambda row, model: row["epoch"] == 2],
    )
    assert len(table) == 2
    state = checkpoint.load(path)
    assert state["epoch"] == 2 and state["rows"] == table.to_dict(orient="records")
    assert state["settings"]["batch_size"] == 64 and state["settings"]["train_size"] == 256


def _one_epoch(small_mnist, tmp_path):
    path = tmp_path / "run.pt"
    train(recipes.build("fa-mlp"), small_mnist.subset(256, 100), epochs=1, checkpoint=path)
    return path, small_mnist.subset(256, 100)


def test_resuming_with_other_settings_is_refused(small_mnist, tmp_path):
    path, data = _one_epoch(small_mnist, tmp_path)
    with pytest.raises(ValueError, match=r"written with batch_size=64 \(now 32\), lr=0.0003"):
        train(recipes.build("fa-mlp"), data, epochs=2, batch_size=32, lr=1e-3, resume=path)
    with pytest.raises(ValueError, match=r"train_size=256 \(now 320\)"):
        train(recipes.build("fa-mlp"), small_mnist.subset(320, 100), epochs=2, resume=path)
    with pytest.raises(ValueError, match=r"optimizer='adam' \(now 'sgd'\)"):
        train(recipes.build("fa-mlp"), data, epochs=2, optimizer="sgd", resume=path)
    with pytest.raises(ValueError, match="with no learning-rate scheduler; resume with none"):
        train(recipes.build("fa-mlp"), data, epochs=2, scheduler=_step_lr, resume=path)
    with pytest.raises(ValueError, match=r"optimizer_options=\{\} \(now \{'weight_decay': 0.1\}\)"):
        train(
            recipes.build("fa-mlp"),
            data,
            epochs=2,
            optimizer_options={"weight_decay": 0.1},
            resume=path,
        )


def test_a_checkpoint_written_before_optimizer_options_resumes_without_them(small_mnist, tmp_path):
    path, data = _one_epoch(small_mnist, tmp_path)
    state = checkpoint.load(path)
    del state["settings"]["optimizer_options"]  # as an earlier bender wrote it
    table = train(recipes.build("fa-mlp"), data, epochs=2, resume=state)
    assert len(table) == 2
    with pytest.raises(ValueError, match=r"optimizer_options=\{\} \(now \{'momentum': 0.5\}\)"):
        train(
            recipes.build("fa-mlp"),
            data,
            epochs=2,
            optimizer="sgd",
            resume=state,
            optimizer_options={"momentum": 0.5},
        )


def test_resuming_a_finished_run_or_another_model_is_refused(small_mnist, tmp_path):
    path, data = _one_epoch(small_mnist, tmp_path)
    with pytest.raises(ValueError, match=r"already holds 1 epoch\(s\).* ask for more than 1"):
        train(recipes.build("fa-mlp"), data, epochs=1, resume=path)
    with pytest.raises(ValueError, match=r"(?s)another model.*size mismatch for 0\.weight"):
        train(recipes.build("fa-mlp-large"), data, epochs=2, resume=path)
    with_generator = recipes.build("fa-mlp")
    with_generator[2].generator = torch.Generator()
    with pytest.raises(
        ValueError, match=r"generators of layers \[\], this model has them in \['2'\]"
    ):
        train(with_generator, data, epochs=2, resume=path)


def test_loading_what_is_not_a_checkpoint_says_so(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no checkpoint at .*nothing\.pt"):
        checkpoint.load(tmp_path / "nothing.pt")
    torch.save(recipes.build("fa-mlp").state_dict(), tmp_path / "model.pt")
    with pytest.raises(ValueError, match=r"not a bender training checkpoint of format 1 \(no fo"):
        checkpoint.load(tmp_path / "model.pt")
    (tmp_path / "text.pt").write_text("hello")
    with pytest.raises(ValueError, match=r"text\.pt is not a readable bender checkpoint"):
        checkpoint.load(tmp_path / "text.pt")


class _Payload:
    """An object a pickle could run code from: never to be loaded."""

    def __reduce__(self):
        return (print, ("unpickled!",))


def test_a_file_of_foreign_objects_is_refused_without_a_hint_to_load_it_unsafely(tmp_path):
    path = tmp_path / "checkpoint.pt"
    torch.save({"format": 1, "payload": _Payload()}, path)
    with pytest.raises(ValueError) as err:
        checkpoint.load(path)
    message = str(err.value)
    assert f"{path} is not a bender checkpoint: it holds Python objects other than" in message
    assert "weights_only" not in message and "unpickled!" not in message


@pytest.mark.parametrize(
    ("key", "value", "says"),
    [
        ("epoch", "2", r"'epoch' must be an int ≥ 0, got '2'"),
        ("epoch", True, r"'epoch' must be an int ≥ 0, got True"),
        ("epoch", 5, r"'rows' must hold one row per epoch, 5, got 1"),
        ("rows", "notalist", r"'rows' must be a list, got 'notalist'"),
        ("settings", [1], r"'settings' must be a dict, got \[1\]"),
        ("batches", {}, r"'batches' must be a dict, got \{\}"),
    ],
)
def test_hand_edited_fields_of_the_wrong_type_are_named(small_mnist, tmp_path, key, value, says):
    path, _ = _one_epoch(small_mnist, tmp_path)
    state = torch.load(path, weights_only=True)
    torch.save(state | {key: value}, path)
    with pytest.raises(ValueError, match=says):
        checkpoint.load(path)


def test_a_loaded_checkpoint_resumes_like_its_file(small_mnist, tmp_path):
    path, data = _one_epoch(small_mnist, tmp_path)
    from_file = train(recipes.build("fa-mlp"), data, epochs=2, resume=path)
    from_dict = train(recipes.build("fa-mlp"), data, epochs=2, resume=checkpoint.load(path))
    assert from_file[NUMBERS].equals(from_dict[NUMBERS])


def test_a_checkpoint_in_a_missing_folder_is_refused_before_training(small_mnist, tmp_path):
    model = recipes.build("fa-mlp")
    before = _state(model)
    with pytest.raises(FileNotFoundError, match=r"folder of checkpoint=.*nowhere.*does not exist"):
        train(model, small_mnist.subset(256, 100), epochs=1, checkpoint=tmp_path / "nowhere/c.pt")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # no step


def test_what_a_callback_adds_to_a_row_stays_out_of_the_checkpoint(small_mnist, tmp_path):
    def note(row, model):
        row["note"] = np.float64(1.5)  # not a type that weights_only loading accepts

    path = tmp_path / "run.pt"
    data = small_mnist.subset(256, 100)
    train(recipes.build("fa-mlp"), data, epochs=1, checkpoint=path, callbacks=[note])
    assert list(checkpoint.load(path)["rows"][0]) == COLUMNS
    assert len(train(recipes.build("fa-mlp"), data, epochs=2, resume=path)) == 2
