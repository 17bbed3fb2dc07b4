"""Batched augmentation in TensorFlow ops, mapped over whole batches in tf.data.

Whole-batch ops are vectorised: one op call per batch instead of per image, which is
what makes the CPU pipeline fast. Randomness is stateless: each batch gets its own
seed from ``tf.data.Dataset.random(seed)``, so the same seed and order give the same
augmented batches, and parallel map calls share no random state.
"""

from __future__ import annotations

from kerascv_app.config import AugmentConfig


def random_horizontal_flip(images, seed):
    """Mirrors each image left-right with probability 1/2."""
    import tensorflow as tf

    flip = tf.random.stateless_uniform([tf.shape(images)[0], 1, 1, 1], seed=seed) < 0.5
    return tf.where(flip, tf.reverse(images, axis=[2]), images)


def random_pad_and_crop(images, padding: int, seed):
    """Zero-pads by ``padding`` and crops back to the original size at a random offset.

    Zero (black) padding is what the source's ``RandomCrop(32, padding=4)`` does.
    """
    import tensorflow as tf

    batch = tf.shape(images)[0]
    height, width = images.shape[1], images.shape[2]
    padded = tf.pad(images, [[0, 0], [padding, padding], [padding, padding], [0, 0]])
    offsets = tf.random.stateless_uniform([batch, 2], seed=seed, minval=0, maxval=2 * padding + 1, dtype=tf.int32)
    rows = offsets[:, :1] + tf.range(height)[tf.newaxis, :]
    columns = offsets[:, 1:] + tf.range(width)[tf.newaxis, :]
    cropped = tf.gather(padded, rows, axis=1, batch_dims=1)
    return tf.gather(cropped, columns, axis=2, batch_dims=1)


def batch_augmenter(config: AugmentConfig):
    """Returns ``augment(images, seed)`` or None when the config asks for nothing."""
    import tensorflow as tf

    if not config.horizontal_flip and not config.crop_padding:
        return None

    def augment(images, seed):
        flip_seed, crop_seed = tf.unstack(tf.random.experimental.stateless_split(seed, num=2))
        if config.horizontal_flip:
            images = random_horizontal_flip(images, flip_seed)
        if config.crop_padding:
            images = random_pad_and_crop(images, config.crop_padding, crop_seed)
        return images

    return augment


def augment_batches(dataset, config: AugmentConfig, seed: int):
    """Maps the augmentation over a dataset of (images, labels) batches."""
    import tensorflow as tf

    augmenter = batch_augmenter(config)
    if augmenter is None:
        return dataset
    # A new stream of seeds each epoch, so an image position gets fresh augmentation.
    seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
    return tf.data.Dataset.zip((dataset, seeds)).map(
        lambda batch, batch_seed: (augmenter(batch[0], batch_seed), batch[1]),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
