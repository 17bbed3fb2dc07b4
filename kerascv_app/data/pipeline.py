"""The tf.data pipeline: read, decode, resize, cache, shuffle, batch, augment, prefetch.

Images leave the pipeline as ``uint8`` batches at the recipe's size; scaling to floats
happens inside the model, so that prediction and export apply the same preprocessing.
Labels leave as one-hot ``float32`` so that label smoothing (and mixed labels) work.
Every ``map`` runs with ``num_parallel_calls=AUTOTUNE``.
"""

from __future__ import annotations

from kerascv_app.config import AugmentConfig, DataConfig
from kerascv_app.data.base import ImageSplit


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
):
    """Builds the batched dataset for one split.

    ``training`` turns on shuffling and the augmentation ops placed in the pipeline (all of
    them for ``placement = "pipeline"``, the label-mixing ones for ``"device"``), and drops
    nothing: the last partial batch is kept so that every image is seen each epoch.
    """
    import tensorflow as tf

    autotune = tf.data.AUTOTUNE
    dataset = split.to_training_dataset(seed) if training else split.to_dataset()
    if split.element_kind == "encoded":
        dataset = dataset.map(
            lambda encoded, label: (decode_image(encoded, data.image_size, data.channels), label),
            num_parallel_calls=autotune,
        )
    else:
        dataset = dataset.map(
            lambda image, label: (resize_image(_match_channels(image, data.channels), data.image_size), label),
            num_parallel_calls=autotune,
        )
    if data.cache == "memory":
        dataset = dataset.cache()
    elif data.cache != "none":
        dataset = dataset.cache(data.cache)
    if training:
        dataset = dataset.shuffle(min(data.shuffle_buffer, max(len(split), 1)), seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.batch(data.batch_size, num_parallel_calls=autotune)
    # One-hot before augmentation: mixup and cutmix mix the labels with the images.
    dataset = dataset.map(
        lambda images, labels: (images, tf.one_hot(labels, num_classes, dtype=tf.float32)),
        num_parallel_calls=autotune,
    )
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
):
    """The training batches of epochs ``first_epoch`` to ``end_epoch - 1``, one after the other,
    each epoch's order and augmentation a pure function of (seed, epoch), the first epoch
    without its first ``skip_batches`` batches: what a resumed run needs to continue at the
    next batch with the images the uninterrupted run would have seen.

    The same steps as :func:`make_dataset` for ``training=True``, except that no shuffle
    reshuffles by itself: a reshuffling shuffle's order depends on how many epochs this
    process has iterated, which a resumed process cannot know. Iterate it with
    ``steps_per_epoch`` (its length is unknown to Keras).
    """
    import tensorflow as tf

    from kerascv_app.data.base import epoch_seed, shuffle_for_epoch

    autotune = tf.data.AUTOTUNE

    def decoded(dataset):
        if split.element_kind == "encoded":
            return dataset.map(lambda encoded, label: (decode_image(encoded, data.image_size, data.channels), label), num_parallel_calls=autotune)
        return dataset.map(
            lambda image, label: (resize_image(_match_channels(image, data.channels), data.image_size), label),
            num_parallel_calls=autotune,
        )

    if data.cache == "none":
        # Nothing kept: each epoch reads the split in its own (seed, epoch) order.
        def epoch_stream(epoch):
            return decoded(split.to_training_dataset(seed, epoch))
    else:
        # A cache holds the order it was filled in, the first epoch's: epoch 0's, whichever
        # epoch fills it, so that a resumed process caches what the first process did.
        cached = decoded(split.to_training_dataset(seed, 0))
        cached = cached.cache() if data.cache == "memory" else cached.cache(data.cache)

        def epoch_stream(epoch):
            return cached

    batches_per_epoch = max(1, -(-len(split) // data.batch_size))

    def one_epoch(epoch):
        stream = shuffle_for_epoch(epoch_stream(epoch), min(data.shuffle_buffer, max(len(split), 1)), seed, epoch)
        batches = stream.batch(data.batch_size, num_parallel_calls=autotune)
        # Each batch's augmentation seed is (epoch seed, batch number): replayed exactly.
        seeds = tf.data.Dataset.range(batches_per_epoch).map(lambda index: tf.stack([epoch_seed(seed, epoch), index]))
        batches = tf.data.Dataset.zip((batches, seeds)).map(lambda batch, batch_seed: (batch[0], batch[1], batch_seed))
        # Skipped before one-hot and augmentation, which skipped batches do not need.
        return batches.skip(tf.where(epoch == first_epoch, tf.constant(skip_batches, tf.int64), tf.constant(0, tf.int64)))

    dataset = tf.data.Dataset.range(first_epoch, end_epoch).flat_map(one_epoch)
    dataset = dataset.map(
        lambda images, labels, batch_seed: (images, tf.one_hot(labels, num_classes, dtype=tf.float32), batch_seed),
        num_parallel_calls=autotune,
    )
    from kerascv_app.augment.pipeline import augment_seeded_batches
    from kerascv_app.augment.spec import split_by_placement

    pipeline_ops = split_by_placement(augment.ops, augment.placement)[0] if augment is not None else ()
    return augment_seeded_batches(dataset, pipeline_ops, seed, data.channels).prefetch(autotune)
