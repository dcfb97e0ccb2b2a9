import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from bender.data import Batches, Dataset, Split, data_root, load, read_idx

TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def test_mnist_shapes_ranges_and_label_counts(mnist):
    assert mnist.train.x.shape == (60000, 784) and mnist.test.x.shape == (10000, 784)
    assert mnist.train.x.dtype == torch.float32 and mnist.train.y.dtype == torch.int64
    assert mnist.train.x.min() == 0 and mnist.train.x.max() == 1
    assert mnist.train.y.bincount().tolist() == TRAIN_COUNTS
    assert mnist.test.y.bincount().tolist() == TEST_COUNTS
    assert mnist.num_classes == 10


def test_image_layout_and_fashion_mnist(data_root, mnist):
    fashion = load("fashion-mnist", data_root, flatten=False)
    assert fashion.train.x.shape == (60000, 1, 28, 28)
    assert fashion.train.y.bincount().tolist() == [6000] * 10
    assert fashion.test.y.bincount().tolist() == [1000] * 10
    images = load("mnist", data_root, flatten=False)
    assert torch.equal(images.train.x.reshape(60000, 784), mnist.train.x)


def test_read_idx_parses_header_and_rejects_garbage(tmp_path):
    path = tmp_path / "tiny-idx3-ubyte"
    body = bytes(range(24))
    path.write_bytes(bytes([0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 4]) + body)
    assert torch.equal(read_idx(path), torch.arange(24, dtype=torch.uint8).reshape(2, 3, 4))
    bad = tmp_path / "bad"
    bad.write_bytes(b"\x12\x34\x08\x01" + bytes(8))
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(bad)
    short = tmp_path / "short"
    short.write_bytes(bytes([0, 0, 8, 1, 0, 0, 0, 9, 1, 2]))
    with pytest.raises(ValueError, match=r"header says \(9,\)"):
        read_idx(short)


def test_missing_folder_error_names_folder_and_files(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        load("mnist", tmp_path, download=False)
    message = str(err.value)
    assert str(tmp_path / "MNIST" / "raw") in message
    for name in (
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    ):
        assert name in message
    with pytest.raises(ValueError, match="unknown dataset 'cifar'"):
        load("cifar", tmp_path)


def test_data_root_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("BENDER_DATA", str(tmp_path / "env"))
    assert data_root(tmp_path / "arg") == tmp_path / "arg"
    assert data_root() == tmp_path / "env"
    monkeypatch.delenv("BENDER_DATA")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert data_root() == tmp_path / "cache" / "bender"


def _epoch(batches):
    return torch.cat([y for _, y in batches])


def test_batches_shuffle_is_seeded_and_drops_the_last_partial_batch():
    split = Split(torch.arange(100.0).unsqueeze(1), torch.arange(100))
    a, b = Batches(split, 16, seed=3), Batches(split, 16, seed=3)
    assert len(a) == 6
    first_a, second_a = _epoch(a), _epoch(a)
    assert torch.equal(first_a, _epoch(b)) and torch.equal(second_a, _epoch(b))
    assert not torch.equal(first_a, second_a)  # reshuffled every epoch
    assert len(first_a) == 96 and len(first_a.unique()) == 96
    assert not torch.equal(first_a, _epoch(Batches(split, 16, seed=4)))
    for x, y in Batches(split, 16, seed=0):
        assert x.shape == (16, 1) and torch.equal(x[:, 0].long(), y)  # pairs stay together


def test_batches_draw_their_order_on_the_cpu_whatever_the_default_device():
    """``torch.set_default_device("cuda")`` must not move the CPU generator's draw elsewhere."""
    split = Split(torch.arange(100.0, device="cpu").unsqueeze(1), torch.arange(100, device="cpu"))
    expected = _epoch(Batches(split, 16, seed=3))
    with torch.device("meta"):  # a default device that holds no numbers
        drawn = _epoch(Batches(split, 16, seed=3))
    assert drawn.device.type == "cpu" and torch.equal(drawn, expected)


def test_batches_shuffled_once_repeat_the_first_epoch():
    split = Split(torch.arange(100.0).unsqueeze(1), torch.arange(100))
    once = Batches(split, 16, reshuffle=False, seed=3)
    first = _epoch(once)
    assert torch.equal(first, _epoch(Batches(split, 16, seed=3)))  # same first draw
    assert torch.equal(first, _epoch(once)) and torch.equal(first, _epoch(once))
    assert not torch.equal(first, torch.arange(96))  # shuffled, just not again


@pytest.mark.parametrize("reshuffle", [True, False])
def test_batches_continue_from_their_state(reshuffle):
    split = Split(torch.arange(100.0).unsqueeze(1), torch.arange(100))
    a = Batches(split, 16, reshuffle=reshuffle, seed=3)
    _epoch(a)
    state = a.state_dict()
    assert (state["order"] is None) == reshuffle  # drawn anew each epoch: nothing to keep
    following = [_epoch(a), _epoch(a)]
    b = Batches(split, 16, reshuffle=reshuffle, seed=99)
    b.load_state_dict(state)
    assert all(torch.equal(epoch, _epoch(b)) for epoch in following)


def test_batches_refuse_a_kept_order_of_another_size():
    split = Split(torch.arange(100.0).unsqueeze(1), torch.arange(100))
    once = Batches(split, 16, reshuffle=False)
    _epoch(once)
    smaller = Batches(Split(split.x[:80], split.y[:80]), 16, reshuffle=False)
    with pytest.raises(ValueError, match="covers 96 examples, but these batches use 80 of 80"):
        smaller.load_state_dict(once.state_dict())


def test_batches_in_order_and_partial():
    split = Split(torch.zeros(10, 2), torch.arange(10))
    sizes = [len(y) for _, y in Batches(split, 4, shuffle=False, drop_last=False)]
    assert sizes == [4, 4, 2]
    assert torch.equal(_epoch(Batches(split, 4, shuffle=False)), torch.arange(8))
    for bad in (0, 2.5, True):
        with pytest.raises(ValueError, match=f"batch_size must be a positive int, got {bad!r}"):
            Batches(split, bad)


@pytest.mark.parametrize("shuffle", [True, False])
def test_batches_of_an_epoch_without_a_full_batch_are_none(shuffle):
    split = Split(torch.zeros(10, 2), torch.arange(10))
    assert len(Batches(split, 16, shuffle=shuffle)) == 0
    assert list(Batches(split, 16, shuffle=shuffle)) == []  # not one empty batch
    empty = Split(torch.zeros(0, 2), torch.zeros(0, dtype=torch.int64))
    assert list(Batches(empty, 4, shuffle=shuffle, drop_last=False)) == []


def test_split_checks_labels_and_lengths():
    x = torch.zeros(4, 3)
    assert Split(x, torch.tensor([0, 1, 2, 1], dtype=torch.int32)).y.dtype == torch.int64
    with pytest.raises(ValueError, match=r"shape \(4, 3\) and dtype torch.float32 \(one-hot"):
        Split(x, torch.eye(4, 3))
    with pytest.raises(
        ValueError, match=r"integer class labels, got shape \(4,\) and dtype torch\.float"
    ):
        Split(x, torch.zeros(4))
    with pytest.raises(ValueError, match=r"one example per label: 3 labels, x of shape \(4, 3\)"):
        Split(x, torch.arange(3))
    with pytest.raises(ValueError, match=r"Split\.x is on meta but Split\.y on cpu"):
        Split(torch.zeros(4, 3, device="meta"), torch.arange(4))
    with pytest.raises(TypeError, match="Split needs tensors x and y, got list and Tensor"):
        Split([[0.0]], torch.arange(1))


def test_subset_takes_at_most_n_and_refuses_sizes_below_one(mnist):
    small = mnist.subset(100, 10**9)
    assert (len(small.train), len(small.test)) == (100, 10000)
    assert torch.equal(small.train.x, mnist.train.x[:100])
    for n in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match=f"subset size must be a positive int, got {n!r}"):
            mnist.train.subset(n)


def test_dataset_checks_labels_against_num_classes():
    split = Split(torch.zeros(3, 2), torch.tensor([0, 4, 1]))
    assert Dataset("own", split, split, num_classes=5).num_classes == 5
    with pytest.raises(
        ValueError, match=r"own train labels must lie in 0\.\.3 \(num_classes=4\), got 0\.\.4"
    ):
        Dataset("own", split, split, num_classes=4)
    negative = Split(torch.zeros(2, 2), torch.tensor([-1, 0]))
    with pytest.raises(ValueError, match=r"own test labels must lie in 0\.\.9"):
        Dataset("own", split, negative)
    with pytest.raises(ValueError, match="num_classes must be a positive int, got 0"):
        Dataset("own", split, split, num_classes=0)
    with pytest.raises(
        TypeError,
        match=r"Dataset\.test must be a bender\.data\.Split \(or FolderSplit\), got tuple",
    ):
        Dataset("own", split, (split.x, split.y))


# Damaged or foreign data files: one ValueError naming the file and what is wrong, at load
# time. Each test writes a small MNIST folder in the real IDX layout and spoils one file.

IDX_TYPES = {np.dtype(np.uint8): 0x08, np.dtype(">i4"): 0x0C, np.dtype(">f4"): 0x0D}


def idx_bytes(array: np.ndarray) -> bytes:
    """``array`` in the IDX format: two zero bytes, the type code, the dims, big-endian sizes."""
    code = IDX_TYPES[array.dtype]
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}i", *array.shape)
    return header + array.tobytes()


def write_mnist(root: Path, n_train: int = 12, n_test: int = 6, gz: bool = False) -> Path:
    """A small MNIST folder in torchvision's layout; returns its ``raw`` folder."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        files = {f"{prefix}-images-idx3-ubyte": images, f"{prefix}-labels-idx1-ubyte": labels}
        for name, array in files.items():
            data = idx_bytes(array)
            if gz:
                (raw / f"{name}.gz").write_bytes(gzip.compress(data))
            else:
                (raw / name).write_bytes(data)
    return raw


def _refused(root: Path, path: Path, says: str) -> None:
    """Loading MNIST from ``root`` raises one ValueError matching ``says`` and naming ``path``."""
    with pytest.raises(ValueError, match=says) as err:
        load("mnist", root, download=False)
    assert str(path) in str(err.value)


def test_the_small_folder_loads(tmp_path):
    write_mnist(tmp_path)
    data = load("mnist", tmp_path, download=False)
    assert data.train.x.shape == (12, 784) and data.test.x.shape == (6, 784)
    assert data.train.x.min() >= 0 and data.train.x.max() <= 1


@pytest.mark.parametrize(
    ("spoil", "says"),
    [
        (lambda b: b[: len(b) // 2], "ends early"),  # cut short: EOFError
        (lambda b: b"not gzip at all" + b, "damaged"),  # BadGzipFile
        (lambda b: b[:10] + bytes(x ^ 0xFF for x in b[10:40]) + b[40:], "damaged"),  # zlib
    ],
    ids=["truncated", "not-gzip", "corrupt-deflate"],
)
def test_a_damaged_gz_file_names_the_file(tmp_path, spoil, says):
    raw = write_mnist(tmp_path, gz=True)
    path = raw / "train-images-idx3-ubyte.gz"
    path.write_bytes(spoil(path.read_bytes()))
    _refused(tmp_path, path, says)


def test_a_header_claiming_255_dims_names_the_file(tmp_path):
    raw = write_mnist(tmp_path)
    path = raw / "t10k-labels-idx1-ubyte"
    path.write_bytes(bytes([0, 0, 8, 255]) + bytes(16))
    _refused(tmp_path, path, "declares 255 dims")
    with pytest.raises(ValueError, match="declares 255 dims"):
        read_idx(path)


@pytest.mark.parametrize(
    ("images", "says"),
    [
        (np.zeros((12, 20, 20), np.uint8), r"shape \(N, 28, 28\), got \(12, 20, 20\)"),
        (np.zeros(12 * 784, np.uint8), r"shape \(N, 28, 28\), got \(9408,\)"),
        (np.full((12, 28, 28), np.nan, ">f4"), "unsigned bytes .* got float32"),
        (np.full((12, 28, 28), 2_000_000_000, ">i4"), "unsigned bytes .* got int32"),
    ],
    ids=["20x20", "1-d", "float-nan", "int32"],
)
def test_images_of_another_kind_are_refused_naming_the_file(tmp_path, images, says):
    raw = write_mnist(tmp_path)
    path = raw / "train-images-idx3-ubyte"
    path.write_bytes(idx_bytes(images))
    _refused(tmp_path, path, says)


def test_labels_out_of_range_or_of_another_shape_name_the_file(tmp_path):
    raw = write_mnist(tmp_path)
    path = raw / "train-labels-idx1-ubyte"
    path.write_bytes(idx_bytes(np.full(12, 10, np.uint8)))
    _refused(tmp_path, path, r"labels must lie in 0\.\.9, got 10\.\.10")
    path.write_bytes(idx_bytes(np.zeros((12, 2), np.uint8)))
    with pytest.raises(ValueError, match=r"1-D array of integer labels, got shape \(12, 2\)"):
        load("mnist", tmp_path, download=False)


def test_images_and_labels_of_different_counts_name_both_files(tmp_path):
    raw = write_mnist(tmp_path)
    (raw / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros(5, np.uint8)))
    with pytest.raises(ValueError, match="6 images in t10k-images-idx3-ubyte but 5 labels"):
        load("mnist", tmp_path, download=False)


def test_bytes_are_scaled_to_the_unit_interval(tmp_path):
    raw = write_mnist(tmp_path)
    images = np.zeros((12, 28, 28), np.uint8)
    images[0, 0, 0], images[1, 0, 0] = 255, 51
    (raw / "train-images-idx3-ubyte").write_bytes(idx_bytes(images))
    x = load("mnist", tmp_path, download=False).train.x
    assert x[0, 0] == 1.0 and x[1, 0] == pytest.approx(0.2) and x[2].abs().sum() == 0
    assert x.dtype == torch.float32


def test_images_are_padded_evenly_to_the_size_a_model_needs():
    from bender.data import Dataset, Split, image_shape, pad_images

    x = torch.rand(3, 1, 28, 28)
    data = Dataset("mnist", Split(x, torch.tensor([0, 1, 2])), Split(x[:1], torch.tensor([0])))
    padded = pad_images(data, (32, 32))
    assert image_shape(padded) == (1, 32, 32)
    assert torch.equal(padded.train.x[:, :, 2:30, 2:30], x)
    assert padded.train.x.sum() == x.sum()  # zeros around
    assert pad_images(data, (28, 28)) is data
    with pytest.raises(ValueError, match="28×28 images cannot be padded to 20×32"):
        pad_images(data, (20, 32))
    flat = Dataset("mnist", Split(x.flatten(1), torch.tensor([0, 1, 2])), data.test)
    with pytest.raises(ValueError, match=r"expected images of shape \(N, C, H, W\)"):
        image_shape(flat)
