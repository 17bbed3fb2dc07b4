"""A rich progress display for ``model.fit``: epoch and batch bars, loss, accuracy, images/s."""

from __future__ import annotations

import time

import keras
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class RichProgress(keras.callbacks.Callback):
    """Replaces Keras's default progress bar (``fit(verbose=0)``)."""

    def __init__(self, total_epochs: int, steps_per_epoch: int, batch_size: int, console: Console | None = None, stage: str = ""):
        super().__init__()
        self.total_epochs = total_epochs
        self.steps_per_epoch = steps_per_epoch
        self.batch_size = batch_size
        self.console = console or Console(stderr=True)
        self.stage = f"{stage} " if stage else ""
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[stats]}"),
            console=self.console,
            transient=False,
        )
        self._epoch_task = None
        self._batch_task = None
        self._epoch_start = 0.0

    def on_train_begin(self, logs=None):
        self.progress.start()
        self._epoch_task = self.progress.add_task(f"{self.stage}epochs", total=self.total_epochs, stats="")
        self._batch_task = self.progress.add_task("batches", total=self.steps_per_epoch, stats="")

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_start = time.perf_counter()
        # BackupAndRestore may start at a later epoch: show where we really are.
        self.progress.update(self._epoch_task, completed=epoch)
        self.progress.reset(self._batch_task, total=self.steps_per_epoch, description=f"epoch {epoch + 1}/{self.total_epochs}", stats="")

    def on_train_batch_end(self, batch, logs=None):
        logs = logs or {}
        elapsed = max(time.perf_counter() - self._epoch_start, 1e-9)
        images_per_second = (batch + 1) * self.batch_size / elapsed
        self.progress.update(self._batch_task, completed=batch + 1, stats=f"{_format(logs)}  {images_per_second:,.0f} img/s")

    def on_epoch_end(self, epoch, logs=None):
        seconds = time.perf_counter() - self._epoch_start
        self.progress.update(self._epoch_task, completed=epoch + 1, stats=f"{_format(logs or {})}  {seconds:.1f}s/epoch")

    def on_train_end(self, logs=None):
        self.progress.stop()


def _format(logs: dict) -> str:
    shown = []
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        if key in logs:
            shown.append(f"{key} {float(logs[key]):.4f}")
    return "  ".join(shown)
