"""Evaluation of a run: predictions, metrics and plots written into its directory."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from kerascv_app import faults
from kerascv_app.config import Config
from kerascv_app.data.prepare import PreparedData, evaluation_dataset, prepare_data
from kerascv_app.errors import UserError
from kerascv_app.evaluate.finite import require_finite_predictions
from kerascv_app.evaluate.metrics import classification_metrics, confusion_matrix, predict_probabilities
from kerascv_app.evaluate.plots import plot_confusion_matrix, plot_curves
from kerascv_app.model_dir import open_model_directory
from kerascv_app.runs import RunDirectory


def write_evaluation(run: RunDirectory, model, prepared: PreparedData, config: Config) -> dict:
    """Predicts validation and test splits, saves predictions, metrics.json and plots."""
    faults.maybe_fail("evaluation")
    run.predictions_dir.mkdir(exist_ok=True)
    metrics = {}
    for split_name, file_name in (("validation", "val"), ("test", "test")):
        dataset = evaluation_dataset(prepared, config, split_name)
        if dataset is None:
            metrics[split_name] = {"count": 0}
            continue
        probabilities, labels = predict_probabilities(model, dataset)
        # Before anything is written: NaN probabilities would report chance accuracy as the result.
        require_finite_predictions(run, probabilities, f"{split_name} probabilities")
        np.savez_compressed(
            run.predictions_dir / f"{file_name}.npz",
            probabilities=probabilities,
            labels=labels,
            class_names=np.array(prepared.class_names),
        )
        metrics[split_name] = classification_metrics(probabilities, labels, prepared.class_names)
        if split_name == "test":
            matrix = confusion_matrix(probabilities, labels, prepared.num_classes)
            plot_confusion_matrix(matrix, prepared.class_names, run.file("confusion_matrix.png"))
    run.write_json("metrics.json", metrics)
    plot_curves(read_history(run.file("history.csv")), run.file("curves.png"))
    return metrics


def read_history(path: Path) -> dict[str, list[float]]:
    """history.csv as columns of numbers; CSVLogger writes "NA" where an epoch lacks a metric."""
    if not path.is_file():
        return {}
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    columns = {}
    for key in rows[0].keys() if rows else []:
        values = [_number(row.get(key)) for row in rows]
        if all(value is not None for value in values):
            columns[key] = values
    return columns


def _number(text: str | None) -> float | None:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def open_evaluated_directory(path: str | Path) -> RunDirectory:
    """A finished run, or an ensemble directory: it holds the config.json, environment.json,
    splits.json and model.keras that evaluate_run reads, but no run.json status."""
    from kerascv_app.ensemble.directory import is_ensemble_directory, open_ensemble_for_evaluation

    if is_ensemble_directory(Path(path)):
        return open_ensemble_for_evaluation(Path(path))
    run = RunDirectory.open(path)
    status = run.status()
    if status != "finished":
        raise UserError(f"{run.path} did not finish (status {status}): resume it with kcv fit --resume {run.path}")
    return run


def evaluate_run(
    run: RunDirectory,
    data_dir: str | Path | None = None,
    test_time_augmentation: bool = False,
    source: str | None = None,
) -> dict:
    """Recomputes the test metrics of a finished run from its saved model, optionally
    with test-time augmentation (flip and one-pixel shifts). ``source`` (kcv evaluate --data)
    reads the data from elsewhere; its test images must still be the run's."""
    import dataclasses

    config = Config.from_dict(run.read_json("config.json"))
    if source is not None:
        config = dataclasses.replace(config, data=dataclasses.replace(config.data, source=source))
    model = open_model_directory(run.path).load_model()
    environment = run.read_json("environment.json")
    prepared = prepare_data(config, data_dir if data_dir is not None else environment.get("data_dir"))
    recorded = run.read_json("splits.json")
    if prepared.splits.record()["test_fingerprint"] != recorded["test_fingerprint"]:
        raise UserError(
            f"the test images found now differ from those {run.path} "
            "was evaluated on: pass the --data-dir it was trained with"
        )
    probabilities, labels = predict_probabilities(
        model, evaluation_dataset(prepared, config, "test"), test_time_augmentation
    )
    return classification_metrics(probabilities, labels, prepared.class_names)
