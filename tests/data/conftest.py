"""Fixtures shared by the data source tests."""

from __future__ import annotations

import numpy as np
import pytest

from kerascv_app.config import DataConfig
from kerascv_app.data.pipeline import make_dataset


@pytest.fixture
def decode_batches():
    """Runs a split through the real pipeline; returns its batches as (uint8 images, one-hot labels) arrays."""

    def run(split, num_classes: int, image_size=(16, 16), batch_size: int = 4):
        config = DataConfig(image_size=image_size, channels=3, batch_size=batch_size, cache="none")
        dataset = make_dataset(split, num_classes, config)
        return [(np.asarray(images), np.asarray(labels)) for images, labels in dataset.as_numpy_iterator()]

    return run
