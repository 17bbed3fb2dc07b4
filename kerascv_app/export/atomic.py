"""``kcv export``: a version folder appears complete and verified, or not at all.

The same for both formats: a SavedModel in ``<base>/<name>/<version>/``, an ONNX model in
``<base>/onnx/<name>/<version>/`` (built, reloaded by onnxruntime with TensorFlow and Keras
blocked, compared, then renamed, exactly as below).

TF Serving loads ``<base>/<name>/<integer>/`` as soon as the folder appears and skips
names that are not integers. So the version is built in ``.staging-<version>-<pid>``,
reloaded in a fresh TensorFlow process without Keras, compared with the Keras model on a
sample batch, given its ``export_report.json``, and only then renamed to its number: one
rename on one filesystem, which a poller sees either not at all or whole. A failure
removes the staging folder; a killed export leaves it behind under a name TF Serving
ignores, and the next export into the same model folder removes it.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import kerascv_app
from kerascv_app import faults
from kerascv_app.errors import UserError
from kerascv_app.export import (
    BYTES_INPUT,
    FORMATS,
    IMAGES_INPUT,
    ONNX_FILE,
    ONNX_FOLDER,
    ONNX_INSTALL,
    ONNX_OUTPUT_NAMES,
    ONNX_VERIFIED_BATCH_SIZES,
    OUTPUT_NAMES,
    PARITY_TOLERANCE,
    REPORT_FILE,
    SERVING_BYTES,
    SERVING_DEFAULT,
)
from kerascv_app.export.savedmodel import load_float32_model
from kerascv_app.model_dir import ModelDirectory
from kerascv_app.runs import process_alive, write_json_atomically

STAGING_PREFIX = ".staging-"
STAGING_NAME = re.compile(r"^\.staging-\d+-(\d+)$")
VERSION_NAME = re.compile(r"^[0-9]+$")
MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
#: What kcv fit appends to the recipe's name: -YYYYmmdd-HHMMSS, then -N on a clash.
RUN_TIMESTAMP_SUFFIX = re.compile(r"-\d{8}-\d{6}(-\d+)?$")
SAMPLE_IMAGE_COUNT = 8


@dataclass(frozen=True)
class ExportResult:
    path: Path
    report: dict

    @property
    def max_difference(self) -> float:
        return self.report["parity"]["max_difference"]


def use_cpu_only() -> None:
    """Hides accelerators from every backend; call before the backend is imported.

    The parity check compares two computations that must agree to 1e-4: on CPU both are
    deterministic float32 (a GPU may use TF32 matrix products), and a SavedModel checked
    on CPU is known to run on the CPU servers TF Serving often uses.
    """
    os.environ["CUDA_VISIBLE_DEVICES"] = "-1"
    os.environ["JAX_PLATFORMS"] = "cpu"


def export_model(
    model_directory: ModelDirectory,
    base: str | Path,
    name: str | None = None,
    version: int | None = None,
    export_format: str = "savedmodel",
) -> ExportResult:
    """Exports ``model_directory`` to ``<base>/<name>/<version>/`` (ONNX: ``<base>/onnx/<name>/<version>/``);
    the backend must be selected.
    """
    steps = format_steps(export_format)
    name = name if name is not None else default_model_name(model_directory)
    check_model_name(name, export_format)
    model_root = model_folder(base, name, export_format)
    version = choose_version(model_root, version)
    # Everything that can refuse the input runs before anything is written.
    model = load_float32_model(model_directory)
    _create_folder(model_root)
    remove_abandoned_staging(model_root)
    staging = model_root / f"{STAGING_PREFIX}{version}-{os.getpid()}"
    try:
        with tempfile.TemporaryDirectory(prefix="kcv-export-") as work_folder:
            sample_path = write_sample(model, model_directory, Path(work_folder))
            _run_step(f"writing the {steps.label}", steps.writer_module, [model_directory.path, staging])
            verification_path = Path(work_folder) / "verification.json"
            _run_step(f"reloading the {steps.label}", steps.verifier_module, [staging, sample_path, verification_path])
            verification = json.loads(verification_path.read_text())
        steps.check(verification, model_directory, model_root)
        report = steps.report(model_directory, name, version, verification)
        write_json_atomically(staging / REPORT_FILE, report)
        faults.maybe_kill_before_rename()
        version_folder = publish(staging, model_root / str(version))
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return ExportResult(version_folder, report)


@dataclass(frozen=True)
class FormatSteps:
    """What differs between the formats: the two child processes, the verdict and the report."""

    label: str
    writer_module: str
    verifier_module: str
    check: Callable[[dict, ModelDirectory, Path], None]
    report: Callable[[ModelDirectory, str, int, dict], dict]


def format_steps(export_format: str) -> FormatSteps:
    """The steps of ``--format``, refused (with what is missing to install) before anything is written."""
    if export_format == "savedmodel":
        return FormatSteps(
            "SavedModel",
            "kerascv_app.export.savedmodel",
            "kerascv_app.export.verify",
            check_verification,
            export_report,
        )
    if export_format == "onnx":
        check_onnx_installed()
        return FormatSteps(
            "ONNX model",
            "kerascv_app.export.onnx_write",
            "kerascv_app.export.onnx_verify",
            check_onnx_verification,
            onnx_export_report,
        )
    raise UserError(f"--format {export_format!r} is not an export format: use one of {', '.join(FORMATS)}")


def check_onnx_installed() -> None:
    from kerascv_app.backend import is_installed

    missing = [package for package in ("onnx", "onnxruntime", "tf2onnx") if not is_installed(package)]
    if missing:
        raise UserError(
            "kcv export --format onnx needs onnx, onnxruntime and tf2onnx, "
            f"and {', '.join(missing)} is not installed: {ONNX_INSTALL}"
        )


def model_folder(base: str | Path, name: str, export_format: str) -> Path:
    """Where the versions of ``name`` go: TF Serving's ``<base>/<name>``, or ``<base>/onnx/<name>``."""
    return Path(base) / ONNX_FOLDER / name if export_format == "onnx" else Path(base) / name


# Name and version


def default_model_name(model_directory: ModelDirectory) -> str:
    """The recipe's name for a run (its folder without the timestamp); an ensemble's folder name."""
    return RUN_TIMESTAMP_SUFFIX.sub("", model_directory.path.resolve().name)


def check_model_name(name: str, export_format: str = "savedmodel") -> None:
    if not MODEL_NAME.match(name):
        raise UserError(
            f"--name {name!r} is not a model name TF Serving can use: use "
            "letters, digits, '.', '_' and '-', starting with a letter or digit"
        )
    if export_format == "savedmodel" and name == ONNX_FOLDER:
        raise UserError(
            f"--name {ONNX_FOLDER!r} is where --base keeps the ONNX exports "
            f"(<base>/{ONNX_FOLDER}/NAME/N): give the SavedModel another --name"
        )


def published_versions(model_root: Path) -> set[int]:
    """The versions TF Serving would load: entries whose name is an integer."""
    if not model_root.is_dir():
        return set()
    return {int(entry.name) for entry in model_root.iterdir() if VERSION_NAME.match(entry.name)}


def choose_version(model_root: Path, requested: int | None) -> int:
    """The requested version if it is new, else one more than the highest published."""
    existing = published_versions(model_root)
    next_version = max(existing, default=0) + 1
    if requested is None:
        return next_version
    if requested < 1:
        raise UserError(
            f"--version {requested} is not a version TF Serving loads: "
            f"give a positive integer, or omit it for {next_version}"
        )
    if requested in existing:
        raise UserError(
            f"version {requested} already exists in {model_root}: a published "
            f"version is never overwritten; omit --version to publish {next_version}"
        )
    return requested


# Staging, verification, publication


def remove_abandoned_staging(model_root: Path) -> None:
    """Removes staging folders whose export process is gone (killed before its rename)."""
    for entry in model_root.iterdir():
        match = STAGING_NAME.match(entry.name)
        if match and not process_alive(int(match.group(1))):
            shutil.rmtree(entry, ignore_errors=True)


def write_sample(model, model_directory: ModelDirectory, folder: Path) -> Path:
    """A fixed batch of images and the Keras model's probabilities for them, as .npz."""
    from kerascv_app.export.predict import keras_probabilities

    height, width = model_directory.image_size
    random = np.random.default_rng(0)
    images = random.integers(0, 256, size=(SAMPLE_IMAGE_COUNT, height, width, model_directory.channels), dtype=np.uint8)
    # The extremes of the input range, where a wrong scaling would show most.
    images[0], images[1] = 0, 255
    path = folder / "sample.npz"
    np.savez(path, images=images, probabilities=keras_probabilities(model, images))
    return path


def check_verification(verification: dict, model_directory: ModelDirectory, model_root: Path) -> None:
    refused = f"nothing was published in {model_root}"
    if verification["missing_signatures"]:
        raise UserError(
            f"the SavedModel lacks the signatures {', '.join(verification['missing_signatures'])}: {refused}"
        )
    if verification["keras_imported"]:
        raise UserError(
            f"the SavedModel was reloaded with keras present, so it was not checked as TF Serving loads it: {refused}"
        )
    if not all(verification["consistent_outputs"].values()):
        raise UserError(f"the SavedModel's class_id or class_name disagrees with its probabilities: {refused}")
    check_parity(verification, "the SavedModel's", refused)


def check_parity(verification: dict, what: str, refused: str) -> None:
    worst = max(verification["max_difference"].values())
    # Written so that NaN fails too.
    if not worst <= PARITY_TOLERANCE:
        raise UserError(
            f"{what} probabilities differ from the Keras model's by {worst:.3g} "
            f"on a sample batch (at most {PARITY_TOLERANCE:g} allowed): {refused}"
        )


def export_report(model_directory: ModelDirectory, name: str, version: int, verification: dict) -> dict:
    import keras

    height, width = model_directory.image_size
    channels = model_directory.channels
    return {
        **_report_source(model_directory, name, version),
        "signatures": {
            SERVING_DEFAULT: {
                "inputs": {IMAGES_INPUT: {"dtype": "uint8", "shape": [None, height, width, channels]}},
                "outputs": list(OUTPUT_NAMES),
            },
            SERVING_BYTES: {
                "inputs": {BYTES_INPUT: {"dtype": "string", "shape": [None]}},
                "outputs": list(OUTPUT_NAMES),
            },
        },
        "parity": {
            "reference": f"the Keras model in float32 on the {keras.backend.backend()} backend, CPU",
            "sample_images": SAMPLE_IMAGE_COUNT,
            "max_difference": max(verification["max_difference"].values()),
            "max_difference_by_signature": verification["max_difference"],
            "tolerance": PARITY_TOLERANCE,
            "reloaded_without_keras": not verification["keras_imported"],
        },
        "versions": {
            "kerascv_app": kerascv_app.__version__,
            "keras": keras.__version__,
            "tensorflow": verification["tensorflow_version"],
        },
        "created": datetime.datetime.now().isoformat(timespec="seconds"),
    }


def _report_source(model_directory: ModelDirectory, name: str, version: int) -> dict:
    """What both formats' export_report.json say of the export and the model it came from."""
    return {
        "name": name,
        "version": version,
        "source": str(model_directory.path.resolve()),
        "source_kind": model_directory.kind,
        "trained_backend": model_directory.backend,
        "trained_precision": model_directory.precision,
        "serving_precision": "float32",
        "class_names": list(model_directory.class_names),
        "image_size": list(model_directory.image_size),
        "channels": model_directory.channels,
    }


def check_onnx_verification(verification: dict, model_directory: ModelDirectory, model_root: Path) -> None:
    refused = f"nothing was published in {model_root}"
    height, width = model_directory.image_size
    if verification["tensorflow_or_keras_imported"]:
        raise UserError(
            "model.onnx was reloaded with tensorflow or keras present, so "
            f"it was not checked as onnxruntime alone loads it: {refused}"
        )
    if (
        verification["class_names"] != list(model_directory.class_names)
        or verification["image_size"] != [height, width]
        or verification["channels"] != model_directory.channels
    ):
        raise UserError(
            "model.onnx's metadata (class names, image size, channels) "
            f"disagrees with {model_directory.path / 'model.json'}: {refused}"
        )
    batch, *image_shape = verification["input_shape"]
    if isinstance(batch, int) or image_shape != [height, width, model_directory.channels]:
        raise UserError(
            f"model.onnx takes images of shape {verification['input_shape']}, not [batch, "
            f"{height}, {width}, {model_directory.channels}] with any batch: {refused}"
        )
    if not all(verification["consistent_outputs"].values()):
        raise UserError(f"model.onnx's class_id disagrees with its probabilities: {refused}")
    check_parity(verification, "model.onnx's", refused)


def onnx_export_report(model_directory: ModelDirectory, name: str, version: int, verification: dict) -> dict:
    from importlib.metadata import version as installed_version

    import keras

    height, width = model_directory.image_size
    channels = model_directory.channels
    classes = len(model_directory.class_names)
    return {
        **_report_source(model_directory, name, version),
        "format": "onnx",
        "file": ONNX_FILE,
        "inputs": {IMAGES_INPUT: {"dtype": "uint8", "shape": [None, height, width, channels]}},
        "outputs": {
            ONNX_OUTPUT_NAMES[0]: {"dtype": "float32", "shape": [None, classes]},
            ONNX_OUTPUT_NAMES[1]: {"dtype": "int64", "shape": [None]},
        },
        "metadata_props": verification["metadata"],
        "opset": verification["opset"],
        "parity": {
            "reference": f"the Keras model in float32 on the {keras.backend.backend()} backend, CPU",
            "sample_images": SAMPLE_IMAGE_COUNT,
            "batch_sizes": list(ONNX_VERIFIED_BATCH_SIZES),
            "max_difference": max(verification["max_difference"].values()),
            "max_difference_by_batch_size": verification["max_difference"],
            "tolerance": PARITY_TOLERANCE,
            "reloaded_without_tensorflow_or_keras": not verification["tensorflow_or_keras_imported"],
        },
        "versions": {
            "kerascv_app": kerascv_app.__version__,
            "keras": keras.__version__,
            "tensorflow": verification["metadata"].get("kcv_tensorflow_version"),
            "tf2onnx": installed_version("tf2onnx"),
            "onnx": installed_version("onnx"),
            "onnxruntime": verification["onnxruntime_version"],
        },
        "created": datetime.datetime.now().isoformat(timespec="seconds"),
    }


def publish(staging: Path, version_folder: Path) -> Path:
    """The one step TF Serving can see: a rename within the model folder."""
    if version_folder.exists():
        raise UserError(
            f"{version_folder} appeared while exporting (another export?): "
            "it was left as it is; export again for the next version"
        )
    os.rename(staging, version_folder)
    return version_folder


def _create_folder(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(
            f"cannot create {folder} ({error.strerror or error}): give a --base folder you can write to"
        ) from error


def _run_step(description: str, module: str, arguments: list) -> None:
    """Runs one export step in a fresh process under the TensorFlow backend."""
    package_parent = str(Path(kerascv_app.__file__).resolve().parents[1])
    environment = {
        **os.environ,
        "KERAS_BACKEND": "tensorflow",
        "TF_CPP_MIN_LOG_LEVEL": "3",
        "PYTHONPATH": os.pathsep.join(filter(None, [package_parent, os.environ.get("PYTHONPATH")])),
    }
    result = subprocess.run(
        [sys.executable, "-m", module, *map(str, arguments)], env=environment, capture_output=True, text=True
    )
    if result.returncode != 0:
        raise UserError(f"{description} failed ({_reason(result)}): nothing was published")


def _reason(result: subprocess.CompletedProcess) -> str:
    """The child's own error line if it wrote one, else its last line, else its exit status."""
    lines = [line.strip() for line in result.stderr.splitlines() if line.strip()]
    errors = [line.removeprefix("error: ") for line in lines if line.startswith("error: ")]
    if errors:
        return errors[-1]
    if lines:
        return lines[-1]
    return f"exit status {result.returncode}"
