"""Geometric ops on whole batches, written once for every backend.

Each function takes ``backend``: the augmentation layer's ``DataLayer.backend``, which is
TensorFlow inside tf.data and the Keras backend inside the model, so the same code runs in
both places. Images are float ``(batch, height, width, channels)`` in [0, 255].

Why not Keras's RandomTranslation, RandomRotation, RandomZoom, RandomShear and RandomCrop:
they set ``supports_jit = False``, which turns off XLA for the whole training step (under
JAX it then runs op by op: one epoch of the source's net did not finish in 45 s on an
H200), and RandomCrop does not crop at inference. Here a shift is two
gathers (rows, then columns) and every other affine transform is one bilinear gather of
the four neighbours: whole-batch ops that XLA, cuDNN-era GPUs and the CPU all run fast.

Coordinates are centred: an output pixel at offset (u, v) from the image centre samples
the input at ``matrix @ (u, v) + shift`` from the centre.
"""

from __future__ import annotations

import math

import numpy as np


def map_indices(backend, indices, size: int, fill: str):
    """Brings integer pixel indices into [0, size): (indices, valid) for the fill mode.

    reflect: mirrored about the image's border, edge pixel included (-1 -> 0, -2 -> 1:
    Keras's and TensorFlow's "reflect", numpy's "symmetric"); nearest: clamped to the edge;
    constant: clamped, with ``valid`` False where the pixel must be black.
    """
    valid = backend.numpy.logical_and(indices >= 0, indices < size)
    if fill == "reflect":
        period = 2 * size
        indices = backend.numpy.mod(indices, period)
        indices = backend.numpy.where(indices >= size, (period - 1) - indices, indices)
    else:
        indices = backend.numpy.clip(indices, 0, size - 1)
    return indices, valid


def batched_take(backend, values, indices, axis: int):
    """``values[b]`` taken at ``indices[b]`` along ``axis`` (1 or 2), for each image b.

    ``indices`` is ``(batch, n)``. TensorFlow gets ``tf.gather(batch_dims=1)``: its
    ``take_along_axis`` broadcasts the indices to the full shape first, which made a
    pad-and-crop in tf.data five times slower. JAX and torch get numpy-style indexing,
    which XLA compiles to one plain gather: with ``take_along_axis``, a rotation of a
    rotated batch took 155 ms per 512 images on a CPU instead of 30.
    """
    if axis not in (1, 2):
        raise ValueError(f"batched_take works along axis 1 or 2, received axis={axis}")
    if backend.name == "tensorflow":
        import tensorflow as tf

        return tf.gather(values, indices, axis=axis, batch_dims=1)
    images = backend.numpy.arange(backend.shape(values)[0], dtype="int32")
    if axis == 1:
        return values[images[:, None], indices]
    rows = backend.numpy.arange(values.shape[1], dtype="int32")
    return values[images[:, None, None], rows[None, :, None], indices[:, None, :]]


def random_flip(backend, images, seed, probability: float, axes: tuple[int, ...]):
    """Mirrors each image along each of ``axes`` (1: vertical, 2: horizontal) with ``probability``.

    One gather per axis, with each image's indices reversed or not: a single pass over
    the batch, where flipping everything and selecting would take two.
    """
    batch = backend.shape(images)[0]
    for axis in axes:
        size = images.shape[axis]
        chosen = backend.random.uniform((batch, 1), seed=seed) < probability
        forward = backend.numpy.arange(size, dtype="int32")[None, :]
        indices = backend.numpy.where(chosen, (size - 1) - forward, forward)
        images = batched_take(backend, images, indices, axis=axis)
    return images


def shift_images(backend, images, row_shifts, column_shifts, fill: str):
    """Moves each image down by ``row_shifts`` and right by ``column_shifts`` whole pixels.

    Two gathers with broadcast indices (rows, then columns), no padded copy: the fill mode
    decides which source pixel lands where the image had nothing.
    """
    height, width = images.shape[1], images.shape[2]
    rows = backend.numpy.arange(height, dtype="int32")[None, :] - row_shifts[:, None]
    columns = backend.numpy.arange(width, dtype="int32")[None, :] - column_shifts[:, None]
    rows, rows_valid = map_indices(backend, rows, height, fill)
    columns, columns_valid = map_indices(backend, columns, width, fill)
    shifted = batched_take(backend, images, rows, axis=1)
    shifted = batched_take(backend, shifted, columns, axis=2)
    if fill == "constant":
        inside = backend.numpy.logical_and(rows_valid[:, :, None, None], columns_valid[:, None, :, None])
        shifted = backend.numpy.where(inside, shifted, backend.numpy.zeros_like(shifted))
    return shifted


def random_shift(backend, images, seed, max_rows: int, max_columns: int, fill: str):
    """Shifts each image by whole pixels drawn uniformly from [-max, max] on each axis.

    Pad-and-crop with padding p is exactly this with max = p: the crop's offset in the
    padded image, 0..2p, is a shift of p..-p.
    """
    batch = backend.shape(images)[0]
    row_shifts = backend.random.randint((batch,), -max_rows, max_rows + 1, dtype="int32", seed=seed)
    column_shifts = backend.random.randint((batch,), -max_columns, max_columns + 1, dtype="int32", seed=seed)
    return shift_images(backend, images, row_shifts, column_shifts, fill)


def sample_bilinear(backend, images, source_rows, source_columns, fill: str):
    """Samples ``images`` at float positions ``(batch, height, width)``, bilinearly.

    One gather per neighbour over the flattened image, so the cost is four gathers
    whatever the transform.
    """
    height, width, channels = images.shape[1], images.shape[2], images.shape[3]
    flat = backend.numpy.reshape(images, (-1, height * width, channels))
    top = backend.numpy.floor(source_rows)
    left = backend.numpy.floor(source_columns)
    row_weight = (source_rows - top)[..., None]
    column_weight = (source_columns - left)[..., None]
    top = backend.cast(top, "int32")
    left = backend.cast(left, "int32")

    def neighbour(rows, columns):
        rows, rows_valid = map_indices(backend, rows, height, fill)
        columns, columns_valid = map_indices(backend, columns, width, fill)
        index = backend.numpy.reshape(rows * width + columns, (-1, height * width))
        values = backend.numpy.reshape(batched_take(backend, flat, index, axis=1), (-1, height, width, channels))
        if fill == "constant":
            inside = backend.numpy.logical_and(rows_valid, columns_valid)[..., None]
            values = backend.numpy.where(inside, values, backend.numpy.zeros_like(values))
        return values

    upper = neighbour(top, left) * (1.0 - column_weight) + neighbour(top, left + 1) * column_weight
    lower = neighbour(top + 1, left) * (1.0 - column_weight) + neighbour(top + 1, left + 1) * column_weight
    return upper * (1.0 - row_weight) + lower * row_weight


def affine_transform(backend, images, matrix, shift, fill: str):
    """Applies one affine map per image: output (u, v) samples input ``matrix @ (u, v) + shift``.

    ``matrix`` is four ``(batch,)`` tensors (row-major: m_xx, m_xy, m_yx, m_yy) and
    ``shift`` two ``(batch,)`` tensors (x, y), in pixels from the image centre. In tf.data
    (``backend.allows_tensorflow_kernels``) TensorFlow's ImageProjectiveTransformV3 kernel
    samples the same way (same fill modes) in one op, three times faster; XLA has no such
    kernel, so inside a model it is four gathers (:func:`gather_affine`) on every backend.
    """
    if getattr(backend, "allows_tensorflow_kernels", False):
        return kernel_affine(backend, images, matrix, shift, fill)
    return gather_affine(backend, images, matrix, shift, fill)


def kernel_affine(backend, images, matrix, shift, fill: str):
    """:func:`affine_transform` through the backend's ``image.affine_transform`` kernel."""
    height, width = images.shape[1], images.shape[2]
    center_y, center_x = (height - 1) / 2.0, (width - 1) / 2.0
    m_xx, m_xy, m_yx, m_yy = matrix
    shift_x, shift_y = shift
    # From centred to corner coordinates: input = M output + (c + shift - M c).
    offset_x = center_x + shift_x - (m_xx * center_x + m_xy * center_y)
    offset_y = center_y + shift_y - (m_yx * center_x + m_yy * center_y)
    zeros = backend.numpy.zeros_like(m_xx)
    transform = backend.numpy.stack([m_xx, m_xy, offset_x, m_yx, m_yy, offset_y, zeros, zeros], axis=1)
    return backend.image.affine_transform(images, transform, interpolation="bilinear", fill_mode=fill, fill_value=0.0)


def gather_affine(backend, images, matrix, shift, fill: str):
    """:func:`affine_transform` as four gathers: fast under XLA and torch alike.

    Keras's own affine_transform is a per-image ``map_coordinates`` under JAX, the op
    behind RandomTranslation's 45 s epoch (see the module docstring).
    """
    height, width = images.shape[1], images.shape[2]
    m_xx, m_xy, m_yx, m_yy = (backend.numpy.reshape(entry, (-1, 1, 1)) for entry in matrix)
    shift_x, shift_y = (backend.numpy.reshape(entry, (-1, 1, 1)) for entry in shift)
    center_y, center_x = (height - 1) / 2.0, (width - 1) / 2.0
    v = backend.convert_to_tensor(np.arange(height, dtype="float32")[None, :, None] - center_y)
    u = backend.convert_to_tensor(np.arange(width, dtype="float32")[None, None, :] - center_x)
    source_columns = m_xx * u + m_xy * v + shift_x + center_x
    source_rows = m_yx * u + m_yy * v + shift_y + center_y
    return sample_bilinear(backend, images, source_rows, source_columns, fill)


def rotate_images(backend, images, angles, fill: str):
    """Rotates each image counter-clockwise (as displayed) by ``angles`` radians, about its centre.

    At 90 degrees a square image becomes ``np.rot90(image)``.
    """
    cosine, sine = backend.numpy.cos(angles), backend.numpy.sin(angles)
    zeros = backend.numpy.zeros_like(angles)
    return affine_transform(backend, images, (cosine, -sine, sine, cosine), (zeros, zeros), fill)


def random_rotation(backend, images, seed, degrees: float, fill: str):
    batch = backend.shape(images)[0]
    limit = math.radians(degrees)
    angles = backend.random.uniform((batch,), minval=-limit, maxval=limit, seed=seed)
    return rotate_images(backend, images, angles, fill)


def random_zoom(backend, images, seed, scale: tuple[float, float], fill: str):
    """Magnifies each image about its centre by a factor drawn from ``scale``."""
    batch = backend.shape(images)[0]
    magnification = backend.random.uniform((batch,), minval=scale[0], maxval=scale[1], seed=seed)
    inverse = 1.0 / magnification
    zeros = backend.numpy.zeros_like(inverse)
    return affine_transform(backend, images, (inverse, zeros, zeros, inverse), (zeros, zeros), fill)


def random_shear(backend, images, seed, degrees: float, axis: str, fill: str):
    """Shears each image along x (rows slide sideways), y, or both, by an angle in [-degrees, degrees]."""
    batch = backend.shape(images)[0]
    limit = math.radians(degrees)

    def slope(active: bool):
        if not active:
            return backend.numpy.zeros((batch,), dtype="float32")
        return backend.numpy.tan(backend.random.uniform((batch,), minval=-limit, maxval=limit, seed=seed))

    shear_x, shear_y = slope(axis in ("x", "both")), slope(axis in ("y", "both"))
    ones, zeros = backend.numpy.ones_like(shear_x), backend.numpy.zeros_like(shear_x)
    return affine_transform(backend, images, (ones, shear_x, shear_y, ones), (zeros, zeros), fill)


def random_resized_crop(backend, images, seed, scale: tuple[float, float], ratio: tuple[float, float]):
    """Crops a box of area fraction from ``scale`` and aspect ratio (width/height) from
    ``ratio`` (log-uniform) at a random place, and resizes it to the image size.

    As torchvision's RandomResizedCrop, except that a box that would not fit is shrunk to
    fit instead of drawn again (whole-batch ops cannot retry per image).
    """
    height, width = images.shape[1], images.shape[2]
    batch = backend.shape(images)[0]
    area = backend.random.uniform((batch,), minval=scale[0], maxval=scale[1], seed=seed)
    aspect = backend.numpy.exp(
        backend.random.uniform((batch,), minval=math.log(ratio[0]), maxval=math.log(ratio[1]), seed=seed)
    )
    # Box sides as fractions of the image's.
    box_width = backend.numpy.minimum(backend.numpy.sqrt(area * aspect), 1.0)
    box_height = backend.numpy.minimum(backend.numpy.sqrt(area / aspect), 1.0)
    # Where the box's centre may go so that the box stays inside, as an offset from the
    # centre (pixel centres span width - 1 pixels).
    center_x = (backend.random.uniform((batch,), seed=seed) - 0.5) * (1.0 - box_width) * (width - 1)
    center_y = (backend.random.uniform((batch,), seed=seed) - 0.5) * (1.0 - box_height) * (height - 1)
    zeros = backend.numpy.zeros_like(box_width)
    return affine_transform(backend, images, (box_width, zeros, zeros, box_height), (center_x, center_y), "nearest")


def random_translation(backend, images, seed, fraction: float, axis: str, fill: str):
    """Shifts each image by whole pixels, up to ``fraction`` of its height (width).

    Whole pixels: no interpolation blur, and the same gathers as pad-and-crop.
    """
    height, width = images.shape[1], images.shape[2]
    max_rows = round(fraction * height) if axis in ("y", "both") else 0
    max_columns = round(fraction * width) if axis in ("x", "both") else 0
    return random_shift(backend, images, seed, max_rows, max_columns, fill)
