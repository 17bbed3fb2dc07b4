"""``kcv fit``: from a recipe to a finished, evaluated run directory.

The order matters: every check that can refuse the user's input (recipe, data, model)
runs before the run directory is created, so bad input leaves nothing behind.
"""

from __future__ import annotations

import csv
import os
import platform
import signal
import sys
from pathlib import Path

from kerascv_app import backend as backend_module
from kerascv_app.config import Config
from kerascv_app.data.prepare import PreparedData, evaluation_dataset, prepare_data, training_datasets
from kerascv_app.errors import UserError
from kerascv_app.model_dir import ModelDirectory
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
    import keras

    backend_module.set_precision(config.train.precision)
    keras.utils.set_random_seed(config.train.seed)
    prepared = prepare_data(config, data_dir)
    strategy = backend_module.choose_distribution(config.train.distribution, backend, backend_module.devices())
    # Building once before the run directory exists refuses bad model options early.
    with backend_module.DistributionScope(strategy):
        model = _compiled_model(config, prepared)

    run = RunDirectory.create(runs_dir, config.name)
    run.set_status("running", recipe=config.name, backend=backend, started=_now())
    run.write_json("config.json", config.to_dict())
    run.file("recipe.py").write_text(recipe_source)
    run.write_json("environment.json", environment_record(config, backend, strategy, prepared, data_dir))
    run.write_json("splits.json", prepared.splits.record())
    return _train_and_finish(run, config, prepared, model, show_progress)


def resume(run: RunDirectory, backend: str, data_dir: str | Path | None = None, show_progress: bool = True) -> RunDirectory:
    """Continues an unfinished run from its last completed epoch."""
    import keras

    if run.is_finished:
        raise UserError(f"{run.path} is already finished: nothing to resume")
    config = Config.from_dict(run.read_json("config.json"))
    environment = run.read_json("environment.json")
    if environment["backend"] != backend:
        raise UserError(f"{run.path} was trained with the {environment['backend']} backend: resume it with --backend {environment['backend']}")
    backend_module.set_precision(config.train.precision)
    keras.utils.set_random_seed(config.train.seed)
    prepared = prepare_data(config, data_dir if data_dir is not None else environment.get("data_dir"))
    if prepared.splits.record() != run.read_json("splits.json"):
        raise UserError(f"the data found now differs from the data {run.path} was trained on (splits.json): pass the same --data-dir")
    with backend_module.DistributionScope(environment.get("distribution", "none")):
        model = _compiled_model(config, prepared)
    run.set_status("running")
    return _train_and_finish(run, config, prepared, model, show_progress)


def _compiled_model(config: Config, prepared: PreparedData):
    import keras

    from kerascv_app.models import create_model
    from kerascv_app.train.optim import create_optimizer

    model = create_model(config, prepared.num_classes)
    metrics = [keras.metrics.CategoricalAccuracy(name="accuracy")]
    if prepared.num_classes > 5:
        metrics.append(keras.metrics.TopKCategoricalAccuracy(k=5, name="top5_accuracy"))
    model.compile(
        optimizer=create_optimizer(config.train, prepared.steps_per_epoch(config.data.batch_size)),
        loss=keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=config.train.label_smoothing),
        metrics=metrics,
    )
    return model


def _train_and_finish(run: RunDirectory, config: Config, prepared: PreparedData, model, show_progress: bool) -> RunDirectory:
    import keras

    train_dataset, validation_dataset = training_datasets(prepared, config)
    try:
        model.fit(
            train_dataset,
            validation_data=validation_dataset,
            epochs=config.train.epochs,
            callbacks=_callbacks(run, config, prepared, show_progress, has_validation=validation_dataset is not None),
            verbose=0,
            # The dataset is already shuffled by tf.data; Keras cannot shuffle a dataset.
            shuffle=False,
        )
    except KeyboardInterrupt:
        run.set_status("interrupted")
        raise
    except Exception:
        run.set_status("failed")
        raise
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
    _remove_tree(run.backup_dir)
    run.set_status("finished", finished=_now(), test_accuracy=metrics["test"].get("accuracy"))
    return run


def _callbacks(run: RunDirectory, config: Config, prepared: PreparedData, show_progress: bool, has_validation: bool) -> list:
    import keras

    from kerascv_app.train.progress import RichProgress
    from kerascv_app.train.timing import EpochTimer

    monitor_loss = "val_loss" if has_validation else "loss"
    monitor_accuracy = "val_accuracy" if has_validation else "accuracy"
    callbacks = [
        # Restores weights, optimizer state and epoch after a crash; deleted at the end.
        keras.callbacks.BackupAndRestore(str(run.backup_dir), save_freq="epoch", delete_checkpoint=False),
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
        callbacks.append(RichProgress(config.train.epochs, prepared.steps_per_epoch(config.data.batch_size), config.data.batch_size))
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


def environment_record(config: Config, backend: str, strategy: str, prepared: PreparedData, data_dir) -> dict:
    from importlib import metadata

    versions = {}
    for package in ("kerascv_app", "keras", "tensorflow", "tensorflow-datasets", "jax", "jaxlib", "torch", "numpy", "scikit-learn"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "backend": backend,
        "precision": config.train.precision,
        "devices": backend_module.devices(),
        "distribution": strategy,
        "seed": config.train.seed,
        "data_source": config.data.source,
        "data_dir": str(Path(data_dir).resolve()) if data_dir else None,
        "data_fingerprint": prepared.data.fingerprint,
        "class_names": prepared.class_names,
        "skipped_files": prepared.data.skipped,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "command": sys.argv,
        "versions": versions,
    }


def _remove_tree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def _now() -> str:
    import datetime

    return datetime.datetime.now().isoformat(timespec="seconds")
