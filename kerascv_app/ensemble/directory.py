"""The ensemble directory: what ``kcv ensemble`` writes, and how evaluation opens it.

    ensembles/<method>-<timestamp>/      (or --out DIR)
      ensemble.json         method, meta-learner, members (names, paths), fitted weights or
                            meta-learner coefficients, classes, data fingerprint, splits, tta
      metrics.json          the ensemble's validation and test metrics (top level, like a
                            run's) and every member's, with expected calibration error
      model.keras           members and combiner as one model (not with --meta gbm)
      model.json            kind "ensemble" (not with --meta gbm)
      meta_learner.joblib   the fitted scikit-learn meta-learner (--meta gbm only)
      predictions/val.npz   the ensemble's probabilities and labels; for stacking the
      predictions/test.npz  validation ones are out-of-fold
      config.json, environment.json, splits.json
                            the data settings (member_0's config), where the data was and
                            the shared splits: what kcv evaluate reads from a run too

The directory is built under a hidden name beside its destination and renamed when
complete, so a failure or an interruption never leaves a half-written ensemble.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import shutil
from pathlib import Path

from kerascv_app.errors import UserError
from kerascv_app.model_dir import MODEL_INFO_FILE, open_model_directory
from kerascv_app.runs import STATUS_FILE, RunDirectory

ENSEMBLE_FILE = "ensemble.json"
DEFAULT_ENSEMBLES_DIR = Path("ensembles")


def default_ensemble_path(label: str, ensembles_dir: Path = DEFAULT_ENSEMBLES_DIR) -> Path:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    for attempt in range(1000):
        path = ensembles_dir / f"{label}-{stamp}{f'-{attempt}' if attempt else ''}"
        if not path.exists():
            return path
    raise UserError(
        f"cannot name an ensemble directory in {ensembles_dir}: too many named {label}-{stamp}; pass --out DIR"
    )


def check_destination(path: Path) -> None:
    """Refuses before any work: an existing folder is never overwritten or merged into."""
    if path.exists():
        raise UserError(f"{path} already exists: choose another --out, or remove it first")


@contextlib.contextmanager
def staged_directory(destination: Path):
    """Yields a hidden folder to fill; renames it to ``destination`` only on success."""
    check_destination(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    staging = destination.parent / f".{destination.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        yield staging
        check_destination(destination)
        os.rename(staging, destination)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def is_ensemble_directory(path: Path) -> bool:
    return (path / ENSEMBLE_FILE).is_file() and not (path / STATUS_FILE).is_file()


def refuse_ensemble_without_model(path: Path) -> None:
    """A --meta gbm ensemble has no model.keras: say why, rather than that it is no model folder."""
    if not (path / MODEL_INFO_FILE).is_file():
        raise UserError(
            f"{path} is an ensemble stacked with --meta gbm, which has no model.keras (gradient-boosted trees are not "
            "Keras layers): its metrics are in metrics.json; use --meta logistic or ridge for a model to evaluate "
            "or export"
        )


def open_ensemble_for_evaluation(path: Path) -> RunDirectory:
    """An ensemble directory read through the RunDirectory interface kcv evaluate uses.

    It holds the same config.json, environment.json, splits.json and model.keras that
    evaluation reads from a run, so only opening differs: there is no run.json status.
    """
    refuse_ensemble_without_model(path)
    if open_model_directory(path).kind != "ensemble":
        raise UserError(
            f"{path / MODEL_INFO_FILE} does not describe an ensemble: this folder is damaged; build it again with "
            "kcv ensemble"
        )
    return RunDirectory(path)
