"""Adds each epoch's wall time and throughput to the logs, so history.csv records them."""

from __future__ import annotations

import time

import keras


class EpochTimer(keras.callbacks.Callback):
    """Must come before CSVLogger in the callback list: it writes into the same logs."""

    def __init__(self, train_images: int):
        super().__init__()
        self.train_images = train_images
        self._start = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        # Includes the validation pass, as a user waiting for an epoch experiences it.
        seconds = time.perf_counter() - self._start
        logs["epoch_seconds"] = seconds
        logs["images_per_second"] = self.train_images / seconds
