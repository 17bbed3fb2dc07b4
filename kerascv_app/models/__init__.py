"""Model builders by name, and the wrapper that adds preprocessing and augmentation."""

from kerascv_app.models.factory import create_model
from kerascv_app.models.registry import model_names, register_model

__all__ = ["create_model", "model_names", "register_model"]
