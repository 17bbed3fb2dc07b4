"""Grad-CAM (Selvaraju et al., 2017): where in the image a class's logit comes from.

For a feature map A (the output of the model's last convolutional stage, H' x W' x C) and the
logit y of the explained class, each channel's weight is the mean of dy/dA over the map, and
the map is ReLU(sum_c weight_c A_c), resized to the image (bilinear) and scaled to [0, 1].

Gradients are taken under TensorFlow (``tf.GradientTape``) from ``model.keras``, whatever
backend trained the model: a .keras file reloads on any backend, as ``kcv export`` relies on.
In a TensorFlow process (``kcv report`` is one) it runs in place; from another backend it runs
``python -m kerascv_app.report.gradcam`` in a TensorFlow subprocess, as export does.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from kerascv_app.errors import UserError

#: The subprocess's exit status when the model has no feature map (not an error of the run).
NO_FEATURE_MAP_STATUS = 3

#: Layers that never hold the model's learned features, even where their output is a map.
_SKIPPED_LAYER_KINDS = ("Pooling", "Dropout")


class NoFeatureMap(UserError):
    """The model has no feature map at its top level to explain (e.g. a backbone cut at a dense layer)."""


@dataclasses.dataclass
class GradcamResult:
    maps: np.ndarray  # (N, H, W) in [0, 1], at the image size
    layer: str  # the feature map's layer
    probabilities: np.ndarray  # (N, classes) from the reloaded model, to check against the run's
    where: str  # "this process" or "a TensorFlow subprocess"


def gradcam(model_dir: str | Path, images: np.ndarray, classes: np.ndarray) -> GradcamResult:
    """Grad-CAM maps of ``images`` (uint8 N x H x W x C) for ``classes`` (one per image)."""
    import keras

    if keras.backend.backend() == "tensorflow":
        return dataclasses.replace(compute(Path(model_dir), images, classes), where="this process")
    with tempfile.TemporaryDirectory(prefix="kcv-gradcam-") as folder:
        request, answer = Path(folder) / "request.npz", Path(folder) / "answer.npz"
        np.savez(request, images=images, classes=classes)
        package_parent = str(Path(__file__).resolve().parents[2])
        environment = {
            **os.environ,
            "KERAS_BACKEND": "tensorflow",
            "TF_CPP_MIN_LOG_LEVEL": "3",
            "CUDA_VISIBLE_DEVICES": "-1",
            "PYTHONPATH": os.pathsep.join(filter(None, [package_parent, os.environ.get("PYTHONPATH")])),
        }
        result = subprocess.run(
            [sys.executable, "-m", "kerascv_app.report.gradcam", str(model_dir), str(request), str(answer)],
            env=environment,
            capture_output=True,
            text=True,
        )
        if result.returncode == NO_FEATURE_MAP_STATUS:
            raise NoFeatureMap(_no_feature_map(model_dir))
        if result.returncode != 0 or not answer.is_file():
            lines = [line.strip() for line in result.stderr.splitlines() if line.strip()]
            reason = next(
                (line.removeprefix("error: ") for line in reversed(lines) if line.startswith("error: ")),
                lines[-1] if lines else f"exit status {result.returncode}",
            )
            raise UserError(
                f"Grad-CAM under TensorFlow failed for {model_dir} ({reason}): pass --gradcam 0 to write the report "
                "without it"
            )
        with np.load(answer) as saved:
            return GradcamResult(
                maps=saved["maps"],
                layer=str(saved["layer"]),
                probabilities=saved["probabilities"],
                where="a TensorFlow subprocess",
            )


def feature_layer(model):
    """The last layer whose output is a feature map larger than 1x1 and that comes after the
    first layer with weights (so not the input, its augmentation or its normalisation)."""
    first_weighted = next((index for index, layer in enumerate(model.layers) if layer.weights), None)
    if first_weighted is None:
        return None
    for layer in reversed(model.layers[first_weighted:]):
        shape = _output_in(layer).shape if layer._inbound_nodes else None
        if shape is None or len(shape) != 4 or (shape[1] or 0) * (shape[2] or 0) <= 1:
            continue
        if any(kind in type(layer).__name__ for kind in _SKIPPED_LAYER_KINDS):
            continue
        return layer
    return None


def _output_in(layer):
    """The layer's output in the model that calls it. ``layer.output`` is its first call's: for
    a nested backbone that is its own inner graph's output, unconnected to the outer inputs."""
    outputs = layer._inbound_nodes[-1].output_tensors
    return outputs[0] if len(outputs) == 1 else outputs


def compute(model_dir: Path, images: np.ndarray, classes: np.ndarray) -> GradcamResult:
    """Runs under the TensorFlow backend: see the module docstring."""
    import keras
    import tensorflow as tf

    from kerascv_app.model_dir import open_model_directory

    model = open_model_directory(model_dir).load_model()
    layer = feature_layer(model)
    if layer is None:
        raise NoFeatureMap(_no_feature_map(model_dir))
    explained = keras.Model(model.inputs, [_output_in(layer), model.output])
    inputs = tf.constant(np.asarray(images), tf.float32)
    with tf.GradientTape() as tape:
        features, logits = explained(inputs, training=False)
        features = tf.cast(features, tf.float32)
        score = tf.gather(tf.cast(logits, tf.float32), tf.constant(np.asarray(classes, np.int64)), axis=1, batch_dims=1)
    gradients = tape.gradient(score, features)
    weights = tf.reduce_mean(gradients, axis=(1, 2), keepdims=True)
    maps = tf.nn.relu(tf.reduce_sum(weights * features, axis=-1, keepdims=True))
    maps = tf.image.resize(maps, images.shape[1:3], method="bilinear")[..., 0].numpy()
    peaks = maps.reshape(len(maps), -1).max(axis=1)
    maps = maps / np.where(peaks > 0, peaks, 1.0)[:, None, None]
    probabilities = tf.nn.softmax(tf.cast(logits, tf.float64), axis=-1).numpy()
    return GradcamResult(maps=maps.astype(np.float32), layer=layer.name, probabilities=probabilities, where="")


def _no_feature_map(model_dir: Path) -> str:
    return (
        f"{Path(model_dir) / 'model.keras'} has no feature map larger than 1x1 at its top level (a backbone that "
        "ends in a dense layer keeps its maps inside it; a backbone's last map can be 1x1 at small image sizes)"
    )


def main(arguments: list[str]) -> int:
    from kerascv_app.backend import select_backend

    model_dir, request, answer = map(Path, arguments)
    try:
        select_backend("tensorflow")
        with np.load(request) as saved:
            result = compute(model_dir, saved["images"], saved["classes"])
    except NoFeatureMap as error:
        print(f"error: {error}", file=sys.stderr)
        return NO_FEATURE_MAP_STATUS
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    np.savez(answer, maps=result.maps, layer=np.array(result.layer), probabilities=result.probabilities)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
