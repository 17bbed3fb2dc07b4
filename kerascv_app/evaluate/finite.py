"""Predictions a run may report: finite ones (NaN or infinite outputs would report chance accuracy)."""

from __future__ import annotations

import numpy as np

from kerascv_app.errors import UserError
from kerascv_app.runs import RunDirectory


class PredictionsNotFinite(UserError):
    """A trained model whose predictions hold NaN or infinity: its accuracy would be chance's."""


def require_finite_predictions(run: RunDirectory, values: np.ndarray, what: str) -> None:
    """Refuses predictions (probabilities or logits) that hold NaN or infinity: argmax would
    give one class for every image, and the run would report chance accuracy as its result."""
    finite = np.isfinite(values).all(axis=tuple(range(1, np.ndim(values))))
    if finite.all():
        return
    raise PredictionsNotFinite(
        f"the trained model's {what} are not finite for "
        f"{int((~finite).sum())} of {len(finite)} images (NaN or infinite "
        f"weights): {run.path} is marked failed. Train it again with other settings, e.g. a lower train.learning_rate "
        f"or train.precision=float32: kcv fit {run.file('recipe.py')} --set train.learning_rate=..."
    )
