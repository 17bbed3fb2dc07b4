"""Registered layers of transfer models, so that their ``model.keras`` reloads with
``safe_mode=True`` on every backend (a Lambda layer would not).

Imported by :func:`kerascv_app.custom_objects.register_custom_objects` before any load.
"""

from __future__ import annotations

import keras
from keras import ops

# ImageNet's channel statistics in RGB order, on [0, 1] pixels ("torch") and on [0, 255]
# pixels in BGR order ("caffe"), as keras.applications.imagenet_utils.preprocess_input uses them.
TORCH_MEAN = (0.485, 0.456, 0.406)
TORCH_STD = (0.229, 0.224, 0.225)
CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)

IMAGENET_MODES = ("tf", "torch", "caffe")


@keras.saving.register_keras_serializable(package="kerascv_app")
class ImagenetPreprocessing(keras.layers.Layer):
    """The preprocessing a keras.applications model expects, on RGB images in [0, 255].

    ``mode`` is that of ``keras.applications.imagenet_utils.preprocess_input``: "tf" maps to
    [-1, 1]; "torch" scales to [0, 1] and standardises with ImageNet's statistics; "caffe"
    reorders RGB to BGR and subtracts ImageNet's BGR means. Written in ``keras.ops`` so
    that it runs inside the model on every backend, instead of in the input pipeline.
    """

    def __init__(self, mode: str, **kwargs):
        super().__init__(**kwargs)
        if mode not in IMAGENET_MODES:
            raise ValueError(f"ImagenetPreprocessing mode must be one of {IMAGENET_MODES}, received {mode!r}")
        self.mode = mode

    def call(self, images):
        images = ops.cast(images, self.compute_dtype)
        if self.mode == "tf":
            return images / 127.5 - 1.0
        if self.mode == "torch":
            return (images / 255.0 - ops.convert_to_tensor(TORCH_MEAN, self.compute_dtype)) / ops.convert_to_tensor(
                TORCH_STD, self.compute_dtype
            )
        return ops.flip(images, axis=-1) - ops.convert_to_tensor(CAFFE_BGR_MEAN, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}
