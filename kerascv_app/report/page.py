"""The report page: its context from the directories' records, rendered with Jinja2, written
aside and renamed into place so that no reader ever sees half a page.

The page carries its key figures twice: as text for people, and as JSON in a
``<script type="application/json" id="kcv-report-data">`` element (data, never run) for
tools and tests.
"""

from __future__ import annotations

import datetime
import json
import os
import shlex
import sys
from pathlib import Path

import numpy as np

from kerascv_app.errors import UserError
from kerascv_app.report import analysis, figures
from kerascv_app.report.sources import ReportSource, check_comparable, open_source

DEFAULT_FILE = "report.html"
TEMPLATE = "report.html.j2"


def check_request(paths: list[Path], out: Path | None, top_losses: int, gradcam: int, preview: int) -> Path:
    """Refuses bad options before any work; returns the page's path."""
    if not paths:
        raise UserError("kcv report needs at least one run or ensemble directory")
    for path in paths:
        if not Path(path).is_dir():
            raise UserError(
                f"{path} does not exist: give a run directory (kcv fit) or an ensemble directory (kcv ensemble)"
            )
    for name, value in (("--top-losses", top_losses), ("--gradcam", gradcam), ("--preview", preview)):
        if value < 0:
            raise UserError(f"{name} {value} is invalid: give 0 (leave the part out) or a positive number of images")
    out = Path(out) if out is not None else (Path(paths[0]) / DEFAULT_FILE if len(paths) == 1 else Path(DEFAULT_FILE))
    if out.suffix.lower() not in (".html", ".htm"):
        raise UserError(f"--out {out} must be an .html file, e.g. --out report.html")
    if not out.parent.is_dir():
        raise UserError(f"--out {out}: the folder {out.parent} does not exist; create it or write elsewhere")
    return out


def write_report(
    paths: list[str | Path],
    out: str | Path | None = None,
    data_dir: str | Path | None = None,
    top_losses: int = 24,
    gradcam: int = 8,
    preview: int = 16,
    with_images: bool = True,
    require_finished: bool = True,
) -> Path:
    """Writes the report of one directory, or the comparison of several; returns its path.

    ``with_images=False`` is what kcv fit and kcv ensemble write: no part that reads images
    or computes gradients. Bad input raises UserError before anything is written.
    """
    paths = [Path(path) for path in paths]
    out = check_request(paths, None if out is None else Path(out), top_losses, gradcam, preview)
    sources = [open_source(path, require_finished=require_finished) for path in paths]
    if len(sources) == 1:
        counts = {"top_losses": top_losses, "gradcam": gradcam, "preview": preview} if with_images else None
        context = single_context(sources[0], data_dir, counts)
    else:
        check_comparable(sources)
        context = comparison_context(sources)
    write_atomically(out, render(context))
    return out


def write_report_quietly(path: str | Path) -> Path | None:
    """The report kcv fit and kcv ensemble leave in their directory: a failure here prints one
    warning line and never fails the run that made the directory."""
    try:
        return write_report([path], with_images=False, require_finished=False)
    except Exception as error:  # The run is already complete; its report is a convenience.
        print(
            f"warning: {Path(path) / DEFAULT_FILE} was not written ({type(error).__name__}: {error}); try kcv "
            f"report {path}",
            file=sys.stderr,
        )
        return None


def render(context: dict) -> str:
    import jinja2

    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("kerascv_app.report", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.filters["number"] = _number
    environment.filters["percent"] = lambda value: "-" if value is None else f"{100 * value:.1f}%"
    # JSON inside <script type="application/json">: "<" escaped so that no "</script>" can end it.
    data_json = json.dumps(context.pop("data"), sort_keys=True, default=_plain).replace("<", "\\u003c")
    return environment.get_template(TEMPLATE).render(**context, data_json=data_json)


def write_atomically(out: Path, text: str) -> None:
    temporary = out.with_name(f".{out.name}.partial-{os.getpid()}")
    try:
        temporary.write_text(text, encoding="utf-8")
        os.replace(temporary, out)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


# One directory


def single_context(source: ReportSource, data_dir, counts: dict | None) -> dict:
    """Everything one directory's page shows; ``counts`` None leaves out the image parts."""
    class_names = source.class_names
    test = source.test
    matrix = analysis.confusion(test, len(class_names))
    report_table = analysis.classification_table(test, class_names)
    bins = analysis.reliability(test)
    rates = analysis.learning_rates(source)
    pairs = analysis.most_confused(matrix, class_names)
    notes: list[str] = []
    context = {
        "mode": "single",
        "title": f"{source.name}",
        "source": source,
        "generated": _now(),
        "summary": summary_rows(source, bins.expected_calibration_error),
        "curves": figures.curves_figure(source.history, rates),
        "stages": len(set(source.history.get("stage", []))) > 1,
        "confusion": figures.confusion_figure(matrix, analysis.row_normalised(matrix), class_names),
        "report_rows": _report_rows(report_table, class_names),
        "report_table": report_table,
        "pairs": pairs,
        "calibration": figures.reliability_figure(bins),
        "ece": bins.expected_calibration_error,
        "bins": _bin_rows(bins),
        "top_losses": [],
        "gradcam": [],
        "gradcam_note": "",
        "preview": None,
        "members": analysis.ensemble_against_members(source) if source.kind == "ensemble" else [],
        "config_json": json.dumps(source.config, indent=2, sort_keys=True),
        "environment_json": json.dumps(source.environment, indent=2, sort_keys=True, default=str),
        "notes": notes,
        "with_images": counts is not None,
    }
    data = {
        "kind": source.kind,
        "path": str(source.path),
        "class_names": class_names,
        "metrics": {split: source.metrics.get(split, {}) for split in ("validation", "test")},
        "test": {
            "count": int(len(test.labels)),
            "accuracy": float(np.mean(test.predicted == test.labels)),
            "loss": float(test.losses().mean()),
            "expected_calibration_error": bins.expected_calibration_error,
        },
        "classification_report": report_table,
        "confusion_matrix": matrix.tolist(),
        "most_confused": pairs,
        "learning_rates": rates,
        "top_losses": [],
        "gradcam": [],
    }
    if counts is None:
        notes.append(
            f"Top losses, Grad-CAM and the augmentation preview read the images: kcv report {source.path} adds them."
        )
    else:
        _add_image_parts(source, data_dir, counts, context, data, notes)
    context["data"] = {**data, "sections": _sections(context)}
    return context


def _add_image_parts(source: ReportSource, data_dir, counts: dict, context: dict, data: dict, notes: list[str]) -> None:
    from kerascv_app.report import images as image_reading

    wants_gradcam = counts["gradcam"] > 0 and source.kind == "run" and source.has_model
    wants_preview = counts["preview"] > 0 and source.kind == "run"
    if counts["gradcam"] > 0 and source.kind != "run":
        notes.append("Grad-CAM is shown per trained model: see the members' reports (kcv report MEMBER_DIR).")
    if counts["preview"] > 0 and source.kind != "run":
        notes.append("The augmentation preview belongs to a training run: see the members' reports.")
    if not (counts["top_losses"] or wants_gradcam or wants_preview):
        return
    rebuilt = image_reading.rebuild_data(source, data_dir)
    test = source.test
    losses = test.losses()
    loss_indices = analysis.top_losses(test, counts["top_losses"])
    wrong, right = (
        analysis.gradcam_choice(test, counts["gradcam"], seed=int(source.config.get("train", {}).get("seed", 0)))
        if wants_gradcam
        else (np.zeros(0, int), np.zeros(0, int))
    )
    explained = np.concatenate([wrong, right]).astype(np.int64)
    needed = np.unique(np.concatenate([loss_indices, explained]).astype(np.int64))
    pixels = dict(zip(needed.tolist(), image_reading.test_images(rebuilt, needed)))
    identifiers = dict(zip(needed.tolist(), image_reading.test_image_ids(rebuilt, needed)))
    names = source.class_names
    for index in loss_indices.tolist():
        entry = _image_entry(test, index, names, identifiers[index], float(losses[index]))
        context["top_losses"].append({**entry, "image": figures.thumbnail_uri(pixels[index])})
        data["top_losses"].append(entry)
    result = None
    if len(explained):
        from kerascv_app.report.gradcam import NoFeatureMap, gradcam

        try:
            result = gradcam(
                source.path, np.stack([pixels[index] for index in explained.tolist()]), test.predicted[explained]
            )
        except NoFeatureMap as error:
            notes.append(f"Grad-CAM left out: {error}.")
    if result is not None:
        agreement = float(np.abs(result.probabilities - test.probabilities[explained]).max())
        context["gradcam_note"] = (
            f"Computed under TensorFlow in {result.where} from model.keras (trained with "
            f"{source.environment.get('backend')}), at the output of layer {result.layer!r}, for the predicted "
            "class; the reloaded model's probabilities differ from the run's "
            f"saved ones by at most {agreement:.1e}."
        )
        for position, index in enumerate(explained.tolist()):
            entry = _image_entry(test, index, names, identifiers[index], float(losses[index]))
            heatmap = result.maps[position]
            peak = np.unravel_index(int(np.argmax(heatmap)), heatmap.shape)
            context["gradcam"].append(
                {
                    **entry,
                    "image": figures.thumbnail_uri(pixels[index]),
                    "overlay": figures.thumbnail_uri(figures.heatmap_overlay(pixels[index], heatmap)),
                }
            )
            data["gradcam"].append(
                {
                    **entry,
                    "layer": result.layer,
                    "peak": [int(peak[0]), int(peak[1])],
                    "where": result.where,
                    "probability_difference": agreement,
                }
            )
    elif counts["gradcam"] > 0 and source.kind == "run" and not source.has_model:
        notes.append("Grad-CAM needs model.keras, which this run does not have.")
    if wants_preview:
        context["preview"] = image_reading.preview_cells(rebuilt, counts["preview"])


def _image_entry(test, index: int, names: list[str], identifier: str, loss: float) -> dict:
    true, predicted = int(test.labels[index]), int(test.predicted[index])
    return {
        "index": index,
        "id": identifier,
        "true": names[true],
        "predicted": names[predicted],
        "correct": true == predicted,
        "probability": float(test.probabilities[index, predicted]),
        "true_probability": float(test.probabilities[index, true]),
        "loss": loss,
    }


def summary_rows(source: ReportSource, ece: float) -> list[tuple[str, str]]:
    environment, splits, metrics = source.environment, source.splits, source.metrics
    data_text = f"{environment.get('data_source')} (fingerprint {environment.get('data_fingerprint')})"
    split_text = (
        f"{splits.get('train', '?')} train, {splits.get('validation', '?')} validation, {splits.get('test', '?')} test"
    )
    rows = [
        ("recipe", source.config.get("name", "?")),
        ("model", source.model_name),
        ("backend", str(environment.get("backend"))),
    ]
    if source.kind == "run":
        rows += [
            ("precision", str(environment.get("precision"))),
            ("devices", ", ".join(environment.get("devices") or [])),
            (
                "distribution",
                f"{environment.get('distribution', 'none')} ({environment.get('replicas', 1)} replica(s), "
                f"{environment.get('workers', 1)} worker(s))",
            ),
        ]
    else:
        weights = source.ensemble.get("weights")
        rows += [("members", ", ".join(member.get("name", "?") for member in source.ensemble.get("members", [])))]
        if weights:
            rows += [("weights", ", ".join(f"{weight:.4f}" for weight in weights))]
        rows += [("test-time augmentation", str(source.ensemble.get("tta") or "none"))]
    rows += [("data", data_text), ("splits", split_text)]
    if source.kind == "run":
        rows += [("skipped files", str(len(environment.get("skipped_files") or [])))]
        rows += _training_rows(source)
    for split in ("validation", "test"):
        figures_of_split = metrics.get(split, {})
        if figures_of_split.get("count"):
            text = f"{_number(figures_of_split.get('accuracy'))} on {figures_of_split['count']} images"
            if "top5_accuracy" in figures_of_split:
                text += f" (top-5 {_number(figures_of_split['top5_accuracy'])})"
            rows.append((f"{split} accuracy", text))
    rows += [
        ("test loss", _number(metrics.get("test", {}).get("loss"))),
        ("test calibration error (ECE)", _number(ece)),
    ]
    rows.append(("command", reproduce_command(environment)))
    return rows


def _training_rows(source: ReportSource) -> list[tuple[str, str]]:
    history = source.history
    rows = [("epochs", str(len(history.get("loss", []))))]
    seconds = history.get("epoch_seconds")
    timing = source.metrics.get("timing", {})
    if timing.get("train_seconds") is not None:
        rows.append(("training time", f"{timing['train_seconds']:.1f} s (fast loop, counted like airbench)"))
    elif seconds:
        rows.append(("training time", f"{sum(seconds):.1f} s in epochs (validation included)"))
    speeds = history.get("images_per_second")
    if speeds:
        rows.append(("images/s", f"{np.mean(speeds):,.0f} (mean over epochs)"))
    started, finished = source.status.get("started"), source.status.get("finished")
    if started and finished:
        wall = datetime.datetime.fromisoformat(finished) - datetime.datetime.fromisoformat(started)
        rows.append(("wall time", f"{wall.total_seconds():.0f} s, {started} to {finished}"))
    return rows


def reproduce_command(environment: dict) -> str:
    """The recorded command line as kcv runs it; the backend pinned when it was not a flag."""
    argv = [str(part) for part in environment.get("command") or []]
    if not argv:
        return "-"
    command = "kcv " + shlex.join(argv[1:])
    if "--backend" not in argv and environment.get("backend"):
        command = f"KERAS_BACKEND={environment['backend']} {command}"
    return command


def _report_rows(report: dict, class_names: list[str]) -> list[dict]:
    rows = [{"name": name, **report[name], "summary": False} for name in class_names]
    for name in ("macro avg", "weighted avg"):
        rows.append({"name": name, **report[name], "summary": True})
    return rows


def _bin_rows(bins) -> list[dict]:
    return [
        {
            "low": bins.edges[index],
            "high": bins.edges[index + 1],
            "count": int(bins.counts[index]),
            "accuracy": float(bins.accuracy[index]),
            "confidence": float(bins.confidence[index]),
        }
        for index in range(len(bins.counts))
        if bins.counts[index]
    ]


def _sections(context: dict) -> list[str]:
    if context["mode"] == "comparison":
        names = ["comparison", "curves", "per-class"] + (["ensemble-members"] if context["ensembles"] else [])
        return names + ["configs"]
    names = (
        ["summary"]
        + (["curves"] if context["curves"] else [])
        + ["confusion", "classification-report", "most-confused", "calibration"]
    )
    names += (
        (["top-losses"] if context["top_losses"] else [])
        + (["gradcam"] if context["gradcam"] else [])
        + (["preview"] if context["preview"] else [])
    )
    names += ["ensemble-members"] if context["members"] else []
    return names + ["config"]


# Several directories


def comparison_context(sources: list[ReportSource]) -> dict:
    class_names = sources[0].class_names
    rows, accuracies = [], []
    for source in sources:
        test = source.test
        bins = analysis.reliability(test)
        recorded = source.metrics.get("test", {})
        rows.append(
            {
                "name": source.name,
                "path": str(source.path),
                "kind": source.kind,
                "recipe": source.config.get("name", "?"),
                "model": source.model_name,
                "backend": source.environment.get("backend"),
                "precision": source.environment.get("precision", "-"),
                "seed": source.config.get("train", {}).get("seed"),
                "epochs": len(source.history.get("loss", [])) or "-",
                "validation_accuracy": source.metrics.get("validation", {}).get("accuracy"),
                "accuracy": recorded.get("accuracy"),
                "top5_accuracy": recorded.get("top5_accuracy"),
                "loss": recorded.get("loss"),
                "ece": bins.expected_calibration_error,
                "train_seconds": sum(source.history.get("epoch_seconds", [])) or None,
                "test_fingerprint": source.splits.get("test_fingerprint"),
            }
        )
        accuracies.append(analysis.per_class_accuracy(test, len(class_names)))
    names = [source.name for source in sources]
    notes = []
    if len({row["test_fingerprint"] for row in rows}) > 1:
        notes.append(
            "These directories were tested on different test images (their splits.json differ): their figures are "
            "not measured on the same images."
        )
    ensembles = [
        {"name": source.name, "members": analysis.ensemble_against_members(source)}
        for source in sources
        if source.kind == "ensemble"
    ]
    context = {
        "mode": "comparison",
        "title": f"comparison of {len(sources)} directories",
        "generated": _now(),
        "rows": rows,
        "notes": notes,
        "curves": figures.overlaid_curves_figure([(source.name, source.history) for source in sources]),
        "per_class": figures.per_class_figure(names, class_names, accuracies),
        "per_class_rows": [
            {"name": name, "values": [values[index] for values in accuracies]} for index, name in enumerate(class_names)
        ],
        "names": names,
        "ensembles": ensembles,
        "configs": [(source.name, json.dumps(source.config, indent=2, sort_keys=True)) for source in sources],
    }
    context["data"] = {
        "kind": "comparison",
        "class_names": class_names,
        "rows": rows,
        "per_class_accuracy": {name: values for name, values in zip(names, accuracies)},
        "ensembles": ensembles,
        "sections": _sections(context),
    }
    return context


def _number(value) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "-"
    return f"{value:.4f}"


def _plain(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def _now() -> str:
    return datetime.datetime.now().isoformat(timespec="seconds")
