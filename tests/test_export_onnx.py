"""kcv export --format onnx and kcv predict MODEL.onnx: layout, parity, dynamic batch, class
names inside the file, ensembles, prediction without TensorFlow or Keras, refused input.

The run comes from the backend under test (tox runs this file under tensorflow, jax and
torch); model.onnx is always written under TensorFlow in a subprocess and checked with
onnxruntime alone. One export is shared by the module: each kcv export costs 20-40 s here.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from kcv_testing import BACKEND, assert_one_line_error, predicted, run_kcv

from kerascv_app.export import PARITY_TOLERANCE
from kerascv_app.faults import EXPORT_FAULT_VARIABLE
from kerascv_app.model_dir import open_model_directory

DIGIT_NAMES = [str(digit) for digit in range(10)]

#: A folder put first on PYTHONPATH: ``import tensorflow`` or ``import keras`` there fails, and
#: leaves a file behind, so that even an import whose ImportError is caught is caught out.
HIDING_PACKAGE = """
import os
open(os.path.join(os.environ["KCV_TEST_IMPORT_MARKERS"], "{name}"), "w").close()
raise ImportError("{name} is hidden by the test")
"""


@pytest.fixture(scope="module")
def onnx_export(digits_run, tmp_path_factory) -> Path:
    """digits_run exported once with --format onnx: the version folder <base>/onnx/digits/1."""
    base = tmp_path_factory.mktemp("onnx_exports")
    result = run_kcv("export", digits_run, "--base", base, "--format", "onnx")
    assert result.returncode == 0, result.stderr
    return base / "onnx" / "digits" / "1"


def test_onnx_export_is_verified_published_beside_tf_serving_and_matches_keras(digits_run, onnx_export):
    import onnxruntime

    from kerascv_app.export.predict import keras_probabilities

    base = onnx_export.parents[2]
    # Only the version (the staging folder was renamed), and nothing in TF Serving's <base>/digits.
    assert sorted(entry.name for entry in onnx_export.parent.iterdir()) == ["1"]
    assert sorted(entry.name for entry in base.iterdir()) == ["onnx"]
    assert sorted(entry.name for entry in onnx_export.iterdir()) == ["export_report.json", "model.onnx"]
    report = json.loads((onnx_export / "export_report.json").read_text())
    assert report["format"] == "onnx" and report["name"] == "digits" and report["version"] == 1
    assert report["source"] == str(digits_run.resolve()) and report["trained_backend"] == BACKEND
    assert report["class_names"] == DIGIT_NAMES and report["inputs"]["images"] == {
        "dtype": "uint8",
        "shape": [None, 8, 8, 1],
    }
    parity = report["parity"]
    assert parity["max_difference"] <= PARITY_TOLERANCE and parity["reloaded_without_tensorflow_or_keras"]
    assert set(parity["max_difference_by_batch_size"]) == {"1", "8"}

    # The file alone: names, dtypes, a dynamic batch, and the class names in its metadata.
    session = onnxruntime.InferenceSession(str(onnx_export / "model.onnx"), providers=["CPUExecutionProvider"])
    (images_input,) = session.get_inputs()
    assert (images_input.name, images_input.type) == ("images", "tensor(uint8)")
    assert not isinstance(images_input.shape[0], int) and images_input.shape[1:] == [8, 8, 1]
    outputs = {output.name: output.type for output in session.get_outputs()}
    assert outputs == {"probabilities": "tensor(float)", "class_id": "tensor(int64)"}
    assert json.loads(session.get_modelmeta().custom_metadata_map["kcv_class_names"]) == DIGIT_NAMES

    # The preprocessing is inside: uint8 pixels give the Keras model's probabilities (on the
    # backend that trained it), at batch sizes the export did not try.
    model = open_model_directory(digits_run).load_model()
    images = np.random.default_rng(1).integers(0, 256, size=(5, 8, 8, 1), dtype=np.uint8)
    images[0] = 255
    reference = keras_probabilities(model, images)
    for batch in (images[:1], images):
        probabilities, class_id = session.run(["probabilities", "class_id"], {"images": batch})
        np.testing.assert_allclose(probabilities, reference[: len(batch)], atol=PARITY_TOLERANCE, rtol=0)
        assert class_id.dtype == np.int64 and class_id.tolist() == probabilities.argmax(axis=1).tolist()


def test_predict_on_onnx_needs_neither_tensorflow_nor_keras(
    digits_run, onnx_export, model_size_images, digit_images, tmp_path
):
    hidden = tmp_path / "hidden"
    markers = tmp_path / "import_markers"
    markers.mkdir()
    for name in ("tensorflow", "keras"):
        (hidden / name).mkdir(parents=True)
        (hidden / name / "__init__.py").write_text(HIDING_PACKAGE.format(name=name))
    environment = {
        "PYTHONPATH": os.pathsep.join(filter(None, [str(hidden), os.environ.get("PYTHONPATH")])),
        "KCV_TEST_IMPORT_MARKERS": str(markers),
    }
    images = [*model_size_images, *digit_images]
    from_run = predicted(run_kcv("predict", digits_run, *images, "--top-k", "10", "--json"))
    # The file itself, and the version folder holding it.
    for model in (onnx_export / "model.onnx", onnx_export):
        from_onnx = predicted(run_kcv("predict", model, *images, "--top-k", "10", "--json", env=environment))
        assert sorted(path.name for path in markers.iterdir()) == [], (
            "kcv predict on an .onnx model tried to import tensorflow or keras"
        )
        assert list(from_onnx) == list(from_run)
        for path in model_size_images:
            run_probabilities, onnx_probabilities = from_run[str(path)], from_onnx[str(path)]
            assert set(onnx_probabilities) == set(DIGIT_NAMES)
            for name, probability in run_probabilities.items():
                assert onnx_probabilities[name] == pytest.approx(probability, abs=PARITY_TOLERANCE)
        # Other sizes and modes (an RGB JPEG, a smaller PNG) are resized by Pillow, not by
        # TensorFlow: a pixel may differ by a level or a few, the top class may not.
        for path in digit_images:
            assert next(iter(from_onnx[str(path)])) == next(iter(from_run[str(path)])), path


# Under tensorflow only: the ensemble's combining layers are backend-free; jax and torch runs' ONNX
# export is tested above.
@pytest.mark.backends("tensorflow")
def test_an_ensemble_exports_to_onnx(digits_run, tmp_path):
    from kerascv_app.export.onnx_runtime import OnnxClassifier
    from kerascv_app.export.predict import keras_probabilities

    # Two members (the run and a copy of it) keep this cheap; the ensemble's model.keras still
    # holds its members and combining layers, which model.onnx must reproduce.
    copy = shutil.copytree(digits_run, tmp_path / "member-copy")
    ensemble = tmp_path / "average-members"
    built = run_kcv("ensemble", digits_run, copy, "--average", "--out", ensemble)
    assert built.returncode == 0, built.stderr
    exported = run_kcv("export", ensemble, "--base", tmp_path / "saved_models", "--format", "onnx")
    assert exported.returncode == 0, exported.stderr
    version = tmp_path / "saved_models" / "onnx" / "average-members" / "1"
    report = json.loads((version / "export_report.json").read_text())
    assert report["source_kind"] == "ensemble" and report["parity"]["max_difference"] <= PARITY_TOLERANCE

    classifier = OnnxClassifier(version / "model.onnx")
    assert classifier.class_names == DIGIT_NAMES and classifier.image_size == (8, 8) and classifier.channels == 1
    images = np.random.default_rng(2).integers(0, 256, size=(3, 8, 8, 1), dtype=np.uint8)
    reference = keras_probabilities(open_model_directory(ensemble).load_model(), images)
    np.testing.assert_allclose(classifier.run(images)["probabilities"], reference, atol=PARITY_TOLERANCE, rtol=0)


# Under tensorflow only: the parity gate is the same code for every backend; jax and torch runs' ONNX
# parity is tested above.
@pytest.mark.backends("tensorflow")
def test_an_onnx_export_that_differs_from_the_keras_model_is_not_published(digits_run, tmp_path):
    result = run_kcv(
        "export",
        digits_run,
        "--base",
        tmp_path,
        "--name",
        "perturbed",
        "--format",
        "onnx",
        env={EXPORT_FAULT_VARIABLE: "perturb_weights"},
    )
    assert_one_line_error(result, "model.onnx's probabilities differ from the Keras model", "nothing was published")
    # Not even the staging folder is left.
    assert list((tmp_path / "onnx" / "perturbed").iterdir()) == []


def write_gbm_ensemble(folder: Path) -> Path:
    """What kcv ensemble --stacking --meta gbm leaves: ensemble.json and metrics, no model.keras or model.json."""
    folder.mkdir()
    (folder / "ensemble.json").write_text(json.dumps({"method": "stacking", "meta_learner": "gbm"}))
    (folder / "metrics.json").write_text("{}")
    return folder


@pytest.mark.parametrize(
    "arguments, fragments, hide_tf2onnx",
    [
        (["export", "{run}", "--format", "tflite"], ["--format 'tflite'", "savedmodel, onnx"], False),
        (["export", "{gbm}", "--format", "onnx"], ["--meta gbm", "no model.keras", "--meta logistic or ridge"], False),
        (["export", "{gbm}"], ["--meta gbm", "no model.keras"], False),
        (["export", "{run}", "--name", "onnx"], ["--name 'onnx'", "keeps the ONNX exports"], False),
        (["export", "{run}", "--format", "onnx"], ["tf2onnx is not installed", 'pip install -e ".[onnx]"'], True),
        (["predict", "{garbage}", "{image}"], ["cannot be loaded as an ONNX model", "kcv export --format onnx"], False),
        (["predict", "{missing}", "{image}"], ["does not exist", "--format onnx"], False),
    ],
    ids=[
        "unknown-format",
        "gbm-ensemble-onnx",
        "gbm-ensemble-savedmodel",
        "savedmodel-named-onnx",
        "onnx-extra-missing",
        "garbage-onnx",
        "missing-onnx",
    ],
)
def test_bad_onnx_input_is_one_line_and_writes_nothing(
    digits_run, digit_images, tmp_path, arguments, fragments, hide_tf2onnx
):
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x08\x07not a protobuf at all" * 10)
    paths = {
        "run": digits_run,
        "gbm": write_gbm_ensemble(tmp_path / "gbm-ensemble"),
        "garbage": garbage,
        "missing": tmp_path / "none.onnx",
        "image": digit_images[0],
    }
    base = tmp_path / "saved_models"
    base.mkdir()
    env = {}
    if hide_tf2onnx:
        # tf2onnx made unimportable (its sys.modules entry None), as if the [onnx] extra were not installed.
        site = tmp_path / "site"
        site.mkdir()
        (site / "sitecustomize.py").write_text("import sys\nsys.modules['tf2onnx'] = None\n")
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))
    options = ["--base", base] if arguments[0] == "export" else []
    result = run_kcv(*[argument.format(**paths) for argument in arguments], *options, env=env)
    assert_one_line_error(result, *fragments)
    assert list(base.rglob("*")) == []
