"""Sharded TFRecords (``tfrecord:DIR``): a dataset converted once, then streamed at any size.

``kcv convert SOURCE --to DIR`` (kerascv_app/data/convert.py) writes, from any source ``kcv fit`` reads:

    DIR/train-00000-of-00016.tfrecord ...   the training split, in a seeded random order
    DIR/validation-...  DIR/test-...         the source's own validation and test splits
    DIR/train-labels.npy ...                 every record's label, in stored order
    DIR/metadata.json                        written last: format version, source and its
                                             fingerprint, class names, counts per split, per
                                             shard and per class, the conversion's fingerprint

Each record is a ``tf.train.Example``:

    image/encoded       the image file's bytes as they were (no re-encoding); decoded arrays
                        (digits, IDX, CIFAR batches) are encoded as PNG, which is lossless
    image/class/label   the class index
    image/index         the record's position in its split's stored order

The labels are also stored per split so that loading reads no record: stratified hold-out
and class counts need them up front. A subset (the validation hold-out, data.classes) keeps
records by ``image/index``, so it streams too.

Reading: evaluation reads the shards one after the other, in stored order, so predictions
line up with the split's labels. Training reads several shards at once, interleaving their
records, with the shard order reshuffled each epoch from the training seed. The interleave
is deterministic: in a multi-worker run every worker must see the same stream, of which
each keeps its own part of every global batch (see kerascv_app/distribution.py). Memory holds a
few records per open shard and the pipeline's shuffle buffer, not the dataset.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from kerascv_app.data.base import SELECTION_BATCH_SIZE, ImageSplit, LoadedData, select_by_position
from kerascv_app.errors import UserError

FORMAT_NAME = "kerascv_app.tfrecord"
FORMAT_VERSION = 1
METADATA_FILE = "metadata.json"
# Written first: what this conversion will write, so that a rerun can tell whether the
# shards already in the folder are its own. Removed once metadata.json is written.
PLAN_FILE = ".conversion.json"
SPLIT_NAMES = ("train", "validation", "test")
IMAGE_KEY = "image/encoded"
LABEL_KEY = "image/class/label"
INDEX_KEY = "image/index"
# Shards read at once while training (tf.data interleave's cycle length).
PARALLEL_SHARD_READS = 8


class TFRecordSplit(ImageSplit):
    """One split of a converted dataset, or a subset of it, streamed from its shards.

    ``ids`` are positions in the whole split's stored order. As with TFDS, a subset streams
    in stored order whatever the order of the indices asked for (its ``labels`` follow that
    order), and an index given twice streams its record twice.
    """

    element_kind = "encoded"

    def __init__(self, shard_paths: list[str], labels: np.ndarray, positions: np.ndarray, split_size: int):
        super().__init__(labels, positions)
        self.shard_paths = list(shard_paths)
        self.split_size = split_size

    def subset(self, indices) -> TFRecordSplit:
        indices = np.sort(np.asarray(indices, dtype=np.int64), kind="stable")
        return TFRecordSplit(self.shard_paths, self.labels[indices], self.ids[indices], self.split_size)

    def to_dataset(self):
        import tensorflow as tf

        # One shard after the other: the stored order, which the labels follow.
        records = tf.data.TFRecordDataset(self.shard_paths, buffer_size=_READ_BUFFER_BYTES)
        return self._select(records)

    def to_training_dataset(self, seed: int, epoch=None):
        import tensorflow as tf

        from kerascv_app.data.base import shuffle_for_epoch

        shards = tf.data.Dataset.from_tensor_slices(self.shard_paths)
        # A new shard order each epoch, the same on every worker (same seed).
        shards = shuffle_for_epoch(shards, len(self.shard_paths), seed, epoch)
        records = shards.interleave(
            lambda path: tf.data.TFRecordDataset(path, buffer_size=_READ_BUFFER_BYTES),
            cycle_length=min(PARALLEL_SHARD_READS, len(self.shard_paths)),
            block_length=1,
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        )
        return self._select(records)

    def _select(self, records):
        import tensorflow as tf

        # Parsed a batch at a time: three times the records/s of parsing one by one.
        batches = records.batch(SELECTION_BATCH_SIZE).map(
            _parse_positions_and_images, num_parallel_calls=tf.data.AUTOTUNE
        )
        return select_by_position(batches, self.ids, self.labels, self.split_size)


# Read-ahead per open shard: large sequential reads, a few per open file.
_READ_BUFFER_BYTES = 8 * 1024 * 1024


def _parse_positions_and_images(records):
    import tensorflow as tf

    features = tf.io.parse_example(
        records, {IMAGE_KEY: tf.io.FixedLenFeature([], tf.string), INDEX_KEY: tf.io.FixedLenFeature([], tf.int64)}
    )
    return features[INDEX_KEY], features[IMAGE_KEY]


def load_tfrecord(directory: Path) -> LoadedData:
    """Opens a folder written by ``kcv convert``; reads metadata and labels, not the records."""
    directory = Path(directory).expanduser()
    metadata = read_metadata(directory)
    splits = {name: _open_split(directory, name, record) for name, record in metadata["splits"].items()}
    if "train" not in splits:
        raise UserError(f"{directory / METADATA_FILE} lists no train split: convert a source with training images")
    return LoadedData(
        name=f"tfrecord:{directory}",
        class_names=list(metadata["class_names"]),
        train=splits["train"],
        test=splits.get("test"),
        validation=splits.get("validation"),
        skipped=list(metadata.get("skipped", [])),
        fingerprint=metadata["fingerprint"],
    )


def read_metadata(directory: Path) -> dict:
    """metadata.json, checked: a folder that is not a finished conversion gets one clear line."""
    if not directory.is_dir():
        raise UserError(
            f"{directory} does not exist: tfrecord:DIR needs a folder written by kcv convert SOURCE --to DIR"
        )
    path = directory / METADATA_FILE
    if not path.is_file():
        if (directory / PLAN_FILE).is_file():
            raise UserError(
                f"{directory} holds an unfinished conversion (no {METADATA_FILE} yet): run the same kcv convert "
                "again to finish it"
            )
        raise UserError(
            f"{directory} has no {METADATA_FILE}: tfrecord:DIR needs a folder written by kcv convert SOURCE --to DIR"
        )
    try:
        metadata = json.loads(path.read_text())
        version, format_name = metadata["version"], metadata["format"]
        metadata["splits"], metadata["class_names"], metadata["fingerprint"]
    except (ValueError, KeyError, TypeError) as error:
        raise UserError(
            f"{path} is corrupt ({type(error).__name__}: {error}): convert the source again into an empty folder"
        ) from error
    if format_name != FORMAT_NAME or version != FORMAT_VERSION:
        raise UserError(
            f"{path} is format {format_name!r} version {version}, but this kcv reads {FORMAT_NAME!r} version "
            f"{FORMAT_VERSION}: convert the source again"
        )
    return metadata


def _open_split(directory: Path, name: str, record: dict) -> TFRecordSplit:
    paths = [directory / shard["file"] for shard in record["shards"]]
    missing = [path.name for path in paths if not path.is_file()]
    if missing:
        raise UserError(
            f"{directory} lacks {len(missing)} shard(s) its {METADATA_FILE} lists (e.g. {missing[0]}): copy the "
            "whole folder, or convert again"
        )
    labels_path = directory / record["labels_file"]
    try:
        labels = np.load(labels_path, allow_pickle=False).astype(np.int64)
    except (OSError, ValueError) as error:
        raise UserError(f"{labels_path} cannot be read ({error}): copy the whole folder, or convert again") from error
    if len(labels) != record["count"]:
        raise UserError(
            f"{labels_path} holds {len(labels)} labels but {METADATA_FILE} counts {record['count']} {name} images: "
            "convert again"
        )
    return TFRecordSplit([str(path) for path in paths], labels, np.arange(len(labels)), len(labels))
