"""tensorflow-datasets as a source (``tfds:NAME``): prepared in --data-dir, or downloaded.

Images stream from the prepared record files as their encoded bytes (PNG or JPEG, as
TFDS stored them); the pipeline decodes them, so a dataset larger than memory trains.
Only the labels are read up front, for stratified hold-out and class counts.
"""

from __future__ import annotations

import os
import socket
import urllib.request
from pathlib import Path

import numpy as np

from kerascv_app.data.base import (
    SELECTION_BATCH_SIZE,
    ImageSplit,
    LoadedData,
    fingerprint_arrays,
    fingerprint_ids,
    select_by_position,
)
from kerascv_app.data.download import first_line
from kerascv_app.errors import UserError

# Checked before downloading: offline, tfds retries each file with back-off for minutes.
# TFDS's own mirror of many datasets lives on this host.
CONNECTIVITY_PROBE = ("storage.googleapis.com", 443)
CONNECTIVITY_TIMEOUT_S = 5.0
LABEL_BATCH_SIZE = 8192


class TfdsSplit(ImageSplit):
    """One split of a prepared TFDS dataset, or a subset of it, streamed in the stored order.

    ``ids`` are positions in the whole split. The records are streamed, not indexed, so a
    subset comes in stored order whatever the order of the indices asked for (its ``labels``
    follow that order); an index given twice streams its record twice (bootstrap samples).
    """

    element_kind = "encoded"

    def __init__(
        self, builder, split_name: str, image_key: str, labels: np.ndarray, positions: np.ndarray, split_size: int
    ):
        super().__init__(labels, positions)
        self.builder = builder
        self.split_name = split_name
        self.image_key = image_key
        self.split_size = split_size

    def subset(self, indices) -> TfdsSplit:
        indices = np.sort(np.asarray(indices, dtype=np.int64), kind="stable")
        return TfdsSplit(
            self.builder, self.split_name, self.image_key, self.labels[indices], self.ids[indices], self.split_size
        )

    def to_dataset(self):
        images = _records(self.builder, self.split_name, self.image_key).map(lambda record: record[self.image_key])
        batches = images.enumerate().batch(SELECTION_BATCH_SIZE)
        return select_by_position(batches, self.ids, self.labels, self.split_size)


def load_tfds(name: str, data_dir: Path | None) -> LoadedData:
    builder = _builder(name, data_dir)
    if not builder.is_prepared():
        _prepare(builder, name, data_dir)
    info = builder.info
    image_key, label_key = _feature_keys(info, name)
    if "train" not in info.splits:
        raise UserError(
            f"tfds:{name} has no 'train' split (its splits are {sorted(info.splits)}): choose a dataset with one"
        )
    splits = {
        split: _read_split(builder, split, image_key, label_key)
        for split in ("train", "test", "validation")
        if split in info.splits
    }
    class_names = list(info.features[label_key].names)
    return LoadedData(
        name=f"tfds:{name}",
        class_names=class_names,
        train=splits["train"],
        test=splits.get("test"),
        validation=splits.get("validation"),
        fingerprint=fingerprint_ids(
            [info.full_name], [fingerprint_arrays(*(split.labels for split in splits.values()))]
        ),
    )


def _builder(name: str, data_dir: Path | None):
    import tensorflow_datasets as tfds

    try:
        # Datasets known to this tfds release, or prepared ones found in data_dir by name.
        return tfds.builder(name, data_dir=str(Path(data_dir).expanduser()) if data_dir else None)
    except tfds.core.registered.DatasetNotFoundError as error:
        raise UserError(
            f"tfds:{name} is neither a tensorflow-datasets dataset nor prepared in {_where(data_dir)}: check the "
            "name (tfds.list_builders()) or pass --data-dir"
        ) from error
    except (ValueError, ImportError) as error:
        raise UserError(
            f"tfds:{name} cannot be opened ({first_line(error)}): check the name, its config and version"
        ) from error


def _prepare(builder, name: str, data_dir: Path | None) -> None:
    """Downloads and prepares the dataset: the online path, refused at once when offline."""
    remedy = (
        f"on a machine with internet run `tfds build {name} --data_dir DIR` "
        f"(or tfds.builder('{name}', data_dir='DIR').download_and_prepare()), copy DIR here and pass --data-dir DIR"
    )
    if not _online():
        raise UserError(
            f"tfds:{name} is not prepared in {_where(data_dir)} and this machine cannot reach the internet to "
            f"download it: {remedy}"
        )
    try:
        builder.download_and_prepare()
    except Exception as error:
        raise UserError(
            f"preparing tfds:{name} in {_where(data_dir)} failed ({first_line(error)}): {remedy}"
        ) from error


def _online() -> bool:
    if urllib.request.getproxies().get("https"):
        # Behind a proxy a direct connection proves nothing: let tfds try through it.
        return True
    try:
        socket.create_connection(CONNECTIVITY_PROBE, timeout=CONNECTIVITY_TIMEOUT_S).close()
    except OSError:
        return False
    return True


def _feature_keys(info, name: str) -> tuple[str, str]:
    """(image feature, class label feature): the supervised keys when they are those, else the first of each."""
    import tensorflow_datasets as tfds

    features = info.features

    def is_image(key: str) -> bool:
        return isinstance(features[key], tfds.features.Image)

    def is_label(key: str) -> bool:
        return isinstance(features[key], tfds.features.ClassLabel)

    supervised = info.supervised_keys
    supervised_are_names = (
        isinstance(supervised, tuple)
        and len(supervised) == 2
        and all(isinstance(key, str) and key in features for key in supervised)
    )
    if supervised_are_names and is_image(supervised[0]) and is_label(supervised[1]):
        return supervised
    image_keys = [key for key in features if is_image(key)]
    label_keys = [key for key in features if is_label(key)]
    if not image_keys or not label_keys:
        raise UserError(
            f"tfds:{name} has no image feature and class label feature to train on (its features are "
            f"{list(features)}): choose an image classification dataset"
        )
    return image_keys[0], label_keys[0]


def _records(builder, split_name: str, image_key: str):
    """The split's records in stored order, the image left encoded (SkipDecoding)."""
    import tensorflow_datasets as tfds

    # Without file shuffling tfds reads deterministically, so the label pass and every
    # later stream see the records in the same order: positions stay valid.
    return builder.as_dataset(split=split_name, shuffle_files=False, decoders={image_key: tfds.decode.SkipDecoding()})


def _read_split(builder, split_name: str, image_key: str, label_key: str) -> TfdsSplit:
    labels = _read_labels(builder, split_name, image_key, label_key)
    return TfdsSplit(builder, split_name, image_key, labels, np.arange(len(labels)), len(labels))


def _read_labels(builder, split_name: str, image_key: str, label_key: str) -> np.ndarray:
    """Every label of the split, in stored order; images are read as bytes, never decoded."""
    dataset = _records(builder, split_name, image_key).map(lambda record: record[label_key]).batch(LABEL_BATCH_SIZE)
    batches = list(dataset.as_numpy_iterator())
    return np.concatenate(batches).astype(np.int64) if batches else np.zeros([0], dtype=np.int64)


def _where(data_dir: Path | None) -> str:
    return str(data_dir) if data_dir else os.environ.get("TFDS_DATA_DIR", "~/tensorflow_datasets")
