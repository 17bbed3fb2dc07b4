"""The tf.data pipeline: read, decode, resize, cache, shuffle, batch, augment, prefetch.

Images leave the pipeline as ``uint8`` batches at the recipe's size; scaling to floats
happens inside the model, so that prediction and export apply the same preprocessing.
Labels leave as one-hot ``float32`` so that label smoothing (and mixed labels) work.
Every ``map`` runs with ``num_parallel_calls=AUTOTUNE``.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from kerascv_app.config import AugmentConfig, DataConfig
from kerascv_app.data.base import FileSplit, ImageSplit, fingerprint_ids
from kerascv_app.errors import UserError

#: ``data.cache = "auto"`` keeps the decoded images in memory when all splits together take
#: at most this share of the memory available: the rest is left to the model, TensorFlow's
#: own buffers (shuffle, prefetch) and the rest of the machine.
MEMORY_SHARE = 0.25


@dataclasses.dataclass(frozen=True)
class CacheChoice:
    """What ``data.cache`` resolved to for a run: "memory", "none" or a file prefix, and why."""

    setting: str
    mode: str
    reason: str

    def record(self) -> dict:
        return {"setting": self.setting, "chosen": self.mode, "reason": self.reason}

    def line(self) -> str:
        where = {"memory": "in memory", "none": "not cached (decoded again every epoch)"}.get(
            self.mode, f"in files {self.mode}-<split>-*"
        )
        return f"data cache: {where}; {self.reason}"


def available_memory() -> int:
    """Bytes of memory the process can still take (psutil: free plus reclaimable page cache)."""
    import psutil

    return int(psutil.virtual_memory().available)


def decoded_bytes(image_count: int, data: DataConfig) -> int:
    height, width = data.image_size
    return image_count * height * width * data.channels


def choose_cache(data: DataConfig, image_count: int, available: int | None = None) -> CacheChoice:
    """Resolves ``data.cache`` for ``image_count`` decoded images (all splits of a run).

    A file prefix must name a file in an existing folder: refused here, before any run
    directory is written, rather than by TensorFlow in the middle of the first epoch.
    """
    setting = data.cache
    size = decoded_bytes(image_count, data)
    if setting == "memory":
        return CacheChoice(setting, "memory", f"data.cache = 'memory': {_gigabytes(size)} decoded")
    if setting == "none":
        return CacheChoice(setting, "none", "data.cache = 'none'")
    if setting == "auto":
        available = available_memory() if available is None else available
        budget = int(available * MEMORY_SHARE)
        if size <= budget:
            return CacheChoice(
                setting,
                "memory",
                f"data.cache = 'auto': {image_count:,} images decoded take {_gigabytes(size)}, within a quarter of "
                f"the {_gigabytes(available)} available",
            )
        return CacheChoice(
            setting,
            "none",
            f"data.cache = 'auto': {image_count:,} images decoded would take {_gigabytes(size)}, more than a "
            f"quarter of the {_gigabytes(available)} available; set data.cache = PATH to cache them in files",
        )
    folder = Path(setting).expanduser().parent
    if not folder.is_dir():
        raise UserError(
            f"data.cache = {setting!r}: the folder {folder} does not exist; create it, or use data.cache = 'auto', "
            "'memory' or 'none'"
        )
    return CacheChoice(
        setting,
        str(Path(setting).expanduser()),
        f"data.cache = {setting!r}: {_gigabytes(size)} decoded, written once per split",
    )


#: Open files whose flock says "this process uses that cache prefix" until it exits.
_held_cache_locks: dict[str, object] = {}


def file_cache(dataset, prefix: str):
    """``dataset.cache(prefix)``, safe after a kill. TensorFlow marks a cache being written
    with ``PREFIX_*.lockfile`` and refuses that prefix for as long as the file is there, so a
    process killed while filling the cache would block every later run (a resume too) with
    "a concurrent caching iterator" error. kcv holds an flock on ``PREFIX.kcv-lock`` while it
    uses the prefix, which the system releases when the process dies: a TensorFlow lockfile
    found while that flock is free is a dead writer's, and it is removed with its partial data."""
    import fcntl
    import glob

    if prefix not in _held_cache_locks:
        handle = open(f"{prefix}.kcv-lock", "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as error:
            handle.close()
            raise UserError(
                f"data.cache: another running kcv process is filling the cache {prefix}: wait for it, or use "
                "another data.cache path"
            ) from error
        _held_cache_locks[prefix] = handle
        for stale in glob.glob(glob.escape(prefix) + "_*.lockfile") + glob.glob(glob.escape(prefix) + "_*.tempstate*"):
            os.remove(stale)
    return dataset.cache(prefix)


def _gigabytes(size: int) -> str:
    return f"{size / 1e9:.2f} GB" if size >= 1e8 else f"{size / 1e6:.1f} MB"


def split_cache_prefix(prefix: str, split: ImageSplit, split_name: str, data: DataConfig) -> str:
    """Each split caches to its own files, named after what is in them: another split, or
    the same split at another size, never reads a cache written for something else."""
    key = fingerprint_ids(split.ids, list(data.image_size), [data.channels])[:12]
    return f"{prefix}-{split_name}-{key}"


def decode_image(encoded, image_size: tuple[int, int], channels: int):
    """Decodes JPEG/PNG/BMP/GIF bytes of any size and colour mode to uint8 at ``image_size``."""
    import tensorflow as tf

    image = tf.io.decode_image(encoded, channels=channels, expand_animations=False, dtype=tf.uint8)
    return resize_image(image, image_size)


def resize_image(image, image_size: tuple[int, int]):
    """Resizes a uint8 HxWxC image unless it already has the size (the common case)."""
    import tensorflow as tf

    height, width = image_size

    def resize():
        resized = tf.image.resize(image, (height, width), method="bilinear", antialias=True)
        return tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8)

    same_size = tf.logical_and(tf.shape(image)[0] == height, tf.shape(image)[1] == width)
    image = tf.cond(same_size, lambda: image, resize)
    return tf.ensure_shape(image, (height, width, image.shape[-1]))


def _ignore_unknown_length_warning() -> None:
    """Dropping undecodable records leaves a dataset's length unknown, and Keras then warns at
    the end of the first epoch that the input "ran out of data", although every image was
    seen: that warning is about steps_per_epoch, which kcv's epochs do not set."""
    import warnings

    warnings.filterwarnings("ignore", message="Your input ran out of data", category=UserWarning)


def _decoded_files(split: FileSplit, data: DataConfig, training: bool, seed: int):
    """(position, image, label) for the files of a split. A file that does not decode (it
    passed the cheap start-up check but its middle is garbage) is dropped, so the run goes
    on; the positions that did decode are logged (_log_decoded) so the run can name the
    others at its end (FileSplit.undecodable_paths)."""
    import tensorflow as tf

    dataset = (
        split.to_training_dataset(seed, with_positions=True) if training else split.to_dataset(with_positions=True)
    )
    dataset = dataset.map(
        lambda position, encoded, label: (position, decode_image(encoded, data.image_size, data.channels), label),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    return dataset.ignore_errors()


def _log_decoded(split: FileSplit, positions, images):
    """Hands a batch's positions to the split on the host (one call per batch, so it costs
    next to nothing), and returns ``images`` made to wait for it."""
    import tensorflow as tf

    logged = tf.py_function(lambda values: split.mark_decoded(values.numpy()) or 0, [positions], tf.int32)
    with tf.control_dependencies([logged]):
        return tf.identity(images)


def _match_channels(image, channels: int):
    import tensorflow as tf

    if image.shape[-1] == channels:
        return image
    if channels == 3:
        return tf.image.grayscale_to_rgb(image)
    return tf.cast(tf.round(tf.image.rgb_to_grayscale(tf.cast(image, tf.float32))), tf.uint8)


def make_dataset(
    split: ImageSplit,
    num_classes: int,
    data: DataConfig,
    augment: AugmentConfig | None = None,
    training: bool = False,
    seed: int = 0,
    split_name: str = "",
):
    """Builds the batched dataset for one split.

    ``training`` turns on shuffling and the augmentation ops placed in the pipeline (all of
    them for ``placement = "pipeline"``, the label-mixing ones for ``"device"``), and drops
    nothing: the last partial batch is kept so that every image is seen each epoch.
    ``split_name`` names the split's file cache when ``data.cache`` is a prefix.
    """
    import tensorflow as tf

    autotune = tf.data.AUTOTUNE
    if split.element_kind == "encoded":
        _ignore_unknown_length_warning()
    if isinstance(split, FileSplit):
        dataset = _decoded_files(split, data, training, seed)
    elif split.element_kind == "encoded":
        dataset = split.to_training_dataset(seed) if training else split.to_dataset()
        dataset = dataset.map(
            lambda encoded, label: (decode_image(encoded, data.image_size, data.channels), label),
            num_parallel_calls=autotune,
        )
        # A record that does not decode is dropped rather than ending the run mid-epoch.
        dataset = dataset.ignore_errors()
    else:
        dataset = split.to_training_dataset(seed) if training else split.to_dataset()
        dataset = dataset.map(
            lambda image, label: (resize_image(_match_channels(image, data.channels), data.image_size), label),
            num_parallel_calls=autotune,
        )
    cache = data.cache
    if cache == "auto":  # Callers that did not resolve it for the whole run: this split alone.
        cache = choose_cache(data, len(split)).mode
    if cache == "memory":
        dataset = dataset.cache()
    elif cache != "none":
        dataset = file_cache(
            dataset, split_cache_prefix(cache, split, split_name or ("train" if training else "eval"), data)
        )
    if training:
        dataset = dataset.shuffle(
            min(data.shuffle_buffer, max(len(split), 1)), seed=seed, reshuffle_each_iteration=True
        )
    dataset = dataset.batch(data.batch_size, num_parallel_calls=autotune)

    def one_hot(*batch):
        # One-hot before augmentation: mixup and cutmix mix the labels with the images.
        # File splits carry each image's position this far (through the cache and the
        # shuffle): the batch's positions are logged as decoded and dropped here.
        if isinstance(split, FileSplit):
            positions, images, labels = batch
            images = _log_decoded(split, positions, images)
        else:
            images, labels = batch
        return images, tf.one_hot(labels, num_classes, dtype=tf.float32)

    dataset = dataset.map(one_hot, num_parallel_calls=autotune)
    if training and augment is not None:
        from kerascv_app.augment.pipeline import augment_batches
        from kerascv_app.augment.spec import split_by_placement

        pipeline_ops, _ = split_by_placement(augment.ops, augment.placement)
        dataset = augment_batches(dataset, pipeline_ops, seed, data.channels)
    return dataset.prefetch(autotune)


def make_training_epochs(
    split: ImageSplit,
    num_classes: int,
    data: DataConfig,
    augment: AugmentConfig | None,
    seed: int,
    first_epoch: int,
    end_epoch: int,
    skip_batches: int = 0,
    split_name: str = "train",
):
    """The training batches of epochs ``first_epoch`` to ``end_epoch - 1``, one after the other,
    each epoch's order and augmentation a pure function of (seed, epoch), the first epoch
    without its first ``skip_batches`` batches: what a resumed run needs to continue at the
    next batch with the images the uninterrupted run would have seen.

    The same steps as :func:`make_dataset` for ``training=True`` (undecodable files dropped
    and logged, the same caches), except that no shuffle reshuffles by itself: a reshuffling
    shuffle's order depends on how many epochs this process has iterated, which a resumed
    process cannot know. Iterate it with ``steps_per_epoch`` (its length is unknown to
    Keras). An undecodable file that is dropped shortens its epoch's last batch; only if that
    empties the batch does the epoch end a batch early, and Keras's epoch then takes the next
    epoch's first batch: the run goes on, but a resume there no longer replays it exactly.
    """
    import tensorflow as tf

    from kerascv_app.data.base import epoch_seed, shuffle_for_epoch

    autotune = tf.data.AUTOTUNE
    if split.element_kind == "encoded":
        _ignore_unknown_length_warning()

    def decoded(epoch):
        if isinstance(split, FileSplit):
            dataset = split.to_training_dataset(seed, epoch, with_positions=True).map(
                lambda position, encoded, label: (
                    position,
                    decode_image(encoded, data.image_size, data.channels),
                    label,
                ),
                num_parallel_calls=autotune,
            )
            return dataset.ignore_errors()
        dataset = split.to_training_dataset(seed, epoch)
        if split.element_kind == "encoded":
            dataset = dataset.map(
                lambda encoded, label: (decode_image(encoded, data.image_size, data.channels), label),
                num_parallel_calls=autotune,
            )
            return dataset.ignore_errors()
        return dataset.map(
            lambda image, label: (resize_image(_match_channels(image, data.channels), data.image_size), label),
            num_parallel_calls=autotune,
        )

    cache = data.cache
    if cache == "auto":  # Callers that did not resolve it for the whole run: this split alone.
        cache = choose_cache(data, len(split)).mode
    if cache == "none":
        # Nothing kept: each epoch reads the split in its own (seed, epoch) order.
        def epoch_stream(epoch):
            return decoded(epoch)
    else:
        # A cache holds the order it was filled in, the first epoch's: epoch 0's, whichever
        # epoch fills it, so that a resumed process caches what the first process did.
        cached = decoded(0)
        cached = (
            cached.cache()
            if cache == "memory"
            else file_cache(cached, split_cache_prefix(cache, split, split_name, data))
        )

        def epoch_stream(epoch):
            return cached

    batches_per_epoch = max(1, -(-len(split) // data.batch_size))

    def one_epoch(epoch):
        stream = shuffle_for_epoch(epoch_stream(epoch), min(data.shuffle_buffer, max(len(split), 1)), seed, epoch)
        batches = stream.batch(data.batch_size, num_parallel_calls=autotune)
        # Each batch's augmentation seed is (epoch seed, batch number): replayed exactly.
        seeds = tf.data.Dataset.range(batches_per_epoch).map(lambda index: tf.stack([epoch_seed(seed, epoch), index]))
        batches = tf.data.Dataset.zip((batches, seeds)).map(lambda batch, batch_seed: (*batch, batch_seed))
        # Skipped before one-hot and augmentation, which skipped batches do not need.
        return batches.skip(
            tf.where(epoch == first_epoch, tf.constant(skip_batches, tf.int64), tf.constant(0, tf.int64))
        )

    def one_hot(*batch):
        # As in make_dataset: a file split's positions are logged as decoded, then dropped.
        if isinstance(split, FileSplit):
            positions, images, labels, batch_seed = batch
            images = _log_decoded(split, positions, images)
        else:
            images, labels, batch_seed = batch
        return images, tf.one_hot(labels, num_classes, dtype=tf.float32), batch_seed

    dataset = (
        tf.data.Dataset.range(first_epoch, end_epoch).flat_map(one_epoch).map(one_hot, num_parallel_calls=autotune)
    )
    from kerascv_app.augment.pipeline import augment_seeded_batches
    from kerascv_app.augment.spec import split_by_placement

    pipeline_ops = split_by_placement(augment.ops, augment.placement)[0] if augment is not None else ()
    return augment_seeded_batches(dataset, pipeline_ops, seed, data.channels).prefetch(autotune)
