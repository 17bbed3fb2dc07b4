"""``kcv fit``: from a recipe to a finished, evaluated run directory.

The order matters: every check that can refuse the user's input (recipe, data, model)
runs before the run directory is created, so bad input leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

from kerascv_app import backend as backend_module
from kerascv_app import faults
from kerascv_app import runs as runs_module
from kerascv_app.config import Config, TrainConfig
from kerascv_app.data.prepare import PreparedData, evaluation_dataset, prepare_data
from kerascv_app.distribution import start_distribution
from kerascv_app.errors import UserError
from kerascv_app.models.backbones import resolve_backbone
from kerascv_app.models.transfer import transfer_environment
from kerascv_app.runs import RunDirectory
from kerascv_app.train.lifecycle import finish_run, started_run


def fit(
    config: Config,
    recipe_source: str,
    backend: str,
    data_dir: str | Path | None = None,
    runs_dir: str | Path = "runs",
    show_progress: bool = True,
) -> RunDirectory:
    """Trains a new run from a resolved config."""
    if config.train.loop == "fast":
        from kerascv_app.train.fast import fit_fast

        return fit_fast(config, recipe_source, backend, data_dir, runs_dir, show_progress)
    import keras

    # First of all: TensorFlow's multi-worker runtime cannot start once an op has run.
    distribution = start_distribution(config.train.distribution, backend)
    # A run backbone is recorded as an absolute path, so that resume finds the same model.
    config = resolve_backbone(config, runs_dir)
    backend_module.set_precision(config.train.precision)
    keras.utils.set_random_seed(config.train.seed)
    prepared = prepare_data(config, data_dir)
    if show_progress:
        _say(prepared.cache.line())
        if config.learning_rate_scaling_line():
            _say(config.learning_rate_scaling_line())
    # config.json keeps the recipe's config; training uses its batch and rate for the replicas.
    training_config = distribution.training_config(config)
    # Building once before the run directory exists refuses bad model options early.
    with distribution.scope():
        model = _compiled_model(training_config, prepared)

    environment = {
        **environment_record(training_config, backend, distribution, prepared, data_dir),
        **transfer_environment(model, config),
    }
    with started_run(distribution.runs_dir(runs_dir), config, recipe_source, backend, environment, prepared) as run:
        return _train_and_finish(run, training_config, prepared, model, show_progress, distribution)


def resume(
    run: RunDirectory, backend: str, data_dir: str | Path | None = None, show_progress: bool = True
) -> RunDirectory:
    """Continues an unfinished run at the batch after its newest good checkpoint."""
    import keras

    from kerascv_app.train.checkpoint import CheckpointStore, truncate_history

    if run.is_finished:
        raise UserError(f"{run.path} is already finished: nothing to resume")
    config = _recorded_config(run)
    if config.train.loop == "fast":
        raise UserError(
            f"{run.path} was trained with train.loop = 'fast', which "
            "keeps no state to resume from: train it again with kcv fit"
        )
    with run.locked():
        environment = run.read_json("environment.json")
        recorded_splits = run.read_json("splits.json")
        if environment.get("backend") != backend:
            raise UserError(
                f"{run.path} was trained with the {environment.get('backend')} "
                f"backend: resume it with --backend {environment.get('backend')}"
            )
        found = CheckpointStore(run.backup_dir).latest()
        if found is None:
            raise UserError(
                f"{run.path} has no checkpoint to resume from ({run.backup_dir} is missing, "
                f"empty or damaged): train it again with: {restart_command(run, environment)}"
            )
        checkpoint_path, restored = found
        distribution = start_distribution(environment.get("distribution", "none"), backend)
        training_config = _resumable_training_config(run, config, environment, distribution)
        backend_module.set_precision(config.train.precision)
        keras.utils.set_random_seed(config.train.seed)
        prepared = prepare_data(config, data_dir if data_dir is not None else environment.get("data_dir"))
        if prepared.splits.record() != recorded_splits:
            raise UserError(
                f"the data found now differs from the data {run.path} "
                "was trained on (splits.json): pass the same --data-dir"
            )
        with distribution.scope():
            model = _compiled_model(training_config, prepared)
        position = restored.position
        steps = prepared.steps_per_epoch(training_config.data.batch_size)
        stage = f" (stage {position.stage})" if config.model.backbone else ""
        print(
            f"resuming {run.path} at epoch {position.epoch + 1}, batch "
            f"{position.batch + 1} of {steps}{stage}, from {checkpoint_path.name}",
            file=sys.stderr,
        )
        # Rows of epochs the checkpoint had not finished are logged again by the resumed run.
        truncate_history(run.file("history.csv"), position.epoch)
        run.set_status("running")
        return _train_and_finish(
            run, training_config, prepared, model, show_progress, distribution, resume_from=(checkpoint_path, restored)
        )


def _recorded_config(run: RunDirectory) -> Config:
    try:
        return Config.from_dict(run.read_json("config.json"))
    except UserError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise UserError(
            f"{run.file('config.json')} is not a config kcv fit wrote "
            f"({type(error).__name__}: {error}): this run cannot be resumed"
        ) from error


def restart_command(run: RunDirectory, environment: dict) -> str:
    """The command that trains the run again from its start (the one that created it)."""
    import shlex

    command = environment.get("command") or []
    if len(command) > 1 and command[1] == "fit":
        return "kcv " + shlex.join(str(part) for part in command[1:])
    return f"kcv fit {run.file('recipe.py')}"


def _resumable_training_config(run: RunDirectory, config: Config, environment: dict, distribution) -> Config:
    """The config the run trained with; refused when the replicas now would change its global batch."""
    training_config = distribution.training_config(config)
    recorded_batch = environment.get("global_batch_size", training_config.data.batch_size)
    if training_config.data.batch_size != recorded_batch:
        raise UserError(
            f"{run.path} trained with a global batch of {recorded_batch} "
            f"({environment.get('replicas')} replicas x {config.data.batch_size}) "
            f"but {distribution.replicas} replicas now give {training_config.data.batch_size}: "
            f"resume it on {environment.get('replicas')} devices"
        )
    return training_config


def _compiled_model(config: Config, prepared: PreparedData):
    from kerascv_app.models import create_model

    model = create_model(config, prepared.num_classes)
    compile_model(model, config, prepared)
    return model


def compile_model(model, config: Config, prepared: PreparedData, train_config: TrainConfig | None = None) -> None:
    """Compiles with the run's loss and metrics; a second training stage passes its own optimizer settings."""
    import keras

    from kerascv_app.train.optim import create_optimizer

    train_config = train_config or config.train
    metrics = [keras.metrics.CategoricalAccuracy(name="accuracy")]
    if prepared.num_classes > 5:
        metrics.append(keras.metrics.TopKCategoricalAccuracy(k=5, name="top5_accuracy"))
    model.compile(
        optimizer=create_optimizer(train_config, prepared.steps_per_epoch(config.data.batch_size)),
        loss=keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=train_config.label_smoothing),
        metrics=metrics,
        jit_compile={"auto": "auto", "true": True, "false": False}[train_config.jit_compile],
    )


def _train_and_finish(
    run: RunDirectory,
    config: Config,
    prepared: PreparedData,
    model,
    show_progress: bool,
    distribution,
    resume_from=None,
) -> RunDirectory:
    from kerascv_app.train.checkpoint import LossNotFinite

    validation_dataset = evaluation_dataset(prepared, config, "validation")
    if validation_dataset is not None:
        validation_dataset = distribution.adapt_dataset(validation_dataset, config.data.batch_size)
    train_epochs = _epoch_trainer(
        run, config, prepared, model, show_progress, distribution, validation_dataset, resume_from
    )
    with run.marking_failures():
        # Everything after training too: a failure while saving or evaluating marks the run
        # failed (with its reason), so that export and ensembles never take its model.keras.
        try:
            if config.model.backbone:
                from kerascv_app.train.stages import fit_in_stages

                fit_in_stages(
                    model,
                    config,
                    prepared,
                    train_epochs,
                    compile_model=compile_model,
                    distribution_scope=distribution.scope,
                    resume_from=resume_from,
                )
            else:
                train_epochs(1, 0, config.train.epochs)
        except LossNotFinite as error:
            run.set_status("failed", reason=str(error))
            raise UserError(
                f"{error}: {run.path} is marked failed. Train it again "
                "with other settings, e.g. a lower train.learning_rate, "
                "train.clip_norm or train.precision=float32: kcv fit "
                f"{run.file('recipe.py')} --set train.learning_rate=..."
            ) from None
        best_path = run.file("best.weights.h5")
        if config.train.keep_best and best_path.is_file():
            model.load_weights(best_path)
        finish_run(run, model, config, prepared)
    return run


def _epoch_trainer(
    run,
    config: Config,
    prepared: PreparedData,
    model,
    show_progress: bool,
    distribution,
    validation_dataset,
    resume_from,
):
    """``train_epochs(stage, first_epoch, end_epoch)``: trains a stage's epochs with model.fit,
    from the checkpoint ``resume_from`` when it lies in that stage (the model compiled for
    the stage by then), writing checkpoints as it goes."""
    import contextlib

    from kerascv_app.data.prepare import training_epochs
    from kerascv_app.train.checkpoint import CheckpointStore, Position, TrainingCheckpoint

    store = CheckpointStore(run.backup_dir)
    steps = prepared.steps_per_epoch(config.data.batch_size)
    has_validation = validation_dataset is not None

    def train_epochs(stage: int, first_epoch: int, end_epoch: int, stage_name: str = "", extra_callbacks=()) -> None:
        callbacks, stateful, per_fit = _callbacks(run, config, prepared, has_validation)
        checkpoint = TrainingCheckpoint(store, stage, config.train.checkpoint_every, stateful, steps)
        checkpoint.set_model(model)
        if resume_from is not None and resume_from[1].position.stage == stage:
            path, restored = resume_from
            with distribution.scope():
                store.load(model, path)
            for name, callback in stateful.items():
                if name in restored.callback_state:
                    callback.set_state(restored.callback_state[name])
            start = restored.position
            # Early stopping had ended the stage before the kill: nothing left to train in it.
            stopped_early = bool(restored.callback_state.get("early_stopping", {}).get("stopped_epoch"))
        else:
            stopped_early = False
            start = Position(stage, first_epoch, 0)
            # Built now, so that this first checkpoint holds the optimizer's (zero) state too.
            if not model.optimizer.built:
                with distribution.scope():
                    model.optimizer.build(model.trainable_variables)
            # Written before the first step, so that a kill at any later moment can be resumed.
            checkpoint.save(start, before_fit=True)
        fits = []  # (first epoch, end epoch, batches of the first epoch already trained)
        if start.batch:
            fits.append((start.epoch, start.epoch + 1, start.batch))
        if start.epoch + (1 if start.batch else 0) < end_epoch:
            fits.append((start.epoch + (1 if start.batch else 0), end_epoch, 0))
        if stopped_early:
            fits = []
        # The checkpoint comes after the callbacks whose state it records, before the kill switch.
        all_callbacks = [*extra_callbacks, *callbacks, checkpoint]
        for index, (first, end, skip) in enumerate(fits):
            for callback in [checkpoint, *per_fit]:
                callback.start_fit(skip)
            progress = [_progress(config, prepared, end_epoch, stage_name, skip)] if show_progress else []
            dataset = distribution.adapt_dataset(
                training_epochs(prepared, config, first, end, skip), config.data.batch_size
            )
            # Keras swaps the EMA into the weights at the end of every fit; only the last fit
            # of a stage may, or the rest of the stage would train from the average.
            last = index == len(fits) - 1
            with contextlib.nullcontext() if last else _no_ema_finalize(model):
                model.fit(
                    dataset,
                    validation_data=validation_dataset,
                    initial_epoch=first,
                    epochs=end,
                    steps_per_epoch=steps - skip,
                    callbacks=[*all_callbacks, *progress, *faults.kill_after_epoch_callbacks()],
                    verbose=0,
                    # The dataset is already shuffled by tf.data; Keras cannot shuffle a dataset.
                    shuffle=False,
                )
            if model.stop_training:
                break
        if not fits and config.train.ema:
            # The killed process had trained the stage to its end; its fit would have ended so.
            model.optimizer.finalize_variable_values(model.trainable_weights)

    return train_epochs


@contextlib.contextmanager
def _no_ema_finalize(model):
    optimizer = model.optimizer
    optimizer.finalize_variable_values = lambda variables: None
    try:
        yield
    finally:
        del optimizer.finalize_variable_values


def _callbacks(run: RunDirectory, config: Config, prepared: PreparedData, has_validation: bool):
    """The run's callbacks for one training stage; those whose state a checkpoint records
    (by name); those told at each fit how many batches of its first epoch were trained."""
    import keras

    from kerascv_app.train.checkpoint import BestWeights, FailOnNonFiniteLoss, ResumableEarlyStopping
    from kerascv_app.train.timing import EpochTimer

    monitor_loss = "val_loss" if has_validation else "loss"
    monitor_accuracy = "val_accuracy" if has_validation else "accuracy"
    non_finite = FailOnNonFiniteLoss()
    callbacks = [
        EpochTimer(len(prepared.splits.train)),
        # Raising keeps the checkpoints, so a diverged run's state is still there to look at.
        non_finite,
    ]
    if config.train.ema:
        # Validation (hence keep_best and early stopping) sees the averaged weights.
        callbacks.append(keras.callbacks.SwapEMAWeights(swap_on_epoch=False))
    callbacks += [
        keras.callbacks.CSVLogger(str(run.file("history.csv")), append=True),
        keras.callbacks.TensorBoard(str(run.file("tensorboard")), write_graph=False, profile_batch=0),
    ]
    stateful = {}
    if config.train.keep_best:
        stateful["best_weights"] = BestWeights(
            run.file("best.weights.h5"), monitor_accuracy, use_ema=bool(config.train.ema)
        )
    if config.train.early_stopping_patience:
        stateful["early_stopping"] = ResumableEarlyStopping(
            monitor=monitor_loss, patience=config.train.early_stopping_patience
        )
    return callbacks + list(stateful.values()), stateful, [non_finite]


def _progress(config: Config, prepared: PreparedData, total_epochs: int, stage_name: str, first_batch: int):
    """The progress display; a resumed epoch's bar starts at the batch it resumes from."""
    import keras

    from kerascv_app.train.progress import RichProgress, progress_callback

    display = progress_callback(
        total_epochs, prepared.steps_per_epoch(config.data.batch_size), config.data.batch_size, stage=stage_name
    )

    class ResumedProgress(keras.callbacks.Callback):
        """The display, told batch numbers counted from the epoch's start, not the fit's."""

        offset = first_batch

        def set_model(self, model):
            super().set_model(model)
            display.set_model(model)

        def set_params(self, params):
            super().set_params(params)
            display.set_params(params)

        def on_train_begin(self, logs=None):
            display.on_train_begin(logs)

        def on_epoch_begin(self, epoch, logs=None):
            display.on_epoch_begin(epoch, logs)
            if isinstance(display, RichProgress):
                display.progress.update(display._batch_task, completed=self.offset)

        def on_train_batch_end(self, batch, logs=None):
            display.on_train_batch_end(batch + self.offset, logs)

        def on_epoch_end(self, epoch, logs=None):
            display.on_epoch_end(epoch, logs)
            self.offset = 0

        def on_train_end(self, logs=None):
            display.on_train_end(logs)

    return ResumedProgress()


def environment_record(config: Config, backend: str, distribution, prepared: PreparedData, data_dir) -> dict:
    # distribution, replicas, workers, worker_index, global_batch_size, learning_rate
    record = runs_module.environment_record(
        config, backend, backend_module.devices(), prepared, data_dir, distribution.record(config)
    )
    if prepared.cache is not None:
        record["data_cache"] = prepared.cache.record()
    return record


def _say(line: str) -> None:
    """kcv's own start-up lines go to stderr: stdout holds the epochs and the summary."""
    print(line, file=sys.stderr, flush=True)
