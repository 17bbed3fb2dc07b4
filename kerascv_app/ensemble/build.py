"""``kcv ensemble``: from checked members to a complete ensemble directory.

member predictions (saved; --tta flip adds the mirrored images' predictions)
  -> combiner fitted on validation, applied to validation and test
  -> metrics of every member and of the ensemble
  -> model.keras (members + combiner), records, predictions: one atomic directory
"""

from __future__ import annotations

import platform
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kerascv_app.config import Config
from kerascv_app.ensemble.combiners import Combination, check_fittable, combine
from kerascv_app.ensemble.directory import ENSEMBLE_FILE, check_destination, staged_directory
from kerascv_app.ensemble.members import PREDICTION_FILES, Member
from kerascv_app.errors import UserError
from kerascv_app.evaluate.metrics import classification_metrics, expected_calibration_error
from kerascv_app.model_dir import ModelDirectory
from kerascv_app.runs import write_json_atomically

SPLIT_NAMES = ("validation", "test")


@dataclass
class SplitPredictions:
    """One split's probabilities: a (images, classes) array per member, and the labels."""

    member_probabilities: list[np.ndarray]
    labels: np.ndarray


@dataclass
class EnsembleResult:
    path: Path
    combination: Combination
    metrics: dict


def build_ensemble(
    members: list[Member],
    method: str,
    meta_learner_name: str | None,
    tta: str | None,
    destination: Path,
    backend: str,
    data_dir: str | Path | None = None,
) -> EnsembleResult:
    """Combines checked members (see members.check_members) and writes the ensemble directory."""
    check_destination(destination)
    predictions = {split_name: saved_split_predictions(members, split_name) for split_name in SPLIT_NAMES}
    validation = predictions["validation"]
    check_fittable(method, None if validation is None else validation.labels, len(members[0].class_names))
    # Members run only to predict mirrored images or to build the Keras model, and
    # whether there is a Keras model is known once stacking has kept or left its
    # meta-learner (it falls back to the weighted average when that scores better).
    member_models = _load_models(members) if tta else None
    if tta == "flip":
        predictions = add_mirrored_predictions(members, member_models, predictions, data_dir)
    validation, test = predictions["validation"], predictions["test"]
    combination = combine(
        method,
        meta_learner_name,
        None if validation is None else validation.member_probabilities,
        None if validation is None else validation.labels,
        test.member_probabilities,
    )
    if combination.exportable and member_models is None:
        member_models = _load_models(members)
    metrics = ensemble_metrics(members, combination, predictions, tta)
    with staged_directory(destination) as staging:
        if combination.exportable:
            _write_model(staging, members, member_models, combination, tta, backend)
        else:
            import joblib

            joblib.dump(combination.meta_learner, staging / "meta_learner.joblib")
        _write_predictions(staging, combination, predictions, members[0].class_names)
        _write_records(staging, members, combination, metrics, tta, backend, data_dir)
    from kerascv_app.report import write_report_quietly  # report.html, after the rename; never fails the ensemble

    write_report_quietly(destination)
    return EnsembleResult(path=destination, combination=combination, metrics=metrics)


def _load_models(members: list[Member]) -> list:
    return [member.model_directory.load_model() for member in members]


# Member predictions


def saved_split_predictions(members: list[Member], split_name: str) -> SplitPredictions | None:
    """The members' saved predictions on one split; all must be of the same images."""
    saved = [member.saved_predictions(split_name) for member in members]
    if saved[0] is None:
        return None
    labels = saved[0][1]
    num_classes = len(members[0].class_names)
    for member, (probabilities, member_labels) in zip(members, saved):
        if not np.array_equal(member_labels, labels) or probabilities.shape != (len(labels), num_classes):
            file = member.run.predictions_dir / PREDICTION_FILES[split_name]
            raise UserError(
                f"{file} does not hold the {split_name} images of {members[0].path} in the same order: evaluate or "
                f"train {member.path} again"
            )
    return SplitPredictions([probabilities for probabilities, _ in saved], labels)


def add_mirrored_predictions(members: list[Member], member_models: list, predictions: dict, data_dir) -> dict:
    """Each member's probabilities averaged over the image and its left-right mirror.

    The saved predictions are the unmirrored half; the mirrored half is computed here,
    which needs the images: they are read again as member_0 read them.
    """
    import tensorflow as tf

    from kerascv_app.data.prepare import evaluation_dataset
    from kerascv_app.evaluate.metrics import predict_probabilities

    config, prepared = _prepare_member_data(members[0], data_dir)
    averaged = {}
    for split_name, split in predictions.items():
        if split is None:
            averaged[split_name] = None
            continue
        mirrored = evaluation_dataset(prepared, config, split_name).map(
            lambda images, labels: (tf.reverse(images, axis=[2]), labels)
        )
        member_probabilities = []
        for member, model, original in zip(members, member_models, split.member_probabilities):
            flipped, labels = predict_probabilities(model, mirrored)
            if not np.array_equal(labels, split.labels):
                raise UserError(
                    f"the {split_name} images read now are not those {member.path} saved predictions for: pass the "
                    "--data-dir it was trained with"
                )
            member_probabilities.append((original + flipped.astype(np.float64)) / 2)
        averaged[split_name] = SplitPredictions(member_probabilities, split.labels)
    return averaged


def _prepare_member_data(member: Member, data_dir):
    from kerascv_app.data.prepare import prepare_data

    config = Config.from_dict(member.config)
    prepared = prepare_data(config, data_dir if data_dir is not None else member.environment.get("data_dir"))
    found = prepared.splits.record()
    for key in ("validation_fingerprint", "test_fingerprint"):
        if found[key] != member.splits.get(key):
            raise UserError(
                f"the images found now differ from those {member.path} was trained on ({key}): pass the --data-dir "
                "it was trained with"
            )
    return config, prepared


# Metrics


def scored(probabilities: np.ndarray, labels: np.ndarray, class_names: list[str]) -> dict:
    """classification_metrics plus the expected calibration error."""
    if len(labels) == 0:
        return {"count": 0}
    return {
        **classification_metrics(probabilities, labels, class_names),
        "expected_calibration_error": expected_calibration_error(probabilities, labels),
    }


#: How far each method's validation score can be trusted (saved in metrics.json).
VALIDATION_PREDICTIONS = {
    "average": "plain: nothing was fitted on them",
    "weighted": "in-sample: the weights were fitted on them, so the score is optimistic",
    "stacking": "out-of-fold: each image scored by a meta-learner cross-validated without it",
}


def ensemble_metrics(members: list[Member], combination: Combination, predictions: dict, tta: str | None) -> dict:
    class_names = members[0].class_names
    ensemble_probabilities = {
        "validation": combination.validation_probabilities,
        "test": combination.test_probabilities,
    }
    return {
        "method": combination.label,
        **({"requested": combination.requested, "fallback": combination.fallback} if combination.fallback else {}),
        "tta": tta,
        **{
            split_name: _scored_split(predictions[split_name], ensemble_probabilities[split_name], class_names)
            for split_name in SPLIT_NAMES
        },
        "validation_predictions": VALIDATION_PREDICTIONS[combination.method],
        "members": [
            {
                "name": member.name,
                "path": str(member.path.resolve()),
                **{
                    split_name: _scored_split(
                        split, None if split is None else split.member_probabilities[index], class_names
                    )
                    for split_name, split in predictions.items()
                },
            }
            for index, member in enumerate(members)
        ],
    }


def _scored_split(split: SplitPredictions | None, probabilities: np.ndarray | None, class_names: list[str]) -> dict:
    if split is None or probabilities is None:
        return {"count": 0}
    return scored(probabilities, split.labels, class_names)


# Writing


def _write_model(
    staging: Path, members: list[Member], member_models: list, combination: Combination, tta: str | None, backend: str
) -> None:
    from kerascv_app.ensemble.model import build_ensemble_model

    reference = members[0].model_directory
    model = build_ensemble_model(member_models, combination, members[0].input_shape, len(reference.class_names), tta)
    model.save(staging / "model.keras")
    precisions = {member.model_directory.precision for member in members}
    ModelDirectory(
        path=staging,
        kind="ensemble",
        class_names=reference.class_names,
        image_size=reference.image_size,
        channels=reference.channels,
        # Every layer keeps its dtype policy in the file, so members of mixed precisions
        # reload right under float32; a policy all members share is recorded as it is.
        precision=precisions.pop() if len(precisions) == 1 else "float32",
        backend=backend,
    ).write()


def _write_predictions(staging: Path, combination: Combination, predictions: dict, class_names: list[str]) -> None:
    folder = staging / "predictions"
    folder.mkdir()
    for split_name, probabilities in (
        ("validation", combination.validation_probabilities),
        ("test", combination.test_probabilities),
    ):
        if probabilities is None:
            continue
        np.savez_compressed(
            folder / PREDICTION_FILES[split_name],
            probabilities=probabilities.astype(np.float32),
            labels=predictions[split_name].labels,
            class_names=np.array(class_names),
        )


def _write_records(
    staging: Path, members: list[Member], combination: Combination, metrics: dict, tta, backend: str, data_dir
) -> None:
    reference = members[0]
    class_names = reference.class_names
    data_location = str(Path(data_dir).resolve()) if data_dir else reference.environment.get("data_dir")
    write_json_atomically(
        staging / ENSEMBLE_FILE,
        {
            **combination.record(len(class_names)),
            "tta": tta,
            "members": [member.record() for member in members],
            "class_names": class_names,
            "data_fingerprint": reference.environment.get("data_fingerprint"),
            "splits": {
                key: reference.splits.get(key)
                for key in ("validation", "test", "validation_fingerprint", "test_fingerprint")
            },
            "backend": backend,
        },
    )
    write_json_atomically(staging / "metrics.json", metrics)
    # What kcv evaluate reads from a run: the data settings, where the data was, the splits.
    write_json_atomically(staging / "config.json", reference.config)
    write_json_atomically(staging / "splits.json", reference.splits)
    write_json_atomically(
        staging / "environment.json",
        {
            "backend": backend,
            "data_source": reference.environment.get("data_source"),
            "data_dir": data_location,
            "data_fingerprint": reference.environment.get("data_fingerprint"),
            "class_names": class_names,
            "members": [member.name for member in members],
            "python": sys.version.split()[0],
            "platform": platform.platform(),
            "command": sys.argv,
            "versions": _versions(),
        },
    )


def _versions() -> dict:
    from importlib import metadata

    versions = {}
    for package in ("kerascv_app", "keras", "numpy", "scipy", "scikit-learn"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return versions


# Reporting


def comparison_table(metrics: dict):
    """A rich table: each member's and the ensemble's accuracy, log-loss and calibration."""
    from rich.table import Table

    tta = f", tta {metrics['tta']}" if metrics["tta"] else ""
    validation_kind = metrics["validation_predictions"].split(":")[0]
    table = Table(title=f"{metrics['method']}{tta} ensemble and its members (validation {validation_kind})")
    for column in ("model", "val accuracy", "test accuracy", "test log-loss", "test ECE"):
        table.add_column(column, justify="left" if column == "model" else "right")
    for name, record in [
        *((member["name"], member) for member in metrics["members"]),
        ("[bold]ensemble[/bold]", metrics),
    ]:
        table.add_row(
            name,
            _number(record["validation"].get("accuracy")),
            _number(record["test"].get("accuracy")),
            _number(record["test"].get("loss")),
            _number(record["test"].get("expected_calibration_error")),
        )
    return table


def _number(value) -> str:
    return "-" if value is None else f"{value:.4f}"
