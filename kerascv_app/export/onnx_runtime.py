"""An exported ``model.onnx`` run with onnxruntime alone: no TensorFlow, no Keras.

Shared by the export's verification (kerascv_app/export/onnx_verify.py), ``kcv predict``
on an ``.onnx`` file and bench/serving.py. Nothing here, nor anything this module imports,
imports TensorFlow or Keras: ``kcv predict MODEL.onnx`` must run where neither is installed.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from kerascv_app.errors import UserError
from kerascv_app.export import (
    IMAGES_INPUT,
    ONNX_CHANNELS_KEY,
    ONNX_CLASS_NAMES_KEY,
    ONNX_FILE,
    ONNX_IMAGE_SIZE_KEY,
    ONNX_INSTALL,
    ONNX_OUTPUT_NAMES,
)


def onnx_model_path(path: str | Path) -> Path | None:
    """``path`` itself if it is an ``.onnx`` file, its model.onnx if it is a folder holding one, else None."""
    path = Path(path)
    if path.suffix == ".onnx" and not path.is_dir():
        return path
    if path.is_dir() and (path / ONNX_FILE).is_file():
        return path / ONNX_FILE
    return None


def import_onnxruntime():
    try:
        import onnxruntime
    except ImportError as error:
        raise UserError(f"onnxruntime is not installed ({error}): {ONNX_INSTALL}") from error
    return onnxruntime


class OnnxClassifier:
    """A model.onnx written by ``kcv export --format onnx``: its session and what its metadata says."""

    def __init__(self, path: str | Path, threads: int = 0):
        path = Path(path)
        onnxruntime = import_onnxruntime()
        if not path.is_file():
            raise UserError(
                f"{path} does not exist: give a model.onnx written by kcv export --format onnx, or its version folder"
            )
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads  # 0: onnxruntime's default, one per core.
        options.log_severity_level = 3  # Errors only; a damaged file is reported below, in one line.
        try:
            self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as error:  # onnxruntime raises its own types (InvalidProtobuf, Fail, ...).
            raise UserError(
                f"{path} cannot be loaded as an ONNX model ({type(error).__name__}: "
                f"{_first_line(error)}): export it again with kcv export --format onnx"
            ) from error
        self.path = path
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)
        self.class_names, self.image_size, self.channels = self._read_metadata()
        self._check_signature()

    def _read_metadata(self) -> tuple[list[str], tuple[int, int], int]:
        try:
            class_names = json.loads(self.metadata[ONNX_CLASS_NAMES_KEY])
            height, width = json.loads(self.metadata[ONNX_IMAGE_SIZE_KEY])
            channels = int(self.metadata[ONNX_CHANNELS_KEY])
        except (KeyError, ValueError, TypeError):
            raise UserError(
                f"{self.path} was not written by kcv export --format onnx (its metadata lacks {ONNX_CLASS_NAMES_KEY}, "
                f"{ONNX_IMAGE_SIZE_KEY} or {ONNX_CHANNELS_KEY}): export it with kcv export --format onnx"
            ) from None
        return [str(name) for name in class_names], (int(height), int(width)), channels

    def _check_signature(self) -> None:
        inputs = self.session.get_inputs()
        outputs = {output.name for output in self.session.get_outputs()}
        if (
            [value.name for value in inputs] != [IMAGES_INPUT]
            or inputs[0].type != "tensor(uint8)"
            or not set(ONNX_OUTPUT_NAMES) <= outputs
        ):
            raise UserError(
                f"{self.path} does not take uint8 {IMAGES_INPUT} and return "
                f"{' and '.join(ONNX_OUTPUT_NAMES)}, as kcv export --format onnx writes: "
                "export it with kcv export --format onnx"
            )

    @property
    def input_shape(self) -> list:
        """[batch, height, width, channels] as the graph says: the batch a name ("batch"), not a number."""
        return list(self.session.get_inputs()[0].shape)

    def run(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """``probabilities`` and ``class_id`` for a uint8 batch [batch, height, width, channels]."""
        results = self.session.run(
            list(ONNX_OUTPUT_NAMES), {IMAGES_INPUT: np.ascontiguousarray(images, dtype=np.uint8)}
        )
        return dict(zip(ONNX_OUTPUT_NAMES, results))


def _first_line(error: Exception) -> str:
    return (str(error).strip().splitlines() or [""])[0]
