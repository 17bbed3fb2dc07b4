"""Tiny KerasHub presets written by the tests: KerasHub's own classes, random weights.

A preset folder is what ``save_to_preset`` writes (config.json, model.weights.h5, the image
converter's image_converter.json, ...), the same format as a downloaded preset, so
``hub:FOLDER`` takes the path an offline user takes with a real one.
"""

from __future__ import annotations

from pathlib import Path

#: The converter's ImageNet-style per-channel preprocessing, so that a test can see it applied.
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def imagenet_scale_and_offset(channels: int):
    scale = [1.0 / (255.0 * std) for std in STD[:channels]]
    offset = [-mean / std for mean, std in zip(MEAN[:channels], STD[:channels])]
    return scale, offset


def write_resnet_preset(folder: Path, image_size: int = 16, channels: int = 3, num_classes: int = 3) -> Path:
    """A ResNet with two basic-block stacks (about 90,000 weights) saved with its classifier task."""
    import keras_hub

    backbone = keras_hub.models.ResNetBackbone(
        input_conv_filters=[64],
        input_conv_kernel_sizes=[3],
        stackwise_num_filters=[64, 16],
        stackwise_num_blocks=[1, 1],
        stackwise_num_strides=[1, 2],
        block_type="basic_block",
        use_pre_activation=False,
        image_shape=(None, None, channels),
    )
    scale, offset = imagenet_scale_and_offset(channels)
    converter = keras_hub.layers.ResNetImageConverter(image_size=(image_size, image_size), scale=scale, offset=offset)
    preprocessor = keras_hub.models.ResNetImageClassifierPreprocessor(image_converter=converter)
    task = keras_hub.models.ResNetImageClassifier(backbone=backbone, num_classes=num_classes, preprocessor=preprocessor)
    task.save_to_preset(str(folder))
    return folder


def write_vit_preset(folder: Path, image_size: int = 16, num_classes: int = 3) -> Path:
    """A two-layer ViT with 4x4 patches: its features are tokens, not a feature map."""
    import keras_hub

    backbone = keras_hub.models.ViTBackbone(
        image_shape=(image_size, image_size, 3),
        patch_size=4,
        num_layers=2,
        num_heads=2,
        hidden_dim=16,
        mlp_dim=32,
    )
    converter = keras_hub.layers.ViTImageConverter(image_size=(image_size, image_size), scale=1 / 127.5, offset=-1.0)
    preprocessor = keras_hub.models.ViTImageClassifierPreprocessor(image_converter=converter)
    task = keras_hub.models.ViTImageClassifier(backbone=backbone, num_classes=num_classes, preprocessor=preprocessor)
    task.save_to_preset(str(folder))
    return folder
