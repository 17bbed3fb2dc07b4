"""``train.loop = "fast"``: airbench's way of training, for short runs on small datasets.

The images are decoded once to uint8 arrays without TensorFlow (kerascv_app/data/arrays.py)
and held on the device; each epoch's order, flips (alternating) and shifts are drawn on
the host, and every batch is gathered and augmented on the device inside one compiled
training step (kerascv_app/train/fast_steps.py). No Keras callback, no tf.data, no
TensorBoard: the whole path runs where TensorFlow is not installed. Imported by
:func:`kerascv_app.train.fit.fit` once the backend is chosen.

Order of work, and what ``train_seconds`` counts (what airbench counts):

    untimed  load and decode the data, build the model, send the images to the device,
             compile every function on inputs of the real shapes (``compile_seconds``)
    timed    fit the PatchWhitening filters to training images
    timed    each epoch's training steps, ended by waiting for the device
    untimed  each epoch's validation pass, if there is a validation split
    timed    the final test evaluation with test-time augmentation, read back to the host
    untimed  save the model, evaluate it again the standard way (metrics.json, predictions,
             plots)

``wall_seconds`` runs from the start of :func:`fit_fast` to the finished run directory,
everything included but the process's start-up and imports before it.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time

import keras
import numpy as np
from keras import ops

from kerascv_app import backend as backend_module
from kerascv_app.config import Config
from kerascv_app.data.arrays import ArrayData, split_arrays
from kerascv_app.data.prepare import PreparedData, prepare_data
from kerascv_app.errors import UserError
from kerascv_app.evaluate.metrics import classification_metrics, softmax
from kerascv_app.models import create_model
from kerascv_app.models.whitening import patch_covariance, whitening_layers
from kerascv_app.runs import RunDirectory, environment_record
from kerascv_app.train.fast_steps import (
    LOOKAHEAD_EVERY_STEPS,
    FastSteps,
    StepSettings,
    backend_compile,
    draw_epoch_plan,
    scalar,
    wait_for_device,
    whitening_bias_ids,
)
from kerascv_app.train.lifecycle import finish_run, require_finite_predictions, started_run
from kerascv_app.train.optim import learning_rate_schedule

# Training images the PatchWhitening filters are computed from (airbench: 5,000).
WHITENING_IMAGES = 5000
# Images per compiled prediction call; the last batch is padded to this size so that the
# prediction function compiles once.
EVALUATION_BATCH_SIZE = 2000

TIMING_DESCRIPTION = (
    "train_seconds: PatchWhitening fit + every epoch's training steps + the final test evaluation with "
    "test-time augmentation, each ended by waiting for the device; excludes data loading, model building, "
    "compilation (compile_seconds) and per-epoch validation. wall_seconds: fit_fast start to finished run "
    "directory, everything included but the process's start-up and imports."
)


def fit_fast(
    config: Config, recipe_source: str, backend: str, data_dir=None, runs_dir="runs", show_progress: bool = True
) -> RunDirectory:
    """Trains, evaluates and writes a run directory, like ``kcv fit``, with the fast loop."""
    wall_start = time.perf_counter()
    augmentation = fast_augmentation(config)
    backend_module.set_precision(config.train.precision)
    keras.utils.set_random_seed(config.train.seed)
    data_start = time.perf_counter()
    prepared = prepare_data(config, data_dir)
    arrays = {
        name: split_arrays(
            getattr(prepared.splits, name), config.data.image_size, config.data.channels, prepared.data.fingerprint
        )
        for name in ("train", "validation", "test")
    }
    data_seconds = time.perf_counter() - data_start
    if len(arrays["train"]) == 0:
        raise UserError(f"{prepared.data.name} has no training images")
    # The model holds no augmentation: the loop augments whole batches itself.
    model = create_model(
        dataclasses.replace(config, augment=dataclasses.replace(config.augment, ops=())), prepared.num_classes
    )
    # The recipe's config is what config.json records; training uses its rates scaled to the
    # batch size (train.learning_rate_batch_size), recorded in environment.json.
    training_config = config.with_learning_rates_for_batch_size()
    if show_progress and config.learning_rate_scaling_line():
        print(config.learning_rate_scaling_line(), file=sys.stderr, flush=True)
    trainer = FastTrainer(model, training_config, arrays, augmentation, show_progress)

    environment = fast_environment(training_config, backend, prepared, data_dir)
    with started_run(runs_dir, config, recipe_source, backend, environment, prepared) as run:
        result = trainer.run()
        finish_fast_run(run, trainer, prepared, result, data_seconds, wall_start)
    return run


@dataclasses.dataclass(frozen=True)
class FastAugmentation:
    flip: bool
    padding: int


def fast_augmentation(config: Config) -> FastAugmentation:
    """The recipe's ops as the fast loop applies them: a horizontal flip (probability 1/2,
    alternating between epochs) and a shift of up to ``padding`` pixels (reflect fill)."""
    if config.model.backbone:
        raise UserError(
            "train.loop = 'fast' trains a model from scratch: set model.backbone = '' or train.loop = 'keras'"
        )
    flip, padding = False, 0
    for operation in config.augment.ops:
        arguments = operation.arguments()
        if operation.name == "flip" and arguments.get("mode") == "horizontal" and arguments.get("probability") == 0.5:
            flip = True
        elif operation.name == "pad_crop" and arguments.get("fill") == "reflect":
            padding = int(arguments["padding"])
        else:
            raise UserError(
                f"augment op {operation} is not one the fast loop applies: "
                "it takes op('flip') (horizontal, probability 0.5) "
                "and op('pad_crop', padding=N, fill='reflect'); use train.loop = 'keras' for other ops"
            )
    return FastAugmentation(flip=flip, padding=padding)


@dataclasses.dataclass
class FastResult:
    history: list[dict]
    test_tta_logits: np.ndarray
    timing: dict


@dataclasses.dataclass(frozen=True)
class OnDevice:
    """A split's images on the device, zero-padded to whole evaluation batches."""

    images: object
    count: int
    batch_size: int

    @property
    def batches(self) -> int:
        return self.images.shape[0] // self.batch_size


class FastTrainer:
    def __init__(
        self, model, config: Config, arrays: dict[str, ArrayData], augmentation: FastAugmentation, show_progress: bool
    ):
        train = arrays["train"]
        self.model = model
        self.config = config
        self.arrays = arrays
        self.augmentation = augmentation
        self.show_progress = show_progress
        # Full batches only (airbench drops the last partial batch of an epoch); a split
        # smaller than a batch is one batch.
        self.batch_size = min(config.data.batch_size, len(train))
        self.steps_per_epoch = len(train) // self.batch_size
        self.total_steps = self.steps_per_epoch * config.train.epochs
        settings = StepSettings(
            batch_size=self.batch_size,
            padding=augmentation.padding,
            label_smoothing=config.train.label_smoothing,
            momentum=config.train.momentum,
            nesterov=config.train.nesterov,
            weight_decay=config.train.weight_decay,
            learning_rate=learning_rate_schedule(config.train, self.steps_per_epoch),
            lookahead_decay=config.train.lookahead_decay,
            total_steps=self.total_steps,
        )
        self.steps = FastSteps(model, settings, config.train.bias_learning_rate_scale)
        self.whitening_bias = whitening_bias_ids(model)
        self.covariance_functions = [_covariance_function(model, layer) for layer in whitening_layers(model)]

    # ------------------------------------------------------------------ the run

    def run(self) -> FastResult:
        train = self.arrays["train"]
        images, labels = ops.convert_to_tensor(train.images), ops.convert_to_tensor(train.labels.astype(np.int32))
        test = self._on_device(self.arrays["test"])
        validation = self._on_device(self.arrays["validation"]) if len(self.arrays["validation"]) else None
        whitening_images = images[: min(WHITENING_IMAGES, len(train))]
        wait_for_device((images, labels, test.images, whitening_images))
        compile_seconds = self._compile(images, labels, whitening_images, test, validation)

        timed_start = time.perf_counter()
        self._fit_whitening(whitening_images)
        whitening_seconds = time.perf_counter() - timed_start
        state = self.steps.initial_state()
        history, epoch_seconds, average = [], [], None
        for epoch in range(self.config.train.epochs):
            epoch_start = time.perf_counter()
            state, average, losses, corrects = self._train_epoch(state, average, epoch, images, labels)
            wait_for_device(state)
            epoch_seconds.append(time.perf_counter() - epoch_start)
            history.append(self._history_row(epoch, state, losses, corrects, epoch_seconds[-1], validation))
        evaluation_start = time.perf_counter()
        test_logits = self._predict(state, test, tta=True)
        test_accuracy = (
            float((test_logits.argmax(axis=-1) == self.arrays["test"].labels).mean()) if test.count else float("nan")
        )
        final_evaluation_seconds = time.perf_counter() - evaluation_start

        self.steps.assign_to_model(state)
        train_seconds = whitening_seconds + sum(epoch_seconds) + final_evaluation_seconds
        if self.show_progress:
            print(
                f"test accuracy with test-time augmentation {test_accuracy:.4f}; train_seconds "
                f"{train_seconds:.2f} (compilation {compile_seconds:.1f} s, not counted)",
                flush=True,
            )
        timing = {
            "train_seconds": train_seconds,
            "compile_seconds": compile_seconds,
            "whitening_seconds": whitening_seconds,
            "epoch_seconds": epoch_seconds,
            "final_evaluation_seconds": final_evaluation_seconds,
            "counted": TIMING_DESCRIPTION,
        }
        return FastResult(history=history, test_tta_logits=test_logits, timing=timing)

    def _train_epoch(self, state, average, epoch: int, images, labels):
        """One epoch's steps, dispatched without waiting; the lookahead every 5 steps."""
        train_config = self.config.train
        plan = self._plan(epoch)
        mask = self._update_mask(epoch)
        lookahead_on = train_config.lookahead_decay > 0 and epoch >= train_config.lookahead_start_epoch
        losses, corrects = [], []
        for batch_index in range(self.steps_per_epoch):
            state, loss, correct = self.steps.train_step(
                state, images, labels, plan, scalar(batch_index, "int32"), mask
            )
            losses.append(loss)
            corrects.append(correct)
            step = epoch * self.steps_per_epoch + batch_index + 1
            if lookahead_on and step % LOOKAHEAD_EVERY_STEPS == 0:
                if average is None:
                    average = self.steps.start_average(state)
                else:
                    state, average = self.steps.lookahead(
                        state, average, scalar(self.steps.lookahead_decay(step), "float32")
                    )
        if average is not None:
            # airbench ends each epoch on the average itself (an update with decay 1).
            state, average = self.steps.lookahead(state, average, scalar(1.0, "float32"))
        return state, average, losses, corrects

    def _plan(self, epoch: int) -> tuple:
        count = len(self.arrays["train"])
        return draw_epoch_plan(
            count, epoch, self.config.train.seed, self.augmentation.padding, self.augmentation.flip
        ).values()

    def _update_mask(self, epoch: int):
        epochs = self.config.train.whitening_bias_epochs
        return self.steps.update_mask(self.whitening_bias if epochs and epoch >= epochs else set())

    def _fit_whitening(self, whitening_images) -> None:
        for layer, covariance_function in zip(whitening_layers(self.model), self.covariance_functions):
            layer.set_filters(np.asarray(ops.convert_to_numpy(covariance_function(whitening_images)), dtype=np.float64))

    def _compile(self, images, labels, whitening_images, test: OnDevice, validation: OnDevice | None) -> float:
        """Runs every compiled function once on inputs of the real shapes and throws the
        results away, so that compilation stays out of train_seconds."""
        start = time.perf_counter()
        outputs = [covariance_function(whitening_images) for covariance_function in self.covariance_functions]
        state = self.steps.initial_state()
        trained = self.steps.train_step(state, images, labels, self._plan(0), scalar(0, "int32"), self._update_mask(0))
        outputs.append(trained)
        if self.config.train.lookahead_decay > 0:
            outputs.append(
                self.steps.lookahead(trained[0], self.steps.start_average(trained[0]), scalar(1.0, "float32"))
            )
        outputs.append(self.steps.predict_tta_batch(state, test.images, scalar(0, "int32"), test.batch_size))
        if validation is not None:
            outputs.append(
                self.steps.predict_batch(state, validation.images, scalar(0, "int32"), validation.batch_size)
            )
        # Dispatch is asynchronous: the timer must not start while warm-up work still runs.
        wait_for_device(outputs)
        return time.perf_counter() - start

    # ------------------------------------------------------------------ evaluation

    def _on_device(self, data: ArrayData) -> OnDevice:
        count = len(data)
        batch_size = min(EVALUATION_BATCH_SIZE, max(count, 1))
        padded = np.zeros((max(1, math.ceil(count / batch_size)) * batch_size, *data.images.shape[1:]), dtype=np.uint8)
        padded[:count] = data.images
        return OnDevice(ops.convert_to_tensor(padded), count, batch_size)

    def _predict(self, state, data: OnDevice, tta: bool) -> np.ndarray:
        """Logits (count, classes) as float32 on the host: reading them waits for the device."""
        predict = self.steps.predict_tta_batch if tta else self.steps.predict_batch
        logits = [predict(state, data.images, scalar(index, "int32"), data.batch_size) for index in range(data.batches)]
        return np.concatenate([ops.convert_to_numpy(ops.cast(batch, "float32")) for batch in logits])[: data.count]

    def _history_row(self, epoch: int, state, losses, corrects, seconds: float, validation: OnDevice | None) -> dict:
        seen = len(losses) * self.batch_size
        row = {
            "epoch": epoch,
            "loss": float(np.mean([ops.convert_to_numpy(loss) for loss in losses])),
            "accuracy": float(sum(int(ops.convert_to_numpy(correct)) for correct in corrects) / seen),
        }
        if validation is not None:
            labels = self.arrays["validation"].labels
            probabilities = softmax(self._predict(state, validation, tta=False).astype(np.float64))
            row["val_loss"] = float(-np.log(np.clip(probabilities[np.arange(len(labels)), labels], 1e-12, 1.0)).mean())
            row["val_accuracy"] = float((probabilities.argmax(axis=-1) == labels).mean())
        row["epoch_seconds"] = seconds
        row["images_per_second"] = seen / seconds if seconds > 0 else float("nan")
        if self.show_progress:
            shown = "  ".join(
                f"{key} {value:.4f}" for key, value in row.items() if key not in ("epoch", "images_per_second")
            )
            print(f"epoch {epoch + 1}/{self.config.train.epochs}  {shown}", flush=True)
        return row


def _covariance_function(model, layer):
    """Compiled: model input images -> the patch covariance of what ``layer`` receives
    (after the normalisation in front of it)."""
    front = keras.Model(model.input, layer.input)
    return backend_compile(lambda images: patch_covariance(front(images, training=False), layer.patch_size))


def finish_fast_run(
    run: RunDirectory,
    trainer: FastTrainer,
    prepared: PreparedData,
    result: FastResult,
    data_seconds: float,
    wall_start: float,
) -> None:
    """The shared finish (kerascv_app/train/lifecycle.py), with the fast loop's history, its
    test-time-augmented test metrics and timing in metrics.json, and train_seconds in run.json."""
    test = trainer.arrays["test"]
    # Checked before anything is saved: non-finite logits would give one class for every image.
    require_finite_predictions(run, result.test_tta_logits, "test-time-augmented test logits")
    test_tta = (
        classification_metrics(softmax(result.test_tta_logits.astype(np.float64)), test.labels, prepared.class_names)
        if len(test)
        else None
    )

    def fast_metrics(metrics: dict) -> dict:
        timing = {
            **result.timing,
            "data_seconds": data_seconds,
            "devices": backend_module.devices(),
            "wall_seconds": time.perf_counter() - wall_start,
        }
        return {"test_tta": test_tta, "timing": timing} if test_tta is not None else {"timing": timing}

    finish_run(
        run,
        trainer.model,
        trainer.config,
        prepared,
        history_rows=result.history,
        extra_metrics=fast_metrics,
        status_fields={
            "test_tta_accuracy": (test_tta or {}).get("accuracy"),
            "train_seconds": result.timing["train_seconds"],
        },
    )


def fast_environment(config: Config, backend: str, prepared: PreparedData, data_dir) -> dict:
    """environment.json of a fast-loop run: what kcv fit records, on one device."""
    return environment_record(
        config,
        backend,
        backend_module.devices(),
        prepared,
        data_dir,
        {"loop": "fast", "distribution": "none", "replicas": 1, "learning_rate": config.train.learning_rate},
    )
