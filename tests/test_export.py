"""kcv export: TF Serving's layout, both signatures, parity, versions and atomic publication.

The run comes from the backend under test; the SavedModel is always checked in a fresh
TensorFlow process in which keras cannot be imported, as TF Serving would load it.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from kcv_testing import BACKEND, assert_one_line_error, kcv_in_process, run_kcv

from kerascv_app.errors import UserError
from kerascv_app.export import PARITY_TOLERANCE
from kerascv_app.export.atomic import choose_version, default_model_name
from kerascv_app.faults import EXPORT_FAULT_VARIABLE
from kerascv_app.model_dir import open_model_directory

DIGIT_NAMES = [str(digit) for digit in range(10)]

#: A TF Serving stand-in: reads a REST predict body, decodes {"b64": ...} values to bytes as
#: TF Serving does, batches the instances and calls the signature; also calls
#: serving_default on uint8 pixels. Keras is made unimportable first.
SERVING_SCRIPT = """
import base64, json, sys
sys.modules["keras"] = None
import numpy as np
import tensorflow as tf

saved_model, request_path, pixels_path, response_path = sys.argv[1:]
loaded = tf.saved_model.load(saved_model)
request = json.loads(open(request_path).read())

def decoded(value):
    return base64.b64decode(value["b64"]) if isinstance(value, dict) and "b64" in value else value

inputs = {name: tf.constant([decoded(instance[name]) for instance in request["instances"]])
    for name in request["instances"][0]}
answers = {
    "serving_bytes": loaded.signatures["serving_bytes"](**inputs),
    "serving_default": loaded.signatures["serving_default"](images=tf.constant(np.load(pixels_path)["pixels"])),
}

def row(outputs, index):
    value = {name: tensor[index].numpy() for name, tensor in outputs.items()}
    return {"probabilities": value["probabilities"].tolist(), "class_id": int(value["class_id"]),
        "class_name": value["class_name"].decode()}

response = {name: {"predictions": [row(outputs, i) for i in range(len(request["instances"]))]}
    for name, outputs in answers.items()}
response["keras_imported"] = sys.modules.get("keras") is not None
open(response_path, "w").write(json.dumps(response))
"""


def integer_folders(model_root: Path) -> list[str]:
    return sorted(entry.name for entry in model_root.iterdir() if entry.name.isdigit())


def test_export_writes_a_verified_version_in_tf_servings_layout(digits_run, digits_export):
    assert digits_export.name == "1"
    # Nothing else beside the version: the staging folder was renamed, not copied.
    assert [entry.name for entry in digits_export.parent.iterdir()] == ["1"]
    for name in ("saved_model.pb", "variables/variables.index", "assets/class_names.txt", "export_report.json"):
        assert (digits_export / name).is_file(), name
    assert (digits_export / "assets" / "class_names.txt").read_text().splitlines() == DIGIT_NAMES
    report = json.loads((digits_export / "export_report.json").read_text())
    assert report["source"] == str(digits_run.resolve()) and report["trained_backend"] == BACKEND
    assert report["name"] == "digits" and report["version"] == 1 and report["class_names"] == DIGIT_NAMES
    assert set(report["signatures"]) == {"serving_default", "serving_bytes"}
    assert report["signatures"]["serving_default"]["inputs"]["images"] == {"dtype": "uint8", "shape": [None, 8, 8, 1]}
    parity = report["parity"]
    assert parity["max_difference"] <= PARITY_TOLERANCE and parity["reloaded_without_keras"]
    assert set(parity["max_difference_by_signature"]) == {"serving_default", "serving_bytes"}
    assert report["versions"]["tensorflow"] and report["versions"]["keras"]


def test_saved_model_cli_lists_both_signatures(digits_export):
    saved_model_cli = shutil.which("saved_model_cli") or str(Path(sys.executable).parent / "saved_model_cli")
    result = subprocess.run(
        [saved_model_cli, "show", "--dir", str(digits_export), "--all"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert result.returncode == 0, result.stderr
    listing = result.stdout
    assert "signature_def['serving_default']" in listing and "signature_def['serving_bytes']" in listing
    for fragment in ("inputs['images']", "DT_UINT8", "(-1, 8, 8, 1)", "inputs['image_bytes']", "DT_STRING"):
        assert fragment in listing, fragment
    for output in ("probabilities", "class_id", "class_name"):
        assert f"outputs['{output}']" in listing, output


def test_a_rest_request_is_answered_like_the_keras_model_without_keras(
    digits_run, digits_export, digit_images, tmp_path
):
    from kerascv_app.data.pipeline import decode_image
    from kerascv_app.export.predict import keras_probabilities

    # The reference: the Keras model on the backend it was trained with, on the images
    # decoded and resized by the training pipeline.
    model = open_model_directory(digits_run).load_model()
    pixels = np.stack([decode_image(path.read_bytes(), (8, 8), 1).numpy() for path in digit_images])
    reference = keras_probabilities(model, pixels)

    request = {
        "instances": [
            {"image_bytes": {"b64": base64.b64encode(path.read_bytes()).decode("ascii")}} for path in digit_images
        ]
    }
    (tmp_path / "request.json").write_text(json.dumps(request))
    np.savez(tmp_path / "pixels.npz", pixels=pixels)
    served = subprocess.run(
        [
            sys.executable,
            "-c",
            SERVING_SCRIPT,
            str(digits_export),
            str(tmp_path / "request.json"),
            str(tmp_path / "pixels.npz"),
            str(tmp_path / "response.json"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert served.returncode == 0, served.stderr
    response = json.loads((tmp_path / "response.json").read_text())
    assert response["keras_imported"] is False
    for signature in ("serving_bytes", "serving_default"):
        rows = response[signature]["predictions"]
        probabilities = np.array([row["probabilities"] for row in rows])
        np.testing.assert_allclose(probabilities, reference, atol=PARITY_TOLERANCE, rtol=0)
        assert [row["class_id"] for row in rows] == probabilities.argmax(axis=1).tolist()
        assert [row["class_name"] for row in rows] == [DIGIT_NAMES[row["class_id"]] for row in rows]


# Under tensorflow only: killing and cleaning up do not depend on the backend; jax and torch runs'
# SavedModel export is tested by the other tests of this file.
@pytest.mark.backends("tensorflow")
def test_a_killed_export_leaves_nothing_servable_and_the_next_export_cleans_up(digits_run, tmp_path):
    model_root = tmp_path / "digits"
    (model_root / "3").mkdir(parents=True)
    killed = run_kcv("export", digits_run, "--base", tmp_path, env={EXPORT_FAULT_VARIABLE: "kill_before_rename"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    # Killed after the SavedModel was written and verified, before the rename: the
    # complete export sits under a name TF Serving skips; no new version appeared.
    assert integer_folders(model_root) == ["3"]
    (staging,) = [entry for entry in model_root.iterdir() if entry.name.startswith(".staging-")]
    assert (staging / "saved_model.pb").is_file() and (staging / "export_report.json").is_file()

    exported = run_kcv("export", digits_run, "--base", tmp_path)
    assert exported.returncode == 0, exported.stderr
    # Numbered after the highest version; the abandoned staging folder is gone.
    assert sorted(entry.name for entry in model_root.iterdir()) == ["3", "4"]
    assert json.loads((model_root / "4" / "export_report.json").read_text())["version"] == 4


# Under tensorflow only: the parity gate is the same code for every backend; jax and torch runs'
# exports pass it in the tests above.
@pytest.mark.backends("tensorflow")
def test_an_export_that_differs_from_the_keras_model_is_not_published(digits_run, tmp_path):
    result = run_kcv(
        "export", digits_run, "--base", tmp_path, "--name", "perturbed", env={EXPORT_FAULT_VARIABLE: "perturb_weights"}
    )
    assert_one_line_error(result, "differ from the Keras model", "nothing was published")
    assert list((tmp_path / "perturbed").iterdir()) == []


def test_a_mixed_precision_run_is_served_in_float32(mixed_bfloat16_run, tmp_path):
    # Half-precision results differ between backends by more than the tolerance: the
    # export computes in float32, where the Keras model and the SavedModel agree.
    exported = run_kcv("export", mixed_bfloat16_run, "--base", tmp_path / "saved_models")
    assert exported.returncode == 0, exported.stderr
    report = json.loads((tmp_path / "saved_models" / "digits" / "1" / "export_report.json").read_text())
    assert report["trained_precision"] == "mixed_bfloat16" and report["serving_precision"] == "float32"
    assert report["parity"]["max_difference"] <= PARITY_TOLERANCE


@pytest.mark.parametrize(
    "arguments, fragments",
    [
        (["{missing}"], ["does not exist"]),
        (["{corrupt}"], ["not a valid .keras file"]),
        (["{run}", "--version", "1"], ["version 1 already exists", "never overwritten"]),
        (["{run}", "--version", "0"], ["--version 0", "positive integer"]),
        (["{run}", "--name", "../escape"], ["--name '../escape'"]),
    ],
    ids=["missing-run", "corrupt-model", "existing-version", "version-zero", "bad-name"],
)
def test_bad_export_input_is_one_line_and_writes_nothing(digits_run, tmp_path, arguments, fragments):
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    shutil.copy(digits_run / "model.json", corrupt / "model.json")
    (corrupt / "model.keras").write_bytes(b"not a zip archive")
    base = tmp_path / "saved_models"
    (base / "digits" / "1").mkdir(parents=True)
    paths = {"missing": tmp_path / "no-such-run", "corrupt": corrupt, "run": digits_run}
    # Refused before anything is exported: in this process.
    result = kcv_in_process("export", *[argument.format(**paths) for argument in arguments], "--base", base)
    assert_one_line_error(result, *fragments)
    assert sorted(path.name for path in base.rglob("*")) == ["1", "digits"]


@pytest.mark.backend_independent  # folder names only
def test_version_choice(tmp_path):
    model_root = tmp_path / "digits"
    assert choose_version(model_root, None) == 1
    for name in ("1", "007", "latest", ".staging-9-123"):
        (model_root / name).mkdir(parents=True)
    # Only integer names are versions (TF Serving's rule); "007" is version 7.
    assert choose_version(model_root, None) == 8
    assert choose_version(model_root, 5) == 5
    for taken in (1, 7):
        with pytest.raises(UserError, match="already exists"):
            choose_version(model_root, taken)
    with pytest.raises(UserError, match="positive integer"):
        choose_version(model_root, -2)


@pytest.mark.backend_independent  # folder names only
def test_default_name_is_the_recipe_name(tmp_path):
    from kerascv_app.model_dir import ModelDirectory

    def named(folder_name: str) -> str:
        directory = ModelDirectory(tmp_path / folder_name, "run", ("a", "b"), (8, 8), 1, "float32", BACKEND)
        return default_model_name(directory)

    assert named("digits-20261127-053119") == "digits"
    assert named("cifar10_resnet-20261127-053119-2") == "cifar10_resnet"
    # Ensembles keep their folder's name, less a timestamp if it has one.
    assert named("average-20261127-053119") == "average"
    assert named("my-ensemble") == "my-ensemble"
