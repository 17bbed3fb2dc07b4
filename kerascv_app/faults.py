"""Fault switches: environment variables that make kcv fail on purpose, for the tests only.

They exist so that the tests can prove kcv survives a crash at the worst moment (a killed
training run resumes, a killed conversion or export leaves nothing half-written) and that
its checks refuse a bad result. Nobody sets them in normal use; unset, every function here
does nothing. The production modules call these functions and never read the variables.

    KCV_KILL_AT=EPOCH:BATCH      kcv fit kills itself (SIGKILL, no clean-up) after that batch
                                 (0-based epoch, batches done in it) and its checkpoint logic;
                                 EPOCH:0 after the epoch's end and its checkpoint (the boundary)
    KCV_KILL_AFTER_EPOCH=N       kcv fit kills itself at the end of epoch N (1-based), after its
                                 checkpoint was written
    KCV_KILL_AFTER_RECORDS=N     kcv convert kills itself once N records were written in total
    KCV_FAULT=evaluation         a run fails (RuntimeError) after training, in the step that
                                 writes its predictions and metrics
    KCV_EXPORT_FAULT=perturb_weights     the SavedModel (or model.onnx) differs from the Keras
                                         model: the parity check must refuse it
    KCV_EXPORT_FAULT=kill_before_rename  kcv export kills itself after the version was built and
                                         verified, before it is renamed into place

Importing this module imports neither Keras nor TensorFlow: the fast training loop and the
converter use it where those may be absent.
"""

from __future__ import annotations

import os
import signal
import sys
import threading

KILL_AT_VARIABLE = "KCV_KILL_AT"
KILL_AFTER_EPOCH_VARIABLE = "KCV_KILL_AFTER_EPOCH"
KILL_AFTER_RECORDS_VARIABLE = "KCV_KILL_AFTER_RECORDS"
FAULT_VARIABLE = "KCV_FAULT"
EXPORT_FAULT_VARIABLE = "KCV_EXPORT_FAULT"


def die_like_a_killed_process() -> None:
    """SIGKILL: no clean-up, no finally blocks, no atexit; only what was printed is flushed."""
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def kill_at() -> tuple[int, int] | None:
    """KCV_KILL_AT as (epoch, batch), or None when unset (an empty value is unset)."""
    value = os.environ.get(KILL_AT_VARIABLE)
    return tuple(int(part) for part in value.split(":")) if value else None


def kill_after_epoch_callbacks() -> list:
    """The Keras callbacks KCV_KILL_AFTER_EPOCH asks for: one that kills the process, or none."""
    value = os.environ.get(KILL_AFTER_EPOCH_VARIABLE)
    return [_kill_after_epoch(int(value))] if value else []


def _kill_after_epoch(epoch_number: int):
    import keras

    class KillAfterEpoch(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch + 1 == epoch_number:
                die_like_a_killed_process()

    return KillAfterEpoch()


class RecordKiller:
    """Counts written records across writer threads and kills the process at KCV_KILL_AFTER_RECORDS."""

    def __init__(self, limit: int | None):
        self.limit = limit
        self.count = 0
        self.lock = threading.Lock()

    @classmethod
    def from_environment(cls) -> RecordKiller:
        value = os.environ.get(KILL_AFTER_RECORDS_VARIABLE)
        return cls(int(value) if value else None)

    def count_one(self) -> None:
        if self.limit is None:
            return
        with self.lock:
            self.count += 1
            if self.count >= self.limit:
                die_like_a_killed_process()


def maybe_fail(step: str) -> None:
    """Raises in ``step`` when KCV_FAULT names it."""
    if os.environ.get(FAULT_VARIABLE) == step:
        raise RuntimeError(f"fault injected by {FAULT_VARIABLE}={step}")


def export_fault_is(fault: str) -> bool:
    """Whether KCV_EXPORT_FAULT asks for ``fault`` ("perturb_weights" or "kill_before_rename")."""
    return os.environ.get(EXPORT_FAULT_VARIABLE) == fault


def maybe_kill_before_rename() -> None:
    """Kills the export when KCV_EXPORT_FAULT=kill_before_rename."""
    if export_fault_is("kill_before_rename"):
        die_like_a_killed_process()
