"""Initialisers that copy PyTorch's conventions, for nets ported from PyTorch (airbench).

Registered, so that a ``model.keras`` that names them reloads with ``safe_mode=True``.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops


def torch_default_initializer(seed=None):
    """PyTorch's default for convolutions and linear layers: uniform in +-1/sqrt(fan_in)."""
    return keras.initializers.VarianceScaling(scale=1 / 3, mode="fan_in", distribution="uniform", seed=seed)


@keras.saving.register_keras_serializable(package="kerascv_app")
class IdentityConvolution(keras.initializers.Initializer):
    """A kernel (height, width, inputs, outputs) whose first min(inputs, outputs) output
    channels copy the matching input channel at the centre tap; the other output channels
    are drawn from PyTorch's default uniform initialiser."""

    def __init__(self, seed=None):
        self.seed = seed

    def __call__(self, shape, dtype=None):
        height, width, inputs, outputs = shape
        identity_channels = min(inputs, outputs)
        identity = np.zeros(shape, dtype="float32")
        identity[height // 2, width // 2, np.arange(identity_channels), np.arange(identity_channels)] = 1.0
        drawn = np.ones(shape, dtype="float32")
        drawn[..., :identity_channels] = 0.0
        random_part = torch_default_initializer(self.seed)(shape, dtype=dtype)
        return random_part * ops.convert_to_tensor(drawn, dtype=dtype) + ops.convert_to_tensor(identity, dtype=dtype)

    def get_config(self):
        return {"seed": self.seed}
