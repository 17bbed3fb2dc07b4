"""Writes a model directory's model as a SavedModel with the two serving signatures.

Runs in its own process under the TensorFlow backend whatever backend trained the model
(``python -m kerascv_app.export.savedmodel MODEL_DIR DESTINATION``): the ``.keras`` file
is backend-independent, and a graph traced by TensorFlow runs on CPU and GPU servers
alike, where a JAX export is lowered for the exporting machine's platform and a torch
export needs torch_xla.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from kerascv_app import faults
from kerascv_app.errors import UserError
from kerascv_app.export import (
    BYTES_INPUT,
    CLASS_NAMES_ASSET,
    IMAGES_INPUT,
    SERVING_BYTES,
    SERVING_DEFAULT,
)
from kerascv_app.model_dir import ModelDirectory, open_model_directory


def build_serving_module(model, model_directory: ModelDirectory, class_names_file: Path):
    """A tf.Module holding the model's variables, its class names and both signatures."""
    import tensorflow as tf

    from kerascv_app.data.pipeline import decode_image

    height, width = model_directory.image_size
    channels = model_directory.channels
    class_names = tf.constant(list(model_directory.class_names))

    def classify(images):
        # The model's preprocessing is inside it: it takes [0, 255] values as float32.
        logits = tf.cast(model(tf.cast(images, tf.float32), training=False), tf.float32)
        probabilities = tf.nn.softmax(logits, axis=-1)
        class_id = tf.argmax(probabilities, axis=-1, output_type=tf.int64)
        return {"probabilities": probabilities, "class_id": class_id, "class_name": tf.gather(class_names, class_id)}

    @tf.function(input_signature=[tf.TensorSpec([None, height, width, channels], tf.uint8, name=IMAGES_INPUT)])
    def serve_images(images):
        return classify(images)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=BYTES_INPUT)])
    def serve_bytes(image_bytes):
        images = tf.map_fn(
            lambda encoded: decode_image(encoded, (height, width), channels),
            image_bytes,
            fn_output_signature=tf.TensorSpec([height, width, channels], tf.uint8),
        )
        return classify(images)

    module = tf.Module(name="kcv_classifier")
    # Tracking the variables (not the Keras model object) keeps the SavedModel free of
    # Keras classes: TF Serving and plain tf.saved_model.load need only TensorFlow.
    module.model_variables = list(model.variables)
    module.class_names_file = tf.saved_model.Asset(str(class_names_file))
    module.serve_images = serve_images
    module.serve_bytes = serve_bytes
    return module


def load_float32_model(model_directory: ModelDirectory):
    """The directory's model, computing in float32 whatever precision it was trained with.

    Mixed precision speeds up training on GPUs, but half-precision results differ between
    backends by more than the parity tolerance (bfloat16 keeps 3 significant digits), and
    CPU servers gain nothing from it. The weights are float32 under every policy, so only
    the layers' compute dtype changes.
    """
    import keras

    model = model_directory.load_model()
    if model_directory.precision == "float32":
        return model
    keras.config.set_dtype_policy("float32")
    config = _with_float32_policies(keras.saving.serialize_keras_object(model))
    # The optimizer is not needed to serve, and would be rebuilt for nothing.
    config.pop("compile_config", None)
    float32_model = keras.saving.deserialize_keras_object(config)
    float32_model.set_weights(model.get_weights())
    return float32_model


def _with_float32_policies(value):
    """A copy of a serialized model in which every mixed dtype policy is float32."""
    if isinstance(value, dict):
        if value.get("class_name") == "DTypePolicy" and str(value.get("config", {}).get("name", "")).startswith(
            "mixed_"
        ):
            return "float32"
        return {key: _with_float32_policies(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_with_float32_policies(item) for item in value]
    return value


def write_saved_model(model_directory: ModelDirectory, destination: Path) -> None:
    """Loads the model under TensorFlow and saves it to ``destination`` (which must not exist)."""
    import tensorflow as tf

    model = load_float32_model(model_directory)
    if faults.export_fault_is("perturb_weights"):
        _perturb_first_weight(model)
    with tempfile.TemporaryDirectory(prefix="kcv-export-") as work_folder:
        class_names_file = Path(work_folder) / CLASS_NAMES_ASSET
        class_names_file.write_text("".join(f"{name}\n" for name in model_directory.class_names))
        module = build_serving_module(model, model_directory, class_names_file)
        signatures = {
            SERVING_DEFAULT: module.serve_images.get_concrete_function(),
            SERVING_BYTES: module.serve_bytes.get_concrete_function(),
        }
        tf.saved_model.save(module, str(destination), signatures=signatures)


def read_class_names(loaded) -> list[str]:
    """The class names of a loaded SavedModel, in class_id order, from its own asset."""
    return Path(loaded.class_names_file.asset_path.numpy().decode()).read_text().splitlines()


def _perturb_first_weight(model) -> None:
    """Fault injection: a SavedModel that no longer matches the Keras model."""
    variable = model.trainable_variables[0]
    variable.assign(variable + 1.0)


def writer_main(write, arguments: list[str]) -> int:
    """A writer process (``MODEL_DIR DESTINATION``): ``write(model_directory, destination)`` under TensorFlow."""
    from kerascv_app.backend import select_backend

    model_path, destination = arguments
    try:
        select_backend("tensorflow")
        write(open_model_directory(model_path), Path(destination))
    except UserError as error:
        # The parent process reports this last line as the reason.
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


def main(arguments: list[str]) -> int:
    return writer_main(write_saved_model, arguments)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
