"""Fixtures shared by the tests; plain helpers live in kcv_testing.py."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from kcv_testing import (
    BACKEND,
    REPO_ROOT,
    computed_once,
    fit_learning_digits_run,
    fit_member_runs,
    kcv_in_process,
    run_kcv,
    write_cifar10_python,
    write_fashion_mnist,
)


def pytest_collection_modifyitems(config, items):
    """Deselects (and counts as such, never skips) what the backend under test need not run:

    - under jax and torch, the tests that never touch a Keras backend (backend_independent):
      the tensorflow run already ran them, and they would run the same code again;
    - the slow tests that run under only some backends (backends("tensorflow", ...)): their part
      that depends on the backend is covered under the others by a test named beside the mark.
      CI runs the suite three times on two cores: a workflow whose steps are each tested under
      every backend (fit, evaluate, export...) is walked through end to end under one.
    """

    def deselect(item) -> bool:
        if BACKEND != "tensorflow" and item.get_closest_marker("backend_independent") is not None:
            return True
        only = item.get_closest_marker("backends")
        return only is not None and BACKEND not in only.args

    deselected = [item for item in items if deselect(item)]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = [item for item in items if item not in deselected]


@pytest.fixture(scope="session")
def cifar10_archive(tmp_path_factory) -> Path:
    return write_cifar10_python(tmp_path_factory.mktemp("cifar10"))


@pytest.fixture(scope="session")
def fashion_mnist_dir(tmp_path_factory) -> Path:
    """Fashion-MNIST's four gzipped IDX files, tiny: the recipe's tests need no download or Debian package."""
    return write_fashion_mnist(tmp_path_factory.mktemp("fashion-mnist"))


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory):
    """Extracted archives go to a per-session cache, never to the user's home."""
    if "KCV_CACHE_DIR" not in os.environ:
        os.environ["KCV_CACHE_DIR"] = str(tmp_path_factory.mktemp("kcv_cache"))
    yield


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory) -> Path:
    """One digits run (8x8x1, classes "0".."9") that learned, on the backend under test, shared by
    the export, predict and evaluate tests: trained once per test run, whatever the workers.
    Tests read it; one that changes a run changes its own copy."""
    return computed_once(tmp_path_factory, "digits_run", fit_learning_digits_run)


@pytest.fixture(scope="session")
def mixed_bfloat16_run(tmp_path_factory) -> Path:
    """kcv fit --smoke --precision mixed_bfloat16 --seed 7 of the digits recipe, trained once per
    test run: the flags are checked on it (test_fit_cli) and it is exported in float32 (test_export)."""

    def fit(runs: Path) -> Path:
        result = kcv_in_process(
            "fit",
            REPO_ROOT / "recipes" / "digits.py",
            "--smoke",
            "--quiet",
            "--runs-dir",
            runs,
            "--precision",
            "mixed_bfloat16",
            "--seed",
            "7",
        )
        assert result.returncode == 0, result.stderr
        (run_dir,) = [path for path in runs.iterdir() if path.is_dir()]
        return run_dir

    return computed_once(tmp_path_factory, "mixed_bfloat16_run", fit)


@pytest.fixture(scope="session")
def member_runs(tmp_path_factory) -> list[Path]:
    """Three digits runs that learned and share their splits (kcv_testing.fit_member_runs), for the
    ensemble and report tests: trained once per test run, whatever the workers."""
    return computed_once(tmp_path_factory, "member_runs", fit_member_runs)


@pytest.fixture(scope="session")
def digits_export(digits_run, tmp_path_factory) -> Path:
    """digits_run exported once by kcv export: the version folder <base>/digits/1."""

    def export(base: Path) -> Path:
        result = run_kcv("export", digits_run, "--base", base)
        assert result.returncode == 0, result.stderr
        return base / "digits" / "1"

    return computed_once(tmp_path_factory, "digits_export", export)


@pytest.fixture(scope="session")
def digit_images(tmp_path_factory) -> list[Path]:
    """Real handwritten digits saved as a JPEG (RGB, 40x32) and a PNG (grayscale, 13x9): not the model's 8x8x1."""
    from PIL import Image
    from sklearn.datasets import load_digits

    folder = tmp_path_factory.mktemp("digit_images")
    digits = load_digits()

    def digit(index: int) -> Image.Image:
        return Image.fromarray((digits.images[index] * (255 / 16)).astype(np.uint8))

    digit(7).resize((40, 32), Image.BILINEAR).convert("RGB").save(folder / "seven.jpg", quality=95)
    digit(3).resize((13, 9), Image.BILINEAR).save(folder / "three.png")
    return [folder / "seven.jpg", folder / "three.png"]


@pytest.fixture
def decode_batches():
    """Runs a split through the real pipeline; returns its batches as (uint8 images, one-hot labels) arrays."""
    from kerascv_app.config import DataConfig
    from kerascv_app.data.pipeline import make_dataset

    def run(split, num_classes: int, image_size=(16, 16), batch_size: int = 4):
        config = DataConfig(image_size=image_size, channels=3, batch_size=batch_size, cache="none")
        dataset = make_dataset(split, num_classes, config)
        return [(np.asarray(images), np.asarray(labels)) for images, labels in dataset.as_numpy_iterator()]

    return run


@pytest.fixture(scope="session")
def model_size_images(tmp_path_factory) -> list[Path]:
    """Three real digits as 8x8 grayscale PNGs: the model's size, so no resize and lossless pixels."""
    from PIL import Image
    from sklearn.datasets import load_digits

    folder = tmp_path_factory.mktemp("model_size_images")
    digits = load_digits()
    paths = []
    for index in (0, 7, 13):
        path = folder / f"digit-{index}.png"
        Image.fromarray((digits.images[index] * (255 / 16)).astype(np.uint8)).save(path)
        paths.append(path)
    return paths
