"""Test-time augmentation: airbench's flip and one-pixel shifts, for any model of this project.

Six views of each image: itself, its mirror, and both shifted by one pixel up-and-left and
down-and-right (edges filled by reflection). Their logits are averaged with airbench's
weights (its ``tta_level=2``): 1/4 each for the image and its mirror, 1/8 for each of the
four shifted views, i.e. the unshifted pair counts as much as the two shifted pairs.
"""

from __future__ import annotations

from keras import ops

from kerascv_app.augment.shift import reflect_pad

# Pixels of the test-time shifts.
TTA_SHIFT = 1


def mirror_average(predict, images):
    """The mean of the logits of the images and of their mirror images."""
    return 0.5 * predict(images) + 0.5 * predict(ops.flip(images, axis=2))


def tta_logits(predict, images):
    """airbench's test-time augmentation of ``predict`` (images -> logits) on a batch of
    (N, H, W, C) images: see the module docstring."""
    images = ops.cast(images, "float32")
    height, width = images.shape[1], images.shape[2]
    padded = reflect_pad(images, TTA_SHIFT)
    # The window at the padded image's corner shows the content moved down and right.
    moved_down_right = padded[:, :height, :width]
    moved_up_left = padded[:, 2 * TTA_SHIFT : 2 * TTA_SHIFT + height, 2 * TTA_SHIFT : 2 * TTA_SHIFT + width]
    shifted = 0.5 * mirror_average(predict, moved_down_right) + 0.5 * mirror_average(predict, moved_up_left)
    return 0.5 * mirror_average(predict, images) + 0.5 * shifted
