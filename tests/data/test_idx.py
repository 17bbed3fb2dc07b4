"""IDX (MNIST-format) files: real headers written here, and Fashion-MNIST from Debian's package."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from kcv_testing import write_fashion_mnist, write_idx, write_idx_split

from kerascv_app.data import idx
from kerascv_app.data.idx import FASHION_MNIST_CLASSES, IMAGE_MAGIC, LABEL_MAGIC, load_fashion_mnist, load_idx_directory
from kerascv_app.errors import UserError


def write_split(folder: Path, prefix: str, images: np.ndarray, labels: np.ndarray, gzipped: bool = True) -> None:
    write_idx_split(folder, prefix, images, labels, gzipped)


def random_digits(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    generator = np.random.default_rng(seed)
    return generator.integers(0, 256, (count, 5, 4), dtype=np.uint8), generator.integers(0, 10, count, dtype=np.uint8)


def test_reads_gzipped_and_raw_files(tmp_path):
    train_images, train_labels = random_digits(12, seed=0)
    test_images, test_labels = random_digits(5, seed=1)
    write_split(tmp_path, "train", train_images, train_labels, gzipped=True)
    write_split(tmp_path, "t10k", test_images, test_labels, gzipped=False)

    data = load_idx_directory(tmp_path)

    assert data.class_names == [str(digit) for digit in range(10)]
    np.testing.assert_array_equal(data.train.images[..., 0], train_images)
    np.testing.assert_array_equal(data.train.labels, train_labels)
    np.testing.assert_array_equal(data.test.images[..., 0], test_images)
    np.testing.assert_array_equal(data.test.labels, test_labels)
    assert data.train.labels.dtype == np.int64 and data.train.images.dtype == np.uint8
    assert data.fingerprint


def test_test_split_is_optional(tmp_path):
    write_split(tmp_path, "train", *random_digits(6, seed=0))
    assert load_idx_directory(tmp_path).test is None


def test_grayscale_images_leave_the_pipeline_as_rgb(tmp_path, decode_batches):
    write_split(tmp_path, "train", *random_digits(6, seed=0))
    batches = decode_batches(load_idx_directory(tmp_path).train, num_classes=10)
    assert [images.shape for images, _ in batches] == [(4, 16, 16, 3), (2, 16, 16, 3)]
    assert batches[0][0].dtype == np.uint8


def test_bad_magic_number_is_refused(tmp_path):
    images, labels = random_digits(3, seed=0)
    write_idx(tmp_path / "train-images-idx3-ubyte", images, 0x00000802)
    write_idx(tmp_path / "train-labels-idx1-ubyte", labels, LABEL_MAGIC)
    with pytest.raises(UserError, match=r"train-images-idx3-ubyte\.gz is not an IDX image file.*0x00000802"):
        load_idx_directory(tmp_path)


def test_truncated_file_is_refused(tmp_path):
    write_split(tmp_path, "train", *random_digits(4, seed=0), gzipped=False)
    image_file = tmp_path / "train-images-idx3-ubyte"
    image_file.write_bytes(image_file.read_bytes()[:-7])
    with pytest.raises(UserError, match="truncated or damaged"):
        load_idx_directory(tmp_path)


def test_damaged_gzip_is_refused(tmp_path):
    write_split(tmp_path, "train", *random_digits(4, seed=0))
    image_file = tmp_path / "train-images-idx3-ubyte.gz"
    image_file.write_bytes(image_file.read_bytes()[:20])
    with pytest.raises(UserError, match="cannot read .*train-images-idx3-ubyte.gz"):
        load_idx_directory(tmp_path)


def test_image_and_label_counts_must_match(tmp_path):
    images, _ = random_digits(4, seed=0)
    _, labels = random_digits(3, seed=1)
    write_split(tmp_path, "train", images, labels)
    with pytest.raises(UserError, match="4 images but .* 3 labels"):
        load_idx_directory(tmp_path)


def test_missing_files_are_named(tmp_path):
    with pytest.raises(UserError, match="train-images-idx3-ubyte"):
        load_idx_directory(tmp_path)
    write_idx(tmp_path / "train-images-idx3-ubyte", random_digits(2, seed=0)[0], IMAGE_MAGIC)
    with pytest.raises(UserError, match="train-labels-idx1-ubyte.* is missing"):
        load_idx_directory(tmp_path)


@pytest.mark.shared_data
def test_fashion_mnist_from_debian_package(tmp_path, monkeypatch):
    # Where Debian's dataset-fashion-mnist puts the four gzipped files (written here, tiny, in
    # the real format): found without --data-dir, with Fashion-MNIST's class names.
    debian = write_fashion_mnist(tmp_path / "fashion-mnist", train_per_class=6, test_per_class=2)
    monkeypatch.setattr(idx, "FASHION_MNIST_DEBIAN_DIR", debian)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras-home"))
    data = load_fashion_mnist(None)
    assert data.class_names == FASHION_MNIST_CLASSES
    assert data.train.images.shape == (60, 28, 28, 1)
    assert data.test.images.shape == (20, 28, 28, 1)
    assert np.bincount(data.train.labels).tolist() == [6] * 10


@pytest.mark.shared_data
def test_fashion_mnist_prefers_data_dir(tmp_path):
    write_split(tmp_path, "train", *random_digits(8, seed=0))
    write_split(tmp_path, "t10k", *random_digits(3, seed=1))
    data = load_fashion_mnist(tmp_path)
    assert (len(data.train), len(data.test)) == (8, 3)
    assert data.class_names[0] == "T-shirt/top"


@pytest.mark.shared_data
def test_fashion_mnist_offline_names_the_remedy(tmp_path, monkeypatch):
    monkeypatch.setattr(idx, "FASHION_MNIST_DEBIAN_DIR", tmp_path / "not-installed")
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras-home"))
    # A host that never resolves (RFC 2606), so the download fails at once, online or not.
    monkeypatch.setattr(idx, "FASHION_MNIST_URL", "https://fashion-mnist.invalid/")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError) as caught:
        load_fashion_mnist(empty)
    message = str(caught.value)
    assert "--data-dir" in message and "dataset-fashion-mnist" in message
    assert all(name in message for name in idx.GZIPPED_FILE_NAMES)
    assert "\n" not in message
    assert list(empty.iterdir()) == []  # no partial download left behind
