"""airbench's CIFAR-10 network (KellerJordan/cifar10-airbench, airbench94.py) in the Keras functional API.

    image -> normalisation (the factory's) -> PatchWhitening (frozen 2x2 filters) -> GELU
          -> 3 x [conv3x3 -> max pool 2 -> BatchNorm -> GELU -> conv3x3 -> BatchNorm -> GELU]
          -> global max pool -> dense (no bias) -> logits x 1/9

- PatchWhitening (kerascv_app/models/whitening.py): frozen filters computed from training
  images before training (the fast loop does it); its bias trains.
- Every 3x3 convolution starts as the identity on as many channels as it has inputs
  (IdentityConvolution, kerascv_app/models/identity_init.py): an implicit residual
  connection without the residual's cost.
- BatchNorm without a learned scale (airbench keeps it at 1), momentum 0.6, epsilon 1e-12.
- Widths: ``model.width`` for the first block, 4x for the other two (airbench: 64, 256, 256).

keras is imported inside the builder, so that listing models does not import it.
"""

from __future__ import annotations

from kerascv_app.config import ModelConfig
from kerascv_app.models.registry import register_model

# BatchNorm: moving statistics follow each batch quickly (Keras momentum = 1 - PyTorch's).
BATCH_NORM_MOMENTUM = 0.6
BATCH_NORM_EPSILON = 1e-12
# Logits are multiplied by this: small initial logits, and a learning rate that suits the
# convolutions is then not too large for the classifier.
LOGIT_SCALE = 1 / 9
# Width of each block relative to model.width.
WIDTH_MULTIPLIERS = (1, 4, 4)


@register_model("airbench_net")
def airbench_net(features, num_classes: int, config: ModelConfig):
    from keras import layers

    from kerascv_app.models.identity_init import torch_default_initializer
    from kerascv_app.models.whitening import PatchWhitening

    # float32 whatever the precision policy: its smallest-eigenvalue filters amplify the
    # differences of neighbouring pixels about 100 times, and bfloat16 would turn its rounding
    # into up to 16% noise on those channels (airbench's float16: 2%). It costs almost nothing.
    x = PatchWhitening(dtype="float32", name="whitening")(features)
    x = layers.Activation("gelu", name="whitening_gelu")(x)
    for index, multiplier in enumerate(WIDTH_MULTIPLIERS, start=1):
        x = convolution_group(x, config.width * multiplier, f"block{index}")
    # airbench pools the final 3x3 maps with a 3x3 max pool; a global max pool is the same
    # there and also fits other image sizes.
    x = layers.GlobalMaxPooling2D(name="pool")(x)
    x = layers.Dense(num_classes, use_bias=False, kernel_initializer=torch_default_initializer(), name="classifier")(x)
    return layers.Rescaling(LOGIT_SCALE, name="logit_scale")(x)


def convolution_group(x, filters: int, name: str):
    """conv -> max pool 2 -> BatchNorm -> GELU -> conv -> BatchNorm -> GELU."""
    from keras import layers

    x = identity_convolution(x, filters, f"{name}_conv1")
    x = layers.MaxPooling2D(2, name=f"{name}_pool")(x)
    x = batch_norm(x, f"{name}_norm1")
    x = layers.Activation("gelu", name=f"{name}_gelu1")(x)
    x = identity_convolution(x, filters, f"{name}_conv2")
    x = batch_norm(x, f"{name}_norm2")
    return layers.Activation("gelu", name=f"{name}_gelu2")(x)


def identity_convolution(x, filters: int, name: str):
    from keras import layers

    from kerascv_app.models.identity_init import IdentityConvolution

    return layers.Conv2D(
        filters, 3, padding="same", use_bias=False, kernel_initializer=IdentityConvolution(), name=name
    )(x)


def batch_norm(x, name: str):
    from keras import layers

    # scale=False: airbench keeps the BatchNorm weight at 1 (not trained); the bias trains.
    return layers.BatchNormalization(momentum=BATCH_NORM_MOMENTUM, epsilon=BATCH_NORM_EPSILON, scale=False, name=name)(
        x
    )
