"""A trained model's folder, whatever made it: a run (kcv fit) or an ensemble (kcv ensemble).

Both hold ``model.keras`` and ``model.json``, which says what the model expects and
returns. Commands that only need the model (evaluate, export, predict) open either kind
through :func:`open_model_directory`.

    model.json = {
      "kind": "run" | "ensemble",
      "class_names": [...],
      "image_size": [height, width], "channels": 1 | 3,
      "precision": "float32" | "mixed_float16" | "mixed_bfloat16",
      "backend": "tensorflow" | "jax" | "torch"
    }

The model takes images with values in [0, 255] (any float or integer dtype) and returns
logits: its preprocessing is inside it.
"""

from __future__ import annotations

import json
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

from kerascv_app.custom_objects import register_custom_objects
from kerascv_app.errors import UserError
from kerascv_app.runs import STATUS_FILE, RunDirectory, write_json_atomically

MODEL_INFO_FILE = "model.json"


@dataclass(frozen=True)
class ModelDirectory:
    path: Path
    kind: str
    class_names: tuple[str, ...]
    image_size: tuple[int, int]
    channels: int
    precision: str
    backend: str

    @property
    def model_path(self) -> Path:
        return self.path / "model.keras"

    def to_json(self) -> dict:
        return {
            "kind": self.kind,
            "class_names": list(self.class_names),
            "image_size": list(self.image_size),
            "channels": self.channels,
            "precision": self.precision,
            "backend": self.backend,
        }

    def write(self) -> None:
        write_json_atomically(self.path / MODEL_INFO_FILE, self.to_json())

    def load_model(self):
        """Loads ``model.keras`` under the precision policy it was trained with."""
        import keras

        from kerascv_app import backend as backend_module

        if not self.model_path.is_file():
            raise UserError(
                f"{self.model_path} is missing: the run did not finish; resume it with kcv fit --resume {self.path}"
            )
        if not zipfile.is_zipfile(self.model_path):
            raise UserError(
                f"{self.model_path} is not a valid .keras file (truncated or corrupt): retrain or restore the file"
            )
        backend_module.set_precision(self.precision)
        register_custom_objects(self.model_path)
        try:
            with warnings.catch_warnings():
                # A frozen KerasHub backbone nested whole (ViT) reloads with its inner layers
                # trainable, so Keras finds more trainable variables than the saved optimizer
                # has and skips its state. Nothing that loads a model.keras trains it further
                # (a resume reads its checkpoint), so the warning is noise; the freeze is
                # restored below.
                warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
                model = keras.saving.load_model(self.model_path, safe_mode=True)
        except Exception as error:  # A damaged archive fails in many ways; report it in one line.
            raise UserError(
                f"{self.model_path} cannot be loaded ({type(error).__name__}: {error}): retrain or restore the file"
            ) from error
        _refreeze(model)
        return model


def _refreeze(layer) -> None:
    """Sets ``trainable = False`` again on every frozen layer, which also freezes its sublayers
    (a layer rebuilt from its config is frozen itself but not the layers it creates)."""
    for sublayer in getattr(layer, "layers", ()):
        if not sublayer.trainable:
            sublayer.trainable = False
        _refreeze(sublayer)


def open_model_directory(path: str | Path) -> ModelDirectory:
    path = Path(path)
    if not path.is_dir():
        raise UserError(
            f"{path} does not exist: give a run directory (kcv fit) or an ensemble directory (kcv ensemble)"
        )
    _refuse_unfinished_run(path)
    info_path = path / MODEL_INFO_FILE
    if not info_path.is_file():
        raise UserError(
            f"{path} is not a run or ensemble directory (no "
            f"{MODEL_INFO_FILE}): give a folder made by kcv fit or kcv ensemble"
        )
    try:
        info = json.loads(info_path.read_text())
        return ModelDirectory(
            path=path,
            kind=info["kind"],
            class_names=tuple(info["class_names"]),
            image_size=tuple(info["image_size"]),
            channels=int(info["channels"]),
            precision=info["precision"],
            backend=info["backend"],
        )
    except (ValueError, KeyError, TypeError) as error:
        raise UserError(
            f"{info_path} is corrupt ({type(error).__name__}: {error}): this folder cannot be used"
        ) from error


def _refuse_unfinished_run(path: Path) -> None:
    """A run writes model.keras and model.json before it evaluates; until run.json says
    "finished", that model is not the run's result and must not be exported or used."""
    if not (path / STATUS_FILE).is_file():
        return  # an ensemble directory or an exported folder: complete once it exists
    run = RunDirectory.open(path)
    status = run.status()
    if status != "finished":
        reason = run.status_record().get("reason")
        because = f" ({reason})" if reason else ""
        raise UserError(
            f"{path} is {status}, not finished{because}: only finished runs can "
            f"be used; see kcv runs, and resume it with kcv fit --resume {path}"
        )
