"""Shared test helpers. The backend comes from KERAS_BACKEND (tox sets one per environment)."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from kerascv_app.backend import select_backend

BACKEND = select_backend()
REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
CIFAR10_JPEG = SHARED_DATA / "cifar10-jpeg.tar.gz"
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")


def run_kcv(*arguments, cwd: Path | None = None, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """Runs the real command line in a fresh process (the backend is fixed per process)."""
    environment = {**os.environ, "KERAS_BACKEND": BACKEND, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "kerascv_app.cli", *map(str, arguments)],
        cwd=cwd, env=environment, capture_output=True, text=True, timeout=timeout,
    )


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    """Bad input: exit code 2, one line on stderr naming the problem, no traceback."""
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip().startswith("error:")]
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def write_cifar10_python(folder: Path, images_per_batch: int = 20, seed: int = 0) -> Path:
    """Writes a tiny cifar-10-python.tar.gz in the original pickle format."""
    random = np.random.default_rng(seed)
    staging = folder / "staging" / "cifar-10-batches-py"
    staging.mkdir(parents=True)
    names = ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"]
    for name in names:
        labels = [int(i % 10) for i in range(images_per_batch)]
        data = random.integers(0, 256, size=(images_per_batch, 3 * 32 * 32), dtype=np.uint8)
        # Give each class a distinct brightness so that a few steps can learn something.
        data = (data // 4 + np.array(labels, dtype=np.uint8)[:, None] * 19).astype(np.uint8)
        with open(staging / name, "wb") as handle:
            pickle.dump({b"data": data, b"labels": labels, b"batch_label": name.encode()}, handle)
    label_names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    with open(staging / "batches.meta", "wb") as handle:
        pickle.dump({b"label_names": label_names, b"num_cases_per_batch": images_per_batch}, handle)
    archive = folder / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(staging, arcname="cifar-10-batches-py")
    return archive


@pytest.fixture(scope="session")
def cifar10_archive(tmp_path_factory) -> Path:
    return write_cifar10_python(tmp_path_factory.mktemp("cifar10"))


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory):
    """Extracted archives go to a per-session cache, never to the user's home."""
    if "KCV_CACHE_DIR" not in os.environ:
        os.environ["KCV_CACHE_DIR"] = str(tmp_path_factory.mktemp("kcv_cache"))
    yield


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory) -> Path:
    """One tiny digits run (8x8x1, classes "0".."9") on the backend under test, shared by the export and predict tests."""
    runs = tmp_path_factory.mktemp("digits_runs")
    result = run_kcv("fit", REPO_ROOT / "recipes" / "digits.py", "--smoke", "--runs-dir", runs, "--quiet")
    assert result.returncode == 0, result.stderr
    (run_dir,) = [path for path in runs.iterdir() if path.is_dir()]
    return run_dir


@pytest.fixture(scope="session")
def digits_export(digits_run, tmp_path_factory) -> Path:
    """digits_run exported once by kcv export: the version folder <base>/digits/1."""
    base = tmp_path_factory.mktemp("saved_models")
    result = run_kcv("export", digits_run, "--base", base)
    assert result.returncode == 0, result.stderr
    return base / "digits" / "1"


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
