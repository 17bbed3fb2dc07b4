"""Checks a freshly written SavedModel the way TF Serving will meet it: TensorFlow alone.

Runs in a fresh process (``python -m kerascv_app.export.verify SAVED_MODEL SAMPLE_NPZ
RESULT_JSON``) in which importing keras is made impossible before TensorFlow is imported,
so a SavedModel that secretly needs Keras classes fails here rather than on the server.
Both signatures are called on the sample images (``serving_bytes`` with them encoded as
PNG, lossless, so the same pixels reach the model) and compared with the Keras model's
probabilities stored beside them. The verdict is left to the caller; this writes numbers.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from kerascv_app.export import BYTES_INPUT, IMAGES_INPUT, OUTPUT_NAMES, SERVING_BYTES, SERVING_DEFAULT, SIGNATURE_NAMES
from kerascv_app.export.savedmodel import read_class_names


def block_keras() -> None:
    """Makes ``import keras`` fail in this process; TensorFlow itself runs without it."""
    if sys.modules.get("keras") is not None:
        raise RuntimeError("keras was imported before it could be blocked: this check must run in a fresh process")
    for name in ("keras", "tf_keras"):
        sys.modules[name] = None


def verify_saved_model(saved_model_path: Path, sample_path: Path) -> dict:
    import numpy as np
    import tensorflow as tf

    sample = np.load(sample_path)
    images, reference = sample["images"], sample["probabilities"]
    loaded = tf.saved_model.load(str(saved_model_path))
    missing = [name for name in SIGNATURE_NAMES if name not in loaded.signatures]
    if missing:
        return {"missing_signatures": missing}
    class_names = read_class_names(loaded)
    encoded = tf.stack([tf.io.encode_png(image) for image in images])
    outputs = {
        SERVING_DEFAULT: loaded.signatures[SERVING_DEFAULT](**{IMAGES_INPUT: tf.constant(images)}),
        SERVING_BYTES: loaded.signatures[SERVING_BYTES](**{BYTES_INPUT: encoded}),
    }
    return {
        "missing_signatures": [],
        "max_difference": {
            name: float(np.abs(result["probabilities"].numpy() - reference).max()) for name, result in outputs.items()
        },
        "consistent_outputs": {name: outputs_are_consistent(result, class_names) for name, result in outputs.items()},
        "keras_imported": sys.modules.get("keras") is not None,
        "tensorflow_version": tf.__version__,
    }


def outputs_are_consistent(result: dict, class_names: list[str]) -> bool:
    """class_id is the most probable class and class_name its name; all outputs are present."""
    import numpy as np

    if sorted(result) != sorted(OUTPUT_NAMES):
        return False
    probabilities = result["probabilities"].numpy()
    class_id = result["class_id"].numpy()
    names = [name.decode() for name in result["class_name"].numpy()]
    return bool(
        np.array_equal(class_id, probabilities.argmax(axis=-1)) and names == [class_names[index] for index in class_id]
    )


def main(arguments: list[str]) -> int:
    saved_model_path, sample_path, result_path = map(Path, arguments)
    block_keras()
    result = verify_saved_model(saved_model_path, sample_path)
    result_path.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
