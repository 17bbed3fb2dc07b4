"""Pixel ops that Keras lacks, on whole batches, written once for every backend.

``backend`` is the augmentation layer's ``DataLayer.backend`` (TensorFlow inside tf.data,
the Keras backend inside the model); images are floats in [0, 255], so noise levels are
in pixel units. Keras's GaussianNoise layer is not used: it is a regularisation layer
that adds noise to whatever it is given, in the units of its input, and only inside a
model.
"""

from __future__ import annotations


def apply_with_probability(backend, images, transformed, seed, probability: float):
    """Each image becomes its ``transformed`` version with ``probability``, else stays."""
    if probability >= 1.0:
        return transformed
    batch = backend.shape(images)[0]
    chosen = backend.random.uniform((batch, 1, 1, 1), seed=seed) < probability
    return backend.numpy.where(chosen, transformed, images)


def gaussian_noise(backend, images, seed, stddev: float):
    """Adds independent gaussian noise of standard deviation ``stddev`` levels to every value."""
    noise = backend.random.normal(backend.shape(images), stddev=stddev, dtype=images.dtype, seed=seed)
    return backend.numpy.clip(images + noise, 0.0, 255.0)


def salt_and_pepper(backend, images, seed, amount: float):
    """Sets a fraction ``amount`` of the pixels (all channels together) to 255 or 0, half each."""
    shape = backend.shape(images)
    draw = backend.random.uniform((shape[0], shape[1], shape[2], 1), seed=seed)
    images = backend.numpy.where(draw < amount / 2.0, backend.numpy.full_like(images, 255.0), images)
    return backend.numpy.where(
        backend.numpy.logical_and(draw >= amount / 2.0, draw < amount), backend.numpy.zeros_like(images), images
    )


# ITU-R 601 luma weights, as torchvision's rgb_to_grayscale and PIL's convert("L").
LUMA_WEIGHTS = (0.299, 0.587, 0.114)


def random_saturation(backend, images, seed, factor: float):
    """Moves each image away from (or towards) its own grey version by a factor drawn from
    [1 - factor, 1 + factor]: 0 is grey, 1 unchanged (torchvision's adjust_saturation).

    Keras's RandomSaturation goes through HSV and back: three times slower in tf.data and
    about 0.5 s per batch of 512 under torch on a CPU. This is one weighted sum and a blend.
    """
    batch = backend.shape(images)[0]
    strength = backend.random.uniform((batch, 1, 1, 1), minval=1.0 - factor, maxval=1.0 + factor, seed=seed)
    grey = backend.numpy.sum(
        images * backend.convert_to_tensor(LUMA_WEIGHTS, dtype=images.dtype), axis=-1, keepdims=True
    )
    return backend.numpy.clip(grey + strength * (images - grey), 0.0, 255.0)


def solarize(backend, images, threshold: float):
    """Inverts every value at or above ``threshold`` (PIL's ImageOps.solarize).

    Keras's Solarization layer draws its threshold from a range whose lower end is not
    scaled to pixel units, so a fixed threshold cannot be asked of it.
    """
    return backend.numpy.where(images >= threshold, 255.0 - images, images)


LEVELS = 256


def equalize(backend, images):
    """PIL's ImageOps.equalize, on each image and channel of the batch at once.

    Keras's Equalization layer is not used: it computes one histogram for the whole batch
    (not per image), and under JAX loops over the 256 levels. Here one segment sum counts
    the levels of every (image, channel) pair, and one gather applies each pair's table.
    """
    height, width, channels = images.shape[1], images.shape[2], images.shape[3]
    pixels_per_channel = height * width
    # (image, channel) pairs as rows: (batch * channels, height * width) integer levels.
    levels = backend.cast(backend.numpy.clip(backend.numpy.floor(images), 0, LEVELS - 1), "int32")
    rows = backend.numpy.reshape(backend.numpy.transpose(levels, (0, 3, 1, 2)), (-1, pixels_per_channel))
    row_count = backend.shape(rows)[0]
    bins = rows + backend.numpy.arange(row_count, dtype="int32")[:, None] * LEVELS
    histograms = backend.math.segment_sum(
        backend.numpy.ones_like(backend.numpy.reshape(bins, (-1,))),
        backend.numpy.reshape(bins, (-1,)),
        num_segments=row_count * LEVELS,
    )
    histograms = backend.numpy.reshape(histograms, (-1, LEVELS))
    # PIL: step = (pixels - count of the highest level present) // 255; no step, no change.
    highest_present = (LEVELS - 1) - backend.numpy.argmax(backend.numpy.flip(histograms > 0, axis=1), axis=1)
    highest_count = backend.numpy.take_along_axis(histograms, backend.cast(highest_present, "int32")[:, None], axis=1)
    step = (pixels_per_channel - highest_count) // (LEVELS - 1)
    # PIL: table[i] = (step // 2 + pixels below level i) // step.
    below = backend.numpy.cumsum(histograms, axis=1) - histograms
    table = (step // 2 + below) // backend.numpy.maximum(step, 1)
    equalized = backend.numpy.take_along_axis(backend.numpy.minimum(table, LEVELS - 1), rows, axis=1)
    equalized = backend.numpy.where(step > 0, equalized, rows)
    equalized = backend.numpy.reshape(backend.cast(equalized, images.dtype), (-1, channels, height, width))
    return backend.numpy.transpose(equalized, (0, 2, 3, 1))
