"""Progress for ``model.fit``: rich bars in a terminal, one plain line per epoch in a log.

A rich display written to a file (a cluster job's log, ``| tee``) comes out as truncated
fragments, so when stdout is not a terminal each epoch is one plain line on stdout instead.
"""

from __future__ import annotations

import sys
import time

import keras
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


def progress_callback(
    total_epochs: int, steps_per_epoch: int, batch_size: int, stage: str = "", stream=None
) -> keras.callbacks.Callback:
    """Rich bars (on stderr) when both stdout and stderr are terminals, else :class:`PlainProgress` on stdout."""
    stream = stream or sys.stdout
    if _is_terminal(stream) and _is_terminal(sys.stderr):
        return RichProgress(total_epochs, steps_per_epoch, batch_size, stage=stage)
    return PlainProgress(total_epochs, batch_size, stage=stage, stream=stream)


def _is_terminal(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class PlainProgress(keras.callbacks.Callback):
    """One line per epoch: epoch, loss, accuracy, validation figures, seconds, images/s."""

    def __init__(self, total_epochs: int, batch_size: int, stage: str = "", stream=None):
        super().__init__()
        self.total_epochs = total_epochs
        self.batch_size = batch_size
        self.stage = f"{stage} " if stage else ""
        self.stream = stream or sys.stdout
        self._epoch_start = 0.0
        self._batches = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_start = time.perf_counter()
        self._batches = 0

    def on_train_batch_end(self, batch, logs=None):
        self._batches = batch + 1

    def on_epoch_end(self, epoch, logs=None):
        # Validation is part of the epoch's seconds, as the rich display counts it; images/s
        # is over the same time, so the two figures agree.
        logs = logs or {}
        seconds = float(logs.get("epoch_seconds", max(time.perf_counter() - self._epoch_start, 1e-9)))
        # EpochTimer (before this callback) counts the split's real images, last batch included.
        images_per_second = float(logs.get("images_per_second", self._batches * self.batch_size / seconds))
        line = (
            f"{self.stage}epoch {epoch + 1}/{self.total_epochs}  "
            f"{_format(logs)}  {seconds:.1f} s  {images_per_second:,.0f} img/s"
        )
        print(line, file=self.stream, flush=True)


class RichProgress(keras.callbacks.Callback):
    """Replaces Keras's default progress bar (``fit(verbose=0)``)."""

    def __init__(
        self, total_epochs: int, steps_per_epoch: int, batch_size: int, console: Console | None = None, stage: str = ""
    ):
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
        self.progress.reset(
            self._batch_task, total=self.steps_per_epoch, description=f"epoch {epoch + 1}/{self.total_epochs}", stats=""
        )

    def on_train_batch_end(self, batch, logs=None):
        logs = logs or {}
        elapsed = max(time.perf_counter() - self._epoch_start, 1e-9)
        images_per_second = (batch + 1) * self.batch_size / elapsed
        self.progress.update(
            self._batch_task, completed=batch + 1, stats=f"{_format(logs)}  {images_per_second:,.0f} img/s"
        )

    def on_epoch_end(self, epoch, logs=None):
        seconds = time.perf_counter() - self._epoch_start
        self.progress.update(
            self._epoch_task, completed=epoch + 1, stats=f"{_format(logs or {})}  {seconds:.1f}s/epoch"
        )

    def on_train_end(self, logs=None):
        self.progress.stop()


def _format(logs: dict) -> str:
    shown = []
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        if key in logs:
            shown.append(f"{key} {float(logs[key]):.4f}")
    return "  ".join(shown)
