"""Image folders (torchvision's ImageFolder layout) streamed through a DataLoader."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bender import cli
from bender.data import Batches, FolderSplit, image_shape, load_image_folder, normalize
from bender.data.folder import (
    EVAL_RESIZE,
    ImageError,
    Images,
    centre_crop_box,
    random_crop_box,
)
from bender.training import evaluate, train

CLASSES = ("cat", "dog", "emu")


def write_folder(root: Path, train: int = 8, val: int = 3, size=(24, 20), jpeg_every=4) -> Path:
    """``root/{train,val}/<class>/<i>.png`` (every ``jpeg_every``-th a JPEG) of random pixels;
    ``size`` is (width, height)."""
    rng = np.random.default_rng(0)
    for split, n in (("train", train), ("val", val)):
        for name in CLASSES:
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
                suffix = ".jpg" if i % jpeg_every == jpeg_every - 1 else ".png"
                Image.fromarray(pixels).save(folder / f"{i:03d}{suffix}")
    return root


@pytest.fixture
def folder(tmp_path) -> Path:
    return write_folder(tmp_path / "images")


def test_classes_labels_and_files_follow_imagefolder(folder):
    data = load_image_folder(folder)
    assert data.classes == list(CLASSES) and data.num_classes == 3
    assert len(data.train) == 24 and len(data.test) == 9
    assert data.train.y.tolist() == [0] * 8 + [1] * 8 + [2] * 8
    assert data.train.files[0].endswith(os.path.join("train", "cat", "000.png"))
    assert image_shape(data) == (3, 20, 24)
    datasets = pytest.importorskip("torchvision.datasets")
    reference = datasets.ImageFolder(str(folder / "train"))
    assert [p for p, _ in reference.samples] == list(data.train.files)
    assert [label for _, label in reference.samples] == data.train.y.tolist()


def test_images_as_they_are_come_as_the_files_hold_them(folder):
    data = load_image_folder(folder)
    x, y = next(data.test.batches(None, 9))
    assert x.shape == (9, 3, 20, 24) and x.dtype == torch.float32
    for i in (0, 5):  # a PNG, pixel for pixel, scaled to [0, 1]
        pixels = np.asarray(Image.open(data.test.files[i]).convert("RGB"))
        expected = torch.from_numpy(pixels.copy()).permute(2, 0, 1).float() / 255
        assert torch.equal(x[i], expected)
    assert y.tolist() == data.test.y.tolist()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_batches_come_on_the_split_device_in_its_dtype(folder, dtype):
    split = load_image_folder(folder).train.to("cpu", dtype)
    x, y = next(Batches(split, 4, seed=0).__iter__())
    assert x.dtype == dtype and y.dtype == torch.long and x.shape == (4, 3, 20, 24)


def test_random_crops_are_seeded_per_example_whatever_the_workers(folder):
    def epochs(workers: int, seed: int) -> list[torch.Tensor]:
        split = load_image_folder(folder, size=12, workers=workers).train
        batches = Batches(split, 6, seed=seed)
        return [x for _ in range(2) for x, _ in batches]

    one, again, workers = epochs(0, 3), epochs(0, 3), epochs(2, 3)
    assert all(torch.equal(a, b) for a, b in zip(one, again, strict=True))
    assert all(torch.equal(a, b) for a, b in zip(one, workers, strict=True))
    assert not torch.equal(one[0], one[len(one) // 2])  # the second epoch crops anew
    assert not torch.equal(one[0], epochs(0, 4)[0])
    assert one[0].shape == (6, 3, 12, 12)


@pytest.mark.parametrize("size", [(300, 200), (64, 64), (50, 90), (1000, 10)])
def test_a_random_crop_box_lies_in_the_image_with_the_protocols_area_and_aspect(size):
    width, height = size
    generator = torch.Generator().manual_seed(0)
    for _ in range(50):
        left, top, right, bottom = random_crop_box(width, height, generator)
        assert 0 <= left < right <= width and 0 <= top < bottom <= height
        w, h = right - left, bottom - top
        if (w, h) in ((width, height), (min(width, round(height * 4 / 3)), height)):
            continue  # the fallback: the whole image, or its centre at a clamped aspect
        assert 0.08 * width * height * 0.9 <= w * h <= width * height
        assert 3 / 4 * 0.9 <= w / h <= 4 / 3 * 1.1


def test_the_fallback_crop_clamps_the_aspect_ratio():
    generator = torch.Generator().manual_seed(0)  # 1000 × 10 never fits a crop of ratio ≤ 4/3
    assert random_crop_box(1000, 10, generator) == (493, 0, 506, 10)  # 13 × 10 at the centre


@pytest.mark.parametrize("size", [(256, 256), (400, 300), (100, 181)])
def test_the_evaluation_crop_is_the_centre_square_of_the_resized_shorter_side(size):
    width, height = size
    side = min(width, height) * 224 / 256
    box = centre_crop_box(width, height)
    assert EVAL_RESIZE == 224 / 256
    assert box == pytest.approx(
        ((width - side) / 2, (height - side) / 2, (width + side) / 2, (height + side) / 2)
    )


def test_evaluation_images_are_centre_crops_and_do_not_depend_on_a_seed(folder):
    split = load_image_folder(folder, size=8).test
    images = Images(split.files, split.y, 8, None)
    image, label, index = images[4]
    assert image.shape == (3, 8, 8) and image.dtype == torch.uint8 and (label, index) == (1, 4)
    source = Image.open(split.files[4]).convert("RGB")
    box = centre_crop_box(*source.size)
    expected = np.asarray(source.resize((8, 8), Image.BILINEAR, box=box))
    assert torch.equal(image, torch.from_numpy(expected.copy()).permute(2, 0, 1))
    seeded = next(iter(split.batches(None, 9, seed=5)))[0]
    assert torch.equal(seeded, next(iter(split.batches(None, 9)))[0])  # no random crop: no draw


def test_a_subset_draws_from_every_class_and_keeps_folder_order(folder):
    split = load_image_folder(folder).train.subset(12)
    assert len(split) == 12 and set(split.y.tolist()) == {0, 1, 2}
    assert list(split.files) == sorted(split.files)


def test_validation_is_set_apart_and_read_with_centre_crops(folder):
    data = load_image_folder(folder, size=8).with_validation(6)
    assert len(data.train) == 18 and len(data.val) == 6
    assert data.train.random_crop and not data.val.random_crop
    assert not set(data.train.files) & set(data.val.files)


def test_normalize_takes_channel_statistics_of_the_training_images(folder):
    data = normalize(load_image_folder(folder))
    x = torch.cat([x for x, _ in load_image_folder(folder).train.batches(None, 24)])
    flat = x.transpose(0, 1).reshape(3, -1).double()
    assert data.stats["mean"] == pytest.approx(flat.mean(1).tolist())
    assert data.stats["std"] == pytest.approx(flat.std(1).tolist())
    normalized = torch.cat([x for x, _ in data.train.batches(None, 24)]).double()
    assert normalized.mean((0, 2, 3)).abs().max() < 1e-5
    assert normalized.std((0, 2, 3)).sub(1).abs().max() < 1e-4


def test_train_and_evaluate_read_the_folder(folder):
    data = normalize(load_image_folder(folder, size=8))
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 3))
    table = train(model, data, epochs=2, batch_size=6, device="cpu")
    assert list(table.epoch) == [1, 2] and table.loss_train.map(math.isfinite).all()
    loss, accuracy = evaluate(model, data.test, batch_size=4)
    assert (loss, accuracy) == pytest.approx((table.loss_test.iloc[-1], table.acc_test.iloc[-1]))


def test_a_missing_part_of_the_layout_is_named(tmp_path, folder):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_image_folder(tmp_path / "nowhere")
    (folder / "val").rename(tmp_path / "elsewhere")
    with pytest.raises(FileNotFoundError, match=r"images/val is missing"):
        load_image_folder(folder)
    (folder / "val").mkdir()
    with pytest.raises(ValueError, match=r"images/val holds no class folder"):
        load_image_folder(folder)
    (folder / "val" / "cat").mkdir()
    (folder / "val" / "cat" / "notes.txt").write_text("no image")
    with pytest.raises(ValueError, match=r"val/cat holds no image"):
        load_image_folder(folder)


def test_classes_that_differ_between_train_and_val_are_named(folder):
    (folder / "val" / "emu").rename(folder / "val" / "yak")
    with pytest.raises(ValueError, match="only in train: emu; only in val: yak"):
        load_image_folder(folder)


def test_images_of_mixed_sizes_need_a_size(tmp_path, folder):
    odd = folder / "train" / "dog" / "odd.png"
    Image.fromarray(np.zeros((30, 30, 3), dtype=np.uint8)).save(odd)
    with pytest.raises(ValueError, match=r"different sizes.*odd\.png is 30×30.*--image-size"):
        load_image_folder(folder)
    data = load_image_folder(folder, size=10)  # resized: any sizes will do
    assert next(data.train.batches(None, 25))[0].shape == (25, 3, 10, 10)


def test_a_damaged_image_is_named_when_it_is_read(folder):
    damaged = folder / "train" / "emu" / "001.png"
    damaged.write_bytes(damaged.read_bytes()[:40])
    data = load_image_folder(folder, size=8, workers=2)
    with pytest.raises(ImageError, match=r"emu/001\.png cannot be read as an image"):
        list(data.train.batches(None, 24))


def test_bad_split_settings_are_refused():
    with pytest.raises(ValueError, match="random crop needs the size"):
        FolderSplit(["a.png"], torch.tensor([0]), random_crop=True)
    with pytest.raises(ValueError, match="1 files but 2 labels"):
        FolderSplit(["a.png"], torch.tensor([0, 1]))


def test_bender_train_and_resume_on_an_image_folder(tmp_path, folder):
    out = tmp_path / "run"
    flags = ["--model", "cnn", "--rule", "fa", "--dataset", "folder", "--data-dir", str(folder)]
    flags += ["--image-size", "16", "--batch-size", "6", "--workers", "0", "--no-progress"]
    assert cli.main(["train", *flags, "--epochs", "1", "--out", str(out)]) == 0
    record = json.loads((out / "metrics.json").read_text())
    assert record["dataset"] == "folder" and record["image_size"] == 16
    assert record["augment"] == "resized-crop" and record["data_dir"] == str(folder.resolve())
    assert len(record["normalize"]["mean"]) == 3
    moved = folder.rename(tmp_path / "moved")  # resume finds it where it is told
    with pytest.raises(SystemExit, match="2"):
        cli.main(["resume", str(out), "--epochs", "2", "--no-progress"])
    assert cli.main(["resume", str(out), "--epochs", "2", "--data-dir", str(moved)]) == 0
    record = json.loads((out / "metrics.json").read_text())
    assert len(record["epochs"]) == 2 and record["data_dir"] == str(moved.resolve())


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--dataset", "folder"], "--dataset folder needs --data-dir ROOT"),
        (["--image-size", "8"], "--image-size and --augment resized-crop are for --dataset"),
        (["--dataset", "folder", "--augment", "resized-crop"], "resized-crop resizes the crops"),
        (["--dataset", "folder", "--data-dir", "/nonexistent"], "nonexistent/train is missing"),
    ],
)
def test_bad_folder_flags_are_usage_errors(tmp_path, folder, capsys, flags, message):
    if "--augment" in flags:
        flags = [*flags, "--data-dir", str(folder)]
    with pytest.raises(SystemExit) as exit_:
        cli.main(["train", "--model", "cnn", *flags, "--out", str(tmp_path / "run")])
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_read_their_shares_and_train_as_one(tmp_path, folder):
    flags = ["train", "--model", "cnn", "--rule", "fa", "--dataset", "folder"]
    flags += ["--data-dir", str(folder), "--image-size", "12", "--batch-size", "6"]
    flags += ["--epochs", "1", "--device", "cpu", "--no-progress", "--workers", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2"]
    command += ["--master_port", str(_free_port()), "-m", "bender", *flags]
    done = subprocess.run(
        [*command, "--out", str(tmp_path / "two")], capture_output=True, text=True, env=env
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert cli.main([*flags, "--out", str(tmp_path / "one"), "--threads", "1"]) == 0
    one = torch.load(tmp_path / "one" / "model.pt", weights_only=True)
    two = torch.load(tmp_path / "two" / "model.pt", weights_only=True)
    for key in one:
        torch.testing.assert_close(two[key], one[key], rtol=1e-5, atol=1e-6)


def test_a_resumed_folder_run_crops_as_one_that_never_stopped(tmp_path, folder):
    """The epoch's crop seed comes from the checkpointed batch generator: epoch 2 after a
    resume reads the same crops as epoch 2 of a run that never stopped."""
    flags = ["--model", "cnn", "--rule", "fa", "--dataset", "folder", "--data-dir", str(folder)]
    flags += ["--image-size", "12", "--batch-size", "6", "--workers", "0", "--no-progress"]
    flags += ["--threads", "1"]
    assert cli.main(["train", *flags, "--epochs", "2", "--out", str(tmp_path / "whole")]) == 0
    assert cli.main(["train", *flags, "--epochs", "1", "--out", str(tmp_path / "half")]) == 0
    assert cli.main(["resume", str(tmp_path / "half"), "--epochs", "2", "--no-progress"]) == 0
    whole = torch.load(tmp_path / "whole" / "model.pt", weights_only=True)
    half = torch.load(tmp_path / "half" / "model.pt", weights_only=True)
    for key in whole:
        assert torch.equal(half[key], whole[key]), key
    tables = [json.loads((tmp_path / r / "metrics.json").read_text()) for r in ("whole", "half")]
    assert [e["loss_train"] for e in tables[0]["epochs"]] == [
        e["loss_train"] for e in tables[1]["epochs"]
    ]
