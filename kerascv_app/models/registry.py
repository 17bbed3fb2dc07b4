"""Models by name: ``model.name`` in a recipe picks a builder registered here."""

from __future__ import annotations

from typing import Callable

from kerascv_app.errors import UserError

_BUILDERS: dict[str, Callable] = {}


def register_model(name: str):
    """Registers ``builder(features, num_classes, model_config) -> logits`` under ``name``."""

    def decorator(builder):
        if name in _BUILDERS:
            raise ValueError(f"model {name!r} is already registered by {_BUILDERS[name].__module__}")
        _BUILDERS[name] = builder
        return builder

    return decorator


def get_builder(name: str) -> Callable:
    _import_builtin_models()
    if name not in _BUILDERS:
        raise UserError(f"model.name = {name!r} is unknown: use one of {', '.join(sorted(_BUILDERS))}")
    return _BUILDERS[name]


def model_names() -> list[str]:
    _import_builtin_models()
    return sorted(_BUILDERS)


def _import_builtin_models() -> None:
    # Importing the modules runs their @register_model decorators.
    from kerascv_app.models import fast_cifar, resnet, seed_cnn  # noqa: F401
