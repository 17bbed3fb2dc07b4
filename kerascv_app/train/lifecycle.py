"""A run's start and finish, the same for both trainers (``kcv fit``'s Keras loop and the fast loop).

    started_run   after every check that can refuse the input: the run directory, its lock,
                  status running, config.json, recipe.py, environment.json, splits.json
    finish_run    history, model.keras and its model.json, metrics and predictions, the files
                  that did not decode, backup/ removed, report.html, status finished

Neither imports TensorFlow: the fast loop runs where it is not installed.
"""

from __future__ import annotations

import contextlib
import csv
import datetime
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

from kerascv_app.config import Config
from kerascv_app.data.prepare import PreparedData, report_undecodable_files
from kerascv_app.evaluate.finite import PredictionsNotFinite, require_finite_predictions  # noqa: F401 (re-exported)
from kerascv_app.runs import RunDirectory


@contextlib.contextmanager
def started_run(
    runs_dir: str | Path,
    config: Config,
    recipe_source: str,
    backend: str,
    environment: dict,
    prepared: PreparedData,
) -> Iterator[RunDirectory]:
    """Creates the run directory and holds its lock while the caller trains; an error inside
    marks the run failed (a Ctrl-C interrupted), with its reason in run.json."""
    run = RunDirectory.create(runs_dir, config.name)
    # One writer per run: a kcv fit --resume of this run is refused while this process lives.
    with run.locked(), run.marking_failures():
        run.set_status("running", recipe=config.name, backend=backend, started=now())
        run.write_json("config.json", config.to_dict())
        run.file("recipe.py").write_text(recipe_source)
        run.write_json("environment.json", environment)
        run.write_json("splits.json", prepared.splits.record())
        yield run


def finish_run(
    run: RunDirectory,
    model,
    config: Config,
    prepared: PreparedData,
    history_rows: list[dict] | None = None,
    extra_metrics: Callable[[dict], dict] | None = None,
    status_fields: dict | None = None,
) -> dict:
    """Saves and evaluates a trained model and marks the run finished; returns metrics.json's content.

    ``history_rows``: the epochs, for a loop that logs none itself (the Keras loop's CSVLogger
    has written history.csv). ``extra_metrics(metrics)``: the loop's own entries of
    metrics.json. ``status_fields``: the loop's own entries of run.json.
    """
    import keras

    from kerascv_app.evaluate.evaluate import write_evaluation
    from kerascv_app.model_dir import ModelDirectory

    if history_rows is not None:
        write_history(run.file("history.csv"), history_rows)
    else:
        deduplicate_history(run.file("history.csv"))
    model.save(run.model_path)
    ModelDirectory(
        path=run.path,
        kind="run",
        class_names=tuple(prepared.class_names),
        image_size=config.data.image_size,
        channels=config.data.channels,
        precision=config.train.precision,
        backend=keras.backend.backend(),
    ).write()
    metrics = write_evaluation(run, model, prepared, config)
    if extra_metrics is not None:
        metrics.update(extra_metrics(metrics))
        run.write_json("metrics.json", metrics)
    report_undecodable_files(run, prepared)
    shutil.rmtree(run.backup_dir, ignore_errors=True)
    from kerascv_app.report import (
        write_report_quietly,  # report.html: the parts that need no images; never fails the run
    )

    write_report_quietly(run.path)
    run.set_status("finished", finished=now(), test_accuracy=metrics["test"].get("accuracy"), **(status_fields or {}))
    return metrics


def write_history(path: Path, rows: list[dict]) -> None:
    if not rows:
        return
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0].keys()))
        writer.writeheader()
        writer.writerows(rows)


def deduplicate_history(path: Path) -> None:
    """Keeps the last row of each epoch: a killed run may have logged an epoch it redoes."""
    if not path.is_file():
        return
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        return
    by_epoch = {row["epoch"]: row for row in rows}
    ordered = [by_epoch[epoch] for epoch in sorted(by_epoch, key=int)]
    temporary = path.with_name(".history.csv.tmp")
    with temporary.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0].keys()))
        writer.writeheader()
        writer.writerows(ordered)
    os.replace(temporary, path)


def now() -> str:
    return datetime.datetime.now().isoformat(timespec="seconds")
