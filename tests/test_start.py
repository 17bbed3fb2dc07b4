"""The first minutes: a quiet start, one line for a missing backend, plain logs, a summary."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys

import pytest
from kcv_testing import BACKEND, REPO_ROOT, assert_one_line_error, run_kcv

# Every line kcv itself may write to stderr during a run (progress goes to stdout in a log).
KCV_STDERR_PREFIXES = ("data cache: ", "error: ")
EPOCH_LINE = re.compile(
    r"^epoch 1/1  loss \d+\.\d{4}  accuracy \d\.\d{4}  val_loss \d+\.\d{4}  val_accuracy \d\.\d{4}  \d+\.\d s  "
    r"[\d,]+ img/s$"
)


def foreign_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip() and not line.startswith(KCV_STDERR_PREFIXES)]


def test_commands_start_quietly_and_a_piped_fit_prints_plain_epochs_and_a_summary(tmp_path):
    fitted = run_kcv("fit", REPO_ROOT / "recipes" / "digits.py", "--smoke", "--runs-dir", tmp_path / "runs")
    assert fitted.returncode == 0, fitted.stderr
    assert foreign_lines(fitted.stderr) == [], fitted.stderr
    assert fitted.stderr.startswith("data cache: in memory"), fitted.stderr
    (run_dir,) = (tmp_path / "runs").iterdir()
    lines = fitted.stdout.splitlines()
    # Stdout is a pipe here: one plain line per epoch, no progress bars, then the summary.
    assert EPOCH_LINE.match(lines[0]), lines[0]
    assert lines[1] == f"run {run_dir} finished"
    assert re.match(r"^  validation accuracy \d\.\d{4}, top-5 \d\.\d{4} \(128 images\)$", lines[2]), lines[2]
    assert re.match(r"^  test       accuracy \d\.\d{4}, top-5 \d\.\d{4} \(128 images\)$", lines[3]), lines[3]
    assert re.match(r"^  training   \d+\.\d s over 1 epochs, [\d,]+ images/s$", lines[4]), lines[4]
    for command in ("evaluate", "export", "predict", "ensemble"):
        assert any(line.strip().startswith(f"kcv {command} {run_dir}") for line in lines[5:]), command

    for arguments in (("runs", tmp_path / "runs"), ("models",)):
        result = run_kcv(*arguments)
        assert result.returncode == 0 and result.stderr == "", result.stderr
    # An error after TensorFlow was imported (keras, then the data): the one line only.
    failed = run_kcv(
        "fit",
        REPO_ROOT / "recipes" / "digits.py",
        "--set",
        f"data.source=folder:{tmp_path / 'nowhere'}",
        "--runs-dir",
        tmp_path / "runs2",
    )
    assert_one_line_error(failed, "nowhere")
    assert foreign_lines(failed.stderr) == [], failed.stderr


def test_verbose_lets_tensorflow_logging_through(tmp_path):
    # Only the tensorflow backend imports TensorFlow for this command: keras does.
    code = "from kerascv_app.backend import select_backend; select_backend(); import tensorflow"
    quiet = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, "KCV_VERBOSE": "0", "TF_CPP_MIN_LOG_LEVEL": "0"},
    )
    loud = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, "KCV_VERBOSE": "1", "TF_CPP_MIN_LOG_LEVEL": "0"},
    )
    assert quiet.returncode == loud.returncode == 0, (quiet.stderr, loud.stderr)
    assert quiet.stderr == ""
    assert "oneDNN" in loud.stderr or "absl" in loud.stderr, loud.stderr


def test_captured_stderr_drops_the_text_on_success_and_replays_it_on_failure(capfd):
    from kerascv_app.backend import captured_stderr

    with captured_stderr():
        os.write(2, b"library noise\n")
    assert "library noise" not in capfd.readouterr().err
    with pytest.raises(ImportError), captured_stderr():
        os.write(2, b"why the import failed\n")
        raise ImportError("no")
    assert "why the import failed" in capfd.readouterr().err


BLOCKED_IMPORT = """
import sys
class Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == {package!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}")
sys.meta_path.insert(0, Blocker())
sys.argv = ["kcv", "fit", {recipe!r}, "--backend", {package!r}, "--runs-dir", {runs!r}]
from kerascv_app.cli import main
main()
"""


# The backend under test plays no part: the refusal names the blocked one before keras is imported.
@pytest.mark.backend_independent
@pytest.mark.parametrize(
    "package, install", [("jax", 'pip install -e ".[jax]"'), ("torch", "pip install torch==2.13.0")]
)
def test_a_backend_that_is_not_installed_gets_the_command_that_installs_it(tmp_path, package, install):
    code = BLOCKED_IMPORT.format(
        package=package, recipe=str(REPO_ROOT / "recipes" / "digits.py"), runs=str(tmp_path / "runs")
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, "KERAS_BACKEND": BACKEND}
    )
    assert_one_line_error(result, f"--backend = '{package}'", "not installed", install)
    assert not (tmp_path / "runs").exists()


def test_plain_progress_is_one_line_per_epoch():
    from kerascv_app.train.progress import PlainProgress, progress_callback

    stream = io.StringIO()
    callback = progress_callback(3, 10, 32, stage="stage 2", stream=stream)
    assert isinstance(callback, PlainProgress)
    callback.on_epoch_begin(1)
    callback.on_epoch_end(
        1,
        {
            "loss": 0.5,
            "accuracy": 0.75,
            "val_loss": 0.6,
            "val_accuracy": 0.7,
            "epoch_seconds": 2.0,
            "images_per_second": 1500.0,
        },
    )
    assert (
        stream.getvalue()
        == "stage 2 epoch 2/3  loss 0.5000  accuracy 0.7500  val_loss 0.6000  val_accuracy 0.7000  2.0 s  1,500 img/s\n"
    )


def test_doctor_reports_backends_devices_precision_and_data_locations(tmp_path):
    from importlib import metadata

    result = run_kcv("doctor")
    assert result.returncode == 0 and result.stderr == "", result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"backend kcv uses now: {BACKEND} (--backend or KERAS_BACKEND to change)"
    # Each tox environment has its own backends (tensorflow always): the installed ones are
    # described, the others named with their install command.
    import importlib.util

    installed = [package for package in ("tensorflow", "jax", "torch") if importlib.util.find_spec(package) is not None]
    for package in ("tensorflow", "jax", "torch"):
        if package in installed:
            (line,) = [line for line in lines if line.startswith(f"{package} ")]
            assert line.startswith(f"{package} {metadata.version(package)}: ") and ("CPU" in line or "GPU" in line), (
                line
            )
        else:
            assert any(line.startswith(f"{package}: not installed; install it with ") for line in lines), lines
    assert sum(line.startswith("  mixed precision: ") for line in lines) == len(installed)
    assert f"  extracted archives and decoded arrays: {os.environ['KCV_CACHE_DIR']} (KCV_CACHE_DIR)" in lines
    assert any(line.startswith("  memory available: ") for line in lines)
    # The optional features tox installs in every environment, with their versions.
    assert f"  hub: backbones (KerasHub presets): keras-hub {metadata.version('keras-hub')}" in lines
    assert any(
        line.startswith("  kcv export --format onnx: tf2onnx ")
        and f"onnxruntime {metadata.version('onnxruntime')}" in line
        for line in lines
    ), lines

    # A backend that is missing is named with the command that installs it.
    missing = "torch" if BACKEND == "jax" else "jax"
    code = (
        BLOCKED_IMPORT.split("sys.argv")[0].format(package=missing)
        + "sys.argv = ['kcv', 'doctor']\nfrom kerascv_app.cli import main\nmain()\n"
    )
    blocked = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, "KERAS_BACKEND": BACKEND}
    )
    assert blocked.returncode == 0, blocked.stderr
    install = 'pip install -e ".[jax]"' if missing == "jax" else "pip install torch==2.13.0"
    assert any(
        line.startswith(f"{missing}: not installed; install it with {install}") for line in blocked.stdout.splitlines()
    ), blocked.stdout
