"""The transfer model: a pre-trained backbone and a new head for the target's classes.

    image (the target's size and channels, values in [0, 255]) -> [device augmentation]
      -> [grayscale_to_rgb] -> [resize_to_backbone]      input adaptation, only where needed
      -> backbone                                         its own preprocessing inside it
      -> [head_pool] -> [head_dropout] -> classifier -> logits (float32)

:func:`kerascv_app.models.factory.create_model` builds the part after the augmentation with
:func:`transfer_head` when ``model.backbone`` is set; the augmentation stays the factory's.
The backbone comes frozen, as stage 1 of :mod:`kerascv_app.train.stages` trains it.

Inputs are adapted inside the model, so that prediction and export adapt them the same way:
grayscale images become RGB by repeating their channel (nothing is lost); images of another
size are resized (bilinear) to the backbone's. Colour images are not silently made grey for
a grayscale backbone: ``data.channels = 1`` does that in the pipeline, visibly.
"""

from __future__ import annotations

from kerascv_app.config import Config, DataConfig
from kerascv_app.errors import UserError
from kerascv_app.models.backbone_contract import BACKBONE_NAME, Backbone
from kerascv_app.models.backbones import describe_preprocessing, load_backbone

GRAYSCALE_TO_RGB = "grayscale_to_rgb"
RESIZE_TO_BACKBONE = "resize_to_backbone"


def transfer_head(images, num_classes: int, config: Config):
    """Adapts ``images`` to the backbone, applies it (frozen) and a new classifier; returns logits."""
    from keras import layers, regularizers

    backbone = load_backbone(config)
    check_unfreeze_top(backbone.model, config.train.unfreeze_top)
    # Stage 1 trains the head only. A frozen BatchNormalization layer also runs in inference
    # mode in Keras 3: it normalises with its moving statistics and leaves them unchanged.
    backbone.model.trainable = False
    features = backbone.model(adapt_to_backbone(images, backbone, config.data))
    if len(features.shape) == 4:
        features = layers.GlobalAveragePooling2D(name="head_pool")(features)
    elif len(features.shape) == 3:
        # A vision transformer's tokens (ViT, DeiT, DINOv2): their average, class token included.
        features = layers.GlobalAveragePooling1D(name="head_pool")(features)
    elif len(features.shape) != 2:
        raise UserError(
            f"model.feature_layer gives features of shape {tuple(features.shape)}: "
            "name a layer whose output is a vector or a feature map"
        )
    if config.model.dropout:
        features = layers.Dropout(config.model.dropout, name="head_dropout")(features)
    penalty = (
        regularizers.L1L2(l1=config.model.l1, l2=config.model.l2) if (config.model.l1 or config.model.l2) else None
    )
    return layers.Dense(num_classes, kernel_regularizer=penalty, name="classifier")(features)


def adapt_to_backbone(images, backbone: Backbone, data: DataConfig):
    """Converts the target's images to the channels and size the backbone takes."""
    from keras import layers

    if data.channels != backbone.channels:
        if backbone.channels == 1:
            raise UserError(
                f"model.backbone takes grayscale images (1 channel) but data.channels = {data.channels}: "
                "set data.channels=1 so that the pipeline converts the images to grayscale"
            )
        images = layers.Concatenate(axis=-1, name=GRAYSCALE_TO_RGB)([images] * backbone.channels)
    if tuple(data.image_size) != tuple(backbone.image_size):
        images = layers.Resizing(*backbone.image_size, interpolation="bilinear", name=RESIZE_TO_BACKBONE)(images)
    return images


def input_adaptation(data: DataConfig, backbone_size: tuple[int, int], backbone_channels: int) -> list[str]:
    """In words, what :func:`adapt_to_backbone` does for these images."""
    steps = []
    if data.channels != backbone_channels:
        steps.append(f"grayscale to RGB: the channel repeated {backbone_channels} times ({GRAYSCALE_TO_RGB})")
    if tuple(data.image_size) != tuple(backbone_size):
        steps.append(
            f"resized from {_size_text(data.image_size)} to "
            f"{_size_text(backbone_size)}, bilinear ({RESIZE_TO_BACKBONE})"
        )
    return steps


def check_unfreeze_top(backbone_model, unfreeze_top: int) -> None:
    """Refuses, before any training, a stage 2 that asks for more blocks than there are."""
    from kerascv_app.models.blocks import backbone_blocks

    if not unfreeze_top:
        return
    count = len(backbone_blocks(backbone_model))
    if unfreeze_top > count:
        raise UserError(
            f"train.unfreeze_top = {unfreeze_top} but the backbone "
            f"has {count} blocks: use 1 to {count}, or 0 for all of it"
        )


def unfreeze_backbone(model, unfreeze_top: int) -> list[str]:
    """Makes the whole backbone, or its top ``unfreeze_top`` blocks, trainable; returns the
    names of the unfrozen layers. The model must be compiled again to take effect."""
    from kerascv_app.models.blocks import backbone_blocks

    backbone = model.get_layer(BACKBONE_NAME)
    backbone.trainable = True
    if unfreeze_top:
        for block in backbone_blocks(backbone)[:-unfreeze_top]:
            for layer in block:
                layer.trainable = False
    return [layer.name for layer in backbone.layers if layer.trainable and layer.weights]


def transfer_environment(model, config: Config) -> dict:
    """What environment.json records of a transfer model: backbone, preprocessing, adaptation, stages."""
    if not config.model.backbone:
        return {}
    from kerascv_app.models.blocks import backbone_blocks

    backbone = model.get_layer(BACKBONE_NAME)
    height, width, channels = backbone.inputs[0].shape[1:]
    block_count = len(backbone_blocks(backbone))
    train = config.train
    unfrozen = (
        f"the top {train.unfreeze_top} of {block_count} blocks"
        if train.unfreeze_top
        else f"the whole backbone ({block_count} blocks)"
    )
    stages = [
        {
            "stage": 1,
            "epochs": train.epochs,
            "learning_rate": train.learning_rate,
            "trains": "the head; backbone frozen, BatchNorm in inference mode",
        }
    ]
    if train.fine_tune_epochs:
        stages.append(
            {
                "stage": 2,
                "epochs": train.fine_tune_epochs,
                "learning_rate": train.fine_tune_learning_rate,
                "trains": f"the head and {unfrozen}",
            }
        )
    return {
        "transfer": {
            "backbone": config.model.backbone,
            "backbone_weights": config.model.backbone_weights or _bundled_weights(config.model.backbone),
            "backbone_input": {"image_size": [height, width], "channels": channels},
            "feature_layer": backbone.layers[-1].name,
            "feature_shape": list(backbone.outputs[0].shape[1:]),
            "preprocessing": describe_preprocessing(backbone) + "; augment.normalization is not applied",
            "input_adaptation": input_adaptation(config.data, (height, width), channels),
            "stages": stages,
        }
    }


def _bundled_weights(backbone: str) -> str:
    if backbone.startswith("run:"):
        return "the run's"
    if backbone.startswith("hub:"):
        return "the preset's"
    return "random"


def _size_text(size) -> str:
    return f"{size[0]}x{size[1]}"
