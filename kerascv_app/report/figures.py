"""The report's pictures as ``data:image/png;base64,...`` URIs, so the page needs no other file.

Figures are drawn with matplotlib (Agg, no display), as the run's own PNGs are; image
thumbnails are encoded with Pillow, enlarged by whole pixels (nearest neighbour) so that a
32x32 or 8x8 test image is shown exactly as the model saw it.
"""

from __future__ import annotations

import base64
import io

import numpy as np

from kerascv_app.report.analysis import Reliability

DOTS_PER_INCH = 100
#: Thumbnails are enlarged to at least this many pixels on their longer side.
THUMBNAIL_PIXELS = 96
#: Grad-CAM overlays: how much of the heat map's colour is blended over the image.
HEATMAP_OPACITY = 0.45


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def figure_uri(figure) -> str:
    plt = _pyplot()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DOTS_PER_INCH)
    plt.close(figure)
    return png_uri(buffer.getvalue())


def png_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def image_scale(image_shape) -> int:
    return max(1, -(-THUMBNAIL_PIXELS // max(image_shape[0], image_shape[1])))


def thumbnail_uri(image: np.ndarray) -> str:
    """A uint8 (H, W, C) image as a PNG, each pixel repeated image_scale() times both ways."""
    from PIL import Image

    scale = image_scale(image.shape)
    enlarged = np.repeat(np.repeat(np.asarray(image, np.uint8), scale, axis=0), scale, axis=1)
    picture = Image.fromarray(enlarged[..., 0] if enlarged.shape[-1] == 1 else enlarged)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return png_uri(buffer.getvalue())


def heatmap_overlay(image: np.ndarray, heatmap: np.ndarray) -> np.ndarray:
    """The image (grey or colour) with the [0, 1] heat map blended over it in matplotlib's jet."""
    from matplotlib import colormaps

    base = np.asarray(image, np.float64)
    if base.shape[-1] == 1:
        base = np.repeat(base, 3, axis=-1)
    colours = colormaps["jet"](np.clip(heatmap, 0.0, 1.0))[..., :3] * 255.0
    return np.clip((1 - HEATMAP_OPACITY) * base + HEATMAP_OPACITY * colours, 0, 255).astype(np.uint8)


def curves_figure(history: dict, learning_rates: list[float]) -> str | None:
    """Loss, accuracy and learning rate per epoch; a transfer run's stage 2 marked."""
    if not history.get("loss"):
        return None
    plt = _pyplot()
    panels = [("loss", "loss"), ("accuracy", "accuracy")] + ([("learning rate", None)] if learning_rates else [])
    figure, axes_list = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4))
    from kerascv_app.evaluate.plots import history_panel

    epochs = np.arange(1, len(history["loss"]) + 1)
    for axes, (title, key) in zip(axes_list, panels):
        if key is None:
            axes.plot(epochs, learning_rates, marker="o", color="tab:green", label="at the epoch's first step")
        history_panel(axes, history, key, title, legend_fontsize=8)
    figure.tight_layout()
    return figure_uri(figure)


def confusion_figure(matrix: np.ndarray, normalised: np.ndarray, class_names: list[str]) -> str:
    """Counts and row-normalised shares side by side."""
    plt = _pyplot()
    size = max(4.0, 0.45 * len(class_names) + 2)
    figure, (counts_axes, shares_axes) = plt.subplots(1, 2, figsize=(2 * size, size))
    for axes, values, title, text in (
        (counts_axes, matrix, "counts", lambda v: str(int(v))),
        (shares_axes, normalised, "share of the true class (rows sum to 1)", lambda v: f"{v:.2f}"),
    ):
        image = axes.imshow(values, cmap="Blues")
        axes.set_xticks(range(len(class_names)), class_names, rotation=45, ha="right", fontsize=8)
        axes.set_yticks(range(len(class_names)), class_names, fontsize=8)
        axes.set_xlabel("predicted")
        axes.set_ylabel("true")
        axes.set_title(title)
        threshold = values.max() / 2 if values.size else 0
        if len(class_names) <= 20:
            for row in range(values.shape[0]):
                for column in range(values.shape[1]):
                    axes.text(
                        column,
                        row,
                        text(values[row, column]),
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="white" if values[row, column] > threshold else "black",
                    )
        figure.colorbar(image, ax=axes, fraction=0.046)
    figure.tight_layout()
    return figure_uri(figure)


def reliability_figure(bins: Reliability) -> str:
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(4.6, 4.2))
    widths = np.diff(bins.edges)
    filled = bins.counts > 0
    axes.bar(
        bins.edges[:-1][filled],
        bins.accuracy[filled],
        width=widths[filled],
        align="edge",
        edgecolor="black",
        alpha=0.75,
        label="accuracy",
    )
    axes.bar(
        bins.edges[:-1][filled],
        (bins.confidence - bins.accuracy)[filled],
        bottom=bins.accuracy[filled],
        width=widths[filled],
        align="edge",
        color="tab:red",
        alpha=0.3,
        hatch="//",
        label="gap to confidence",
    )
    axes.plot([0, 1], [0, 1], linestyle="--", color="gray", label="perfect calibration")
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1)
    axes.set_xlabel("confidence (top probability)")
    axes.set_ylabel("accuracy")
    axes.set_title(f"reliability, ECE {bins.expected_calibration_error:.4f}")
    axes.legend(fontsize=8, loc="upper left")
    figure.tight_layout()
    return figure_uri(figure)


def overlaid_curves_figure(histories: list[tuple[str, dict]]) -> str | None:
    """Validation (else training) loss and accuracy of several runs on the same axes."""
    histories = [(name, history) for name, history in histories if history.get("loss")]
    if not histories:
        return None
    plt = _pyplot()
    figure, axes_list = plt.subplots(1, 2, figsize=(10, 3.8))
    for axes, key in zip(axes_list, ("loss", "accuracy")):
        for name, history in histories:
            values = history.get("val_" + key) or history.get(key)
            which = "validation" if history.get("val_" + key) else "train"
            axes.plot(np.arange(1, len(values) + 1), values, marker="o", label=f"{name} ({which})")
        axes.set_xlabel("epoch")
        axes.set_title(key)
        axes.grid(alpha=0.3)
        axes.legend(fontsize=7)
    figure.tight_layout()
    return figure_uri(figure)


def per_class_figure(names: list[str], class_names: list[str], accuracies: list[list[float | None]]) -> str:
    """Grouped bars: each class's test accuracy, one bar per directory."""
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(max(6.0, 0.6 * len(class_names) * max(1, len(names)) / 2 + 3), 3.8))
    width = 0.8 / len(names)
    positions = np.arange(len(class_names))
    for index, (name, values) in enumerate(zip(names, accuracies)):
        axes.bar(
            positions + index * width - 0.4 + width / 2,
            [np.nan if v is None else v for v in values],
            width=width,
            label=name,
        )
    axes.set_xticks(positions, class_names, rotation=45, ha="right", fontsize=8)
    axes.set_ylim(0, 1)
    axes.set_ylabel("test accuracy")
    axes.grid(alpha=0.3, axis="y")
    axes.legend(fontsize=7)
    figure.tight_layout()
    return figure_uri(figure)
