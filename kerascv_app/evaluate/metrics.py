"""Predictions and metrics computed in NumPy from probabilities, the same on every backend."""

from __future__ import annotations

import numpy as np

# Equal-width confidence bins of the expected calibration error and the report's reliability diagram.
CALIBRATION_BINS = 15


def predict_probabilities(model, dataset, test_time_augmentation: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Runs the model over a dataset of (images, one-hot labels): probabilities and labels.

    ``test_time_augmentation`` averages the logits of flipped and shifted views (kerascv_app/evaluate/tta.py).
    """
    import keras

    from kerascv_app.evaluate.tta import tta_logits

    probabilities, labels = [], []
    for images, one_hot in dataset.as_numpy_iterator():
        if test_time_augmentation:
            logits = keras.ops.convert_to_numpy(tta_logits(lambda views: model(views, training=False), images))
        else:
            logits = keras.ops.convert_to_numpy(model(images, training=False))
        probabilities.append(softmax(logits.astype(np.float64)))
        labels.append(one_hot.argmax(axis=-1))
    if not probabilities:
        return np.zeros((0, model.output_shape[-1]), np.float32), np.zeros((0,), np.int64)
    return np.concatenate(probabilities).astype(np.float32), np.concatenate(labels).astype(np.int64)


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exponentials = np.exp(shifted)
    return exponentials / exponentials.sum(axis=-1, keepdims=True)


def classification_metrics(probabilities: np.ndarray, labels: np.ndarray, class_names: list[str]) -> dict:
    """Accuracy, cross-entropy loss, top-5 accuracy (more than 5 classes) and per-class accuracy."""
    if len(labels) == 0:
        return {"count": 0}
    predicted = probabilities.argmax(axis=-1)
    picked = np.clip(probabilities[np.arange(len(labels)), labels], 1e-12, 1.0)
    metrics = {
        "count": int(len(labels)),
        "accuracy": float((predicted == labels).mean()),
        "loss": float(-np.log(picked).mean()),
    }
    if len(class_names) > 5:
        top5 = np.argsort(-probabilities, axis=-1)[:, :5]
        metrics["top5_accuracy"] = float((top5 == labels[:, None]).any(axis=-1).mean())
    metrics["per_class_accuracy"] = {
        name: float((predicted[labels == index] == index).mean()) if np.any(labels == index) else None
        for index, name in enumerate(class_names)
    }
    return metrics


def confusion_matrix(probabilities: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    from sklearn.metrics import confusion_matrix as sklearn_confusion_matrix

    return sklearn_confusion_matrix(labels, probabilities.argmax(axis=-1), labels=list(range(num_classes)))


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray, bins: int = CALIBRATION_BINS) -> float:
    """Mean |accuracy - confidence| over equal-width confidence bins, weighted by bin size."""
    confidence = probabilities.max(axis=1)
    correct = (probabilities.argmax(axis=1) == labels).astype(np.float64)
    bin_index = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
    error = 0.0
    for index in range(bins):
        in_bin = bin_index == index
        if in_bin.any():
            error += in_bin.mean() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
    return float(error)
