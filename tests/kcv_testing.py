"""Test helpers shared by every test module (import them from here, not from conftest).

The backend comes from KERAS_BACKEND (tox sets one per environment)."""

from __future__ import annotations

import gzip
import json
import os
import pickle
import struct
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np

from kerascv_app.backend import select_backend

BACKEND = select_backend()
REPO_ROOT = Path(__file__).resolve().parents[1]
#: The real datasets beside the checkout; KCV_SHARED_DATA points elsewhere (.ci/run points it at an
#: empty folder once, to prove that a fresh clone's test run needs none of them).
SHARED_DATA = Path(os.environ.get("KCV_SHARED_DATA") or REPO_ROOT.parent / "shared" / "data")
CIFAR10_JPEG = SHARED_DATA / "cifar10-jpeg.tar.gz"
NO_CIFAR10_JPEG = f"needs the 19 MB CIFAR-10 JPEG copy, absent from {SHARED_DATA} (KCV_SHARED_DATA)"


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


IDX_IMAGE_MAGIC, IDX_LABEL_MAGIC = 0x00000803, 0x00000801


def write_idx(path: Path, values: np.ndarray, magic: int, gzipped: bool = True) -> Path:
    """An unsigned-byte IDX file: big-endian magic, one 32-bit size per dimension, the values."""
    content = struct.pack(">I", magic) + struct.pack(f">{values.ndim}I", *values.shape) + values.astype(np.uint8).tobytes()
    if gzipped:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(content))
    else:
        path.write_bytes(content)
    return path


def write_idx_split(folder: Path, prefix: str, images: np.ndarray, labels: np.ndarray, gzipped: bool = True) -> None:
    """``prefix``-images-idx3-ubyte(.gz) and ``prefix``-labels-idx1-ubyte(.gz): MNIST's names (train, t10k)."""
    folder.mkdir(parents=True, exist_ok=True)
    write_idx(folder / f"{prefix}-images-idx3-ubyte", images, IDX_IMAGE_MAGIC, gzipped)
    write_idx(folder / f"{prefix}-labels-idx1-ubyte", labels, IDX_LABEL_MAGIC, gzipped)


def write_fashion_mnist(folder: Path, train_per_class: int = 30, test_per_class: int = 10, seed: int = 0) -> Path:
    """The four gzipped IDX files of Fashion-MNIST (28x28, 10 classes), tiny, each class its own brightness."""
    random = np.random.default_rng(seed)
    for prefix, per_class in (("train", train_per_class), ("t10k", test_per_class)):
        labels = np.repeat(np.arange(10, dtype=np.uint8), per_class)
        images = np.clip(labels[:, None, None] * 24.0 + random.normal(0, 20, (len(labels), 28, 28)), 0, 255).astype(np.uint8)
        write_idx_split(folder, prefix, images, labels)
    return folder


#: A digits run short enough for the tests that still learns (about 0.94 test accuracy):
#: a model that predicts one class for every image cannot show a preprocessing, reloading
#: or combining mistake, so the fixtures that need a model (tests/conftest.py: digits_run) use
#: this one, which must learn and says so.
LEARNING_DIGITS_RUN = ("--set", "train.epochs=8", "--set", "train.learning_rate=0.004")
LEARNED_ACCURACY = 0.9


def fit_learning_digits_run(runs: Path, *arguments) -> Path:
    result = run_kcv("fit", REPO_ROOT / "recipes" / "digits.py", *LEARNING_DIGITS_RUN, *arguments, "--runs-dir", runs, "--quiet")
    assert result.returncode == 0, result.stderr
    (run_dir,) = [path for path in runs.iterdir() if path.is_dir()]
    accuracy = json.loads((run_dir / "metrics.json").read_text())["test"]["accuracy"]
    assert accuracy > LEARNED_ACCURACY, f"the fixture run did not learn: test accuracy {accuracy}"
    return run_dir


def predicted(result) -> dict[str, dict[str, float]]:
    """--json output as {image: {class name: probability}}."""
    assert result.returncode == 0, result.stderr
    return {item["image"]: {entry["class_name"]: entry["probability"] for entry in item["predictions"]} for item in json.loads(result.stdout)}
