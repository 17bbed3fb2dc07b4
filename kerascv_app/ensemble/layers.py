"""The combiner's layers: small registered layers instead of Lambda, so that the
ensemble's ``model.keras`` reloads with ``safe_mode=True`` on every backend.

Imported by :func:`kerascv_app.custom_objects.register_custom_objects` before any load.
"""

from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="kerascv_app")
class HorizontalFlip(keras.layers.Layer):
    """Mirrors a batch of HxWxC images left to right (test-time augmentation)."""

    def call(self, images):
        return ops.flip(images, axis=2)

    def compute_output_shape(self, input_shape):
        return input_shape


@keras.saving.register_keras_serializable(package="kerascv_app")
class WeightedAverage(keras.layers.Layer):
    """sum_i coefficients[i] * inputs[i] with fixed coefficients: the average and weighted
    combiners, and the mean of an image's and its mirror's predictions.

    (Not named ``weights``: that is a Layer attribute, the layer's variables.)
    """

    def __init__(self, coefficients: list[float], **kwargs):
        super().__init__(**kwargs)
        self.coefficients = [float(coefficient) for coefficient in coefficients]

    def call(self, inputs):
        if len(inputs) != len(self.coefficients):
            raise ValueError(f"{len(self.coefficients)} coefficients for {len(inputs)} inputs")
        total = inputs[0] * self.coefficients[0]
        for coefficient, tensor in zip(self.coefficients[1:], inputs[1:]):
            total = total + tensor * coefficient
        return total

    def compute_output_shape(self, input_shapes):
        return input_shapes[0]

    def get_config(self):
        return {**super().get_config(), "coefficients": self.coefficients}


@keras.saving.register_keras_serializable(package="kerascv_app")
class ProbabilityLogits(keras.layers.Layer):
    """log(probabilities): turns combined probabilities back into logits.

    Every model.keras of this project returns logits (kcv evaluate and predict apply a
    softmax); softmax(log p) = p because the combined p already sums to one. The floor
    keeps log finite where a probability underflowed to zero.
    """

    def __init__(self, floor: float = 1e-30, **kwargs):
        super().__init__(**kwargs)
        self.floor = float(floor)

    def call(self, probabilities):
        return ops.log(ops.maximum(probabilities, self.floor))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "floor": self.floor}
