"""``kcv preview``: a grid of training images and their augmented versions, with class names.

Every op of the recipe is applied, wherever the recipe places it: device ops mean the same
in the model as here, where they run in the tf.data pipeline's form (the one path that
also has the labels, so that mixed labels can be shown).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from kerascv_app.config import Config
from kerascv_app.errors import UserError

COLUMNS = 8
CELL_WIDTH_INCHES = 1.6
CELL_HEIGHT_INCHES = 1.7
TITLE_HEIGHT_INCHES = 0.6
DOTS_PER_INCH = 100
# A mixed label shows its classes down to this weight.
SHOWN_WEIGHT = 0.05


def check_request(count: int, out: Path) -> None:
    if count < 1:
        raise UserError(f"--n {count} is invalid: give a positive number of images, e.g. --n 16")
    if out.suffix.lower() != ".png":
        raise UserError(f"--out {out} must be a .png file, e.g. --out grid.png")
    if not out.parent.is_dir():
        raise UserError(f"--out {out}: the folder {out.parent} does not exist; create it or write elsewhere")


def grid_size(count: int) -> tuple[int, int]:
    """(columns, rows) of image cells: each group of up to 8 images is a row of originals
    above a row of their augmented versions."""
    columns = min(count, COLUMNS)
    return columns, 2 * math.ceil(count / columns)


def figure_size_pixels(count: int) -> tuple[int, int]:
    columns, rows = grid_size(count)
    return round(columns * CELL_WIDTH_INCHES * DOTS_PER_INCH), round(
        (rows * CELL_HEIGHT_INCHES + TITLE_HEIGHT_INCHES) * DOTS_PER_INCH
    )


def write_preview(config: Config, data_dir: str | Path | None, count: int, out: Path) -> Path:
    """Writes the grid for ``count`` training images (a seeded sample) to ``out``."""
    out = Path(out)
    check_request(count, out)
    from kerascv_app.data.prepare import prepare_data

    prepared = prepare_data(config, data_dir)
    images, labels = sample_training_images(prepared, config, count)
    augmented, mixed_labels = augment_sample(config, images, labels)
    draw_grid(config, prepared.class_names, images, labels, augmented, mixed_labels, out)
    return out


def sample_training_images(prepared, config: Config, count: int) -> tuple[np.ndarray, np.ndarray]:
    """``count`` training images (uint8, at the recipe's size) and their one-hot labels."""
    import dataclasses

    from kerascv_app.data.pipeline import make_dataset

    split = prepared.splits.train
    if len(split) == 0:
        raise UserError(f"{config.data.source} has no training images to preview")
    count = min(count, len(split))
    chosen = np.sort(np.random.default_rng(config.train.seed).choice(len(split), size=count, replace=False))
    data = dataclasses.replace(config.data, batch_size=count, cache="none")
    images, labels = next(iter(make_dataset(split.subset(chosen), prepared.num_classes, data, training=False)))
    return images.numpy(), labels.numpy()


def augment_sample(config: Config, images: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    import tensorflow as tf

    from kerascv_app.augment.pipeline import pipeline_augmenter, to_uint8

    if not config.augment.ops:
        return images, labels
    augmenter = pipeline_augmenter(config.augment.ops, config.train.seed, config.data.channels)
    seed = tf.constant([config.train.seed, 0], dtype=tf.int64)
    augmented, mixed = augmenter.augment_batch(tf.constant(images), tf.constant(labels), seed)
    return to_uint8(augmented).numpy(), mixed.numpy()


def label_text(label: np.ndarray, class_names: list[str]) -> str:
    """The class name, or the classes of a mixed label with their weights."""
    order = np.argsort(label)[::-1]
    if label[order[0]] > 1.0 - SHOWN_WEIGHT:
        return class_names[order[0]]
    return " / ".join(f"{class_names[index]} {label[index]:.0%}" for index in order if label[index] >= SHOWN_WEIGHT)


def draw_grid(config: Config, class_names, images, labels, augmented, mixed_labels, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    count = len(images)
    columns, rows = grid_size(count)
    width_pixels, height_pixels = figure_size_pixels(count)
    figure, axes = plt.subplots(
        rows,
        columns,
        figsize=(width_pixels / DOTS_PER_INCH, height_pixels / DOTS_PER_INCH),
        dpi=DOTS_PER_INCH,
        squeeze=False,
    )
    for axis in axes.flat:
        axis.axis("off")
    for index in range(count):
        group, column = divmod(index, columns)
        show(axes[2 * group][column], images[index], label_text(labels[index], class_names))
        show(axes[2 * group + 1][column], augmented[index], "aug: " + label_text(mixed_labels[index], class_names))
    placement = config.augment.placement
    operations = ", ".join(str(operation) for operation in config.augment.ops) or "no augmentation"
    figure.suptitle(f"{config.name} ({placement}): {operations}", fontsize=7, wrap=True)
    figure.subplots_adjust(
        left=0.02,
        right=0.98,
        bottom=0.02,
        top=1 - TITLE_HEIGHT_INCHES / (height_pixels / DOTS_PER_INCH),
        wspace=0.1,
        hspace=0.35,
    )
    figure.savefig(out, dpi=DOTS_PER_INCH)
    plt.close(figure)


def show(axis, image: np.ndarray, title: str) -> None:
    if image.shape[-1] == 1:
        axis.imshow(image[..., 0], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    else:
        axis.imshow(image, interpolation="nearest")
    axis.set_title(title, fontsize=7)
