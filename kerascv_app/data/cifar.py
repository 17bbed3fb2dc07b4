"""CIFAR-10 and CIFAR-100 in their original python format (pickled batches).

The data may be the archive as published (``cifar-10-python.tar.gz``,
``cifar-100-python.tar.gz``), a folder holding it, or the folder the archive extracts
to (``cifar-10-batches-py/``, ``cifar-100-python/``). Archives are read in place, in one
pass, without extracting them. Each batch is a dict with ``b"data"`` (N x 3072 bytes:
the red, then green, then blue 32x32 planes of each image) and its labels.
"""

from __future__ import annotations

import pickle
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np

from kerascv_app.data.base import ArraySplit, LoadedData, fingerprint_arrays
from kerascv_app.data.download import download, first_line, keras_datasets_dir
from kerascv_app.errors import UserError


@dataclass(frozen=True)
class CifarLayout:
    archive: str  # the published archive's file name
    folder: str  # the folder the archive extracts to
    train_batches: tuple[str, ...]
    test_batch: str
    meta: str
    label_key: bytes
    class_names_key: bytes
    url: str


LAYOUTS = {
    "cifar10": CifarLayout(
        archive="cifar-10-python.tar.gz",
        folder="cifar-10-batches-py",
        train_batches=tuple(f"data_batch_{number}" for number in range(1, 6)),
        test_batch="test_batch",
        meta="batches.meta",
        label_key=b"labels",
        class_names_key=b"label_names",
        url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    ),
    "cifar100": CifarLayout(
        archive="cifar-100-python.tar.gz",
        folder="cifar-100-python",
        train_batches=("train",),
        test_batch="test",
        meta="meta",
        # The 100 fine classes, not the 20 coarse superclasses.
        label_key=b"fine_labels",
        class_names_key=b"fine_label_names",
        url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
    ),
}

IMAGE_SHAPE = (3, 32, 32)  # channel planes as stored; transposed to 32x32x3


def load_cifar(kind: str, path: Path | None) -> LoadedData:
    """Loads ``kind`` ("cifar10" or "cifar100") from ``path``, the Keras cache or the internet."""
    layout = LAYOUTS[kind]
    remedy = (
        f"put {layout.archive} (from {layout.url}) in a folder and pass it with --data-dir, "
        f"or pass the archive or its extracted {layout.folder} folder itself"
    )
    if path is None:
        location = _find_in_keras_cache(layout) or download(layout.url, keras_datasets_dir(), remedy)
    else:
        path = Path(path).expanduser()
        if not path.exists():
            raise UserError(
                f"{path} does not exist: {kind} needs {layout.archive}, a folder holding it, or its extracted "
                f"{layout.folder} folder"
            )
        location = _find_in(path, layout) or download(layout.url, path, remedy)
    return _load(kind, layout, location)


def _find_in(path: Path, layout: CifarLayout) -> Path | None:
    """The archive or batch folder that ``path`` is or holds; None for a folder without either."""
    if path.is_file():
        return path
    for folder in (path, path / layout.folder):
        if (folder / layout.meta).is_file():
            return folder
    archive = path / layout.archive
    return archive if archive.is_file() else None


def _find_in_keras_cache(layout: CifarLayout) -> Path | None:
    """What earlier downloads left in ~/.keras/datasets: ours, or keras.datasets' (either Keras version)."""
    datasets = keras_datasets_dir()
    candidates = [
        datasets / layout.archive,
        datasets / layout.folder,  # Keras 2 extracted here
        datasets / f"{layout.folder}-target" / layout.folder,  # Keras 3 extracts here
        datasets / f"{layout.folder}_extracted" / layout.folder,  # earlier Keras 3 releases
    ]
    for candidate in candidates:
        if candidate.is_file() or (candidate / layout.meta).is_file():
            return candidate
    return None


def _load(kind: str, layout: CifarLayout, location: Path) -> LoadedData:
    batches = _read_batches(location, (*layout.train_batches, layout.test_batch, layout.meta))
    meta = batches[layout.meta]
    if not isinstance(meta, dict) or layout.class_names_key not in meta:
        raise UserError(
            f"{location}: {layout.meta} has no {layout.class_names_key!r} entry, so it is not {kind}'s; pass the "
            f"{layout.archive} archive"
        )
    class_names = [name.decode() if isinstance(name, bytes) else str(name) for name in meta[layout.class_names_key]]
    train = _to_split([batches[name] for name in layout.train_batches], layout, location, len(class_names))
    test = _to_split([batches[layout.test_batch]], layout, location, len(class_names))
    return LoadedData(
        name=kind,
        class_names=class_names,
        train=train,
        test=test,
        fingerprint=fingerprint_arrays(train.images, train.labels, test.images, test.labels),
    )


def _read_batches(location: Path, names: tuple[str, ...]) -> dict[str, object]:
    """Unpickles the named batch files from a batch folder or, in one pass, from an archive."""
    batches = {}
    try:
        if location.is_dir():
            for name in names:
                if (location / name).is_file():
                    with open(location / name, "rb") as file:
                        batches[name] = _unpickle(file, location / name)
        else:
            with tarfile.open(location, "r:*") as archive:
                for member in archive:
                    name = member.name.rsplit("/", 1)[-1]
                    if member.isfile() and name in names and name not in batches:
                        batches[name] = _unpickle(archive.extractfile(member), f"{location}:{member.name}")
    except (tarfile.TarError, EOFError, zlib.error, OSError) as error:
        raise UserError(
            f"cannot read {location} ({first_line(error)}): it is damaged or not a CIFAR archive; download it again"
        ) from error
    missing = [name for name in names if name not in batches]
    if missing:
        raise UserError(
            f"{location} lacks {', '.join(missing)}: it is incomplete or not this CIFAR dataset; pass the whole "
            "archive or its extracted folder"
        )
    return batches


class _BatchUnpickler(pickle.Unpickler):
    """Builds only what CIFAR batches hold (dicts, lists, bytes and numpy arrays).

    Pickle can call any function while loading; refusing all others means that a doctored
    archive cannot run code here.
    """

    ALLOWED = {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),  # pickled by numpy 1
        ("numpy._core.multiarray", "_reconstruct"),  # pickled by numpy 2
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),  # pickle protocol 5
        ("numpy._core.numeric", "_frombuffer"),
        ("_codecs", "encode"),  # bytes pickled by python 3 at protocol 2
    }

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"it would call {module}.{name}, which a CIFAR batch never needs")
        return super().find_class(module, name)


def _unpickle(file: IO[bytes], source) -> object:
    try:
        # The batches were pickled by python 2: their strings are bytes.
        return _BatchUnpickler(file, encoding="bytes").load()
    except (pickle.UnpicklingError, ValueError, TypeError, AttributeError, IndexError, KeyError) as error:
        raise UserError(
            f"{source} is not a readable CIFAR batch ({first_line(error)}): download the archive again"
        ) from error


def _to_split(batches: list, layout: CifarLayout, location: Path, class_count: int) -> ArraySplit:
    images, labels = [], []
    for batch in batches:
        if not isinstance(batch, dict) or b"data" not in batch or layout.label_key not in batch:
            raise UserError(
                f"{location} holds a batch without b'data' and {layout.label_key!r}: it is not this CIFAR "
                f"dataset's; pass {layout.archive}"
            )
        data = np.asarray(batch[b"data"])
        batch_labels = np.asarray(batch[layout.label_key], dtype=np.int64)
        if (
            data.dtype != np.uint8
            or data.ndim != 2
            or data.shape[1] != np.prod(IMAGE_SHAPE)
            or len(data) != len(batch_labels)
        ):
            raise UserError(
                f"{location} holds a batch of shape {data.shape} ({data.dtype}) with {len(batch_labels)} labels, "
                f"expected N x {np.prod(IMAGE_SHAPE)} uint8 and N labels: the archive is damaged; download it again"
            )
        images.append(data.reshape(-1, *IMAGE_SHAPE).transpose(0, 2, 3, 1))
        labels.append(batch_labels)
    labels = np.concatenate(labels)
    out_of_range = labels[(labels < 0) | (labels >= class_count)]
    if len(out_of_range):
        raise UserError(
            f"{location} holds label {out_of_range[0]} but names only {class_count} classes: the archive is "
            "damaged; download it again"
        )
    # One contiguous copy: tf.data slices it without another.
    return ArraySplit(np.ascontiguousarray(np.concatenate(images)), labels)
