"""Loads ``recipes/<name>.py``: runs its ``get_config()`` and checks what comes back.

A recipe is plain Python so that derived values can be computed, not typed. Loading
it must not import keras before the backend is chosen, which is why recipes import
only :mod:`kerascv_app.config`.
"""

from __future__ import annotations

import importlib.util
import sys
import traceback
from pathlib import Path

from kerascv_app.config import Config
from kerascv_app.errors import UserError


def load_recipe(path: str | Path) -> tuple[Config, str]:
    """Returns the recipe's config and its source text (kept in the run directory)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"recipe {path} not found: give the path of a recipe file, e.g. recipes/digits.py")
    try:
        source = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise UserError(f"recipe {path} cannot be read ({error}): give a UTF-8 Python file") from error
    try:
        code = compile(source, str(path), "exec")
    except SyntaxError as error:
        raise UserError(f"recipe {path} has a syntax error at line {error.lineno}: {error.msg}") from error
    module_name = f"kcv_recipe_{path.stem}"
    spec = importlib.util.spec_from_loader(module_name, loader=None, origin=str(path))
    module = importlib.util.module_from_spec(spec)
    module.__file__ = str(path)
    try:
        exec(code, module.__dict__)
        get_config = getattr(module, "get_config", None)
        if not callable(get_config):
            raise UserError(
                f"recipe {path} defines no get_config(): add a function "
                "get_config() that returns a kerascv_app.config.Config"
            )
        config = get_config()
    except UserError as error:
        raise UserError(f"recipe {path}: {error}") from error
    except Exception as error:  # The recipe is user code: report where it failed, in one line.
        frame = _innermost_recipe_frame(error, str(path))
        where = f" at line {frame.lineno}" if frame else ""
        raise UserError(f"recipe {path} failed{where}: {type(error).__name__}: {error}") from error
    if not isinstance(config, Config):
        raise UserError(
            f"recipe {path}: get_config() returned {type(config).__name__}, expected kerascv_app.config.Config"
        )
    sys.modules.pop(module_name, None)
    return config, source


def _innermost_recipe_frame(error: BaseException, filename: str):
    frames = [frame for frame in traceback.extract_tb(error.__traceback__) if frame.filename == filename]
    return frames[-1] if frames else None
