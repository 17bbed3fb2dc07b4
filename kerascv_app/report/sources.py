"""A report's input: a finished run (kcv fit) or an ensemble (kcv ensemble), read once.

Everything the page shows that needs no images comes from the directory's own records:
metrics.json, history.csv and the saved predictions are the numbers the run reported, so the
page cannot disagree with them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kerascv_app.errors import UserError

PREDICTION_FILES = {"validation": "val.npz", "test": "test.npz"}


@dataclass
class Predictions:
    probabilities: np.ndarray
    labels: np.ndarray

    @property
    def predicted(self) -> np.ndarray:
        return self.probabilities.argmax(axis=1)

    def losses(self) -> np.ndarray:
        """Each image's cross-entropy, as metrics.json's loss averages it (classification_metrics)."""
        picked = np.clip(self.probabilities[np.arange(len(self.labels)), self.labels], 1e-12, 1.0)
        return -np.log(picked)


@dataclass
class ReportSource:
    path: Path
    kind: str  # "run" or "ensemble"
    config: dict
    environment: dict
    splits: dict
    metrics: dict
    class_names: list[str]
    test: Predictions
    validation: Predictions | None
    history: dict[str, list[float]] = field(default_factory=dict)
    status: dict = field(default_factory=dict)
    ensemble: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def has_model(self) -> bool:
        return (self.path / "model.keras").is_file() and (self.path / "model.json").is_file()

    @property
    def model_name(self) -> str:
        if self.kind == "ensemble":
            return f"ensemble ({self.ensemble.get('method', '?')}) of {len(self.ensemble.get('members', []))} members"
        model = self.config.get("model", {})
        backbone = model.get("backbone")
        return f"{model.get('name', '?')}" + (f" on {backbone}" if backbone else "")


def open_source(path: str | Path, require_finished: bool = True) -> ReportSource:
    """Opens a finished run or an ensemble directory, or refuses it in one line.

    ``require_finished=False`` is for kcv fit, which writes the report just before it marks
    the run finished (that line is written last)."""
    from kerascv_app.ensemble.directory import is_ensemble_directory
    from kerascv_app.evaluate.evaluate import read_history
    from kerascv_app.runs import RunDirectory

    path = Path(path)
    if not path.is_dir():
        raise UserError(
            f"{path} does not exist: give a run directory (kcv fit) or an ensemble directory (kcv ensemble)"
        )
    if is_ensemble_directory(path):
        kind, status, ensemble = "ensemble", {}, _read_json(path, "ensemble.json")
    else:
        run = RunDirectory.open(path)
        state = run.status()
        if state != "finished" and (require_finished or state != "running"):
            raise UserError(
                f"{path} is not a finished run (status {state}): only finished runs have a report; resume it with "
                f"kcv fit --resume {path}"
            )
        kind, status, ensemble = "run", run.status_record(), {}
    records = {name: _read_json(path, f"{name}.json") for name in ("config", "environment", "splits", "metrics")}
    test = read_predictions(path, "test")
    if test is None:
        raise UserError(
            f"{path / 'predictions' / 'test.npz'} is missing: {path} has no test predictions to report; evaluate or "
            "train it again"
        )
    class_names = list(records["environment"].get("class_names") or ensemble.get("class_names") or [])
    if test.probabilities.shape[1] != len(class_names):
        raise UserError(
            f"{path / 'predictions' / 'test.npz'} has {test.probabilities.shape[1]} classes but {path} names "
            f"{len(class_names)}: the directory is damaged"
        )
    return ReportSource(
        path=path,
        kind=kind,
        class_names=class_names,
        test=test,
        validation=read_predictions(path, "validation"),
        history=read_history(path / "history.csv"),
        status=status,
        ensemble=ensemble,
        **records,
    )


def _read_json(path: Path, name: str) -> dict:
    file = path / name
    if not file.is_file():
        raise UserError(f"{file} is missing: {path} is not a finished run or ensemble directory")
    try:
        return json.loads(file.read_text())
    except ValueError as error:
        raise UserError(f"{file} is corrupt ({error}): {path} cannot be reported") from error


def read_predictions(path: Path, split_name: str) -> Predictions | None:
    file = path / "predictions" / PREDICTION_FILES[split_name]
    if not file.is_file():
        return None
    try:
        with np.load(file) as saved:
            return Predictions(saved["probabilities"].astype(np.float64), saved["labels"].astype(np.int64))
    except (OSError, ValueError, KeyError) as error:
        raise UserError(f"{file} is corrupt ({type(error).__name__}: {error}): {path} cannot be reported") from error


def check_comparable(sources: list[ReportSource]) -> None:
    """Runs compared on one page must name the same classes in the same order."""
    reference = sources[0]
    for source in sources[1:]:
        if source.class_names != reference.class_names:
            raise UserError(
                f"{source.path} has the classes {source.class_names} but {reference.path} has {reference.class_names}: "
                "a comparison needs runs of the same classes"
            )
