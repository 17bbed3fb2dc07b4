"""kcv predict from a run directory and from an exported version, on real JPEG and PNG files."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from kcv_testing import assert_one_line_error, kcv_in_process, predicted, run_kcv

from kerascv_app.model_dir import open_model_directory

DIGIT_NAMES = [str(digit) for digit in range(10)]


def test_predict_from_a_run_gives_the_keras_models_top_classes(digits_run, digit_images):
    from kerascv_app.data.pipeline import decode_image
    from kerascv_app.export.predict import keras_probabilities

    result = run_kcv("predict", digits_run, *digit_images, "--top-k", "3", "--json")
    by_image = predicted(result)
    assert list(by_image) == [str(path) for path in digit_images]

    model = open_model_directory(digits_run).load_model()
    pixels = np.stack([decode_image(path.read_bytes(), (8, 8), 1).numpy() for path in digit_images])
    for path, probabilities in zip(digit_images, keras_probabilities(model, pixels)):
        top = by_image[str(path)]
        expected = np.argsort(-probabilities, kind="stable")[:3]
        assert list(top) == [DIGIT_NAMES[index] for index in expected]
        np.testing.assert_allclose(list(top.values()), probabilities[expected], atol=1e-6)


def test_predict_from_an_export_matches_the_run(digits_run, digits_export, digit_images):
    from_run = predicted(run_kcv("predict", digits_run, *digit_images, "--top-k", "10", "--json"))
    from_export = predicted(run_kcv("predict", digits_export, *digit_images, "--top-k", "10", "--json"))
    assert list(from_export) == list(from_run)
    for image, probabilities in from_run.items():
        assert set(from_export[image]) == set(DIGIT_NAMES)
        for name, probability in probabilities.items():
            assert from_export[image][name] == pytest.approx(probability, abs=1e-4)


def test_unreadable_images_are_listed_and_the_others_predicted(digits_export, digit_images, tmp_path):
    for path in digit_images:
        shutil.copy(path, tmp_path / path.name)
    (tmp_path / "notes.jpg").write_text("not an image")
    (tmp_path / "cut.png").write_bytes((tmp_path / "three.png").read_bytes()[:40])
    # Relative names keep the table's cells short enough not to wrap.
    # In this process: the exported SavedModel is read by TensorFlow, whatever the Keras backend.
    result = kcv_in_process(
        "predict",
        digits_export,
        "seven.jpg",
        "notes.jpg",
        "three.png",
        "missing.png",
        "cut.png",
        "--top-k",
        "2",
        cwd=tmp_path,
    )
    assert_one_line_error(result, "3 of 5 images could not be read")
    for name, reason in (("notes.jpg", "not a JPEG"), ("missing.png", "No such file"), ("cut.png", "damaged")):
        assert any(
            line.startswith(f"cannot read {name}: ") and reason in line for line in result.stderr.splitlines()
        ), (name, result.stderr)
    # The readable images are still in the table.
    assert "seven.jpg" in result.stdout and "three.png" in result.stdout and "notes.jpg" not in result.stdout


@pytest.mark.parametrize(
    "model, extra, fragments",
    [
        ("{run}", ["--top-k", "0"], ["--top-k 0"]),
        ("{missing}", [], ["does not exist"]),
        ("{empty}", [], ["not a run, ensemble or exported version folder"]),
    ],
    ids=["top-k-zero", "missing-model", "not-a-model"],
)
def test_bad_predict_input_is_one_line(digits_run, digit_images, tmp_path, model, extra, fragments):
    paths = {"run": digits_run, "missing": tmp_path / "no-such-model", "empty": tmp_path}
    result = kcv_in_process("predict", model.format(**paths), digit_images[0], *extra)
    assert_one_line_error(result, *fragments)
