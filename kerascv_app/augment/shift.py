"""Whole-batch shifts and flips in ``keras.ops``, for any dtype (uint8 included) and backend.

The fast loop's training augmentation (a flip and a shift of up to ``padding`` pixels per
image, drawn beforehand) and test-time augmentation (one-pixel shifts) are built from
these. Reflection padding is written with slices and flips rather than ``ops.pad(...,
mode="reflect")``, which not every backend offers for every dtype.
"""

from __future__ import annotations

from keras import ops


def reflect_pad(images, padding: int):
    """Pads (N, H, W, C) images by ``padding`` pixels on each side, mirrored about the edge
    pixels (row -1 copies row 1), like ``numpy.pad(mode="reflect")``."""
    if padding <= 0:
        return images
    images = _reflect_along(images, padding, axis=1)
    return _reflect_along(images, padding, axis=2)


def _reflect_along(images, padding: int, axis: int):
    size = images.shape[axis]
    if padding >= size:
        raise ValueError(
            f"reflect padding of {padding} pixels needs more than {padding} pixels along axis {axis}, received {size}"
        )
    before = ops.flip(_slice(images, axis, 1, padding + 1), axis=axis)
    after = ops.flip(_slice(images, axis, size - padding - 1, size - 1), axis=axis)
    return ops.concatenate([before, images, after], axis=axis)


def _slice(images, axis: int, start: int, stop: int):
    return images[:, start:stop] if axis == 1 else images[:, :, start:stop]


def crop_at_offsets(padded, offsets, height: int, width: int):
    """Crops each padded image to (height, width) starting at its own (row, column) offset;
    ``offsets`` is (N, 2) integers. Two gathers, rows then columns."""
    offsets = ops.cast(offsets, "int32")
    rows = offsets[:, 0:1] + ops.arange(height, dtype="int32")[None, :]
    columns = offsets[:, 1:2] + ops.arange(width, dtype="int32")[None, :]
    padded = ops.take_along_axis(padded, rows[:, :, None, None], axis=1)
    return ops.take_along_axis(padded, columns[:, None, :, None], axis=2)


def flip_where(images, flips):
    """Mirrors left to right the images whose entry of ``flips`` (N,) is true."""
    return ops.where(ops.reshape(flips, (-1, 1, 1, 1)), ops.flip(images, axis=2), images)


def flip_and_shift(images, flips, offsets, padding: int):
    """Each image mirrored where ``flips`` says, then shifted by ``offsets - padding``
    pixels (offsets in [0, 2 * padding]) with the uncovered edge filled by reflection."""
    images = flip_where(images, flips)
    if padding <= 0:
        return images
    height, width = images.shape[1], images.shape[2]
    return crop_at_offsets(reflect_pad(images, padding), offsets, height, width)
