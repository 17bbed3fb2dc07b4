"""Checks a freshly written model.onnx the way a user will meet it: onnxruntime alone.

Runs in a fresh process (``python -m kerascv_app.export.onnx_verify VERSION_FOLDER
SAMPLE_NPZ RESULT_JSON``) in which importing TensorFlow or Keras is made impossible first,
so a model.onnx that secretly needs either (or a reader that imports them) fails here and
not on the user's machine. The sample images are run at every batch size of
ONNX_VERIFIED_BATCH_SIZES (the dynamic batch must take them all) and compared with the
Keras model's probabilities stored beside them. The verdict is left to the caller; this
writes numbers.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

BLOCKED_MODULES = ("tensorflow", "keras", "tf_keras")


def block_tensorflow_and_keras() -> None:
    """Makes ``import tensorflow`` and ``import keras`` fail in this process."""
    imported = [name for name in BLOCKED_MODULES if sys.modules.get(name) is not None]
    if imported:
        raise RuntimeError(
            f"{', '.join(imported)} imported before it could be blocked: this check must run in a fresh process"
        )
    for name in BLOCKED_MODULES:
        sys.modules[name] = None


def verify_onnx_model(version_folder: Path, sample_path: Path) -> dict:
    import numpy as np
    import onnxruntime

    from kerascv_app.export import ONNX_FILE, ONNX_VERIFIED_BATCH_SIZES
    from kerascv_app.export.onnx_runtime import OnnxClassifier

    sample = np.load(sample_path)
    images, reference = sample["images"], sample["probabilities"]
    classifier = OnnxClassifier(version_folder / ONNX_FILE)
    max_difference, consistent = {}, {}
    for batch_size in ONNX_VERIFIED_BATCH_SIZES:
        outputs = classifier.run(images[:batch_size])
        probabilities = outputs["probabilities"]
        if probabilities.shape != reference[:batch_size].shape:
            max_difference[str(batch_size)] = float("inf")
            consistent[str(batch_size)] = False
            continue
        max_difference[str(batch_size)] = float(np.abs(probabilities - reference[:batch_size]).max())
        consistent[str(batch_size)] = bool(
            outputs["class_id"].dtype == np.int64 and np.array_equal(outputs["class_id"], probabilities.argmax(axis=-1))
        )
    return {
        "max_difference": max_difference,
        "consistent_outputs": consistent,
        "class_names": classifier.class_names,
        "image_size": list(classifier.image_size),
        "channels": classifier.channels,
        "input_shape": classifier.input_shape,
        "metadata": classifier.metadata,
        "opset": max((entry.version for entry in _opsets(version_folder / ONNX_FILE)), default=None),
        "tensorflow_or_keras_imported": any(sys.modules.get(name) is not None for name in BLOCKED_MODULES),
        "onnxruntime_version": onnxruntime.__version__,
    }


def _opsets(path: Path):
    """The model's opset imports, read with the onnx package (which imports neither TensorFlow nor Keras)."""
    import onnx

    return [
        entry
        for entry in onnx.load(str(path), load_external_data=False).opset_import
        if entry.domain in ("", "ai.onnx")
    ]


def main(arguments: list[str]) -> int:
    from kerascv_app.errors import UserError

    version_folder, sample_path, result_path = map(Path, arguments)
    block_tensorflow_and_keras()
    try:
        result = verify_onnx_model(version_folder, sample_path)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    result_path.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
