"""Wraps a registered builder with what every model needs around it.

    image (uint8-valued) -> [device augmentation] -> normalisation -> builder -> logits

Normalisation lives in the model so that evaluation, prediction and export apply
exactly the preprocessing used in training. Logits are float32 even under mixed
precision, so the loss is computed in full precision.
"""

from __future__ import annotations

from kerascv_app.config import Config
from kerascv_app.models.registry import get_builder

# (scale, offset) applied to [0, 255] pixels.
NORMALIZATIONS = {"symmetric": (1 / 127.5, -1.0), "unit": (1 / 255.0, 0.0), "none": (1.0, 0.0)}


def create_model(config: Config, num_classes: int):
    import keras
    from keras import layers

    builder = get_builder(config.model.name)
    height, width = config.data.image_size
    inputs = keras.Input((height, width, config.data.channels), name="image")
    x = inputs
    augment = config.augment
    if augment.placement == "device" and (augment.horizontal_flip or augment.crop_padding):
        from kerascv_app.augment.device import DeviceAugmentation

        x = DeviceAugmentation(augment.horizontal_flip, augment.crop_padding, seed=config.train.seed, name="augment")(x)
    scale, offset = NORMALIZATIONS[augment.normalization]
    x = layers.Rescaling(scale, offset, name="normalize")(x)
    logits = builder(x, num_classes, config.model)
    logits = layers.Activation("linear", dtype="float32", name="logits")(logits)
    return keras.Model(inputs, logits, name=config.name)
