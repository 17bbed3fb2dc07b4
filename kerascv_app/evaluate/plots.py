"""The run's pictures: confusion matrix and training curves (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_confusion_matrix(
    matrix: np.ndarray, class_names: list[str], path: Path, title: str = "Test confusion matrix"
) -> None:
    plt = _pyplot()
    size = max(4.0, 0.5 * len(class_names) + 2)
    figure, axes = plt.subplots(figsize=(size, size))
    image = axes.imshow(matrix, cmap="Blues")
    axes.set_xticks(range(len(class_names)), class_names, rotation=45, ha="right")
    axes.set_yticks(range(len(class_names)), class_names)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    axes.set_title(title)
    threshold = matrix.max() / 2 if matrix.size else 0
    if len(class_names) <= 20:
        for row in range(matrix.shape[0]):
            for column in range(matrix.shape[1]):
                color = "white" if matrix[row, column] > threshold else "black"
                axes.text(column, row, str(matrix[row, column]), ha="center", va="center", color=color, fontsize=8)
    figure.colorbar(image, ax=axes, fraction=0.046)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def plot_curves(history: dict[str, list[float]], path: Path) -> None:
    """Loss and accuracy per epoch, training against validation; a transfer run's
    fine-tuning stage starts at the dotted line."""
    plt = _pyplot()
    figure, (loss_axes, accuracy_axes) = plt.subplots(1, 2, figsize=(10, 4))
    for axes, key in ((loss_axes, "loss"), (accuracy_axes, "accuracy")):
        history_panel(axes, history, key, key)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def history_panel(axes, history: dict[str, list[float]], key: str | None, title: str, legend_fontsize=None) -> None:
    """One panel of training curves: training and validation ``key`` per epoch (``key`` None:
    the caller drew the panel's own line), a transfer run's fine-tuning stage from the dotted
    line, labels, grid and legend. Shared by curves.png and kcv report's page."""
    epochs = np.arange(1, len(history.get("loss", [])) + 1)
    stages = history.get("stage", [])
    if key is not None:
        for prefix, label in (("", "train"), ("val_", "validation")):
            values = history.get(prefix + key)
            if values:
                axes.plot(epochs[: len(values)], values, marker="o", label=label)
    if len(set(stages)) > 1:
        axes.axvline(stages.index(max(stages)) + 0.5, color="gray", linestyle=":", label="stage 2 (fine-tuning)")
    axes.set_xlabel("epoch")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=legend_fontsize)
