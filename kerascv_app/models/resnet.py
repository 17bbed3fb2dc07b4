"""CIFAR-style ResNet (He et al. 2016, section 4.2): 6n+2 layers in three stages.

``depth`` = 6n+2 (20, 32, 44, 56, 110) and ``width`` = channels of the first stage,
doubled at each of the two downsampling stages. Shortcuts that change shape use a
1x1 projection. Weight decay comes from the optimizer (train.weight_decay), not from
per-layer penalties, unless model.l2 is set.
"""

from __future__ import annotations

from kerascv_app.config import ModelConfig
from kerascv_app.errors import UserError
from kerascv_app.models.registry import register_model


@register_model("resnet")
def resnet(features, num_classes: int, config: ModelConfig):
    from keras import layers, regularizers

    if (config.depth - 2) % 6 != 0:
        raise UserError(
            f"model.depth = {config.depth} does not fit a CIFAR ResNet: use 6n+2, e.g. 20, 32, 44, 56 or 110"
        )
    blocks_per_stage = (config.depth - 2) // 6
    penalty = regularizers.L1L2(l1=config.l1, l2=config.l2) if (config.l1 or config.l2) else None

    def conv(x, filters, strides, name, kernel_size=3):
        return layers.Conv2D(
            filters,
            kernel_size,
            strides=strides,
            padding="same",
            use_bias=False,
            kernel_initializer="he_normal",
            kernel_regularizer=penalty,
            name=name,
        )(x)

    x = conv(features, config.width, 1, "stem_conv")
    x = layers.BatchNormalization(name="stem_bn")(x)
    x = layers.ReLU(name="stem_relu")(x)
    for stage in range(3):
        filters = config.width * 2**stage
        for block in range(blocks_per_stage):
            strides = 2 if stage > 0 and block == 0 else 1
            name = f"stage{stage + 1}_block{block + 1}"
            shortcut = x
            y = conv(x, filters, strides, f"{name}_conv1")
            y = layers.BatchNormalization(name=f"{name}_bn1")(y)
            y = layers.ReLU(name=f"{name}_relu1")(y)
            y = conv(y, filters, 1, f"{name}_conv2")
            y = layers.BatchNormalization(name=f"{name}_bn2")(y)
            if strides != 1 or shortcut.shape[-1] != filters:
                shortcut = conv(shortcut, filters, strides, f"{name}_projection", kernel_size=1)
                shortcut = layers.BatchNormalization(name=f"{name}_projection_bn")(shortcut)
            x = layers.Add(name=f"{name}_add")([shortcut, y])
            x = layers.ReLU(name=f"{name}_relu2")(x)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    if config.dropout:
        x = layers.Dropout(config.dropout, name="head_dropout")(x)
    return layers.Dense(num_classes, kernel_regularizer=penalty, name="classifier")(x)
