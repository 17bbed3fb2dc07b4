"""``kcv fit``: from a recipe to a finished, evaluated run directory.

The order matters: every check that can refuse the user's input (recipe, data, model)
runs before the run directory is created, so bad input leaves nothing behind.
"""

from __future__ import annotations

import csv
import os
import signal
import sys
from pathlib import Path

from kerascv_app import backend as backend_module
from kerascv_app.config import Config, TrainConfig
from kerascv_app.data.prepare import PreparedData, prepare_data, report_undecodable_files, training_datasets
from kerascv_app.errors import UserError
from kerascv_app.model_dir import ModelDirectory
from kerascv_app.models.backbones import resolve_backbone
from kerascv_app.models.transfer import transfer_environment
from kerascv_app import runs as runs_module
from kerascv_app.runs import RunDirectory

#: Fault injection for the resume tests: the process kills itself (SIGKILL, no clean-up)
#: at the end of this epoch number (1-based), after the backup was written.
KILL_AFTER_EPOCH_VARIABLE = "KCV_KILL_AFTER_EPOCH"


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
    distribution = backend_module.start_distribution(config.train.distribution, backend)
    # A run backbone is recorded as an absolute path, so that resume finds the same model.
    config = resolve_backbone(config, runs_dir)
    backend_module.set_precision(config.train.precision)
    keras.utils.set_random_seed(config.train.seed)
    prepared = prepare_data(config, data_dir)
    if show_progress:
        _say(prepared.cache.line())
    # config.json keeps the recipe's config; training uses its batch and rate for the replicas.
    training_config = distribution.training_config(config)
    # Building once before the run directory exists refuses bad model options early.
    with distribution.scope():
        model = _compiled_model(training_config, prepared)

    run = RunDirectory.create(distribution.runs_dir(runs_dir), config.name)
    run.set_status("running", recipe=config.name, backend=backend, started=_now())
    run.write_json("config.json", config.to_dict())
    run.file("recipe.py").write_text(recipe_source)
    run.write_json("environment.json", {**environment_record(training_config, backend, distribution, prepared, data_dir), **transfer_environment(model, config)})
    run.write_json("splits.json", prepared.splits.record())
    return _train_and_finish(run, training_config, prepared, model, show_progress, distribution)


def resume(run: RunDirectory, backend: str, data_dir: str | Path | None = None, show_progress: bool = True) -> RunDirectory:
    """Continues an unfinished run from its last completed epoch."""
    import keras

    if run.is_finished:
        raise UserError(f"{run.path} is already finished: nothing to resume")
    config = Config.from_dict(run.read_json("config.json"))
    if config.train.loop == "fast":
        raise UserError(f"{run.path} was trained with train.loop = 'fast', which keeps no state to resume from: train it again with kcv fit")
    environment = run.read_json("environment.json")
    if environment["backend"] != backend:
        raise UserError(f"{run.path} was trained with the {environment['backend']} backend: resume it with --backend {environment['backend']}")
    distribution = backend_module.start_distribution(environment.get("distribution", "none"), backend)
    training_config = _resumable_training_config(run, config, environment, distribution)
    backend_module.set_precision(config.train.precision)
    keras.utils.set_random_seed(config.train.seed)
    prepared = prepare_data(config, data_dir if data_dir is not None else environment.get("data_dir"))
    if prepared.splits.record() != run.read_json("splits.json"):
        raise UserError(f"the data found now differs from the data {run.path} was trained on (splits.json): pass the same --data-dir")
    with distribution.scope():
        model = _compiled_model(training_config, prepared)
    run.set_status("running")
    return _train_and_finish(run, training_config, prepared, model, show_progress, distribution)


def _resumable_training_config(run: RunDirectory, config: Config, environment: dict, distribution) -> Config:
    """The config the run trained with; refused when the replicas now would change its global batch."""
    training_config = distribution.training_config(config)
    recorded_batch = environment.get("global_batch_size", training_config.data.batch_size)
    if training_config.data.batch_size != recorded_batch:
        raise UserError(
            f"{run.path} trained with a global batch of {recorded_batch} ({environment.get('replicas')} replicas x {config.data.batch_size}) "
            f"but {distribution.replicas} replicas now give {training_config.data.batch_size}: resume it on {environment.get('replicas')} devices"
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


def _train_and_finish(run: RunDirectory, config: Config, prepared: PreparedData, model, show_progress: bool, distribution) -> RunDirectory:
    import keras

    train_dataset, validation_dataset = training_datasets(prepared, config)
    train_dataset = distribution.adapt_dataset(train_dataset, config.data.batch_size)
    if validation_dataset is not None:
        validation_dataset = distribution.adapt_dataset(validation_dataset, config.data.batch_size)
    has_validation = validation_dataset is not None
    with run.marking_failures():
        # Everything after training too: a failure while saving or evaluating marks the run
        # failed (with its reason), so that export and ensembles never take its model.keras.
        if config.model.backbone:
            from kerascv_app.train.stages import fit_in_stages

            fit_in_stages(
                model, run, config, prepared, train_dataset, validation_dataset,
                make_callbacks=lambda **stage: _callbacks(run, config, prepared, show_progress, has_validation, **stage),
                compile_model=compile_model,
                distribution_scope=distribution.scope,
            )
        else:
            model.fit(
                train_dataset,
                validation_data=validation_dataset,
                epochs=config.train.epochs,
                callbacks=_callbacks(run, config, prepared, show_progress, has_validation),
                verbose=0,
                # The dataset is already shuffled by tf.data; Keras cannot shuffle a dataset.
                shuffle=False,
            )
        best_path = run.file("best.weights.h5")
        if config.train.keep_best and best_path.is_file():
            model.load_weights(best_path)
        model.save(run.model_path)
        ModelDirectory(
            path=run.path, kind="run", class_names=tuple(prepared.class_names), image_size=config.data.image_size,
            channels=config.data.channels, precision=config.train.precision, backend=keras.backend.backend(),
        ).write()
        from kerascv_app.evaluate.evaluate import write_evaluation

        _deduplicate_history(run.file("history.csv"))
        metrics = write_evaluation(run, model, prepared, config)
        report_undecodable_files(run, prepared)
        _remove_tree(run.backup_dir)
        from kerascv_app.report import write_report_quietly  # report.html: the parts that need no images; never fails the run

        write_report_quietly(run.path)
        run.set_status("finished", finished=_now(), test_accuracy=metrics["test"].get("accuracy"))
    return run


def _callbacks(
    run: RunDirectory, config: Config, prepared: PreparedData, show_progress: bool, has_validation: bool,
    backup_dir: Path | None = None, total_epochs: int | None = None, stage_name: str = "",
) -> list:
    """The run's callbacks; a training stage (train/stages.py) has its own backup folder,
    its own last epoch and its name in the progress display."""
    import keras

    from kerascv_app.train.progress import progress_callback
    from kerascv_app.train.timing import EpochTimer

    monitor_loss = "val_loss" if has_validation else "loss"
    monitor_accuracy = "val_accuracy" if has_validation else "accuracy"
    callbacks = [
        # Restores weights, optimizer state and epoch after a crash; deleted at the end.
        keras.callbacks.BackupAndRestore(str(backup_dir or run.backup_dir), save_freq="epoch", delete_checkpoint=False),
        EpochTimer(len(prepared.splits.train)),
        keras.callbacks.CSVLogger(str(run.file("history.csv")), append=True),
        keras.callbacks.TensorBoard(str(run.file("tensorboard")), write_graph=False, profile_batch=0),
        # Raising keeps the backup, so a diverged run can be resumed with other settings.
        keras.callbacks.TerminateOnNaN(raise_error=True),
    ]
    if config.train.keep_best:
        callbacks.append(
            keras.callbacks.ModelCheckpoint(str(run.file("best.weights.h5")), monitor=monitor_accuracy, mode="max", save_best_only=True, save_weights_only=True)
        )
    if config.train.early_stopping_patience:
        callbacks.append(keras.callbacks.EarlyStopping(monitor=monitor_loss, patience=config.train.early_stopping_patience))
    if show_progress:
        callbacks.append(progress_callback(total_epochs or config.train.epochs, prepared.steps_per_epoch(config.data.batch_size), config.data.batch_size, stage=stage_name))
    kill_after = os.environ.get(KILL_AFTER_EPOCH_VARIABLE)
    if kill_after:
        callbacks.append(_kill_after_epoch(int(kill_after)))
    return callbacks


def _kill_after_epoch(epoch_number: int):
    """A callback that dies like a killed process (SIGKILL, no clean-up): for resume tests."""
    import keras

    class KillAfterEpoch(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch + 1 == epoch_number:
                sys.stdout.flush()
                sys.stderr.flush()
                os.kill(os.getpid(), signal.SIGKILL)

    return KillAfterEpoch()


def _deduplicate_history(path: Path) -> None:
    """Keeps the last row of each epoch: a killed run may have logged an epoch it redoes."""
    if not path.is_file():
        return
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        return
    by_epoch = {row["epoch"]: row for row in rows}
    ordered = [by_epoch[epoch] for epoch in sorted(by_epoch, key=int)]
    temporary = path.with_name(".history.csv.tmp")
    with temporary.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0].keys()))
        writer.writeheader()
        writer.writerows(ordered)
    os.replace(temporary, path)


def environment_record(config: Config, backend: str, distribution, prepared: PreparedData, data_dir) -> dict:
    # distribution, replicas, workers, worker_index, global_batch_size, learning_rate
    record = runs_module.environment_record(config, backend, backend_module.devices(), prepared, data_dir, distribution.record(config))
    if prepared.cache is not None:
        record["data_cache"] = prepared.cache.record()
    return record


def _say(line: str) -> None:
    """kcv's own start-up lines go to stderr: stdout holds the epochs and the summary."""
    print(line, file=sys.stderr, flush=True)


def _remove_tree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def _now() -> str:
    import datetime

    return datetime.datetime.now().isoformat(timespec="seconds")
