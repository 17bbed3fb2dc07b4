"""Data sources by name: ``kcv fit`` reads any of these from a recipe's ``data.source``.

    digits            scikit-learn's bundled 8x8 digits (no download)
    fashion_mnist     IDX files from --data-dir, /usr/share/datasets/fashion-mnist or the Keras cache
    idx:DIR           any MNIST-format IDX files in DIR
    cifar10, cifar100 the original python-format archive (or its extracted batches)
    folder:PATH       a class-per-folder image tree, or a .tar/.tar.gz of one
    tfds:NAME         a tensorflow-datasets dataset prepared in --data-dir
    tfrecord:DIR      sharded TFRecords written by kcv convert (streamed, any size)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kerascv_app.data.base import ArraySplit, LoadedData, fingerprint_arrays
from kerascv_app.errors import UserError


def load_source(source: str, data_dir: str | Path | None = None) -> LoadedData:
    """Loads the named source; ``data_dir`` is where its files are (or will be downloaded)."""
    kind, _, argument = source.partition(":")
    data_dir = Path(data_dir) if data_dir else None
    if kind == "digits":
        return load_digits()
    if kind == "fashion_mnist":
        from kerascv_app.data.idx import load_fashion_mnist

        return load_fashion_mnist(Path(argument) if argument else data_dir)
    if kind == "idx":
        from kerascv_app.data.idx import load_idx_directory

        return load_idx_directory(_required_path(argument, data_dir, source))
    if kind in ("cifar10", "cifar100"):
        from kerascv_app.data.cifar import load_cifar

        return load_cifar(kind, Path(argument) if argument else data_dir)
    if kind == "folder":
        from kerascv_app.data.folder import load_image_folder

        return load_image_folder(_required_path(argument, data_dir, source))
    if kind == "tfds":
        from kerascv_app.data.tfds_source import load_tfds

        if not argument:
            raise UserError("data.source = 'tfds:' names no dataset: write tfds:NAME, e.g. tfds:mnist")
        return load_tfds(argument, data_dir)
    if kind == "tfrecord":
        from kerascv_app.data.tfrecord import load_tfrecord

        return load_tfrecord(_required_path(argument, data_dir, source))
    raise UserError(
        f"data.source = {source!r} is unknown: use digits, fashion_mnist, idx:DIR, cifar10, cifar100, folder:PATH, tfds:NAME or tfrecord:DIR"
    )


def _required_path(argument: str, data_dir: Path | None, source: str) -> Path:
    """folder:, idx: and tfrecord: take a path; an empty one means --data-dir, a relative one is under it."""
    if not argument:
        if data_dir is None:
            raise UserError(f"data.source = {source!r} needs a path: write {source}PATH or pass --data-dir PATH")
        return data_dir
    path = Path(argument).expanduser()
    if not path.is_absolute() and data_dir is not None:
        path = data_dir / path
    return path


def load_digits() -> LoadedData:
    """scikit-learn's 1,797 8x8 digits (values 0..16), scaled to uint8; ships with sklearn."""
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    images = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)
    labels = bunch.target.astype(np.int64)
    return LoadedData(
        name="digits",
        class_names=[str(d) for d in range(10)],
        train=ArraySplit(images, labels),
        test=None,
        fingerprint=fingerprint_arrays(images, labels),
    )
