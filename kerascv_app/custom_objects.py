"""The Keras classes a saved ``model.keras`` may name, registered before it is loaded.

Loading with ``safe_mode=True`` finds a class only if it was registered, which happens when
its module is imported: kerascv_app's own layers and schedules, and KerasHub's classes for a
model built on a KerasHub backbone. The imports are inside the functions: they import Keras
(and KerasHub), and the modules that import this one must not, until a model is loaded.
"""

from __future__ import annotations

import zipfile
from pathlib import Path


def register_custom_objects(model_path: Path | None = None) -> None:
    """Registers kerascv_app's classes, and KerasHub's when ``model_path`` names any."""
    import kerascv_app.augment.layer  # noqa: F401
    import kerascv_app.ensemble.layers  # noqa: F401
    import kerascv_app.models.identity_init  # noqa: F401
    import kerascv_app.models.layers  # noqa: F401
    import kerascv_app.models.whitening  # noqa: F401
    import kerascv_app.train.optim  # noqa: F401

    if model_path is not None and model_file_needs_keras_hub(model_path):
        from kerascv_app.models.hub import import_keras_hub

        import_keras_hub(f"{model_path} (a model with a KerasHub backbone)")


def model_file_needs_keras_hub(model_path: Path) -> bool:
    """Whether a .keras file names KerasHub's registered classes (a ViT encoder, say)."""
    try:
        with zipfile.ZipFile(model_path) as archive:
            return b"keras_hub>" in archive.read("config.json")
    except (OSError, KeyError, zipfile.BadZipFile):
        return False
