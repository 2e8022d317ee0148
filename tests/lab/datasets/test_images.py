"""Tests for pyro_dlf_bench.datasets.images: IDX reading, the MNIST-layout loaders, digits, label flips."""

import gzip
import struct

import numpy as np
import pytest
import torch

import shared_data
from pyro_dlf_bench.datasets import ImageData, flip_labels, load_digits_images, load_fashion_mnist, load_image_folder, load_mnist, read_idx
from pyro_dlf_bench.datasets.images import DATA_DIR_ENV


def _write_idx(path, array, gz=True):
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">i", s) for s in array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    if gz:
        with gzip.open(path, "wb") as fh:
            fh.write(payload)
    else:
        path.write_bytes(payload)


def _fake_set(folder, n_train=6, n_test=4, gz=True):
    rng = np.random.default_rng(0)
    folder.mkdir()
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 5, 3)),
        "train-labels-idx1-ubyte": np.arange(n_train) % 10,
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 5, 3)),
        "t10k-labels-idx1-ubyte": (np.arange(n_test) + 3) % 10,
    }
    for stem, array in arrays.items():
        _write_idx(folder / (stem + (".gz" if gz else "")), array, gz)
    return arrays


@pytest.mark.parametrize("gz", [True, False])
def test_read_idx_round_trip(tmp_path, gz):
    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    path = tmp_path / ("a.idx.gz" if gz else "a.idx")
    _write_idx(path, array, gz)
    out = read_idx(path)
    assert out.shape == (2, 3, 4) and np.array_equal(out, array)


def test_read_idx_rejects_bad_files(tmp_path):
    bad = tmp_path / "bad.idx"
    bad.write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(bad)
    short = tmp_path / "short.idx"
    short.write_bytes(bytes([0, 0, 0x08, 1]) + struct.pack(">i", 10) + b"\x00" * 3)
    with pytest.raises(ValueError, match="truncated"):
        read_idx(short)


@pytest.mark.parametrize("gz", [True, False])
def test_load_image_folder_scales_and_shapes(tmp_path, gz):
    arrays = _fake_set(tmp_path / "toy", gz=gz)
    data = load_image_folder(tmp_path / "toy")
    assert data.name == "toy" and data.image_shape == (1, 5, 3)
    assert data.x_train.shape == (6, 1, 5, 3) and data.x_test.shape == (4, 1, 5, 3)
    assert torch.allclose(data.x_train[:, 0], torch.from_numpy(arrays["train-images-idx3-ubyte"] / 255.0).float())
    assert data.y_test.tolist() == [3, 4, 5, 6] and data.y_train.dtype == torch.int64


def test_load_image_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a folder"):
        load_image_folder(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte"):
        load_image_folder(tmp_path / "empty")
    with pytest.raises(TypeError, match="path"):
        load_image_folder(3)


def test_environment_variable_names_the_data_folder(tmp_path, monkeypatch):
    root = tmp_path / "data"
    root.mkdir()
    _fake_set(root / "mnist")
    monkeypatch.setenv(DATA_DIR_ENV, str(root))
    assert load_mnist().x_train.shape[0] == 6
    monkeypatch.delenv(DATA_DIR_ENV)
    with pytest.raises(FileNotFoundError, match=DATA_DIR_ENV):
        load_fashion_mnist()


@pytest.mark.data
def test_shared_mnist_and_fashion_mnist():
    # Read from the tests' data root (tests/shared_data.py); skipped, saying how to point at it, when absent.
    mnist = load_mnist(shared_data.require("mnist"))
    fashion = load_fashion_mnist(shared_data.require("fashion-mnist"))
    for data in (mnist, fashion):
        assert data.x_train.shape == (60000, 1, 28, 28) and data.x_test.shape == (10000, 1, 28, 28)
        assert float(data.x_train.min()) == 0.0 and float(data.x_train.max()) == 1.0
        assert torch.bincount(data.y_test).tolist() == torch.bincount(data.y_test, minlength=10).tolist()
    assert torch.bincount(fashion.y_test).tolist() == [1000] * 10  # Fashion-MNIST's test set is balanced


def test_digits():
    data = load_digits_images(test_fraction=0.2, seed=0)
    assert data.x_train.shape[1:] == (1, 8, 8)
    assert data.x_train.shape[0] + data.x_test.shape[0] == 1797
    assert 0.0 <= float(data.x_train.min()) and float(data.x_train.max()) <= 1.0
    again = load_digits_images(test_fraction=0.2, seed=0)
    assert torch.equal(data.y_test, again.y_test)
    with pytest.raises(ValueError, match="test_fraction"):
        load_digits_images(test_fraction=1.5)


def test_flip_labels():
    y = torch.arange(10)
    assert flip_labels(y).tolist() == list(range(9, -1, -1))
    assert torch.equal(flip_labels(flip_labels(y)), y)
    with pytest.raises(ValueError, match="num_classes"):
        flip_labels(torch.tensor([12]))
    with pytest.raises(TypeError):
        flip_labels(torch.tensor([0.5]))


def test_image_data_validates():
    x = torch.zeros(3, 1, 2, 2)
    with pytest.raises(ValueError, match="y_train"):
        ImageData("t", x, torch.zeros(2, dtype=torch.long), x, torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="labels outside"):
        ImageData("t", x, torch.full((3,), 10), x, torch.zeros(3, dtype=torch.long))
