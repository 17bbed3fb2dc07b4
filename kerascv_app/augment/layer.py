"""The augmentation layer: a recipe's ops, in order, for tf.data and for the model alike.

:class:`Augmentation` is a Keras ``DataLayer``: its ops are written against a backend
object, TensorFlow inside tf.data (:class:`PipelineBackend`) and the layer's
``self.backend`` (the Keras backend) inside the model, so one implementation serves both
placements with the same meaning.

- In the model (``placement = "device"``) it is an ordinary layer, active only when
  ``training`` is true, drawing its randomness from its own SeedGenerator (seeded by
  ``train.seed``, advanced by every training step on every backend, under jit too).
- In tf.data (``placement = "pipeline"``) :meth:`Augmentation.augment_batch` takes an
  explicit per-batch seed: Keras's stateful generator would be shared by parallel map
  calls, whose order is not fixed, and the same seed would not give the same batches.

The layer's config is the ops' JSON and the seed, so a saved model reloads with
``safe_mode=True`` and shows which augmentation it was trained with.
"""

from __future__ import annotations

import contextlib

import keras

# DataLayer is not exported under keras.layers (Keras 3.15): imported from its module.
from keras.src.layers.preprocessing.data_layer import DataLayer
from keras.src.utils.backend_utils import DynamicBackend

from kerascv_app.augment.registry import build_steps
from kerascv_app.augment.spec import AugmentOp


class TensorSeed(keras.random.SeedGenerator):
    """A stateless stand-in for a SeedGenerator inside tf.data: each draw folds a counter
    into one per-batch seed tensor, so the draws of a batch depend only on that tensor.

    Keras's random functions accept SeedGenerator instances, not tensors, under the
    TensorFlow backend; this subclass is how a tensor seed reaches them.
    """

    def __init__(self, seed_tensor):
        # No super().__init__: it would create a state variable, which is not wanted here.
        self.seed_tensor = seed_tensor
        self.draws = 0

    def next(self, ordered=True):
        import tensorflow as tf

        self.draws += 1
        return tf.random.experimental.stateless_fold_in(self.seed_tensor, self.draws)


class PipelineBackend(DynamicBackend):
    """TensorFlow, for the tf.data pipeline: nothing compiles these ops with XLA there, so
    TensorFlow kernels that XLA lacks (ImageProjectiveTransformV3) may be used."""

    allows_tensorflow_kernels = True

    def __init__(self):
        super().__init__("tensorflow")


@keras.saving.register_keras_serializable(package="kerascv_app")
class Augmentation(DataLayer):
    """Applies augmentation ops (JSON specs, see kerascv_app.augment.spec) to whole batches."""

    def __init__(self, operations=(), seed: int = 0, channels: int = 3, **kwargs):
        super().__init__(**kwargs)
        parsed = tuple(AugmentOp.from_json(operation) for operation in operations)
        self.operations = [operation.to_json() for operation in parsed]
        self.seed = int(seed)
        self.channels = int(channels)
        self.generator = keras.random.SeedGenerator(self.seed)
        self.augment_steps = build_steps(parsed, self.channels)
        self.mixes_labels = any(step.mixes_labels for step in self.augment_steps)
        self._convert_input_args = False
        self._allow_non_tensor_positional_args = True

    def call(self, images, training=None):
        if not training or not self.augment_steps:
            return images
        if self.mixes_labels:
            raise ValueError(
                "mixup and cutmix mix labels, which a model does not see: run them in the tf.data pipeline "
                "(kerascv_app.augment.pipeline)"
            )
        images = self.backend.cast(images, self.compute_dtype)
        images, _ = self._apply(self.backend, images, None, self._get_seed_generator(self.backend._backend))
        return images

    def augment_batch(self, images, labels, seed):
        """The tf.data path: float32 images in [0, 255] (and one-hot labels, needed by mixing ops),
        augmented with randomness drawn from ``seed`` alone (an int64 tensor of shape (2,)).
        """
        backend = PipelineBackend()
        images = backend.cast(images, "float32")
        return self._apply(backend, images, labels, TensorSeed(seed))

    def _apply(self, backend, images, labels, seed):
        with self._inner_layers_on(backend.name):
            for step in self.augment_steps:
                images, labels = step.apply(backend, images, labels, seed)
        return images, labels

    @contextlib.contextmanager
    def _inner_layers_on(self, backend_name: str):
        """Points the Keras layers inside the steps at this layer's current backend."""
        inner_layers = [layer for step in self.augment_steps for layer in step.keras_layers()]
        for layer in inner_layers:
            layer.backend.set_backend(backend_name)
        try:
            yield
        finally:
            for layer in inner_layers:
                layer.backend.reset()

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "operations": self.operations, "seed": self.seed, "channels": self.channels}
