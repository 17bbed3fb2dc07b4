"""Schedules, optimizers, metrics, distribution choice and splits."""

from __future__ import annotations

import numpy as np
import pytest

from kerascv_app.config import DataConfig, TrainConfig
from kerascv_app.data.base import ArraySplit, LoadedData
from kerascv_app.data.splits import make_splits
from kerascv_app.distribution import choose_distribution
from kerascv_app.errors import UserError
from kerascv_app.evaluate.metrics import classification_metrics
from kerascv_app.train.optim import OneCycle, create_optimizer, learning_rate_schedule


def rate(schedule, step):
    import keras

    return float(keras.ops.convert_to_numpy(schedule(step)))


def test_cosine_with_warmup_rises_then_decays_to_zero():
    schedule = learning_rate_schedule(
        TrainConfig(epochs=10, learning_rate=0.1, schedule="cosine", warmup_epochs=2), steps_per_epoch=10
    )
    assert rate(schedule, 0) == pytest.approx(0.0, abs=1e-6)
    assert rate(schedule, 10) == pytest.approx(0.05, rel=1e-3)
    assert rate(schedule, 20) == pytest.approx(0.1, rel=1e-3)
    assert rate(schedule, 100) == pytest.approx(0.0, abs=1e-6)


def test_one_cycle_peaks_at_thirty_percent():
    schedule = OneCycle(1.0, total_steps=100)
    assert rate(schedule, 0) == pytest.approx(1 / 25, rel=1e-3)
    assert rate(schedule, 30) == pytest.approx(1.0, rel=1e-3)
    assert rate(schedule, 100) == pytest.approx(1e-4, rel=1e-2)
    assert OneCycle(**schedule.get_config()).total_steps == 100


def test_optimizers():
    sgd = create_optimizer(TrainConfig(optimizer="sgd", nesterov=True, momentum=0.8, weight_decay=5e-4), 10)
    assert sgd.nesterov and sgd.momentum == 0.8 and sgd.weight_decay == pytest.approx(5e-4)
    adamw = create_optimizer(TrainConfig(optimizer="adamw", weight_decay=1e-2), 10)
    assert type(adamw).__name__ == "AdamW"


@pytest.mark.backend_independent  # names in, a name out: no device is asked
def test_distribution_is_chosen_from_the_devices():
    assert choose_distribution("auto", "tensorflow", ["cpu:0"]) == "none"
    assert choose_distribution("auto", "tensorflow", ["gpu:0", "gpu:1"]) == "mirrored"
    assert choose_distribution("auto", "jax", ["gpu:0", "gpu:1"]) == "data_parallel"
    assert choose_distribution("auto", "torch", ["gpu:0", "gpu:1"]) == "none"
    assert choose_distribution("none", "jax", ["gpu:0", "gpu:1"]) == "none"
    with pytest.raises(UserError, match="mirrored"):
        choose_distribution("mirrored", "jax", ["gpu:0"])


@pytest.mark.backend_independent  # numpy: no Keras backend
def test_metrics():
    probabilities = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4], [0.5, 0.4, 0.1]])
    labels = np.array([0, 1, 2, 1])
    metrics = classification_metrics(probabilities, labels, ["a", "b", "c"])
    assert metrics["accuracy"] == 0.75 and "top5_accuracy" not in metrics
    assert metrics["loss"] == pytest.approx(-np.mean(np.log([0.7, 0.8, 0.4, 0.4])))
    assert metrics["per_class_accuracy"] == {"a": 1.0, "b": 0.5, "c": 1.0}


@pytest.mark.backend_independent  # numpy: no Keras backend
def test_validation_split_is_stratified_seeded_and_disjoint():
    labels = np.repeat(np.arange(4), 50)
    images = np.zeros((200, 4, 4, 1), np.uint8)
    data = LoadedData(name="toy", class_names=list("abcd"), train=ArraySplit(images, labels), test=None)
    config = DataConfig(val_fraction=0.2, test_fraction=0.1, split_seed=3)
    splits = make_splits(data, config)
    assert (len(splits.train), len(splits.validation), len(splits.test)) == (144, 36, 20)
    assert np.bincount(splits.validation.labels).tolist() == [9, 9, 9, 9]
    ids = [set(s.ids.tolist()) for s in (splits.train, splits.validation, splits.test)]
    assert not (ids[0] & ids[1]) and not (ids[0] & ids[2]) and not (ids[1] & ids[2])
    assert make_splits(data, config).record() == splits.record()
    assert make_splits(data, DataConfig(val_fraction=0.2, test_fraction=0.1, split_seed=4)).record() != splits.record()
