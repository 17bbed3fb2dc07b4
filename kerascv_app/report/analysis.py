"""The report's numbers, computed in NumPy and scikit-learn from saved predictions."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np

from kerascv_app.evaluate.metrics import CALIBRATION_BINS, confusion_matrix, expected_calibration_error
from kerascv_app.report.sources import Predictions, ReportSource, read_predictions

#: Class pairs listed under "most confused".
CONFUSED_PAIRS = 10


def classification_table(predictions: Predictions, class_names: list[str]) -> dict:
    """scikit-learn's classification report: precision, recall, F1 and support per class."""
    from sklearn.metrics import classification_report

    return classification_report(
        predictions.labels,
        predictions.predicted,
        labels=list(range(len(class_names))),
        target_names=class_names,
        output_dict=True,
        zero_division=0,
    )


def confusion(predictions: Predictions, num_classes: int) -> np.ndarray:
    return confusion_matrix(predictions.probabilities, predictions.labels, num_classes)


def row_normalised(matrix: np.ndarray) -> np.ndarray:
    totals = matrix.sum(axis=1, keepdims=True)
    return np.divide(matrix, totals, out=np.zeros(matrix.shape, np.float64), where=totals > 0)


def most_confused(matrix: np.ndarray, class_names: list[str], count: int = CONFUSED_PAIRS) -> list[dict]:
    """The off-diagonal cells with the most images, as fastai's ``most_confused`` lists them."""
    off_diagonal = matrix.astype(np.int64).copy()
    np.fill_diagonal(off_diagonal, 0)
    order = np.argsort(-off_diagonal, axis=None, kind="stable")[:count]
    pairs = []
    for flat in order:
        true, predicted = np.unravel_index(flat, matrix.shape)
        if off_diagonal[true, predicted] == 0:
            break
        support = int(matrix[true].sum())
        pairs.append(
            {
                "true": class_names[true],
                "predicted": class_names[predicted],
                "count": int(off_diagonal[true, predicted]),
                "share": off_diagonal[true, predicted] / support if support else 0.0,
            }
        )
    return pairs


def top_losses(predictions: Predictions, count: int) -> np.ndarray:
    """Indices of the ``count`` test images with the highest cross-entropy, highest first."""
    losses = predictions.losses()
    return np.argsort(-losses, kind="stable")[: min(count, len(losses))]


def gradcam_choice(predictions: Predictions, count: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Test images for Grad-CAM: (wrong, right) indices. Half are the most confidently wrong
    images (the top losses among the misclassified), the rest a seeded sample of right ones,
    so the page shows what the model looks at when it fails and when it succeeds."""
    wrong_all = np.flatnonzero(predictions.predicted != predictions.labels)
    right_all = np.flatnonzero(predictions.predicted == predictions.labels)
    wrong_count = min(len(wrong_all), math.ceil(count / 2))
    right_count = min(len(right_all), count - wrong_count)
    wrong_count = min(len(wrong_all), count - right_count)
    wrong = wrong_all[np.argsort(-predictions.losses()[wrong_all], kind="stable")[:wrong_count]]
    right = (
        np.sort(np.random.default_rng(seed).choice(right_all, size=right_count, replace=False))
        if right_count
        else right_all[:0]
    )
    return wrong, right


@dataclasses.dataclass
class Reliability:
    """The reliability diagram's bins: confidence (the top probability) against accuracy."""

    edges: np.ndarray
    counts: np.ndarray
    accuracy: np.ndarray
    confidence: np.ndarray
    expected_calibration_error: float


def reliability(predictions: Predictions, bins: int = CALIBRATION_BINS) -> Reliability:
    """Bins as the ensembles' metrics.json counts them (ensemble/build.py), so the ECE here
    equals the one recorded there for the same probabilities."""
    confidence = predictions.probabilities.max(axis=1)
    correct = (predictions.predicted == predictions.labels).astype(np.float64)
    bin_index = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
    counts = np.bincount(bin_index, minlength=bins)
    sums_correct = np.bincount(bin_index, weights=correct, minlength=bins)
    sums_confidence = np.bincount(bin_index, weights=confidence, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        accuracy = np.where(counts > 0, sums_correct / np.maximum(counts, 1), np.nan)
        mean_confidence = np.where(counts > 0, sums_confidence / np.maximum(counts, 1), np.nan)
    return Reliability(
        edges=np.linspace(0.0, 1.0, bins + 1),
        counts=counts,
        accuracy=accuracy,
        confidence=mean_confidence,
        expected_calibration_error=expected_calibration_error(predictions.probabilities, predictions.labels, bins),
    )


def per_class_accuracy(predictions: Predictions, num_classes: int) -> list[float | None]:
    predicted = predictions.predicted
    return [
        float((predicted[predictions.labels == index] == index).mean()) if np.any(predictions.labels == index) else None
        for index in range(num_classes)
    ]


def learning_rates(source: ReportSource) -> list[float]:
    """The learning rate at each epoch's first step, recomputed from the recipe's schedule
    (Keras does not log it): the global batch and rate the run recorded, stage 2 of a
    transfer run with its own settings. Empty for an ensemble or an empty history."""
    from kerascv_app.config import Config
    from kerascv_app.train.optim import learning_rate_schedule
    from kerascv_app.train.stages import fine_tune_settings

    epochs = len(source.history.get("loss", []))
    if source.kind != "run" or not epochs:
        return []
    config = Config.from_dict(source.config)
    train = dataclasses.replace(
        config.train, learning_rate=source.environment.get("learning_rate", config.train.learning_rate)
    )
    batch = source.environment.get("global_batch_size", config.data.batch_size)
    steps = max(1, math.ceil(source.splits.get("train", 0) / batch))
    stages = source.history.get("stage") or [1.0] * epochs
    stage_one_epochs = sum(1 for stage in stages if stage == 1)
    rates = []
    for epoch in range(epochs):
        if stages[epoch] == 1:
            rates.append(_rate(learning_rate_schedule(train, steps), epoch * steps))
        else:
            rates.append(
                _rate(learning_rate_schedule(fine_tune_settings(train), steps), (epoch - stage_one_epochs) * steps)
            )
    return rates


def _rate(schedule, step: int) -> float:
    if not callable(schedule):
        return float(schedule)
    import keras

    return float(keras.ops.convert_to_numpy(schedule(step)))


def ensemble_against_members(source: ReportSource) -> list[dict]:
    """For an ensemble: each member's test figures, the ensemble's difference, and the test
    images it fixes (the member wrong, the ensemble right) and breaks (the reverse)."""
    rows = []
    ensemble_test = source.metrics.get("test", {})
    correct = source.test.predicted == source.test.labels
    for member in source.metrics.get("members", []):
        test = member.get("test", {})
        row = {
            "name": member["name"],
            "path": member.get("path"),
            "accuracy": test.get("accuracy"),
            "loss": test.get("loss"),
            "ece": test.get("expected_calibration_error"),
            "accuracy_gain": _difference(ensemble_test.get("accuracy"), test.get("accuracy")),
            "loss_gain": _difference(test.get("loss"), ensemble_test.get("loss")),
            "fixed": None,
            "broken": None,
        }
        saved = (
            read_predictions(Path(member["path"]), "test")
            if member.get("path") and not source.ensemble.get("tta")
            else None
        )
        if saved is not None and np.array_equal(saved.labels, source.test.labels):
            member_correct = saved.predicted == saved.labels
            row["fixed"] = int(np.sum(correct & ~member_correct))
            row["broken"] = int(np.sum(~correct & member_correct))
        rows.append(row)
    return rows


def _difference(first, second):
    return None if first is None or second is None else first - second
