"""The ``kcv`` command line: thin Typer commands that call the library.

Nothing here imports keras at module level: each command chooses the backend first.
Bad input raises :class:`UserError`, printed as one line with exit code 2.
"""

from __future__ import annotations

import json
import sys
from enum import Enum
from pathlib import Path
from typing import Optional

import typer

try:  # Recent typer bundles its own copy of click.
    from typer._click.exceptions import ClickException
except ImportError:
    from click.exceptions import ClickException
from rich.console import Console
from rich.table import Table

from kerascv_app.errors import UserError

app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="Image classification with Keras 3 on TensorFlow, JAX or PyTorch."
)
console = Console()
error_console = Console(stderr=True)


@app.callback()
def _options(
    verbose: bool = typer.Option(
        False,
        "--verbose",
        help="Show the libraries' own start-up logging (TensorFlow's C++ lines); also KCV_VERBOSE=1.",
    ),
):
    """Image classification with Keras 3 on TensorFlow, JAX or PyTorch."""
    import os

    from kerascv_app.backend import VERBOSE_VARIABLE

    if verbose:
        os.environ[VERBOSE_VARIABLE] = "1"


class Backend(str, Enum):
    tensorflow = "tensorflow"
    jax = "jax"
    torch = "torch"


class Precision(str, Enum):
    float32 = "float32"
    mixed_float16 = "mixed_float16"
    mixed_bfloat16 = "mixed_bfloat16"


BACKEND_OPTION = typer.Option(None, "--backend", help="Keras backend (default: $KERAS_BACKEND, else tensorflow).")
DATA_DIR_OPTION = typer.Option(
    None, "--data-dir", help="Where the recipe's named source keeps its files (or downloads them)."
)
DATA_OPTION = typer.Option(
    None,
    "--data",
    help=(
        "The data to use instead of the recipe's: a path whose format is detected (CIFAR "
        "archive or batches, image folder or its .tar/.tar.gz, IDX files, kcv convert "
        "folder, TFDS data folder), or a data.source spelling (cifar10, folder:PATH, ...)."
    ),
)


@app.command()
def fit(
    recipe: Optional[Path] = typer.Argument(None, help="A recipe file, e.g. recipes/digits.py."),
    backend: Optional[Backend] = BACKEND_OPTION,
    overrides: list[str] = typer.Option([], "--set", help="Override a field: section.key=value (repeatable)."),
    data: Optional[str] = DATA_OPTION,
    data_dir: Optional[Path] = DATA_DIR_OPTION,
    runs_dir: Path = typer.Option(Path("runs"), "--runs-dir", help="Where run directories are created."),
    precision: Optional[Precision] = typer.Option(None, "--precision", help="Dtype policy (default: the recipe's)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Random seed (default: the recipe's)."),
    smoke: bool = typer.Option(False, "--smoke", help="A quick check: a few hundred images, one epoch."),
    resume: Optional[Path] = typer.Option(None, "--resume", help="Continue an unfinished run directory."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress display."),
):
    """Train a recipe and write an evaluated run directory."""
    from kerascv_app.backend import select_backend
    from kerascv_app.runs import RunDirectory

    if resume is not None:
        # A resumed run trains what it started with: what would change it is refused.
        changed = [
            name
            for name, given in (
                ("a RECIPE", recipe is not None),
                ("--set", bool(overrides)),
                ("--seed", seed is not None),
                ("--precision", precision is not None),
                ("--smoke", smoke),
            )
            if given
        ]
        if changed:
            raise UserError(
                f"kcv fit --resume trains the run as it started, so it does not take {', '.join(changed)}: "
                "only --data-dir (the same data moved), --backend (the run's own) "
                "and --quiet may be given; to change settings, train a new run"
            )
        run = RunDirectory.open(resume)
        recorded_backend = run.read_json("environment.json").get("backend")
        chosen = select_backend(backend.value if backend else recorded_backend)
        from kerascv_app.train.fit import resume as resume_run

        run = resume_run(run, chosen, data_dir, show_progress=not quiet)
    else:
        if recipe is None:
            raise UserError("kcv fit needs a RECIPE (e.g. recipes/digits.py) or --resume RUN_DIR")
        chosen = select_backend(backend.value if backend else None)
        config, source = _resolved_config(recipe, overrides, precision, seed, smoke)
        config, data_dir = _with_data(config, data, data_dir, overrides)
        from kerascv_app.train.fit import fit as fit_recipe

        run = fit_recipe(config, source, chosen, data_dir, runs_dir, show_progress=not quiet)
    for line in fit_summary(run):
        console.print(line, highlight=False, soft_wrap=True)


def fit_summary(run) -> list[str]:
    """What a user acts on after kcv fit: the figures, where the run is, and what to run next."""
    import csv

    metrics = run.read_json("metrics.json")
    lines = [f"run {run.path} finished"]
    for split_name in ("validation", "test"):
        figures = metrics.get(split_name, {})
        if "accuracy" not in figures:
            lines.append(f"  {split_name:<10} none held out")
            continue
        top5 = f", top-5 {figures['top5_accuracy']:.4f}" if "top5_accuracy" in figures else ""
        lines.append(f"  {split_name:<10} accuracy {figures['accuracy']:.4f}{top5} ({figures['count']:,} images)")
    history_path = run.file("history.csv")
    seconds, rates = [], []
    if history_path.is_file():
        with history_path.open(newline="") as handle:
            for row in csv.DictReader(handle):
                try:
                    seconds.append(float(row["epoch_seconds"]))
                    rates.append(float(row["images_per_second"]))
                except (KeyError, TypeError, ValueError):
                    pass
    if seconds:
        images = sum(rate * second for rate, second in zip(rates, seconds))
        lines.append(
            f"  training   {sum(seconds):.1f} s over {len(seconds)} epochs, {images / sum(seconds):,.0f} images/s"
        )
    skipped = run.read_json("environment.json").get("skipped_files") or []
    if skipped:
        lines.append(f"  skipped    {len(skipped)} unreadable image file(s), listed in {run.file('environment.json')}")
    commands = [
        (f"kcv evaluate {run.path}", "test metrics again from model.keras (--tta: test-time augmentation)"),
        (f"kcv export {run.path}", "a SavedModel for TF Serving under saved_models/"),
        (f"kcv predict {run.path} IMAGE...", "the classes of your own image files"),
        (f"kcv ensemble {run.path} OTHER_RUN...", "combine it with other runs of the same data"),
    ]
    width = max(len(command) for command, _ in commands)
    lines.append("next:")
    lines += [f"  {command:<{width}}  {meaning}" for command, meaning in commands]
    return lines


def _with_data(config, data: str | None, data_dir: Path | None, overrides=()):
    """--data: the recipe's model and training on other data (its format detected from a path)."""
    if data is None:
        return config, data_dir
    import dataclasses

    from kerascv_app.data.sources import resolve_data_option

    if any(override.strip().startswith("data.source") for override in overrides):
        raise UserError("--data and --set data.source both name the data: keep one")
    detected = resolve_data_option(data, config.data.source)
    config = dataclasses.replace(config, data=dataclasses.replace(config.data, source=detected.source))
    return config, detected.data_dir if detected.data_dir is not None else data_dir


def _resolved_config(recipe: Path, overrides, precision, seed, smoke):
    import dataclasses

    from kerascv_app.recipe import load_recipe

    config, source = load_recipe(recipe)
    # Smoke mode shrinks the recipe first, so that what the user set explicitly
    # (--set train.epochs=5, --seed, --precision) wins over it.
    if smoke:
        config = config.smoke()
    config = config.with_overrides(list(overrides))
    if precision is not None:
        config = dataclasses.replace(config, train=dataclasses.replace(config.train, precision=precision.value))
    if seed is not None:
        config = dataclasses.replace(config, train=dataclasses.replace(config.train, seed=seed))
    return config, source


@app.command()
def evaluate(
    run_dir: Path = typer.Argument(..., help="A run directory (kcv fit) or an ensemble directory (kcv ensemble)."),
    backend: Optional[Backend] = BACKEND_OPTION,
    data: Optional[str] = typer.Option(
        None,
        "--data",
        help=(
            "Where the run's data is now: a path (format detected) or "
            "a data.source spelling; its test images must be the run's."
        ),
    ),
    data_dir: Optional[Path] = DATA_DIR_OPTION,
    as_json: bool = typer.Option(False, "--json", help="Print the metrics as JSON."),
    tta: bool = typer.Option(
        False,
        "--tta",
        help="Test-time augmentation: average the logits of each image, its mirror and one-pixel shifts.",
    ),
):
    """Recompute a run's (or an ensemble's) test metrics from its saved model."""
    from kerascv_app.backend import select_backend
    from kerascv_app.evaluate.evaluate import open_evaluated_directory

    run = open_evaluated_directory(run_dir)
    select_backend(backend.value if backend else None)
    from kerascv_app.evaluate.evaluate import evaluate_run

    source = None
    if data is not None:
        from kerascv_app.data.sources import resolve_data_option

        detected = resolve_data_option(data, run.read_json("config.json").get("data", {}).get("source", ""))
        source, data_dir = detected.source, detected.data_dir if detected.data_dir is not None else data_dir
    metrics = evaluate_run(run, data_dir, test_time_augmentation=tta, source=source)
    if as_json:
        print(json.dumps(metrics, indent=2))
        return
    table = Table(title=f"test metrics of {run.path}" + (" with test-time augmentation" if tta else ""))
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in ("count", "accuracy", "top5_accuracy", "loss"):
        if key in metrics:
            table.add_row(key, f"{metrics[key]:.4f}" if isinstance(metrics[key], float) else str(metrics[key]))
    console.print(table)


@app.command()
def runs(runs_dir: Path = typer.Argument(Path("runs"), help="The folder given to kcv fit --runs-dir.")):
    """List runs with their recipe, backend, status and test accuracy."""
    from kerascv_app.runs import find_runs

    table = Table(title=f"runs in {runs_dir}")
    for column in ("run", "recipe", "backend", "status", "test accuracy"):
        table.add_column(column)
    for run in find_runs(runs_dir):
        try:
            record = run.status_record()
            status = run.status()
        except ValueError:
            record, status = {}, "corrupt"
        accuracy = record.get("test_accuracy")
        table.add_row(
            run.path.name,
            str(record.get("recipe", "?")),
            str(record.get("backend", "?")),
            status,
            f"{accuracy:.4f}" if accuracy is not None and status == "finished" else "-",
        )
    console.print(table)


class MetaLearner(str, Enum):
    logistic = "logistic"
    ridge = "ridge"
    gbm = "gbm"


class TestTimeAugmentation(str, Enum):
    flip = "flip"


@app.command()
def ensemble(
    run_dirs: Optional[list[Path]] = typer.Argument(
        None, help="Finished run directories (default: every finished run in --runs-dir that matches the newest)."
    ),
    average: bool = typer.Option(False, "--average", help="The mean of the members' probabilities."),
    weighted: bool = typer.Option(False, "--weighted", help="A weighted mean, weights fitted on validation log-loss."),
    stacking: bool = typer.Option(
        False,
        "--stacking",
        help=(
            "A meta-learner trained on the members' validation log-probabilities (the weighted "
            "average instead, said in one line, when it does not beat it out of fold)."
        ),
    ),
    meta: Optional[MetaLearner] = typer.Option(None, "--meta", help="The stacking meta-learner (default: logistic)."),
    tta: Optional[TestTimeAugmentation] = typer.Option(
        None, "--tta", help="flip: average each member over the image and its mirror."
    ),
    runs_dir: Path = typer.Option(Path("runs"), "--runs-dir", help="Where to find members when none is named."),
    out: Optional[Path] = typer.Option(
        None, "--out", help="The ensemble directory (default: ensembles/<method>-<timestamp>)."
    ),
    data_dir: Optional[Path] = typer.Option(
        None, "--data-dir", help="Where the images are, for --tta (default: where the members read them)."
    ),
    backend: Optional[Backend] = BACKEND_OPTION,
):
    """Combine finished runs into one model: average, weighted average or stacking."""
    from kerascv_app.backend import select_backend
    from kerascv_app.ensemble.combiners import choose_method, method_label
    from kerascv_app.ensemble.directory import default_ensemble_path
    from kerascv_app.ensemble.members import members_from_paths, members_from_runs_folder

    method, meta_learner_name = choose_method(average, weighted, stacking, meta.value if meta else None)
    if run_dirs:
        members = members_from_paths(run_dirs)
    else:
        members, skipped = members_from_runs_folder(runs_dir)
        console.print(
            f"members: the {len(members)} finished runs in {runs_dir} "
            "that share the data, classes and splits of the newest",
            highlight=False,
            soft_wrap=True,
        )
        for member in members:
            console.print(f"  {member.path}", highlight=False, soft_wrap=True)
        for path, reason in skipped:
            console.print(f"  left out {path}: it {reason}", highlight=False, soft_wrap=True)
    chosen = select_backend(backend.value if backend else None)
    from kerascv_app.ensemble.build import build_ensemble, comparison_table

    label = method_label(method, meta_learner_name) + (f"-tta-{tta.value}" if tta else "")
    destination = out if out is not None else default_ensemble_path(label)
    result = build_ensemble(
        members, method, meta_learner_name, tta.value if tta else None, destination, chosen, data_dir
    )
    if result.combination.fallback:
        console.print(f"note: {result.combination.fallback}", highlight=False, soft_wrap=True)
    if result.combination.weights is not None:
        console.print(
            "weights: "
            + ", ".join(f"{member.name} {weight:.4f}" for member, weight in zip(members, result.combination.weights)),
            highlight=False,
            soft_wrap=True,
        )
    if not result.combination.exportable:
        console.print(
            f"note: --meta {meta_learner_name} is not expressible as Keras "
            "layers: no model.keras; the meta-learner is in meta_learner.joblib"
        )
    console.print(comparison_table(result.metrics))
    console.print(
        f"ensemble [bold]{result.path}[/bold] written: test accuracy "
        f"{result.metrics['test'].get('accuracy', float('nan')):.4f}"
    )


@app.command()
def convert(
    source: str = typer.Argument(
        ...,
        help=(
            "A path (its format detected, as kcv fit --data does) or any "
            "data.source: folder:PATH, cifar10:PATH, idx:DIR, tfds:NAME, digits, ..."
        ),
    ),
    to: Path = typer.Option(
        ...,
        "--to",
        help="The folder for the shards and metadata.json: new, empty, or an unfinished conversion to resume.",
    ),
    shards: int = typer.Option(
        0,
        "--shards",
        help="Shards of the training split (default: one per 1,024 images); other splits get shards in proportion.",
    ),
    workers: int = typer.Option(4, "--workers", help="Shards written at once."),
    data_dir: Optional[Path] = DATA_DIR_OPTION,
    quiet: bool = typer.Option(False, "--quiet", help="No progress display."),
):
    """Write a source as sharded TFRecords, once; then train with --set data.source=tfrecord:DIR."""
    from kerascv_app.backend import select_backend

    # Only TensorFlow (tf.data, the record writer) is used; this keeps it quiet and off the GPU.
    select_backend()
    from kerascv_app.data.convert import convert as convert_source
    from kerascv_app.data.sources import resolve_data_option

    detected = resolve_data_option(source)
    source, data_dir = detected.source, detected.data_dir if detected.data_dir is not None else data_dir
    result = convert_source(source, to, data_dir, shards=shards, workers=workers, show_progress=not quiet)
    counts = ", ".join(f"{count} {split}" for split, count in result.counts.items())
    kept = f", {result.shards_kept} kept from before" if result.shards_kept else ""
    console.print(
        f"converted [bold]{result.directory}[/bold]: {counts} images; {result.shards_written} shards written{kept}",
        highlight=False,
        soft_wrap=True,
    )
    if result.skipped_files:
        console.print(
            f"skipped {len(result.skipped_files)} unreadable file(s) of the source (listed in metadata.json)",
            highlight=False,
        )


@app.command()
def doctor():
    """Backends installed, the devices each sees, mixed precision, where data is cached, what to install."""
    from kerascv_app.doctor import report_lines

    for line in report_lines():
        console.print(line, highlight=False, soft_wrap=True, markup=False)


@app.command()
def models():
    """List the registered model names."""
    from kerascv_app.models.registry import model_names

    for name in model_names():
        console.print(name)


@app.command()
def export(
    model_dir: Path = typer.Argument(..., help="A run directory (kcv fit) or an ensemble directory (kcv ensemble)."),
    name: Optional[str] = typer.Option(
        None,
        "--name",
        help=(
            "The model's name under --base (default: the recipe's name, i.e. the folder's name without its timestamp)."
        ),
    ),
    version: Optional[int] = typer.Option(
        None, "--version", help="The version number (default: one more than the highest under --base/NAME)."
    ),
    base: Path = typer.Option(Path("saved_models"), "--base", help="TF Serving's model base path."),
    export_format: str = typer.Option(
        "savedmodel",
        "--format",
        help="savedmodel: BASE/NAME/N for TF Serving; onnx: BASE/onnx/NAME/N/model.onnx for onnxruntime.",
    ),
):
    """Export a SavedModel for TF Serving (or model.onnx): built aside, verified without Keras, then renamed
    into place.
    """
    from kerascv_app.backend import select_backend
    from kerascv_app.ensemble.directory import is_ensemble_directory, refuse_ensemble_without_model
    from kerascv_app.export.atomic import export_model, format_steps, use_cpu_only
    from kerascv_app.model_dir import open_model_directory

    format_steps(export_format)
    if is_ensemble_directory(model_dir):
        refuse_ensemble_without_model(model_dir)
    model_directory = open_model_directory(model_dir)
    use_cpu_only()
    # The reference probabilities come from the backend the model was trained with.
    select_backend(model_directory.backend)
    result = export_model(model_directory, base, name, version, export_format)
    console.print(
        f"exported [bold]{result.path}[/bold]: probabilities within {result.max_difference:.1e} of the Keras model's",
        highlight=False,
        soft_wrap=True,
    )


@app.command()
def predict(
    model: Path = typer.Argument(
        ...,
        help=(
            "A run directory, an ensemble directory, an exported version folder "
            "(saved_models/NAME/N) or a model.onnx (or its folder, saved_models/onnx/NAME/N)."
        ),
    ),
    images: list[Path] = typer.Argument(..., help="Image files (JPEG, PNG, BMP or GIF) of any size."),
    top_k: int = typer.Option(5, "--top-k", help="How many classes to show per image."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    backend: Optional[Backend] = BACKEND_OPTION,
):
    """Predict the classes of image files; unreadable files are listed and give exit code 2."""
    from kerascv_app.export.predict import is_onnx_model, predict_images, prediction_table

    # An ONNX model runs with onnxruntime alone: no backend is chosen, TensorFlow and Keras
    # are never imported (they need not even be installed).
    if not is_onnx_model(model):
        from kerascv_app.backend import select_backend

        select_backend(backend.value if backend else None)

    report = predict_images(model, images, top_k)
    if as_json:
        print(json.dumps([prediction.to_json() for prediction in report.predictions], indent=2))
    elif report.predictions:
        console.print(prediction_table(report.predictions))
    for unreadable in report.unreadable:
        error_console.print(f"cannot read {unreadable.path}: {unreadable.reason}", highlight=False, soft_wrap=True)
    if report.unreadable:
        raise UserError(
            f"{len(report.unreadable)} of {len(images)} images could "
            "not be read (listed above); the others were predicted"
        )


@app.command()
def preview(
    recipe: Path = typer.Argument(..., help="A recipe file, e.g. recipes/cifar10_baseline.py."),
    out: Path = typer.Option(..., "--out", help="The PNG to write, e.g. grid.png."),
    count: int = typer.Option(16, "--n", help="How many training images."),
    data: Optional[str] = DATA_OPTION,
    data_dir: Optional[Path] = DATA_DIR_OPTION,
    overrides: list[str] = typer.Option([], "--set", help="Override a field: section.key=value (repeatable)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Random seed (default: the recipe's)."),
    backend: Optional[Backend] = BACKEND_OPTION,
):
    """Write a grid of training images above their augmented versions: what training sees."""
    from kerascv_app.augment.preview import check_request, write_preview
    from kerascv_app.backend import select_backend

    check_request(count, out)
    select_backend(backend.value if backend else None)
    config, _ = _resolved_config(recipe, overrides, None, seed, False)
    config, data_dir = _with_data(config, data, data_dir, overrides)
    path = write_preview(config, data_dir, count, out)
    console.print(
        f"wrote [bold]{path}[/bold]: training images of {config.name}, each above its augmented version",
        highlight=False,
        soft_wrap=True,
    )


@app.command()
def report(
    dirs: list[Path] = typer.Argument(..., help="One run or ensemble directory, or several to compare."),
    out: Optional[Path] = typer.Option(
        None, "--out", help="The HTML file (default: DIR/report.html for one directory, report.html for several)."
    ),
    data_dir: Optional[Path] = DATA_DIR_OPTION,
    top_losses: int = typer.Option(24, "--top-losses", help="Test images with the highest loss to show (0: none)."),
    gradcam: int = typer.Option(
        8, "--gradcam", help="Test images with a Grad-CAM map, wrong and right ones (0: none)."
    ),
    preview: int = typer.Option(16, "--preview", help="Training images in the augmentation preview (0: none)."),
):
    """Write one self-contained HTML page: a run's or ensemble's figures and failures, or a comparison."""
    from kerascv_app.backend import select_backend

    # The report only reads saved predictions and images; Grad-CAM's gradients are taken under
    # TensorFlow from model.keras, whatever backend trained it, so this process runs TensorFlow,
    # unless Keras is already loaded with another backend (kcv called from Python): Grad-CAM
    # then runs in a TensorFlow subprocess (kerascv_app/report/gradcam.py).
    already_loaded = sys.modules.get("keras")
    select_backend(already_loaded.backend.backend() if already_loaded is not None else "tensorflow")
    from kerascv_app.report import write_report

    path = write_report(dirs, out, data_dir, top_losses=top_losses, gradcam=gradcam, preview=preview)
    console.print(f"wrote [bold]{path}[/bold]", highlight=False, soft_wrap=True)


def main() -> None:
    """Entry point: runs the app and turns UserError into one line and exit code 2."""
    from kerascv_app.backend import quiet_tensorflow_import

    # Before any command can import TensorFlow (keras does, under its tensorflow backend).
    quiet_tensorflow_import()
    try:
        app(standalone_mode=False)
    except UserError as error:
        from rich.markup import escape

        # Escaped: a message may quote brackets (pip install -e ".[jax]") that rich would eat as markup.
        error_console.print(f"[bold red]error:[/bold red] {escape(str(error))}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except ClickException as error:  # A bad option value or usage: click's own one-line message.
        error.show()
        sys.exit(error.exit_code)
    except KeyboardInterrupt:
        error_console.print("interrupted")
        sys.exit(130)
    except typer.Exit as exit_request:
        sys.exit(exit_request.exit_code)
    except typer.Abort:
        sys.exit(1)
    except Exception as error:  # noqa: BLE001 - the last resort: one line, not a traceback
        import os

        if os.environ.get("KCV_VERBOSE"):
            raise
        from kerascv_app.runs import failure_reason

        error_console.print(
            f"[bold red]error:[/bold red] {failure_reason(error)} (an "
            "unexpected failure: set KCV_VERBOSE=1 to see the traceback)",
            highlight=False,
            soft_wrap=True,
        )
        sys.exit(1)


if __name__ == "__main__":
    main()
