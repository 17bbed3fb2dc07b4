"""The fast loop's compiled functions: a training step, the lookahead and prediction.

Every function is stateless: it takes the values of the model's variables and returns new
ones (Keras's ``stateless_call``), so that JAX compiles a whole step with ``jax.jit``;
TensorFlow compiles it with ``tf.function`` and torch runs it eagerly. Only taking the
gradient and waiting for the device differ between backends (the ``backend_*`` functions).

A training step gathers its batch from the uint8 images held on the device, in the order
and with the flips and shifts drawn for the epoch (:class:`EpochPlan`), augments it,
computes the label-smoothed loss, and applies nesterov SGD with PyTorch's conventions
(airbench's): weight decay is added to the gradient, and BatchNorm biases learn
``bias_learning_rate_scale`` times faster. SGD is written here rather than taken from
Keras because it must hold a variable still while it is frozen (the whitening bias after
its first epochs) without recompiling, and scaling a variable's gradient is exactly
scaling its learning rate only for an optimizer that is linear in the gradient.
"""

from __future__ import annotations

from dataclasses import dataclass

import keras
import numpy as np
from keras import ops

from kerascv_app.augment.shift import flip_and_shift
from kerascv_app.evaluate.tta import tta_logits
from kerascv_app.models.whitening import whitening_layers

# Lookahead: the running average is updated (and copied into the weights) every this many
# steps, and its decay per update grows as (step / total steps) ** this power, so that it
# averages little early on and strongly at the end (airbench's values).
LOOKAHEAD_EVERY_STEPS = 5
LOOKAHEAD_DECAY_POWER = 3.0


@dataclass(frozen=True)
class EpochPlan:
    """One epoch's order and augmentation, drawn on the host and sent to the device:
    ``permutation`` (N,) int32, ``flips`` (N,) bool, ``offsets`` (N, 2) int32 in
    [0, 2 * padding] (the shift is offset - padding pixels)."""

    permutation: object
    flips: object
    offsets: object

    def values(self) -> tuple:
        return (self.permutation, self.flips, self.offsets)


def draw_epoch_plan(count: int, epoch: int, seed: int, padding: int, flip: bool) -> EpochPlan:
    """The order, flips and shifts of ``epoch``, the same on every backend for a seed.

    Flips alternate (airbench): a random half of the images is chosen once per run and
    mirrored on even epochs, the other half on odd epochs, so that any two consecutive
    epochs show every image both ways (a coin toss per epoch would show a quarter of them
    one way twice). Shifts are drawn per image and epoch, uniform in [-padding, padding]
    on each axis.
    """
    seed = seed % 2**63  # SeedSequence takes non-negative entropy
    run_random = np.random.default_rng([seed, 0])
    flipped_first = run_random.random(count) < 0.5
    epoch_random = np.random.default_rng([seed, epoch + 1])
    permutation = epoch_random.permutation(count).astype(np.int32)
    offsets = epoch_random.integers(0, 2 * padding + 1, size=(count, 2)).astype(np.int32)
    flips = (flipped_first != bool(epoch % 2)) if flip else np.zeros(count, dtype=bool)
    return EpochPlan(*(ops.convert_to_tensor(array) for array in (permutation, flips, offsets)))


@dataclass(frozen=True)
class StepSettings:
    batch_size: int
    padding: int
    label_smoothing: float
    momentum: float
    nesterov: bool
    weight_decay: float
    # learning_rate(step) -> rate: a Keras LearningRateSchedule or a constant.
    learning_rate: object
    lookahead_decay: float
    total_steps: int


class FastSteps:
    """The compiled functions of one model. State is a tuple
    ``(trainable values, non-trainable values, velocities, step)``."""

    def __init__(self, model, settings: StepSettings, bias_learning_rate_scale: float):
        self.model = model
        self.settings = settings
        self.gradient_scales = gradient_scales(model, bias_learning_rate_scale)
        self.value_and_gradient = backend_value_and_gradient(self._loss)
        self.train_step = backend_compile(self._train_step)
        self.lookahead = backend_compile(self._lookahead)
        self.predict_batch = backend_compile(self._predict_batch)
        self.predict_tta_batch = backend_compile(self._predict_tta_batch)

    # State

    def initial_state(self) -> tuple:
        trainable = [_detached(variable.value) for variable in self.model.trainable_variables]
        non_trainable = [_detached(variable.value) for variable in self.model.non_trainable_variables]
        velocities = [ops.zeros_like(value) for value in trainable]
        return (trainable, non_trainable, velocities, ops.convert_to_tensor(np.int32(0)))

    def assign_to_model(self, state: tuple) -> None:
        trainable, non_trainable, _, _ = state
        for variable, value in zip(self.model.trainable_variables, trainable):
            variable.assign(value)
        for variable, value in zip(self.model.non_trainable_variables, non_trainable):
            variable.assign(value)

    def update_mask(self, frozen_ids: set[int]):
        """1 for each trainable variable that may change, 0 for those held still."""
        mask = [0.0 if id(variable) in frozen_ids else 1.0 for variable in self.model.trainable_variables]
        return ops.convert_to_tensor(np.asarray(mask, dtype=np.float32))

    # Training

    def _loss(self, trainable, non_trainable, images, labels):
        logits, non_trainable = self.model.stateless_call(trainable, non_trainable, images, training=True)
        targets = ops.one_hot(labels, logits.shape[-1], dtype=logits.dtype)
        losses = keras.losses.categorical_crossentropy(
            targets, logits, from_logits=True, label_smoothing=self.settings.label_smoothing
        )
        return ops.mean(losses), (logits, non_trainable)

    def _train_step(self, state, images, labels, plan, batch_index, update_mask):
        trainable, non_trainable, velocities, step = state
        batch_images, batch_labels = self._batch(images, labels, plan, batch_index)
        (loss, (logits, non_trainable)), gradients = self.value_and_gradient(
            trainable, non_trainable, batch_images, batch_labels
        )
        learning_rate = self._learning_rate(step)
        trainable, velocities = self._sgd(trainable, velocities, gradients, learning_rate, update_mask)
        correct = ops.sum(ops.cast(ops.equal(ops.argmax(logits, axis=-1), ops.cast(batch_labels, "int32")), "int32"))
        return (trainable, non_trainable, velocities, step + 1), loss, correct

    def _batch(self, images, labels, plan, batch_index):
        permutation, flips, offsets = plan
        batch_size = self.settings.batch_size
        indices = ops.slice(permutation, (batch_index * batch_size,), (batch_size,))
        batch_images = flip_and_shift(
            ops.take(images, indices, axis=0),
            ops.take(flips, indices, axis=0),
            ops.take(offsets, indices, axis=0),
            self.settings.padding,
        )
        return batch_images, ops.take(labels, indices, axis=0)

    def _learning_rate(self, step):
        schedule = self.settings.learning_rate
        return schedule(step) if callable(schedule) else ops.convert_to_tensor(schedule, dtype="float32")

    def _sgd(self, values, velocities, gradients, learning_rate, update_mask):
        """PyTorch's SGD: g = scale * gradient + weight_decay * value; v = momentum * v + g;
        value -= rate * (g + momentum * v) with nesterov, rate * v without."""
        settings = self.settings
        new_values, new_velocities = [], []
        for index, (value, velocity, gradient) in enumerate(zip(values, velocities, gradients)):
            gradient = ops.cast(gradient, value.dtype) * self.gradient_scales[index] + settings.weight_decay * value
            new_velocity = settings.momentum * velocity + gradient
            direction = gradient + settings.momentum * new_velocity if settings.nesterov else new_velocity
            new_value = value - ops.cast(learning_rate, value.dtype) * direction
            keep = update_mask[index]
            new_values.append(keep * new_value + (1.0 - keep) * value)
            new_velocities.append(keep * new_velocity + (1.0 - keep) * velocity)
        return new_values, new_velocities

    # Lookahead

    def start_average(self, state: tuple) -> tuple:
        """The running average starts as a copy of the weights (trainable and BatchNorm statistics)."""
        trainable, non_trainable, _, _ = state
        return ([ops.copy(value) for value in trainable], [ops.copy(value) for value in non_trainable])

    def lookahead_decay(self, step: int) -> float:
        base = self.settings.lookahead_decay**LOOKAHEAD_EVERY_STEPS
        return base * (step / self.settings.total_steps) ** LOOKAHEAD_DECAY_POWER

    def _lookahead(self, state, average, decay):
        """Moves the average towards the weights by (1 - decay), then replaces the weights
        by the average (airbench's LookaheadState.update)."""
        trainable, non_trainable, velocities, step = state
        average_trainable, average_non_trainable = average
        average_trainable = [_towards(mean, value, decay) for mean, value in zip(average_trainable, trainable)]
        average_non_trainable = [
            _towards(mean, value, decay) for mean, value in zip(average_non_trainable, non_trainable)
        ]
        # Copies: torch would otherwise share one tensor between the weights and the average.
        new_state = (
            [ops.copy(mean) for mean in average_trainable],
            [ops.copy(mean) for mean in average_non_trainable],
            velocities,
            step,
        )
        return new_state, (average_trainable, average_non_trainable)

    # Prediction

    def _predict_batch(self, state, images, batch_index, batch_size):
        trainable, non_trainable, _, _ = state
        batch = _batch_at(images, batch_index, batch_size)
        logits, _ = self.model.stateless_call(trainable, non_trainable, batch, training=False)
        return logits

    def _predict_tta_batch(self, state, images, batch_index, batch_size):
        trainable, non_trainable, _, _ = state
        batch = _batch_at(images, batch_index, batch_size)
        return tta_logits(
            lambda views: self.model.stateless_call(trainable, non_trainable, views, training=False)[0], batch
        )


def _detached(value):
    """A variable's value outside autograd: torch's parameters would otherwise record every update."""
    return value.detach() if keras.backend.backend() == "torch" else value


def _batch_at(images, batch_index, batch_size: int):
    shape = (batch_size, *images.shape[1:])
    return ops.slice(images, (batch_index * batch_size, 0, 0, 0), shape)


def _towards(mean, value, decay):
    if not keras.backend.is_float_dtype(keras.backend.standardize_dtype(value.dtype)):
        return value
    return mean + (1.0 - decay) * (value - mean)


def gradient_scales(model, bias_learning_rate_scale: float) -> list[float]:
    """Per trainable variable: ``bias_learning_rate_scale`` for BatchNorm biases, else 1."""
    bias_ids = {
        id(layer.beta) for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization) and layer.center
    }
    return [bias_learning_rate_scale if id(variable) in bias_ids else 1.0 for variable in model.trainable_variables]


def whitening_bias_ids(model) -> set[int]:
    return {id(layer.bias) for layer in whitening_layers(model)}


# ---------------------------------------------------------------------------- backends


def backend_value_and_gradient(function):
    """``function(trainable, *arguments) -> (value, auxiliary)`` turned into
    ``(trainable, *arguments) -> ((value, auxiliary), gradients with respect to trainable)``."""
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        return jax.value_and_grad(function, has_aux=True)
    if backend == "tensorflow":
        import tensorflow as tf

        def tensorflow_value_and_gradient(trainable, *arguments):
            with tf.GradientTape() as tape:
                tape.watch(trainable)
                value, auxiliary = function(trainable, *arguments)
            return (value, auxiliary), tape.gradient(value, trainable)

        return tensorflow_value_and_gradient
    import torch

    def torch_value_and_gradient(trainable, *arguments):
        leaves = [value.detach().requires_grad_(True) for value in trainable]
        value, auxiliary = function(leaves, *arguments)
        gradients = torch.autograd.grad(value, leaves)
        detached = keras.tree.map_structure(
            lambda tensor: tensor.detach() if isinstance(tensor, torch.Tensor) else tensor, auxiliary
        )
        return (value.detach(), detached), list(gradients)

    return torch_value_and_gradient


def backend_compile(function):
    """jax.jit or tf.function; torch runs eagerly. ``batch_size`` arguments are static."""
    backend = keras.backend.backend()
    if backend == "jax":
        import inspect

        import jax

        static = ("batch_size",) if "batch_size" in inspect.signature(function).parameters else ()
        return jax.jit(function, static_argnames=static)
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.function(function, reduce_retracing=True)
    return function


def scalar(value, dtype: str):
    """A scalar argument of a compiled function: a 0-d numpy array (jax takes it without
    recompiling, torch as it is), a tensor for TensorFlow (tf.function would trace again
    for every new Python or numpy value)."""
    array = np.asarray(value, dtype=dtype)
    return ops.convert_to_tensor(array) if keras.backend.backend() == "tensorflow" else array


def wait_for_device(values) -> None:
    """Returns once the device has computed ``values``: for honest timings."""
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        jax.block_until_ready(values)
    elif backend == "torch":
        import torch

        if torch.cuda.is_available():
            torch.cuda.synchronize()
    else:
        # Reading a value back to the host waits for it, and for the ops queued before it.
        flat = keras.tree.flatten(values)
        if flat:
            ops.convert_to_numpy(flat[-1])
