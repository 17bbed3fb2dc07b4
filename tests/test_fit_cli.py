"""kcv fit / evaluate / runs through the real command line, on the backend under test."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from kcv_testing import (
    BACKEND,
    CIFAR10_JPEG,
    NO_CIFAR10_JPEG,
    REPO_ROOT,
    assert_one_line_error,
    kcv_in_process,
    run_kcv,
)

RUN_FILES = [
    "run.json",
    "config.json",
    "recipe.py",
    "environment.json",
    "splits.json",
    "history.csv",
    "metrics.json",
    "model.keras",
    "model.json",
    "predictions/val.npz",
    "predictions/test.npz",
    "confusion_matrix.png",
    "curves.png",
]


def only_run(runs_dir):
    runs = [path for path in runs_dir.iterdir() if path.is_dir()]
    assert len(runs) == 1, runs
    return runs[0]


def assert_complete_run(run_dir, recipe_name: str, num_classes: int):
    for name in RUN_FILES:
        assert (run_dir / name).is_file(), name
    assert any((run_dir / "tensorboard").rglob("*tfevents*"))
    status = json.loads((run_dir / "run.json").read_text())
    assert status["status"] == "finished" and status["recipe"] == recipe_name and status["backend"] == BACKEND
    environment = json.loads((run_dir / "environment.json").read_text())
    assert environment["backend"] == BACKEND and environment["precision"] == "float32"
    assert environment["data_fingerprint"] and environment["versions"]["keras"]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for split in ("validation", "test"):
        assert 0.0 <= metrics[split]["accuracy"] <= 1.0 and metrics[split]["loss"] > 0
        assert len(metrics[split]["per_class_accuracy"]) == num_classes
        assert ("top5_accuracy" in metrics[split]) == (num_classes > 5)
    test = np.load(run_dir / "predictions" / "test.npz")
    assert test["probabilities"].shape == (metrics["test"]["count"], num_classes)
    np.testing.assert_allclose(test["probabilities"].sum(axis=1), 1.0, atol=1e-4)
    assert np.isclose((test["probabilities"].argmax(1) == test["labels"]).mean(), metrics["test"]["accuracy"])
    return metrics


def test_fit_digits_writes_a_complete_run_and_evaluate_reproduces_it(digits_run):
    """On the session's digits run (kcv fit recipes/digits.py, 8 epochs: kcv_testing.LEARNING_DIGITS_RUN)."""
    run_dir = digits_run
    metrics = assert_complete_run(run_dir, "digits", 10)
    # Eight epochs on digits learn: far above the 10% of chance.
    assert metrics["test"]["accuracy"] > 0.6
    with open(run_dir / "history.csv") as handle:
        assert [row["epoch"] for row in csv.DictReader(handle)] == [str(epoch) for epoch in range(8)]

    evaluated = kcv_in_process("evaluate", run_dir, "--json")
    assert evaluated.returncode == 0, evaluated.stderr
    assert json.loads(evaluated.stdout)["accuracy"] == pytest.approx(metrics["test"]["accuracy"], abs=1e-6)

    # Listing reads the records only: in this process.
    listed = kcv_in_process("runs", run_dir.parent)
    assert listed.returncode == 0 and run_dir.name in listed.stdout and "finished" in listed.stdout


# Each recipe under one backend, the four spread over the three: what a recipe declares is read and
# built the same way under every backend, and each backend trains a complete run anyway (the
# session's digits run: test_fit_digits_writes_a_complete_run_and_evaluate_reproduces_it).
@pytest.mark.shared_data
@pytest.mark.parametrize(
    "recipe, extra, num_classes",
    [
        pytest.param("digits.py", [], 10, marks=pytest.mark.backends("jax")),
        pytest.param(
            "fashion_mnist.py", ["--data-dir", "{fashion_mnist}"], 10, marks=pytest.mark.backends("tensorflow")
        ),
        pytest.param(
            "cifar10_baseline.py", ["--set", "data.source=cifar10:{cifar}"], 10, marks=pytest.mark.backends("torch")
        ),
        pytest.param(
            "cifar10_resnet.py",
            ["--set", "data.source=cifar10:{cifar}", "--set", "model.depth=8"],
            10,
            marks=pytest.mark.backends("tensorflow"),
        ),
    ],
)
def test_every_recipe_fits_in_smoke_mode(tmp_path, cifar10_archive, fashion_mnist_dir, recipe, extra, num_classes):
    arguments = [str(argument).format(cifar=cifar10_archive, fashion_mnist=fashion_mnist_dir) for argument in extra]
    result = kcv_in_process(
        "fit", REPO_ROOT / "recipes" / recipe, "--smoke", "--runs-dir", tmp_path / "runs", *arguments
    )
    assert result.returncode == 0, result.stderr
    run_dir = only_run(tmp_path / "runs")
    assert_complete_run(run_dir, recipe.removesuffix(".py"), num_classes)
    evaluated = kcv_in_process("evaluate", run_dir, "--json")
    assert evaluated.returncode == 0, evaluated.stderr


# Under tensorflow only: the JPEG copy is read by tf.data under every backend; the recipe trains
# under torch above (on CIFAR-10's python archive).
@pytest.mark.shared_data
@pytest.mark.backends("tensorflow")
@pytest.mark.skipif(not CIFAR10_JPEG.is_file(), reason=NO_CIFAR10_JPEG)
def test_cifar10_baseline_smoke_on_the_real_jpeg_copy(tmp_path):
    result = run_kcv(
        "fit",
        REPO_ROOT / "recipes" / "cifar10_baseline.py",
        "--smoke",
        "--runs-dir",
        tmp_path / "runs",
        "--set",
        f"data.source=folder:{CIFAR10_JPEG}",
    )
    assert result.returncode == 0, result.stderr
    run_dir = only_run(tmp_path / "runs")
    assert_complete_run(run_dir, "cifar10_baseline", 10)
    environment = json.loads((run_dir / "environment.json").read_text())
    assert environment["class_names"] == [
        "airplane",
        "automobile",
        "bird",
        "cat",
        "deer",
        "dog",
        "frog",
        "horse",
        "ship",
        "truck",
    ]


# Under jax and torch: tests/test_resume.py kills and resumes runs at three points, exactly.
@pytest.mark.backends("tensorflow")
def test_resume_after_a_forced_kill_completes_the_run(tmp_path):
    recipe = REPO_ROOT / "recipes" / "digits.py"
    killed = run_kcv(
        "fit",
        recipe,
        "--runs-dir",
        tmp_path / "runs",
        "--set",
        "train.epochs=3",
        "--quiet",
        env={"KCV_KILL_AFTER_EPOCH": "2"},
    )
    assert killed.returncode != 0
    run_dir = only_run(tmp_path / "runs")
    # Killed: not finished, not mistaken for finished, no metrics.
    assert not (run_dir / "metrics.json").exists()
    listed = kcv_in_process("runs", tmp_path / "runs")
    assert "interrupted" in listed.stdout and "finished" not in listed.stdout
    refused = kcv_in_process("evaluate", run_dir)
    assert_one_line_error(refused, "did not finish")

    resumed = run_kcv("fit", "--resume", run_dir, "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    assert_complete_run(run_dir, "digits", 10)
    with open(run_dir / "history.csv") as handle:
        epochs = [row["epoch"] for row in csv.DictReader(handle)]
    # Epochs 1 and 2 come from before the kill; only the third was trained after it.
    assert epochs == ["0", "1", "2"]
    assert not (run_dir / "backup").exists()


def test_precision_and_seed_flags_are_recorded(mixed_bfloat16_run):
    run_dir = mixed_bfloat16_run  # kcv fit --smoke --precision mixed_bfloat16 --seed 7 (conftest.py)
    environment = json.loads((run_dir / "environment.json").read_text())
    config = json.loads((run_dir / "config.json").read_text())
    assert environment["precision"] == "mixed_bfloat16" and environment["seed"] == 7
    assert config["train"]["precision"] == "mixed_bfloat16" and config["train"]["seed"] == 7
    # The model reloads under its policy: evaluate gives the recorded accuracy.
    evaluated = kcv_in_process("evaluate", run_dir, "--json")
    assert evaluated.returncode == 0, evaluated.stderr
    recorded = json.loads((run_dir / "metrics.json").read_text())["test"]["accuracy"]
    assert json.loads(evaluated.stdout)["accuracy"] == pytest.approx(recorded, abs=1e-6)


def test_fit_without_a_validation_split(tmp_path):
    """data.val_fraction=0 (as the source's script trains): no validation metrics, still a complete run."""
    result = run_kcv(
        "fit",
        REPO_ROOT / "recipes" / "digits.py",
        "--smoke",
        "--quiet",
        "--runs-dir",
        tmp_path / "runs",
        "--set",
        "data.val_fraction=0",
    )
    assert result.returncode == 0, result.stderr
    run_dir = only_run(tmp_path / "runs")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["validation"] == {"count": 0} and metrics["test"]["count"] > 0
    assert (run_dir / "curves.png").is_file() and (run_dir / "model.json").is_file()
