import pickle
from collections import OrderedDict

import numpy as np
import pytest
import torch

from bender import cli
from bender.data import IMAGE_SHAPES, cifar, load


def write_cifar(root, name="cifar10", per_file=40, seed=0, label_key=None):
    """CIFAR's python version as torchvision unpacks it, written as the original files are:
    protocol-2 pickles of dicts with bytes keys, images as one uint8 array per file."""
    folder_name, train_files, test_files, key, classes = cifar.LAYOUTS[name]
    folder = root / folder_name
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for file in [*train_files, *test_files]:
        batch = {
            b"batch_label": b"a batch",
            b"data": rng.integers(0, 256, (per_file, 3072), dtype=np.uint8),
            label_key or key: [int(v) for v in rng.integers(0, classes, per_file)],
            b"filenames": [b"img%d.png" % i for i in range(per_file)],
        }
        (folder / file).write_bytes(pickle.dumps(batch, protocol=2))
    return folder


@pytest.mark.parametrize(
    ("name", "classes", "train"), [("cifar10", 10, 200), ("cifar100", 100, 40)]
)
def test_cifar_files_are_read_as_images_and_labels(tmp_path, name, classes, train):
    folder = write_cifar(tmp_path, name)
    data = load(name, tmp_path, flatten=False, download=False)
    assert data.num_classes == classes and len(data.train) == train and len(data.test) == 40
    assert data.train.x.shape[1:] == IMAGE_SHAPES[name] == (3, 32, 32)
    first = cifar.read_batch(folder / cifar.LAYOUTS[name][1][0], cifar.LAYOUTS[name][3], classes)
    raw = pickle.loads((folder / cifar.LAYOUTS[name][1][0]).read_bytes())[b"data"]
    # pixel (channel 1, row 2, column 5) of image 3: the layout is 1024 red, green, blue values
    assert first[0][3, 1, 2, 5] == raw[3, 1024 + 2 * 32 + 5]
    assert torch.equal(data.train.x[:40], first[0].float() / 255)
    assert load(name, tmp_path, download=False).train.x.shape == (train, 3072)


def test_a_file_that_names_another_object_is_refused_without_running_it(tmp_path):
    folder = write_cifar(tmp_path)
    (folder / "test_batch").write_bytes(pickle.dumps(OrderedDict(data=1), protocol=2))
    with pytest.raises(
        ValueError,
        match=r"test_batch is not a CIFAR batch file: it names the "
        r"object collections\.OrderedDict",
    ):
        load("cifar10", tmp_path, download=False)


@pytest.mark.parametrize(
    ("damage", "says"),
    [
        (lambda b: b.update({b"data": b[b"data"][:, :100]}), "expected 3072 values per image"),
        (lambda b: b.update({b"labels": b[b"labels"][:-1]}), "40 images but 39 labels"),
        (lambda b: b.update({b"labels": [12] * 40}), r"labels must lie in 0\.\.9, got 12\.\.12"),
        (lambda b: b.update({b"data": b[b"data"].astype(np.float32)}), "array of uint8"),
    ],
)
def test_damaged_batches_are_named(tmp_path, damage, says):
    folder = write_cifar(tmp_path)
    batch = pickle.loads((folder / "data_batch_2").read_bytes())
    damage(batch)
    (folder / "data_batch_2").write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(ValueError, match=f"data_batch_2: .*{says}"):
        load("cifar10", tmp_path, download=False)
    (folder / "data_batch_2").write_bytes(b"\x80\x02}q")  # cut short
    with pytest.raises(ValueError, match="data_batch_2 is not a CIFAR batch file"):
        load("cifar10", tmp_path, download=False)


def test_missing_files_are_listed(tmp_path):
    folder = write_cifar(tmp_path)
    (folder / "data_batch_5").unlink()
    with pytest.raises(FileNotFoundError, match=r"missing: data_batch_5\)"):
        load("cifar10", tmp_path, download=False)


def test_resnet20_trains_on_cifar_from_the_command_line(tmp_path, capsys):
    write_cifar(tmp_path, per_file=400)
    out = tmp_path / "run"
    args = ["train", "--model", "resnet20", "--rule", "usf", "--dataset", "cifar10"]
    args += ["--epochs", "1", "--limit", "2000", "--data-dir", str(tmp_path), "--out", str(out)]
    assert cli.main([*args, "--no-progress"]) == 0
    assert (out / "metrics.csv").exists()
    with pytest.raises(SystemExit):
        cli.main(["train", "fa-mlp", "--dataset", "cifar10", "--data-dir", str(tmp_path)])
    assert "the recipes are MNIST-family networks" in capsys.readouterr().err


def test_augmented_scheduled_cifar_run_is_recorded_and_resumes_as_if_never_stopped(tmp_path):
    import json

    from tests.test_cli import _same_results

    write_cifar(tmp_path, per_file=64)
    base = ["train", "--model", "cnn", "--rule", "fa", "--dataset", "cifar10", "--no-progress"]
    base += ["--data-dir", str(tmp_path), "--schedule", "step:1", "--batch-size", "32"]
    assert cli.main([*base, "--epochs", "2", "--out", str(tmp_path / "whole")]) == 0
    record = json.loads((tmp_path / "whole" / "metrics.json").read_text())
    assert (record["augment"], record["schedule"]) == ("crop-flip", "step:1")  # CIFAR's default
    assert len(record["normalize"]["mean"]) == 3
    assert cli.main([*base, "--epochs", "1", "--out", str(tmp_path / "half")]) == 0
    resume = ["resume", str(tmp_path / "half"), "--epochs", "2", "--no-progress"]
    assert cli.main([*resume, "--data-dir", str(tmp_path)]) == 0
    _same_results(tmp_path / "half", tmp_path / "whole")
    plain = [*base, "--epochs", "1", "--augment", "none", "--out", str(tmp_path / "plain")]
    assert cli.main(plain) == 0
    assert json.loads((tmp_path / "plain" / "metrics.json").read_text())["augment"] == "none"


def test_a_schedule_that_does_not_parse_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", "fa-mlp", "--schedule", "step:5,3"])
    assert exit_info.value.code == 2
    assert "--schedule: expected step:E1,E2[:GAMMA]" in capsys.readouterr().err
