"""Models by name: ``model.name`` in a recipe picks a builder registered here.

Only the decorator and the lookup: the built-in models register themselves when
kerascv_app/models/__init__.py imports their modules, which Python does before any module of
the package (this one included) can be used.
"""

from __future__ import annotations

from collections.abc import Callable

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
    if name not in _BUILDERS:
        raise UserError(f"model.name = {name!r} is unknown: use one of {', '.join(sorted(_BUILDERS))}")
    return _BUILDERS[name]


def model_names() -> list[str]:
    return sorted(_BUILDERS)
