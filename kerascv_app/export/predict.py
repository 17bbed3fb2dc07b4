"""``kcv predict``: class probabilities for image files, from a run, an ensemble or an export.

A run or ensemble directory is predicted with its Keras model on the selected backend; an
exported version folder (``saved_models/NAME/N``) with TensorFlow alone, through its
``serving_bytes`` signature, as TF Serving would answer. Images of any size and colour
mode are decoded and resized by the training pipeline's :func:`decode_image` (inside the
SavedModel, the same function is traced), so all three give the same probabilities.

An ONNX export (``model.onnx``, or the version folder holding it) is run by onnxruntime
alone: neither TensorFlow nor Keras is imported, and the images are decoded and resized
with Pillow the way decode_image does (:mod:`kerascv_app.export.pillow_images`: the same
pixels for PNG, ±1 on a few; JPEG decoders differ by a few levels). This module imports
neither at module level, so that path never does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kerascv_app.errors import UserError
from kerascv_app.evaluate.metrics import softmax
from kerascv_app.export import BYTES_INPUT, IMAGES_INPUT, ONNX_FILE, SERVING_BYTES, SERVING_DEFAULT, SIGNATURE_NAMES
from kerascv_app.export.onnx_runtime import onnx_model_path
from kerascv_app.export.pillow_images import UndecodableImage, decode_with_pillow
from kerascv_app.model_dir import MODEL_INFO_FILE, ModelDirectory, open_model_directory

#: Images per call of the model: bounds memory whatever the number of files.
BATCH_SIZE = 64


@dataclass(frozen=True)
class ImageFile:
    path: Path
    encoded: bytes
    pixels: np.ndarray


@dataclass(frozen=True)
class UnreadableImage:
    path: Path
    reason: str


@dataclass(frozen=True)
class Prediction:
    path: Path
    top_classes: list[tuple[str, float]]

    def to_json(self) -> dict:
        return {
            "image": str(self.path),
            "predictions": [{"class_name": name, "probability": probability} for name, probability in self.top_classes],
        }


@dataclass
class PredictionReport:
    predictions: list[Prediction] = field(default_factory=list)
    unreadable: list[UnreadableImage] = field(default_factory=list)


def keras_probabilities(model, images: np.ndarray) -> np.ndarray:
    """The Keras model's class probabilities for a uint8 batch, as float32 NumPy."""
    import keras

    logits = keras.ops.convert_to_numpy(model(images.astype(np.float32), training=False))
    return softmax(logits.astype(np.float64)).astype(np.float32)


def decode_with_tensorflow(encoded: bytes, image_size: tuple[int, int], channels: int) -> np.ndarray:
    """The training pipeline's decode and resize (TensorFlow)."""
    import tensorflow as tf

    from kerascv_app.data.pipeline import decode_image

    try:
        return decode_image(tf.constant(encoded), image_size, channels).numpy()
    except tf.errors.OpError as error:
        raise UndecodableImage(error.message) from error


class KerasClassifier:
    """A run's or an ensemble's model.keras on the selected backend."""

    decode = staticmethod(decode_with_tensorflow)

    def __init__(self, model_directory: ModelDirectory):
        self.model = model_directory.load_model()
        self.class_names = list(model_directory.class_names)
        self.image_size = tuple(model_directory.image_size)
        self.channels = model_directory.channels

    def probabilities(self, images: list[ImageFile]) -> np.ndarray:
        return keras_probabilities(self.model, np.stack([image.pixels for image in images]))


class SavedModelClassifier:
    """An exported version folder, through TensorFlow only."""

    decode = staticmethod(decode_with_tensorflow)

    def __init__(self, path: Path):
        import tensorflow as tf

        from kerascv_app.export.savedmodel import read_class_names

        try:
            loaded = tf.saved_model.load(str(path))
        except Exception as error:  # A damaged SavedModel fails in many ways; report it in one line.
            raise UserError(
                f"{path} cannot be loaded as a SavedModel ({type(error).__name__}: "
                f"{_first_line(error)}): export it again with kcv export"
            ) from error
        if any(name not in loaded.signatures for name in SIGNATURE_NAMES) or not hasattr(loaded, "class_names_file"):
            raise UserError(
                f"{path} was not written by kcv export (it lacks the {' and '.join(SIGNATURE_NAMES)} "
                "signatures or the class names): export it with kcv export"
            )
        self._loaded = loaded  # Keeps the variables alive while the signature is used.
        self._serve_bytes = loaded.signatures[SERVING_BYTES]
        self.class_names = read_class_names(loaded)
        # The size and channels the model takes are those of its uint8 signature.
        images_spec = loaded.signatures[SERVING_DEFAULT].structured_input_signature[1][IMAGES_INPUT]
        _, height, width, self.channels = images_spec.shape.as_list()
        self.image_size = (height, width)

    def probabilities(self, images: list[ImageFile]) -> np.ndarray:
        import tensorflow as tf

        encoded = tf.constant([image.encoded for image in images], dtype=tf.string)
        return self._serve_bytes(**{BYTES_INPUT: encoded})["probabilities"].numpy()


class OnnxFileClassifier:
    """An exported model.onnx, through onnxruntime only: no TensorFlow, no Keras."""

    decode = staticmethod(decode_with_pillow)

    def __init__(self, path: Path):
        from kerascv_app.export.onnx_runtime import OnnxClassifier

        self._model = OnnxClassifier(path)
        self.class_names = self._model.class_names
        self.image_size = self._model.image_size
        self.channels = self._model.channels

    def probabilities(self, images: list[ImageFile]) -> np.ndarray:
        return self._model.run(np.stack([image.pixels for image in images]))["probabilities"]


def is_onnx_model(path: str | Path) -> bool:
    """Whether ``kcv predict`` runs ``path`` with onnxruntime (and must not import TensorFlow)."""
    return onnx_model_path(path) is not None


def open_classifier(path: str | Path) -> KerasClassifier | SavedModelClassifier | OnnxFileClassifier:
    path = Path(path)
    if is_onnx_model(path):
        return OnnxFileClassifier(onnx_model_path(path))
    if not path.is_dir():
        raise UserError(
            f"{path} does not exist: give a run directory, an ensemble directory, "
            "an exported version folder (saved_models/NAME/N) or a model.onnx"
        )
    if (path / "saved_model.pb").is_file():
        return SavedModelClassifier(path)
    if not (path / MODEL_INFO_FILE).is_file():
        raise UserError(
            f"{path} is not a run, ensemble or exported version folder "
            f"(no {MODEL_INFO_FILE}, saved_model.pb or {ONNX_FILE}): "
            "give one made by kcv fit, kcv ensemble or kcv export"
        )
    return KerasClassifier(open_model_directory(path))


def read_image_file(path: Path, classifier) -> ImageFile | UnreadableImage:
    """Reads and decodes one file as ``classifier`` takes it; a file that cannot be read is reported, not raised."""
    try:
        encoded = path.read_bytes()
    except OSError as error:
        return UnreadableImage(path, error.strerror or str(error))
    try:
        pixels = classifier.decode(encoded, classifier.image_size, classifier.channels)
    except UndecodableImage:
        return UnreadableImage(path, "not a JPEG, PNG, BMP or GIF image, or a damaged one")
    return ImageFile(path, encoded, pixels)


def predict_images(model_path: str | Path, image_paths: list[Path], top_k: int = 5) -> PredictionReport:
    """The ``top_k`` classes of every readable image, in the order given; the rest reported."""
    if top_k < 1:
        raise UserError(f"--top-k {top_k} must be at least 1")
    classifier = open_classifier(model_path)
    report = PredictionReport()
    readable = []
    for path in map(Path, image_paths):
        image = read_image_file(path, classifier)
        if isinstance(image, UnreadableImage):
            report.unreadable.append(image)
        else:
            readable.append(image)
    for start in range(0, len(readable), BATCH_SIZE):
        batch = readable[start : start + BATCH_SIZE]
        for image, probabilities in zip(batch, classifier.probabilities(batch)):
            report.predictions.append(Prediction(image.path, top_classes(probabilities, classifier.class_names, top_k)))
    return report


def top_classes(probabilities: np.ndarray, class_names: list[str], top_k: int) -> list[tuple[str, float]]:
    order = np.argsort(-probabilities, kind="stable")[:top_k]
    return [(class_names[index], float(probabilities[index])) for index in order]


def prediction_table(predictions: list[Prediction]):
    """A rich table: one row per image and class, the image named on its first row."""
    from rich.table import Table

    table = Table(title="predictions")
    # fold: a long path wraps onto more lines rather than losing its file name to an ellipsis.
    table.add_column("image", overflow="fold")
    table.add_column("class")
    table.add_column("probability", justify="right")
    for prediction in predictions:
        for rank, (name, probability) in enumerate(prediction.top_classes):
            table.add_row(
                str(prediction.path) if rank == 0 else "",
                name,
                f"{probability:.4f}",
                end_section=rank == len(prediction.top_classes) - 1,
            )
    return table


def _first_line(error: Exception) -> str:
    return (str(error).strip().splitlines() or [""])[0]
