"""Transfer training in two stages: the new head first, then the backbone fine-tuned.

Stage 1 trains ``train.epochs`` epochs with the backbone frozen, so that a randomly
initialised head does not send large gradients into pre-trained weights; its BatchNorm
layers, frozen too, run in inference mode and keep their statistics. Stage 2 unfreezes the
backbone (all of it, or its top ``train.unfreeze_top`` blocks), compiles a new optimizer at
``train.fine_tune_learning_rate`` and trains ``train.fine_tune_epochs`` more epochs; its
unfrozen BatchNorm layers train normally and adapt their statistics to the target's images.

Epochs are numbered across both stages, so history.csv reads as one run, with a ``stage``
column; the progress display names the stage.

Resume: a checkpoint (kerascv_app/train/checkpoint.py) records its stage, because it holds
optimizer state and the two stages' optimizers differ. A run killed in stage 1 resumes
there at the next batch; one killed in stage 2 skips stage 1, compiles stage 2's optimizer
and loads the checkpoint into it, then continues at the next batch of stage 2.

Each stage has its own callbacks, so early stopping and ``train.keep_best`` act within a
stage: with a stage 2, the weights kept are those of its best validation epoch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import keras

from kerascv_app.config import Config, TrainConfig
from kerascv_app.data.prepare import PreparedData
from kerascv_app.models.transfer import unfreeze_backbone


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
    config: Config,
    prepared: PreparedData,
    train_epochs: Callable[..., None],
    compile_model: Callable,
    distribution_scope: Callable,
    resume_from=None,
) -> None:
    """Trains stage 1 (head) and stage 2 (fine-tuning), resuming where a killed run stopped.

    ``train_epochs(stage, first_epoch, end_epoch, stage_name=, extra_callbacks=)`` trains a
    stage's epochs with the run's callbacks and checkpoints, from ``resume_from`` when that
    checkpoint is in the stage; ``compile_model(model, config, prepared, train_config)``
    compiles with the run's loss and metrics, inside ``distribution_scope()``, where the
    model was created (a MirroredStrategy's optimizer must be created in its scope).
    """
    stage_one_end = config.train.epochs
    resumed_stage = resume_from[1].position.stage if resume_from is not None else 1
    if resumed_stage == 1:
        train_epochs(1, 0, stage_one_end, stage_name="stage 1", extra_callbacks=[StageColumn(1)])
    if not config.train.fine_tune_epochs:
        return
    # Keras keeps an epoch restored by a callback on the model after fit returns; left
    # there, it would override the next stage's first epoch.
    model._initial_epoch = None
    unfreeze_backbone(model, config.train.unfreeze_top)
    with distribution_scope():
        compile_model(model, config, prepared, fine_tune_settings(config.train))
    end = stage_one_end + config.train.fine_tune_epochs
    train_epochs(2, stage_one_end, end, stage_name="stage 2", extra_callbacks=[StageColumn(2)])


def fine_tune_settings(train: TrainConfig) -> TrainConfig:
    """Stage 2's optimizer settings: the recipe's optimizer and schedule, over stage 2's epochs
    at the fine-tuning rate; no warm-up, since the head is already trained."""
    return dataclasses.replace(
        train, epochs=train.fine_tune_epochs, learning_rate=train.fine_tune_learning_rate, warmup_epochs=0.0
    )
