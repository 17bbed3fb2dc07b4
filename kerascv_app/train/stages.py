"""Transfer training in two stages: the new head first, then the backbone fine-tuned.

Stage 1 trains ``train.epochs`` epochs with the backbone frozen, so that a randomly
initialised head does not send large gradients into pre-trained weights; its BatchNorm
layers, frozen too, run in inference mode and keep their statistics. Stage 2 unfreezes the
backbone (all of it, or its top ``train.unfreeze_top`` blocks), compiles a new optimizer at
``train.fine_tune_learning_rate`` and trains ``train.fine_tune_epochs`` more epochs; its
unfrozen BatchNorm layers train normally and adapt their statistics to the target's images.

Epochs are numbered across both stages, so history.csv reads as one run, with a ``stage``
column; the progress display names the stage.

Resume: each stage has its own BackupAndRestore folder (``backup/stage1``, ``backup/stage2``),
because a backup holds optimizer state and the two stages' optimizers differ. When stage 1
ends, the model's weights are kept in ``backup/stage1_done.npz``: a run killed in stage 2
restarts from them, and from its stage-2 backup if an epoch of stage 2 had finished.

Each stage has its own callbacks, so early stopping and ``train.keep_best`` act within a
stage: with a stage 2, the weights kept are those of its best validation epoch.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Callable

import keras
import numpy as np

from kerascv_app.config import Config, TrainConfig
from kerascv_app.data.prepare import PreparedData
from kerascv_app.models.transfer import unfreeze_backbone
from kerascv_app.runs import RunDirectory

STAGE_ONE_WEIGHTS = "stage1_done.npz"


class StageColumn(keras.callbacks.Callback):
    """Adds the stage number to each epoch's logs; must come before CSVLogger."""

    def __init__(self, stage: int):
        super().__init__()
        self.stage = stage

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["stage"] = self.stage


def fit_in_stages(
    model,
    run: RunDirectory,
    config: Config,
    prepared: PreparedData,
    train_dataset,
    validation_dataset,
    make_callbacks: Callable[..., list],
    compile_model: Callable,
    distribution_scope: Callable,
) -> None:
    """Trains stage 1 (head) and stage 2 (fine-tuning), resuming where a killed run stopped.

    ``make_callbacks(backup_dir=, total_epochs=, stage_name=)`` gives a stage the run's usual
    callbacks; ``compile_model(model, config, prepared, train_config)`` compiles with the
    run's loss and metrics, inside ``distribution_scope()``, where the model was created (a
    MirroredStrategy's optimizer must be created in its scope).
    """
    stage_one_end = config.train.epochs
    stage_one_weights = run.backup_dir / STAGE_ONE_WEIGHTS

    def fit_stage(stage: int, first_epoch: int, end_epoch: int) -> None:
        callbacks = [StageColumn(stage)] + make_callbacks(backup_dir=run.backup_dir / f"stage{stage}", total_epochs=end_epoch, stage_name=f"stage {stage}")
        # Keras keeps the epoch a BackupAndRestore restored on the model after fit returns;
        # left there, it would override the next stage's first epoch.
        model._initial_epoch = None
        model.fit(
            train_dataset, validation_data=validation_dataset, initial_epoch=first_epoch, epochs=end_epoch,
            callbacks=callbacks, verbose=0, shuffle=False,
        )

    if stage_one_weights.is_file():
        model.set_weights(_load_weights(stage_one_weights))
    else:
        fit_stage(1, 0, stage_one_end)
        _save_weights(model.get_weights(), stage_one_weights)
    if not config.train.fine_tune_epochs:
        return
    unfreeze_backbone(model, config.train.unfreeze_top)
    with distribution_scope():
        compile_model(model, config, prepared, fine_tune_settings(config.train))
    fit_stage(2, stage_one_end, stage_one_end + config.train.fine_tune_epochs)


def fine_tune_settings(train: TrainConfig) -> TrainConfig:
    """Stage 2's optimizer settings: the recipe's optimizer and schedule, over stage 2's epochs
    at the fine-tuning rate; no warm-up, since the head is already trained."""
    return dataclasses.replace(train, epochs=train.fine_tune_epochs, learning_rate=train.fine_tune_learning_rate, warmup_epochs=0.0)


def _save_weights(weights: list, path: Path) -> None:
    """Model weights only (not the stage-1 optimizer's), written through a rename so that a
    kill never leaves half a file that a resume would trust."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    with temporary.open("wb") as handle:
        np.savez(handle, *weights)
    os.replace(temporary, path)


def _load_weights(path: Path) -> list:
    with np.load(path) as saved:
        return [saved[f"arr_{index}"] for index in range(len(saved.files))]
