"""What every data source returns: labelled splits that tf.data can stream.

A source hands back an :class:`ImageSplit` per split. The split knows its labels (for
stratified validation hold-out and class counts) and how to become a
``tf.data.Dataset`` of ``(element, label)`` pairs, where the element is either a decoded
``uint8`` image (small datasets held as arrays) or encoded image bytes (files, TFDS),
decoded later in the pipeline, so that a dataset larger than memory streams.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

from kerascv_app.errors import UserError


class ImageSplit:
    """One split of labelled images. Subclasses decide where the pixels live."""

    #: "decoded" elements are uint8 HxWxC arrays; "encoded" elements are image file bytes.
    element_kind = "decoded"

    def __init__(self, labels: np.ndarray, ids: np.ndarray):
        self.labels = np.asarray(labels, dtype=np.int64)
        # Stable identifiers (file paths, array indices): splits are fingerprinted by them.
        self.ids = np.asarray(ids)
        if len(self.labels) != len(self.ids):
            raise ValueError(f"{len(self.labels)} labels but {len(self.ids)} ids")

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: np.ndarray) -> ImageSplit:
        raise NotImplementedError

    def to_dataset(self):
        """A tf.data.Dataset of (element, int64 label), in this split's order."""
        raise NotImplementedError

    def to_training_dataset(self, seed: int, epoch=None):
        """The stream training reads: any order, since the pipeline shuffles it.

        Sources stored in several files (TFRecord shards) override this to read files in
        parallel and in a seeded order that changes each epoch; the others stream as
        :meth:`to_dataset` does. With ``epoch`` (an int or a tensor) the order is a pure
        function of (seed, epoch), so that a resumed run replays an epoch exactly; without
        it, it changes with each iteration of the dataset.
        """
        return self.to_dataset()


class ArraySplit(ImageSplit):
    """Decoded images held in memory: bundled digits, IDX files, CIFAR batches."""

    element_kind = "decoded"

    def __init__(self, images: np.ndarray, labels: np.ndarray, ids: np.ndarray | None = None):
        images = np.asarray(images)
        if images.ndim == 3:
            images = images[..., np.newaxis]
        if images.dtype != np.uint8:
            raise ValueError(f"ArraySplit needs uint8 images, got {images.dtype}")
        super().__init__(labels, np.arange(len(images)) if ids is None else ids)
        self.images = images

    def subset(self, indices):
        return ArraySplit(self.images[indices], self.labels[indices], self.ids[indices])

    def to_dataset(self):
        import tensorflow as tf

        return tf.data.Dataset.from_tensor_slices((self.images, self.labels))

    def to_training_dataset(self, seed: int, epoch=None):
        # Arrays may be sorted by class (a stratified subset keeps the source's order), and
        # the pipeline's bounded shuffle buffer cannot mix a class-sorted stream: start from
        # a seeded permutation (one copy of the arrays; the buffer varies each epoch's order).
        return self.subset(np.random.default_rng(seed).permutation(len(self))).to_dataset()


class FileSplit(ImageSplit):
    """Encoded image files on disk, read one by one while training (streams).

    A file can pass the start-up check (its first and last bytes) and still not decode (a
    garbled middle): the pipeline then drops it instead of dying mid-epoch, and logs the
    positions that did decode, so that :meth:`undecodable_paths` can name the others.
    """

    element_kind = "encoded"

    def __init__(self, paths: np.ndarray, labels: np.ndarray):
        paths = np.asarray([str(p) for p in paths], dtype=object)
        super().__init__(labels, paths)
        self.paths = paths
        self.decoded_positions = np.zeros(len(paths), dtype=bool)
        # Files a decoder other than TensorFlow's (the fast loop's Pillow) found undecodable.
        self.failed_positions = np.zeros(len(paths), dtype=bool)

    def subset(self, indices):
        return FileSplit(self.paths[indices], self.labels[indices])

    def to_dataset(self, with_positions: bool = False):
        """(bytes, label), or (position, bytes, label) with ``with_positions``."""
        return self._read(self._paths_and_labels(), with_positions)

    def to_training_dataset(self, seed: int, epoch=None, with_positions: bool = False):
        # Folders list their files class by class, and the pipeline's bounded shuffle buffer
        # (data.shuffle_buffer) cannot mix a class-sorted stream of 50,000 images (measured:
        # the CIFAR-10 baseline reached 0.31 test accuracy instead of 0.53). The paths, not the images, are
        # shuffled in full, in a new seeded order each epoch: a few bytes per file.

        listing = self._paths_and_labels()
        return self._read(shuffle_for_epoch(listing, max(len(self), 1), seed, epoch), with_positions)

    def undecodable_paths(self) -> list[str]:
        """Files that never came out of the decoder. A file the pipeline did not reach (a
        resumed run's partial epoch) is not one of them: the few candidates are decoded once
        more here, and only those that fail again are named. A split the fast loop decoded
        whole needs no second look, and no TensorFlow."""
        failed = [str(path) for path in self.paths[self.failed_positions]]
        unknown = self.paths[~self.decoded_positions & ~self.failed_positions]
        if not len(unknown):
            return failed
        import tensorflow as tf

        for path in unknown:
            try:
                tf.io.decode_image(tf.io.read_file(str(path)), expand_animations=False)
            except (tf.errors.InvalidArgumentError, tf.errors.NotFoundError, tf.errors.UnknownError):
                failed.append(str(path))
        return failed

    def mark_decoded(self, positions) -> None:
        self.decoded_positions[np.asarray(positions)] = True

    def mark_failed(self, positions) -> None:
        self.failed_positions[np.asarray(positions)] = True

    def _paths_and_labels(self):
        import tensorflow as tf

        paths = tf.constant(self.paths.astype(str) if len(self.paths) else np.zeros([0], dtype=str))
        positions = tf.range(len(self.paths), dtype=tf.int64)
        return tf.data.Dataset.from_tensor_slices((positions, paths, self.labels))

    def _read(self, listing, with_positions: bool):
        import tensorflow as tf

        if with_positions:
            return listing.map(
                lambda position, path, label: (position, tf.io.read_file(path), label),
                num_parallel_calls=tf.data.AUTOTUNE,
            )
        return listing.map(
            lambda position, path, label: (tf.io.read_file(path), label), num_parallel_calls=tf.data.AUTOTUNE
        )


def epoch_seed(seed: int, epoch):
    """One epoch's shuffle seed, a pure function of (seed, epoch); ``epoch`` may be a tensor."""
    import tensorflow as tf

    return tf.cast(seed, tf.int64) * 1_000_003 + tf.cast(epoch, tf.int64)


def shuffle_for_epoch(dataset, buffer_size: int, seed: int, epoch=None):
    """A seeded shuffle: new each iteration without ``epoch``, fixed by (seed, epoch) with it."""
    if epoch is None:
        return dataset.shuffle(buffer_size, seed=seed, reshuffle_each_iteration=True)
    import tensorflow as tf

    # With a global seed of 0 (keras.utils.set_random_seed(0)), TensorFlow's seed logic
    # compares a tensor seed to 0 in Python and fails; the op seed alone fixes the order.
    graph = tf.compat.v1.get_default_graph()
    global_seed, graph.seed = graph.seed, None
    try:
        return dataset.shuffle(buffer_size, seed=epoch_seed(seed, epoch), reshuffle_each_iteration=False)
    finally:
        graph.seed = global_seed


@dataclass
class LoadedData:
    """A source's answer: class names, the splits it has, and what it skipped."""

    name: str
    class_names: list[str]
    train: ImageSplit
    # None when the source has no test split: one is then held out from train.
    test: ImageSplit | None
    # Whether the source provides a validation split of its own (e.g. some TFDS datasets).
    validation: ImageSplit | None = None
    # Files that could not be read, skipped and reported.
    skipped: list[str] = field(default_factory=list)
    # What identifies the underlying data (contents or file list), for run records and ensembles.
    fingerprint: str = ""


#: Records a stream hands to :func:`select_by_position` at once: per-record work done on
#: whole batches costs a fraction of the same work done record by record.
SELECTION_BATCH_SIZE = 256


def select_by_position(batches, positions: np.ndarray, labels: np.ndarray, split_size: int):
    """Keeps the records of a stream that a subset names, with the subset's labels.

    ``batches`` yields ``(positions, elements)`` batches (any size, SELECTION_BATCH_SIZE is
    a good one) covering every record of a split of ``split_size`` records, where a
    position is the record's place in the split. The result yields ``(element, label)`` for
    the records at ``positions``, in stream order, each as often as ``positions`` names it
    (bootstrap samples), labelled from ``labels`` rather than from the records, so that
    relabelling (data.classes) applies to the stream too.
    """
    import tensorflow as tf

    label_by_position = np.zeros(split_size, dtype=np.int64)
    label_by_position[positions] = labels
    copies_by_position = np.bincount(positions, minlength=split_size)
    label_table, copies_table = tf.constant(label_by_position), tf.constant(copies_by_position)

    def select(batch_positions, batch_elements):
        # A copy count of 0 drops a record, 2 repeats it: one vectorised op per batch.
        copies = tf.gather(copies_table, batch_positions)
        return tf.repeat(batch_elements, copies, axis=0), tf.repeat(
            tf.gather(label_table, batch_positions), copies, axis=0
        )

    dataset = batches.map(select, num_parallel_calls=tf.data.AUTOTUNE).unbatch()
    # Known length for progress bars; also fails loudly if the records ever changed under us.
    return dataset.apply(tf.data.experimental.assert_cardinality(len(positions)))


def fingerprint_arrays(*arrays: np.ndarray) -> str:
    digest = hashlib.sha256()
    for array in arrays:
        array = np.ascontiguousarray(array)
        digest.update(str(array.shape).encode())
        digest.update(array.tobytes())
    return digest.hexdigest()[:16]


def fingerprint_ids(*parts) -> str:
    digest = hashlib.sha256()
    for part in parts:
        for item in np.asarray(part).ravel():
            digest.update(str(item).encode())
            digest.update(b"\0")
    return digest.hexdigest()[:16]


def select_classes(data: LoadedData, wanted: tuple[str, ...]) -> LoadedData:
    """Keeps only the named classes, relabelled 0..k-1 in the order given."""
    if not wanted:
        return data
    if len(set(wanted)) < 2:
        raise UserError(
            f"data.classes = {list(wanted)} keeps fewer than two classes: a classifier needs at least two; name two "
            f"or more, or leave data.classes empty for all of {data.class_names}"
        )
    unknown = [name for name in wanted if name not in data.class_names]
    if unknown:
        raise UserError(
            f"data.classes names {unknown} which {data.name} does not have; its classes are {data.class_names}"
        )
    old_to_new = {data.class_names.index(name): new for new, name in enumerate(wanted)}

    def keep(split):
        if split is None:
            return None
        indices = np.flatnonzero(np.isin(split.labels, list(old_to_new)))
        kept = split.subset(indices)
        kept.labels = np.array([old_to_new[label] for label in kept.labels], dtype=np.int64)
        return kept

    return LoadedData(
        name=data.name,
        class_names=list(wanted),
        train=keep(data.train),
        test=keep(data.test),
        validation=keep(data.validation),
        skipped=data.skipped,
        fingerprint=fingerprint_ids([data.fingerprint], wanted),
    )
