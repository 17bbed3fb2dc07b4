"""Flip and pad-and-crop mean what they say, in tf.data and inside the model."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from kerascv_app.augment.pipeline import augment_batches, random_horizontal_flip, random_pad_and_crop
from kerascv_app.config import AugmentConfig


def images(batch=64, size=8):
    return np.random.default_rng(0).integers(1, 255, (batch, size, size, 3), dtype=np.uint8)


def is_shifted_crop(original, cropped, padding):
    """True if ``cropped`` equals a window of the zero-padded original."""
    padded = np.pad(original, ((padding, padding), (padding, padding), (0, 0)))
    size = original.shape[0]
    return any(
        np.array_equal(padded[row:row + size, column:column + size], cropped)
        for row in range(2 * padding + 1) for column in range(2 * padding + 1)
    )


def test_pipeline_flip_flips_about_half():
    batch = images()
    flipped = random_horizontal_flip(tf.constant(batch), tf.constant([1, 2])).numpy()
    mirrored = [np.array_equal(f, b[:, ::-1]) for f, b in zip(flipped, batch)]
    unchanged = [np.array_equal(f, b) for f, b in zip(flipped, batch)]
    assert all(m or u for m, u in zip(mirrored, unchanged))
    assert 10 < sum(mirrored) < 54


def test_pipeline_pad_and_crop_is_a_window_of_the_padded_image():
    batch = images()
    cropped = random_pad_and_crop(tf.constant(batch), 2, tf.constant([3, 4])).numpy()
    assert cropped.shape == batch.shape and cropped.dtype == np.uint8
    assert all(is_shifted_crop(b, c, 2) for b, c in zip(batch, cropped))
    assert sum(not np.array_equal(b, c) for b, c in zip(batch, cropped)) > 40


def test_augmentation_inside_tf_data_is_seeded():
    batch = images()
    labels = np.arange(len(batch))
    dataset = tf.data.Dataset.from_tensor_slices((batch, labels)).batch(16)
    config = AugmentConfig(horizontal_flip=True, crop_padding=2)
    first = [x.numpy() for x, _ in augment_batches(dataset, config, seed=5)]
    second = [x.numpy() for x, _ in augment_batches(dataset, config, seed=5)]
    other = [x.numpy() for x, _ in augment_batches(dataset, config, seed=6)]
    assert all(np.array_equal(a, b) for a, b in zip(first, second))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other))


def test_device_augmentation_is_active_only_in_training():
    import keras

    from kerascv_app.augment.device import DeviceAugmentation

    batch = images().astype("float32")
    layer = DeviceAugmentation(horizontal_flip=True, crop_padding=2, seed=1)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer(batch, training=False)), batch)
    augmented = keras.ops.convert_to_numpy(layer(batch, training=True))
    assert augmented.shape == batch.shape
    assert all(is_shifted_crop(b, a, 2) or is_shifted_crop(b[:, ::-1], a, 2) for b, a in zip(batch, augmented))
    assert sum(not np.array_equal(b, a) for b, a in zip(batch, augmented)) > 40
    restored = DeviceAugmentation.from_config(layer.get_config())
    assert restored.crop_padding == 2 and restored.horizontal_flip
