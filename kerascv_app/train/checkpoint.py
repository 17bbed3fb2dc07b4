"""Checkpoints that survive any kill, and training that resumes at the next batch.

A checkpoint is one file ``backup/checkpoint-<stage>-<epoch>-<batch>.npz`` holding the
values of ``model.variables`` (weights, BatchNorm statistics and the SeedGenerator states of
device augmentation and dropout), ``model.optimizer.variables`` (iterations, hence the
learning-rate schedule's position; moments; the EMA; accumulated gradients), torch's global
generator under torch (which an unseeded Dropout draws from there), and a JSON
member: where training stands (stage, epoch, batches done in it) and the state of the
callbacks that keep some (best value so far, early-stopping patience). Not the epoch's
running metrics: Keras builds them at the first step, so a resumed epoch's row in
history.csv averages the batches trained after the resume.

Keras's own ``model.save_weights`` was the first choice, but its HDF5 writer took 35 to
120 ms for the digits net's 0.8 MB (per-variable h5py overhead), 3 to 10% of a one-second
epoch at one checkpoint an epoch; the same values in one ``.npz`` take about 2 ms, and one
file needs one fsync (a few ms each here) where a folder of files needs one per file.

It is written as ``backup/.partial-...npz``, flushed and fsynced, then renamed into place
(a rename is atomic) and the folder fsynced; the previous checkpoint is removed only after
that, and the newest :data:`KEEP` are kept. A resume reads every member, which checks the
zip's CRC-32s, and falls back to the previous checkpoint when the newest is damaged, saying
so in one line.

The training data of an epoch is a pure function of (seed, epoch)
(:func:`kerascv_app.data.pipeline.make_training_epochs`), so a resumed run skips the
batches the checkpoint had consumed and trains the rest of that epoch in one ``fit`` call,
then the remaining epochs in another: Keras's own loop and callbacks throughout.
"""

from __future__ import annotations

import json
import os
import sys
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np

from kerascv_app import faults
from kerascv_app.config import parse_checkpoint_every

#: Complete checkpoints kept: the newest, and the one before it in case the newest is damaged.
KEEP = 2
#: The member of a checkpoint file that holds its position and callback state (JSON).
POSITION_KEY = "position"


@dataclass(frozen=True)
class Position:
    """Where training stands: ``batch`` batches of ``epoch`` are done (0: the epoch starts)."""

    stage: int
    epoch: int
    batch: int

    @property
    def name(self) -> str:
        return f"checkpoint-{self.stage}-{self.epoch:06d}-{self.batch:06d}"


@dataclass
class Restored:
    position: Position
    callback_state: dict = field(default_factory=dict)
    # Written before fit started (a stage's first checkpoint), not at a step inside it.
    before_fit: bool = False


class CheckpointDamaged(Exception):
    pass


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as handle:
        handle.flush()
        os.fsync(handle.fileno())


def _fsync_directory(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


class CheckpointStore:
    """The checkpoints of one run, in its backup folder."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)

    def complete(self) -> list[Path]:
        """Complete checkpoint files, newest first (partial ones start with a dot)."""
        if not self.directory.is_dir():
            return []
        found = [
            path for path in self.directory.iterdir() if path.name.startswith("checkpoint-") and path.suffix == ".npz"
        ]
        return sorted(found, key=lambda path: path.name, reverse=True)

    def save(self, model, position: Position, callback_state: dict, before_fit: bool = False) -> Path:
        final = self.directory / f"{position.name}.npz"
        self.directory.mkdir(parents=True, exist_ok=True)
        partial = self.directory / f".partial-{position.name}.npz"
        arrays = {
            f"{group}/{index}": keras.ops.convert_to_numpy(variable.value)
            for group, variables in state_variables(model).items()
            for index, variable in enumerate(variables)
        }
        arrays.update(_global_generator_states())
        record = {
            "stage": position.stage,
            "epoch": position.epoch,
            "batch": position.batch,
            "callbacks": callback_state,
            "before_fit": before_fit,
        }
        with open(partial, "wb") as handle:
            np.savez(handle, **arrays, **{POSITION_KEY: np.array(json.dumps(record, default=float))})
            handle.flush()
            os.fsync(handle.fileno())
        # One file: one fsync, then an atomic rename (over a damaged one of the same position
        # too) and the folder's fsync, which makes the rename itself durable.
        os.replace(partial, final)
        _fsync_directory(self.directory)
        # Only now, with the new one complete, may older ones go.
        for old in self.complete()[KEEP:]:
            old.unlink(missing_ok=True)
        return final

    @staticmethod
    def read(path: Path) -> tuple[Restored, dict]:
        """The checkpoint's position and arrays; reading every member checks the zip's CRC-32s."""
        try:
            with np.load(path, allow_pickle=False) as saved:
                arrays = {key: saved[key] for key in saved.files}
            record = json.loads(str(arrays.pop(POSITION_KEY)))
            position = Position(int(record["stage"]), int(record["epoch"]), int(record["batch"]))
            return Restored(position, record.get("callbacks", {}), bool(record.get("before_fit"))), arrays
        except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile) as error:
            raise CheckpointDamaged(f"{type(error).__name__}: {error}") from error

    def latest(self, warn=lambda message: print(message, file=sys.stderr)) -> tuple[Path, Restored] | None:
        """The newest undamaged checkpoint; each damaged newer one is named in one line."""
        candidates = self.complete()
        for index, path in enumerate(candidates):
            try:
                restored, _ = self.read(path)
            except CheckpointDamaged as error:
                following = candidates[index + 1].name if index + 1 < len(candidates) else "none left"
                warn(f"warning: checkpoint {path} is damaged ({error}): falling back to the one before ({following})")
                continue
            return path, restored
        return None

    @classmethod
    def load(cls, model, path: Path) -> None:
        """Loads a checkpoint found by :meth:`latest` into a compiled model."""
        if not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
        restored, arrays = cls.read(path)
        for group, variables in state_variables(model).items():
            stored = [arrays.get(f"{group}/{index}") for index in range(len(variables))]
            if sum(key.startswith(group + "/") for key in arrays) != len(variables) or any(
                value is None or tuple(value.shape) != tuple(variable.shape)
                for value, variable in zip(stored, variables)
            ):
                raise CheckpointDamaged(f"{path.name} does not fit this model's {group} variables")
            for variable, value in zip(variables, stored):
                variable.assign(value)
        # Where the killed process was when it saved them: before fit (restored now, fit's
        # own start, its symbolic build, draws from them), or at a step (restored at the
        # resumed fit's first step, TrainingCheckpoint.on_train_batch_begin).
        model._kcv_pending_generators = {key: value for key, value in arrays.items() if key.startswith("rng/")}
        if restored.before_fit:
            restore_global_generators(model)


def _global_generator_states() -> dict:
    """Random state outside Keras variables: under torch, an unseeded Dropout takes the fast
    path, torch's global generator (keras/src/backend/torch/random.py)."""
    if keras.backend.backend() != "torch":
        return {}
    import torch

    states = {"rng/torch": torch.get_rng_state().numpy()}
    if torch.cuda.is_available():
        states.update(
            {f"rng/cuda/{index}": state.numpy() for index, state in enumerate(torch.cuda.get_rng_state_all())}
        )
    return states


def restore_global_generators(model) -> None:
    arrays = getattr(model, "_kcv_pending_generators", None) or {}
    model._kcv_pending_generators = None
    if keras.backend.backend() != "torch" or "rng/torch" not in arrays:
        return
    import torch

    torch.set_rng_state(torch.from_numpy(arrays["rng/torch"]))
    cuda = [torch.from_numpy(arrays[key]) for key in sorted(key for key in arrays if key.startswith("rng/cuda/"))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)


def state_variables(model) -> dict:
    """The variables a checkpoint holds, in a fixed order (the model is rebuilt the same way)."""
    return {"model": list(model.variables), "optimizer": list(model.optimizer.variables)}


class TrainingCheckpoint(keras.callbacks.Callback):
    """Writes a checkpoint every ``train.checkpoint_every`` and at every epoch's end.

    ``first_batch`` is the number of batches of the first epoch that an earlier process
    trained (a resumed run's ``fit`` starts counting at 0 again); ``stateful`` are the
    callbacks whose ``get_state()``/``set_state()`` travel in the checkpoint.
    """

    def __init__(self, store: CheckpointStore, stage: int, every: str, stateful: dict, steps_per_epoch: int):
        super().__init__()
        self.store = store
        self.stage = stage
        self.every_steps, self.every_seconds = parse_checkpoint_every(every)
        self.stateful = stateful
        self.steps_per_epoch = steps_per_epoch
        self.first_batch = 0
        self._epoch = 0
        self._first_epoch_of_fit = True
        self._last_save = time.monotonic()
        self._steps_since_save = 0
        self._kill_at = faults.kill_at()
        self.seconds_saving = 0.0
        self.saves = 0

    def start_fit(self, first_batch: int) -> None:
        self.first_batch = first_batch
        self._first_epoch_of_fit = True

    def save(self, position: Position, before_fit: bool = False) -> None:
        started = time.perf_counter()
        state = {name: callback.get_state() for name, callback in self.stateful.items()}
        self.store.save(self.model, position, state, before_fit)
        self.seconds_saving += time.perf_counter() - started
        self.saves += 1
        self._last_save = time.monotonic()
        self._steps_since_save = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        self._offset = self.first_batch if self._first_epoch_of_fit else 0
        self._first_epoch_of_fit = False

    def on_train_batch_begin(self, batch, logs=None):
        # self._model, not self.model: under jax the property syncs the state every batch.
        if getattr(self._model, "_kcv_pending_generators", None):
            restore_global_generators(self._model)

    def on_train_batch_end(self, batch, logs=None):
        done = self._offset + batch + 1
        self._steps_since_save += 1
        if done < self.steps_per_epoch:
            due = (self.every_steps and self._steps_since_save >= self.every_steps) or (
                self.every_seconds and time.monotonic() - self._last_save >= self.every_seconds
            )
            if due:
                self.save(Position(self.stage, self._epoch, done))
        self._maybe_kill(self._epoch, done)

    def on_epoch_end(self, epoch, logs=None):
        self.save(Position(self.stage, epoch + 1, 0))
        self._maybe_kill(epoch, 0)

    def _maybe_kill(self, epoch: int, batch: int) -> None:
        if self._kill_at == (epoch, batch):
            faults.die_like_a_killed_process()


class ResumableEarlyStopping(keras.callbacks.EarlyStopping):
    """EarlyStopping whose patience counter and best value survive a resume and a second
    ``fit`` call (Keras's resets them in ``on_train_begin``)."""

    _started = False

    def on_train_begin(self, logs=None):
        if not self._started:
            super().on_train_begin(logs)
            self._started = True

    def get_state(self) -> dict:
        best = None if self.best is None else float(self.best)
        return {"wait": self.wait, "best": best, "best_epoch": self.best_epoch, "stopped_epoch": self.stopped_epoch}

    def set_state(self, state: dict) -> None:
        super().on_train_begin()
        self._started = True
        self.wait, self.best, self.best_epoch, self.stopped_epoch = (
            state["wait"],
            state["best"],
            state["best_epoch"],
            state["stopped_epoch"],
        )


class BestWeights(keras.callbacks.ModelCheckpoint):
    """ModelCheckpoint(save_best_only) whose best value survives a resume, written through a
    fsynced temporary file and a rename, with the EMA weights swapped in when ``use_ema``."""

    def __init__(self, path: Path, monitor: str, use_ema: bool):
        self.final_path = Path(path)
        self.partial_path = self.final_path.with_name(".partial-" + self.final_path.name)
        super().__init__(
            str(self.partial_path), monitor=monitor, mode="max", save_best_only=True, save_weights_only=True
        )
        self.use_ema = use_ema

    def _save_model(self, epoch, batch, logs):
        before = self.best
        swapper = None
        if self.use_ema:
            swapper = keras.callbacks.SwapEMAWeights()
            swapper.set_model(self.model)
            swapper._swap_variables()
        try:
            super()._save_model(epoch, batch, logs)
        finally:
            if swapper is not None:
                swapper._swap_variables()
        if self.best != before and self.partial_path.is_file():
            _fsync_file(self.partial_path)
            os.replace(self.partial_path, self.final_path)

    def get_state(self) -> dict:
        return {"best": None if self.best is None else float(self.best)}

    def set_state(self, state: dict) -> None:
        self.best = state["best"]


def truncate_history(path: Path, end_epoch: int) -> None:
    """Keeps the history rows of epochs before ``end_epoch``: a killed run may have logged
    an epoch whose checkpoint it did not write, which the resumed run trains again."""
    import csv

    if not path.is_file():
        return
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        fields, rows = reader.fieldnames, [row for row in reader if int(row["epoch"]) < end_epoch]
    if not fields:
        return
    temporary = path.with_name(".history.csv.partial")
    with temporary.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


class LossNotFinite(Exception):
    """The training loss became NaN or infinite (raised by :class:`FailOnNonFiniteLoss`)."""

    def __init__(self, epoch: int, batch: int, loss):
        super().__init__(f"the training loss became {loss} at epoch {epoch + 1}, batch {batch + 1}")
        self.epoch, self.batch, self.loss = epoch, batch, loss


class FailOnNonFiniteLoss(keras.callbacks.TerminateOnNaN):
    """Keras's TerminateOnNaN, raising an error that names the epoch and batch. Raising (not
    stopping) keeps fit from ending normally, so the run is marked failed, its checkpoints kept."""

    def __init__(self):
        super().__init__(raise_error=True)
        self._epoch = 0
        self.first_batch = 0
        self._first_epoch_of_fit = True

    def start_fit(self, first_batch: int) -> None:
        self.first_batch = first_batch
        self._first_epoch_of_fit = True

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        self._offset = self.first_batch if self._first_epoch_of_fit else 0
        self._first_epoch_of_fit = False

    def on_batch_end(self, batch, logs=None):
        try:
            super().on_batch_end(batch, logs)
        except RuntimeError as error:
            raise LossNotFinite(self._epoch, self._offset + batch, (logs or {}).get("loss")) from error
