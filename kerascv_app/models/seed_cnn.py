"""The source document's CIFAR-10 network, in the Keras functional API.

Three 3x3 convolutions (32, 64, 64 filters) with ReLU and 2x2 max pooling, then a
fully connected layer of 512 units and the classifier. The source pools only twice but
flattens as if it had pooled three times (``view(-1, 64 * 4 * 4)`` after 8x8 maps);
``extra_pooling`` (default on) adds the third pooling after conv3, the smallest fix that
keeps fc1's size. As the source advises for fully connected layers, L1/L2 penalties and
dropout are available there.
"""

from __future__ import annotations

from kerascv_app.config import ModelConfig
from kerascv_app.models.registry import register_model


@register_model("seed_cnn")
def seed_cnn(features, num_classes: int, config: ModelConfig):
    from keras import layers, regularizers

    penalty = regularizers.L1L2(l1=config.l1, l2=config.l2) if (config.l1 or config.l2) else None
    x = features
    for index, filters in enumerate((32, 64, 64), start=1):
        x = layers.Conv2D(filters, 3, padding="same", activation="relu", name=f"conv{index}")(x)
        if index < 3 or config.extra_pooling:
            x = layers.MaxPooling2D(2, name=f"pool{index}")(x)
    x = layers.Flatten(name="flatten")(x)
    if config.dropout:
        x = layers.Dropout(config.dropout, name="fc1_dropout")(x)
    x = layers.Dense(config.hidden_units, activation="relu", kernel_regularizer=penalty, name="fc1")(x)
    if config.dropout:
        x = layers.Dropout(config.dropout, name="fc2_dropout")(x)
    return layers.Dense(num_classes, kernel_regularizer=penalty, name="fc2")(x)
