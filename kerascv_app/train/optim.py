"""Optimizers and learning-rate schedules from the recipe's train section."""

from __future__ import annotations

import math

import keras
from keras import ops

from kerascv_app.config import TrainConfig


@keras.saving.register_keras_serializable(package="kerascv_app")
class OneCycle(keras.optimizers.schedules.LearningRateSchedule):
    """Smith's one-cycle: cosine rise from peak/25 to peak over the first 30% of steps,
    then cosine fall to peak/1e4."""

    def __init__(self, peak_learning_rate: float, total_steps: int, rise_fraction: float = 0.3):
        self.peak_learning_rate = peak_learning_rate
        self.total_steps = total_steps
        self.rise_fraction = rise_fraction

    def __call__(self, step):
        step = ops.cast(step, "float32")
        rise_steps = max(1.0, self.rise_fraction * self.total_steps)
        fall_steps = max(1.0, self.total_steps - rise_steps)
        start, peak, end = self.peak_learning_rate / 25.0, self.peak_learning_rate, self.peak_learning_rate / 1e4
        rising = ops.minimum(step / rise_steps, 1.0)
        falling = ops.clip((step - rise_steps) / fall_steps, 0.0, 1.0)
        rise_value = peak + (start - peak) * (1 + ops.cos(math.pi * rising)) / 2
        fall_value = end + (peak - end) * (1 + ops.cos(math.pi * falling)) / 2
        return ops.where(step < rise_steps, rise_value, fall_value)

    def get_config(self):
        return {
            "peak_learning_rate": self.peak_learning_rate,
            "total_steps": self.total_steps,
            "rise_fraction": self.rise_fraction,
        }


@keras.saving.register_keras_serializable(package="kerascv_app")
class LinearWarmupDecay(keras.optimizers.schedules.LearningRateSchedule):
    """airbench's triangle: a linear rise from ``start_factor`` x peak at step 0 to the peak
    at ``warmup_steps``, then a linear fall to ``end_factor`` x peak at ``total_steps``."""

    def __init__(
        self,
        peak_learning_rate: float,
        total_steps: int,
        warmup_steps: int,
        start_factor: float = 0.2,
        end_factor: float = 0.07,
    ):
        self.peak_learning_rate = peak_learning_rate
        self.total_steps = total_steps
        self.warmup_steps = warmup_steps
        self.start_factor = start_factor
        self.end_factor = end_factor

    def __call__(self, step):
        step = ops.cast(step, "float32")
        warmup_steps = max(1.0, float(self.warmup_steps))
        decay_steps = max(1.0, float(self.total_steps - self.warmup_steps))
        rising = self.start_factor + (1.0 - self.start_factor) * ops.minimum(step / warmup_steps, 1.0)
        falling = 1.0 + (self.end_factor - 1.0) * ops.clip((step - self.warmup_steps) / decay_steps, 0.0, 1.0)
        return self.peak_learning_rate * ops.where(step < self.warmup_steps, rising, falling)

    def get_config(self):
        return {
            "peak_learning_rate": self.peak_learning_rate,
            "total_steps": self.total_steps,
            "warmup_steps": self.warmup_steps,
            "start_factor": self.start_factor,
            "end_factor": self.end_factor,
        }


def learning_rate_schedule(config: TrainConfig, steps_per_epoch: int):
    total_steps = max(1, config.epochs * steps_per_epoch)
    if config.schedule == "constant":
        return config.learning_rate
    if config.schedule == "onecycle":
        return OneCycle(config.learning_rate, total_steps)
    warmup_steps = int(round(config.warmup_epochs * steps_per_epoch))
    if config.schedule == "linear":
        return LinearWarmupDecay(config.learning_rate, total_steps, warmup_steps)
    if warmup_steps:
        return keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=0.0,
            decay_steps=max(1, total_steps - warmup_steps),
            warmup_target=config.learning_rate,
            warmup_steps=warmup_steps,
        )
    return keras.optimizers.schedules.CosineDecay(initial_learning_rate=config.learning_rate, decay_steps=total_steps)


def create_optimizer(config: TrainConfig, steps_per_epoch: int):
    learning_rate = learning_rate_schedule(config, steps_per_epoch)
    weight_decay = config.weight_decay or None
    # Keras's own options for long runs; their state (the average, the accumulated
    # gradients) lives in optimizer variables, so checkpoints carry it across a resume.
    options = {
        "use_ema": config.ema > 0,
        "ema_momentum": config.ema or 0.99,
        "gradient_accumulation_steps": config.gradient_accumulation_steps
        if config.gradient_accumulation_steps > 1
        else None,
        "global_clipnorm": config.clip_norm or None,
    }
    if config.optimizer == "adamw":
        return keras.optimizers.AdamW(learning_rate=learning_rate, weight_decay=config.weight_decay, **options)
    return keras.optimizers.SGD(
        learning_rate=learning_rate,
        momentum=config.momentum,
        nesterov=config.nesterov,
        weight_decay=weight_decay,
        **options,
    )
