"""Augmentation inside the model, in whole-batch ``keras.ops``: runs on the accelerator.

Written with ``ops.where``, ``ops.pad`` and ``ops.take_along_axis`` rather than Keras's
RandomTranslation/RandomCrop, which are pathologically slow under JAX on GPU and do not
crop at inference (see shared/GUIDE.md). Active only in training; identity otherwise.
"""

from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="kerascv_app")
class DeviceAugmentation(keras.layers.Layer):
    """Random horizontal flip and zero pad-and-crop of a whole batch."""

    def __init__(self, horizontal_flip: bool = False, crop_padding: int = 0, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.horizontal_flip = horizontal_flip
        self.crop_padding = crop_padding
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, images, training=None):
        if not training:
            return images
        if self.horizontal_flip:
            images = random_horizontal_flip(images, self.seed_generator)
        if self.crop_padding:
            images = random_pad_and_crop(images, self.crop_padding, self.seed_generator)
        return images

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "horizontal_flip": self.horizontal_flip, "crop_padding": self.crop_padding, "seed": self.seed}


def random_horizontal_flip(images, seed_generator):
    batch = ops.shape(images)[0]
    flip = keras.random.uniform((batch, 1, 1, 1), seed=seed_generator) < 0.5
    return ops.where(flip, ops.flip(images, axis=2), images)


def random_pad_and_crop(images, padding: int, seed_generator):
    """Zero-pads by ``padding`` and crops each image back at its own random offset."""
    batch, height, width = ops.shape(images)[0], images.shape[1], images.shape[2]
    padded = ops.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    offsets = keras.random.randint((batch, 2), 0, 2 * padding + 1, seed=seed_generator)
    rows = offsets[:, 0:1] + ops.arange(height)[None, :]
    columns = offsets[:, 1:2] + ops.arange(width)[None, :]
    # Gather rows, then columns, with indices broadcast over the other axes.
    padded = ops.take_along_axis(padded, ops.cast(rows, "int32")[:, :, None, None], axis=1)
    return ops.take_along_axis(padded, ops.cast(columns, "int32")[:, None, :, None], axis=2)
