"""Wraps a registered builder with what every model needs around it.

    image (uint8-valued) -> [device augmentation] -> normalisation -> builder -> logits

Device augmentation is the recipe's image ops when ``augment.placement = "device"``
(label-mixing ops stay in the tf.data pipeline); it is the identity at inference.

Normalisation lives in the model so that evaluation, prediction and export apply
exactly the preprocessing used in training. Logits are float32 even under mixed
precision, so the loss is computed in full precision.
"""

from __future__ import annotations

from kerascv_app.augment.spec import split_by_placement
from kerascv_app.config import Config
from kerascv_app.errors import UserError
from kerascv_app.models.registry import get_builder

# (scale, offset) applied to [0, 255] pixels.
RESCALINGS = {"symmetric": (1 / 127.5, -1.0), "unit": (1 / 255.0, 0.0), "none": (1.0, 0.0)}
# ImageNet's channel statistics in [0, 255] pixels, for backbones pretrained with them.
IMAGENET_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
IMAGENET_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)


#: The largest side tried when looking for the smallest image size a model accepts.
LARGEST_PROBED_SIZE = 1024


def create_model(config: Config, num_classes: int):
    """Builds the model; an image size too small for its poolings is one line naming the
    smallest size that builds, instead of Keras's shape error from deep inside."""
    try:
        return _build_model(config, num_classes)
    except ValueError as error:
        smallest = None if config.model.backbone else _smallest_square_size(config, num_classes)
        if smallest is None:
            raise
        raise UserError(
            f"data.image_size = {tuple(config.data.image_size)} is too small for model.name = {config.model.name!r}: "
            f"the smallest size it accepts is {smallest},{smallest} (set data.image_size to at least that)"
        ) from error


def _builds(config: Config, num_classes: int, side: int) -> bool:
    import dataclasses

    resized = dataclasses.replace(config, data=dataclasses.replace(config.data, image_size=(side, side)))
    try:
        _build_model(resized, num_classes)
        return True
    except ValueError:
        return False


def _smallest_square_size(config: Config, num_classes: int) -> int | None:
    """The smallest side of a square image that builds, or None when none up to
    LARGEST_PROBED_SIZE does (then the size is not the problem). Doubling, then a binary
    search: for pooling networks, every size above the smallest one builds."""
    low = 1
    high = max(16, *config.data.image_size)
    while not _builds(config, num_classes, high):
        if high >= LARGEST_PROBED_SIZE:
            return None
        low, high = high + 1, min(high * 2, LARGEST_PROBED_SIZE)
    while low < high:
        middle = (low + high) // 2
        if _builds(config, num_classes, middle):
            high = middle
        else:
            low = middle + 1
    return low


def _build_model(config: Config, num_classes: int):
    import keras
    from keras import layers

    builder = get_builder(config.model.name)
    height, width = config.data.image_size
    inputs = keras.Input((height, width, config.data.channels), name="image")
    x = inputs
    _, device_ops = split_by_placement(config.augment.ops, config.augment.placement)
    if device_ops:
        from kerascv_app.augment.layer import Augmentation

        # float32 whatever the precision policy: pixel arithmetic in [0, 255].
        x = Augmentation(
            [operation.to_json() for operation in device_ops],
            seed=config.train.seed,
            channels=config.data.channels,
            dtype="float32",
            name="augment",
        )(x)
    if config.model.backbone:
        from kerascv_app.models.transfer import transfer_head

        # The backbone brings its own preprocessing: augment.normalization is not applied on top.
        logits = transfer_head(x, num_classes, config)
    else:
        x = normalization_layer(config.augment.normalization)(x)
        logits = builder(x, num_classes, config.model)
    logits = layers.Activation("linear", dtype="float32", name="logits")(logits)
    return keras.Model(inputs, logits, name=config.name)


def normalization_layer(name: str):
    """The layer that maps [0, 255] pixels to what the network expects, saved with the model."""
    from keras import layers

    if name == "imagenet":
        return layers.Normalization(mean=IMAGENET_MEAN, variance=[std**2 for std in IMAGENET_STD], name="normalize")
    scale, offset = RESCALINGS[name]
    # float32 under every precision policy: k / 127.5 - 1 is not exact in bfloat16 (a quarter
    # of a pixel level lost), and a first layer that needs the pixels exactly (airbench_net's
    # patch whitening, float32 itself) gets them; the next layer casts to its own dtype.
    return layers.Rescaling(scale, offset, dtype="float32", name="normalize")
