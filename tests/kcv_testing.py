"""Test helpers shared by every test module (import them from here, not from conftest).

The backend comes from KERAS_BACKEND (tox sets one per environment)."""

from __future__ import annotations

import contextlib
import gzip
import io
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
#: empty folder for the torch environment, to prove that a fresh clone's test run needs none of them).
SHARED_DATA = Path(os.environ.get("KCV_SHARED_DATA") or REPO_ROOT.parent / "shared" / "data")
CIFAR10_JPEG = SHARED_DATA / "cifar10-jpeg.tar.gz"
NO_CIFAR10_JPEG = f"needs the 19 MB CIFAR-10 JPEG copy, absent from {SHARED_DATA} (KCV_SHARED_DATA)"


def run_kcv(
    *arguments, cwd: Path | None = None, env: dict | None = None, timeout: int = 600
) -> subprocess.CompletedProcess:
    """Runs the real command line in a fresh process (the backend is fixed per process)."""
    environment = {**os.environ, "KERAS_BACKEND": BACKEND, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "kerascv_app.cli", *map(str, arguments)],
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def kcv_in_process(*arguments, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    """Runs the command line's entry point (kerascv_app.cli.main) in this process: its exit status,
    stdout and stderr, as run_kcv gives them, without paying a new process's TensorFlow import.

    Any command whose exit status is not the point, trainings included: each run sets its own
    precision and seed, and the dtype policy a command leaves behind (a mixed-precision run's)
    is put back here, so later tests in this process build their models in float32. The tests
    that check what only a real process shows (a kill (KCV_KILL_AT would end this process), exit
    status -9, a quiet TensorFlow start, a missing backend, another backend) keep run_kcv."""
    from rich.console import Console

    from kerascv_app import cli

    stdout, stderr = io.StringIO(), io.StringIO()
    saved_environment, saved_directory = dict(os.environ), Path.cwd()
    saved_consoles, saved_argv = (cli.console, cli.error_console), sys.argv
    # Fresh consoles on the buffers: as on a pipe, no colour, 80 columns.
    cli.console, cli.error_console = Console(file=stdout, width=80), Console(file=stderr, width=80)
    os.environ.update({"KERAS_BACKEND": BACKEND, **{name: str(value) for name, value in (env or {}).items()}})
    sys.argv = ["kcv", *map(str, arguments)]
    returncode = 0
    # Keras's global dtype policy (Keras's default where Keras is not imported yet: importing it
    # here would choose the backend before the command does).
    saved_policy = sys.modules["keras"].config.dtype_policy().name if "keras" in sys.modules else "float32"
    try:
        if cwd is not None:
            os.chdir(cwd)
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            try:
                cli.main()
            except SystemExit as exit_request:
                returncode = (
                    exit_request.code if isinstance(exit_request.code, int) else (0 if exit_request.code is None else 1)
                )
    finally:
        if "keras" in sys.modules:
            sys.modules["keras"].config.set_dtype_policy(saved_policy)
        os.chdir(saved_directory)
        os.environ.clear()
        os.environ.update(saved_environment)
        (cli.console, cli.error_console), sys.argv = saved_consoles, saved_argv
    return subprocess.CompletedProcess(["kcv", *map(str, arguments)], returncode, stdout.getvalue(), stderr.getvalue())


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
    content = (
        struct.pack(">I", magic) + struct.pack(f">{values.ndim}I", *values.shape) + values.astype(np.uint8).tobytes()
    )
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
        images = np.clip(labels[:, None, None] * 24.0 + random.normal(0, 20, (len(labels), 28, 28)), 0, 255).astype(
            np.uint8
        )
        write_idx_split(folder, prefix, images, labels)
    return folder


#: A digits run short enough for the tests that still learns (about 0.94 test accuracy):
#: a model that predicts one class for every image cannot show a preprocessing, reloading
#: or combining mistake, so the fixtures that need a model (tests/conftest.py: digits_run) use
#: this one, which must learn and says so.
LEARNING_DIGITS_RUN = ("--set", "train.epochs=8", "--set", "train.learning_rate=0.004")
LEARNED_ACCURACY = 0.9


def computed_once(tmp_path_factory, name: str, compute):
    """A session fixture's value computed once for the whole test run, not once per pytest-xdist
    worker: the first worker to ask computes it into a folder shared by the workers, under a
    lock; the others wait for it and reuse it. ``compute(folder)`` returns a path or a list of
    paths (kept as JSON beside the folder). A failed computation records nothing: the next
    worker that asks tries again, in a fresh folder, and fails the same way."""
    import tempfile

    from filelock import FileLock

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # The workers' base folders are siblings in it.
    record = root / f"{name}.json"
    with FileLock(str(root / f"{name}.lock")):
        if record.is_file():
            value = json.loads(record.read_text())
        else:
            computed = compute(Path(tempfile.mkdtemp(prefix=f"{name}-", dir=root)))
            value = [str(path) for path in computed] if isinstance(computed, (list, tuple)) else str(computed)
            record.write_text(json.dumps(value))
    return [Path(path) for path in value] if isinstance(value, list) else Path(value)


def fit_learning_digits_run(runs: Path, *arguments) -> Path:
    result = kcv_in_process(
        "fit", REPO_ROOT / "recipes" / "digits.py", *LEARNING_DIGITS_RUN, *arguments, "--runs-dir", runs, "--quiet"
    )
    assert result.returncode == 0, result.stderr
    (run_dir,) = [path for path in runs.iterdir() if path.is_dir()]
    accuracy = json.loads((run_dir / "metrics.json").read_text())["test"]["accuracy"]
    assert accuracy > LEARNED_ACCURACY, f"the fixture run did not learn: test accuracy {accuracy}"
    return run_dir


#: A second recipe over the digits data: another architecture, the same data settings.
DIGITS_RESNET_RECIPE = """
from kerascv_app.config import AugmentConfig, Config, DataConfig, ModelConfig, TrainConfig


def get_config():
    return Config(
        name="digits_resnet",
        data=DataConfig(source="digits", image_size=(8, 8), channels=1, batch_size=32, val_fraction=0.1,
            test_fraction=0.2),
        augment=AugmentConfig(normalization="unit"),
        model=ModelConfig(name="resnet", depth=8, width=4),
        train=TrainConfig(epochs=15, optimizer="adamw", learning_rate=2e-3),
    )
"""
#: 431 validation images (43 per class): enough for stacking; the members learn (test
#: accuracy about 0.9), so that a combining mistake would show.
MEMBER_DATA = ("--set", "data.val_fraction=0.3", "--set", "train.epochs=8", "--set", "train.learning_rate=0.004")
VALIDATION_FRACTION = 0.3
#: Well above chance (0.1) for ten digit classes.
MEMBERS_LEARNED = 0.8


def fit_member_runs(folder: Path) -> list[Path]:
    """Three runs of the digits data that learned (conftest.py: member_runs): two seed_cnn and one
    ResNet, with one validation split, enough for stacking (tests/test_ensemble.py, test_report.py)."""
    runs = folder / "runs"
    resnet_recipe = folder / "digits_resnet.py"
    resnet_recipe.write_text(DIGITS_RESNET_RECIPE)
    digits = REPO_ROOT / "recipes" / "digits.py"
    members = [
        (digits, ["--set", "model.hidden_units=16"]),
        (digits, ["--set", "model.hidden_units=32"]),
        (resnet_recipe, []),
    ]
    for seed, (recipe, options) in enumerate(members):
        result = kcv_in_process(
            "fit", recipe, "--quiet", "--runs-dir", runs, "--seed", str(seed), *MEMBER_DATA, *options
        )
        assert result.returncode == 0, result.stderr
    # Run names start with the recipe's name: order them by when they started (the
    # timestamp ends the name), as they were trained.
    members = sorted(runs.iterdir(), key=lambda path: path.name.split("-", 1)[1])
    assert [json.loads((path / "config.json").read_text())["name"] for path in members] == [
        "digits",
        "digits",
        "digits_resnet",
    ]
    # Members that predict one class could not show a combining mistake: they must have learned.
    for path in members:
        accuracy = json.loads((path / "metrics.json").read_text())["test"]["accuracy"]
        assert accuracy > MEMBERS_LEARNED, f"member {path.name} did not learn: test accuracy {accuracy}"
    return members


def predicted(result) -> dict[str, dict[str, float]]:
    """--json output as {image: {class name: probability}}."""
    assert result.returncode == 0, result.stderr
    return {
        item["image"]: {entry["class_name"]: entry["probability"] for entry in item["predictions"]}
        for item in json.loads(result.stdout)
    }
