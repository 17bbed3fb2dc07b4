"""PatchWhitening: a first layer whose frozen filters whiten the training images' patches.

airbench's first layer (KellerJordan/cifar10-airbench): the filters are computed once from
training images, before training, by :func:`initialize_whitening`, and only the bias trains.
Registered, so that a ``model.keras`` holding it reloads with ``safe_mode=True``.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

# Side of the square patches, in pixels.
DEFAULT_PATCH_SIZE = 2
# Added to each eigenvalue before its square root, as a fraction of the mean eigenvalue:
# keeps near-constant directions from being amplified into noise. Relative, so that the
# output does not depend on the pixels' scale; airbench standardises its pixels (mean
# eigenvalue about 1) and adds 5e-4, which this equals there.
DEFAULT_EPSILON = 5e-4


@keras.saving.register_keras_serializable(package="kerascv_app")
class PatchWhitening(keras.layers.Layer):
    """A frozen ``patch_size`` x ``patch_size`` valid convolution that whitens image patches,
    plus a trainable bias.

    With C the (uncentred) covariance of the training patches, flattened in (row, column,
    channel) order, and C = V diag(lambda) V^T, the filters are
    V / sqrt(lambda + epsilon * mean(lambda)), largest eigenvalue first, followed by their
    negatives (so that the GELU after it keeps both signs): 2 * patch_size^2 * channels
    outputs. The kernel holds zeros until :meth:`adapt` is called.
    """

    def __init__(self, patch_size: int = DEFAULT_PATCH_SIZE, epsilon: float = DEFAULT_EPSILON, **kwargs):
        super().__init__(**kwargs)
        if patch_size < 1:
            raise ValueError(f"patch_size must be a positive number of pixels, received {patch_size}")
        self.patch_size = patch_size
        self.epsilon = epsilon

    def build(self, input_shape):
        channels = input_shape[-1]
        patch_values = self.patch_size * self.patch_size * channels
        self.kernel = self.add_weight(
            name="kernel",
            shape=(self.patch_size, self.patch_size, channels, 2 * patch_values),
            initializer="zeros",
            trainable=False,
        )
        self.bias = self.add_weight(name="bias", shape=(2 * patch_values,), initializer="zeros", trainable=True)

    def call(self, inputs):
        kernel = ops.cast(self.kernel, inputs.dtype)
        return ops.conv(inputs, kernel, strides=1, padding="valid") + ops.cast(self.bias, inputs.dtype)

    def compute_output_shape(self, input_shape):
        batch, height, width, channels = input_shape
        shrink = self.patch_size - 1
        return (
            batch,
            None if height is None else height - shrink,
            None if width is None else width - shrink,
            2 * self.patch_size**2 * channels,
        )

    def adapt(self, images) -> None:
        """Sets the filters from ``images`` (N, H, W, C) as this layer receives them."""
        self.set_filters(
            np.asarray(keras.ops.convert_to_numpy(patch_covariance(images, self.patch_size)), dtype=np.float64)
        )

    def set_filters(self, covariance: np.ndarray) -> None:
        """Sets the filters from a patch covariance matrix (patch_size^2 * channels square)."""
        kernel_shape = tuple(self.kernel.shape)
        self.kernel.assign(whitening_kernel(covariance, self.epsilon, kernel_shape).astype(self.kernel.dtype))

    def get_config(self):
        return {**super().get_config(), "patch_size": self.patch_size, "epsilon": self.epsilon}


def patch_covariance(images, patch_size: int):
    """The uncentred covariance (sum over patches of p p^T / count) of every
    ``patch_size`` x ``patch_size`` patch of ``images``, each flattened in (row, column,
    channel) order; computed with ``keras.ops`` in float32, on the device."""
    images = ops.cast(images, "float32")
    height, width = images.shape[1], images.shape[2]
    rows, columns = height - patch_size + 1, width - patch_size + 1
    # Concatenating the shifted views gives each position's patch in (row, column, channel) order.
    shifted = [
        images[:, row : row + rows, column : column + columns, :]
        for row in range(patch_size)
        for column in range(patch_size)
    ]
    patches = ops.concatenate(shifted, axis=-1)
    flat = ops.reshape(patches, (-1, patches.shape[-1]))
    return ops.matmul(ops.transpose(flat), flat) / ops.cast(ops.shape(flat)[0], "float32")


def whitening_kernel(covariance: np.ndarray, epsilon: float, kernel_shape: tuple[int, int, int, int]) -> np.ndarray:
    """The PatchWhitening kernel for a patch covariance: eigenvectors, largest first, scaled
    by 1/sqrt(eigenvalue + epsilon * mean eigenvalue), then their negatives."""
    eigenvalues, eigenvectors = np.linalg.eigh(covariance)
    # eigh sorts ascending; airbench orders the filters by decreasing eigenvalue.
    eigenvalues, eigenvectors = eigenvalues[::-1], eigenvectors[:, ::-1]
    filters = eigenvectors / np.sqrt(eigenvalues + epsilon * eigenvalues.mean())[None, :]
    patch_height, patch_width, channels, _ = kernel_shape
    kernel = np.concatenate([filters, -filters], axis=1)
    return kernel.reshape(patch_height, patch_width, channels, kernel.shape[1])


def whitening_layers(model) -> list[PatchWhitening]:
    return [layer for layer in model.layers if isinstance(layer, PatchWhitening)]


def initialize_whitening(model, images) -> None:
    """Adapts every PatchWhitening layer of ``model`` to ``images`` (what the model takes:
    uint8-valued pixels), passed through the layers in front of it (the normalisation)."""
    for layer in whitening_layers(model):
        front = keras.Model(model.input, layer.input)
        layer.adapt(front(images, training=False))
