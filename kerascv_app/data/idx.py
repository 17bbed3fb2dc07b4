"""MNIST-format IDX files: any folder of them (``idx:DIR``) and Fashion-MNIST (``fashion_mnist``).

An IDX file is a big-endian header (a magic number whose third byte is the value type,
0x08 for unsigned bytes, and whose fourth is the number of dimensions, then one 32-bit
size per dimension) followed by the values. Images are ``0x00000803`` (count, rows,
columns), labels ``0x00000801`` (count). Files may be gzipped (``.gz``) or raw.
"""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path

import numpy as np

from kerascv_app.data.base import ArraySplit, LoadedData, fingerprint_arrays
from kerascv_app.data.download import download, first_line, keras_datasets_dir
from kerascv_app.errors import UserError

IMAGE_MAGIC = 0x00000803
LABEL_MAGIC = 0x00000801

# (images, labels) file names of each split, without the optional ".gz".
SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
GZIPPED_FILE_NAMES = [f"{name}.gz" for names in SPLIT_FILES.values() for name in names]

FASHION_MNIST_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
# Where Debian's dataset-fashion-mnist package puts the four files.
FASHION_MNIST_DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
# The mirror that keras.datasets.fashion_mnist.load_data() downloads from.
FASHION_MNIST_URL = "https://storage.googleapis.com/tensorflow/tf-keras-datasets/"


def load_idx_directory(path: Path, class_names: list[str] | None = None, name: str = "") -> LoadedData:
    """Reads the train (required) and t10k (optional) IDX pairs in ``path``.

    Class names default to the label values as text, "0".."9" (more if labels go higher).
    """
    path = Path(path).expanduser()
    if not path.is_dir():
        raise UserError(
            f"{path} is not a folder: idx:DIR needs a folder holding {' and '.join(SPLIT_FILES['train'])} (.gz or raw)"
        )
    train = _read_split(path, "train")
    if train is None:
        raise UserError(f"{path} has no training files: put {' and '.join(SPLIT_FILES['train'])} (.gz or raw) there")
    test = _read_split(path, "test")
    largest_label = max(int(split.labels.max(initial=0)) for split in (train, test) if split is not None)
    if class_names is None:
        class_names = [str(label) for label in range(max(10, largest_label + 1))]
    elif largest_label >= len(class_names):
        raise UserError(
            f"{path} holds label {largest_label}, but {name or 'this dataset'} has only {len(class_names)} classes: "
            "the label files are not this dataset's"
        )
    arrays = [array for split in (train, test) if split is not None for array in (split.images, split.labels)]
    return LoadedData(
        name=name or f"idx:{path}",
        class_names=list(class_names),
        train=train,
        test=test,
        fingerprint=fingerprint_arrays(*arrays),
    )


def load_fashion_mnist(data_dir: Path | None) -> LoadedData:
    """Fashion-MNIST from ``data_dir``, Debian's package or the Keras cache; else downloaded."""
    for directory in _fashion_mnist_folders(data_dir):
        if all(_find_idx_file(directory, file_name) for names in SPLIT_FILES.values() for file_name in names):
            return load_idx_directory(directory, FASHION_MNIST_CLASSES, "fashion_mnist")
    # Downloaded where the user asked, else where keras.datasets would put it.
    target = Path(data_dir).expanduser() if data_dir else keras_datasets_dir() / "fashion-mnist"
    remedy = (
        f"pass --data-dir DIR with {', '.join(GZIPPED_FILE_NAMES)} in it, "
        f"or install the Debian package dataset-fashion-mnist (it puts them in {FASHION_MNIST_DEBIAN_DIR})"
    )
    for file_name in GZIPPED_FILE_NAMES:
        download(FASHION_MNIST_URL + file_name, target, remedy)
    return load_idx_directory(target, FASHION_MNIST_CLASSES, "fashion_mnist")


def _fashion_mnist_folders(data_dir: Path | None) -> list[Path]:
    folders = [Path(data_dir).expanduser()] if data_dir else []
    return folders + [FASHION_MNIST_DEBIAN_DIR, keras_datasets_dir() / "fashion-mnist"]


def _read_split(directory: Path, split: str) -> ArraySplit | None:
    """The split's images and labels, or None when neither file is there."""
    image_name, label_name = SPLIT_FILES[split]
    image_file, label_file = _find_idx_file(directory, image_name), _find_idx_file(directory, label_name)
    if image_file is None and label_file is None:
        return None
    if image_file is None or label_file is None:
        missing = image_name if image_file is None else label_name
        raise UserError(
            f"{directory} has only half of the {split} split: {missing}(.gz) is missing; add it or remove its partner"
        )
    images = read_idx(image_file, IMAGE_MAGIC)
    labels = read_idx(label_file, LABEL_MAGIC)
    if len(images) != len(labels):
        raise UserError(
            f"{image_file.name} holds {len(images)} images but {label_file.name} holds {len(labels)} labels: the "
            "files do not belong together"
        )
    return ArraySplit(images, labels.astype(np.int64))


def _find_idx_file(directory: Path, file_name: str) -> Path | None:
    for candidate in (directory / f"{file_name}.gz", directory / file_name):
        if candidate.is_file():
            return candidate
    return None


def read_idx(path: Path, expected_magic: int) -> np.ndarray:
    """The values of an unsigned-byte IDX file, shaped by its header."""
    content = _read_bytes(path)
    if len(content) < 4:
        raise UserError(f"{path} is too short to be an IDX file ({len(content)} bytes): replace it with an intact copy")
    (magic,) = struct.unpack(">I", content[:4])
    if magic != expected_magic:
        kind = "image" if expected_magic == IMAGE_MAGIC else "label"
        raise UserError(
            f"{path} is not an IDX {kind} file: its magic number is 0x{magic:08X}, expected 0x{expected_magic:08X}; "
            "check that the file is the right one and not damaged"
        )
    dimension_count = magic & 0xFF
    header_size = 4 + 4 * dimension_count
    if len(content) < header_size:
        raise UserError(f"{path} is truncated inside its header: replace it with an intact copy")
    shape = struct.unpack(f">{dimension_count}I", content[4:header_size])
    value_count = len(content) - header_size
    if value_count != math.prod(shape):
        raise UserError(
            f"{path} holds {value_count} values but its header announces shape {shape} ({math.prod(shape)} values): "
            "the file is truncated or damaged; replace it with an intact copy"
        )
    return np.frombuffer(content, dtype=np.uint8, offset=header_size).reshape(shape)


def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as file:
                return file.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as error:
        raise UserError(f"cannot read {path} ({first_line(error)}): replace it with an intact copy") from error
