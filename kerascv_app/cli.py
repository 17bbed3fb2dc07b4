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
from rich.console import Console
from rich.table import Table

from kerascv_app.errors import UserError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Image classification with Keras 3 on TensorFlow, JAX or PyTorch.")
console = Console()
error_console = Console(stderr=True)


class Backend(str, Enum):
    tensorflow = "tensorflow"
    jax = "jax"
    torch = "torch"


class Precision(str, Enum):
    float32 = "float32"
    mixed_float16 = "mixed_float16"
    mixed_bfloat16 = "mixed_bfloat16"


BACKEND_OPTION = typer.Option(None, "--backend", help="Keras backend (default: $KERAS_BACKEND, else tensorflow).")
DATA_DIR_OPTION = typer.Option(None, "--data-dir", help="Where the dataset's files are.")


@app.command()
def fit(
    recipe: Optional[Path] = typer.Argument(None, help="A recipe file, e.g. recipes/digits.py."),
    backend: Optional[Backend] = BACKEND_OPTION,
    overrides: list[str] = typer.Option([], "--set", help="Override a field: section.key=value (repeatable)."),
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
        run = RunDirectory.open(resume)
        recorded_backend = run.read_json("environment.json")["backend"]
        chosen = select_backend(backend.value if backend else recorded_backend)
        from kerascv_app.train.fit import resume as resume_run

        run = resume_run(run, chosen, data_dir, show_progress=not quiet)
    else:
        if recipe is None:
            raise UserError("kcv fit needs a RECIPE (e.g. recipes/digits.py) or --resume RUN_DIR")
        chosen = select_backend(backend.value if backend else None)
        config, source = _resolved_config(recipe, overrides, precision, seed, smoke)
        from kerascv_app.train.fit import fit as fit_recipe

        run = fit_recipe(config, source, chosen, data_dir, runs_dir, show_progress=not quiet)
    metrics = run.read_json("metrics.json")
    console.print(f"run [bold]{run.path}[/bold] finished: test accuracy {metrics['test'].get('accuracy', float('nan')):.4f}")


def _resolved_config(recipe: Path, overrides, precision, seed, smoke):
    import dataclasses

    from kerascv_app.recipe import load_recipe

    config, source = load_recipe(recipe)
    config = config.with_overrides(list(overrides))
    if precision is not None:
        config = dataclasses.replace(config, train=dataclasses.replace(config.train, precision=precision.value))
    if seed is not None:
        config = dataclasses.replace(config, train=dataclasses.replace(config.train, seed=seed))
    return (config.smoke() if smoke else config), source


@app.command()
def evaluate(
    run_dir: Path = typer.Argument(..., help="A run directory made by kcv fit."),
    backend: Optional[Backend] = BACKEND_OPTION,
    data_dir: Optional[Path] = DATA_DIR_OPTION,
    as_json: bool = typer.Option(False, "--json", help="Print the metrics as JSON."),
):
    """Recompute a run's test metrics from its saved model."""
    from kerascv_app.backend import select_backend
    from kerascv_app.runs import RunDirectory

    run = RunDirectory.open(run_dir)
    select_backend(backend.value if backend else None)
    from kerascv_app.evaluate.evaluate import evaluate_run

    metrics = evaluate_run(run, data_dir)
    if as_json:
        print(json.dumps(metrics, indent=2))
        return
    table = Table(title=f"test metrics of {run.path}")
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
        table.add_row(run.path.name, str(record.get("recipe", "?")), str(record.get("backend", "?")), status, f"{accuracy:.4f}" if accuracy is not None and status == "finished" else "-")
    console.print(table)


@app.command()
def models():
    """List the registered model names."""
    from kerascv_app.models.registry import model_names

    for name in model_names():
        console.print(name)


def main() -> None:
    """Entry point: runs the app and turns UserError into one line and exit code 2."""
    try:
        app(standalone_mode=False)
    except UserError as error:
        error_console.print(f"[bold red]error:[/bold red] {error}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        error_console.print("interrupted")
        sys.exit(130)
    except typer.Exit as exit_request:
        sys.exit(exit_request.exit_code)
    except typer.Abort:
        sys.exit(1)
    except Exception as error:
        import click

        if isinstance(error, click.exceptions.ClickException):
            error.show()
            sys.exit(error.exit_code)
        raise


if __name__ == "__main__":
    main()
