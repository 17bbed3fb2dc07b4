"""Model builders by name, and the wrapper that adds preprocessing and augmentation."""

# Importing the built-in model modules runs their @register_model decorators (they import keras
# only inside their builders, so listing the models does not import it).
from kerascv_app.models import fast_cifar, resnet, seed_cnn  # noqa: F401
from kerascv_app.models.factory import create_model
from kerascv_app.models.registry import model_names, register_model

__all__ = ["create_model", "model_names", "register_model"]
