"""kcv report on the backend under test: the page of a digits run, of an ensemble and of a
three-run comparison holds every section with the numbers of metrics.json and the saved
predictions; top losses are the highest-loss test images, shown as the model saw them;
Grad-CAM finds the one quadrant that carries the class; bad input is one line and no page.

Subprocesses are few: the session's digits_run and member_runs (shared with other test files),
one ensemble, one full report, one image-folder fit whose folder is then removed.
"""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
from kcv_testing import BACKEND, REPO_ROOT, assert_one_line_error, kcv_in_process, run_kcv
from PIL import Image

DIGITS = REPO_ROOT / "recipes" / "digits.py"
QUICK_SECTIONS = ("summary", "curves", "confusion", "classification-report", "most-confused", "calibration", "config")
IMAGE_SECTIONS = ("top-losses", "gradcam", "preview")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def page_data(path) -> dict:
    text = path.read_text()
    match = re.search(r'<script type="application/json" id="kcv-report-data">(.*?)</script>', text, re.S)
    return json.loads(match.group(1))


def section_ids(text: str) -> list[str]:
    return re.findall(r'<section id="([^"]+)"', text)


def images_of(text: str) -> list[str]:
    return re.findall(r'<img [^>]*src="([^"]+)"', text)


def decoded(uri: str) -> np.ndarray:
    assert uri.startswith("data:image/png;base64,"), uri[:40]
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))))


def assert_self_contained(text: str) -> None:
    """No fetch from anywhere: every image is an inline PNG, no stylesheet, script or font link."""
    sources = images_of(text)
    assert sources and all(decoded(uri).size > 0 for uri in sources)
    assert not re.search(r'<link|src="(?!data:)|url\(|@import|https?://', text)
    assert not re.search(r"<script(?![^>]*application/json)", text)


def saved(directory, split="test"):
    with np.load(directory / "predictions" / f"{split}.npz") as predictions:
        return predictions["probabilities"].astype(np.float64), predictions["labels"]


def read_json(path):
    return json.loads(path.read_text())


def assert_numbers_match(page: dict, directory) -> None:
    """The page's test figures are metrics.json's and those of predictions/test.npz."""
    from sklearn.metrics import confusion_matrix

    from kerascv_app.evaluate.metrics import expected_calibration_error

    metrics = read_json(directory / "metrics.json")
    probabilities, labels = saved(directory)
    predicted = probabilities.argmax(axis=1)
    assert page["metrics"]["test"] == metrics["test"]
    assert page["test"]["accuracy"] == pytest.approx(metrics["test"]["accuracy"])
    assert page["test"]["accuracy"] == pytest.approx(np.mean(predicted == labels))
    assert page["test"]["loss"] == pytest.approx(metrics["test"]["loss"], rel=1e-5)
    assert page["test"]["expected_calibration_error"] == pytest.approx(
        expected_calibration_error(probabilities, labels)
    )
    assert (
        page["confusion_matrix"] == confusion_matrix(labels, predicted, labels=range(len(page["class_names"]))).tolist()
    )
    for name, accuracy in metrics["test"]["per_class_accuracy"].items():
        if accuracy is not None:  # Recall is per-class accuracy.
            assert page["classification_report"][name]["recall"] == pytest.approx(accuracy)


def test_fit_writes_the_report_that_needs_no_images(digits_run):
    path = digits_run / "report.html"
    text = path.read_text()
    sections = section_ids(text)
    assert all(name in sections for name in QUICK_SECTIONS), sections
    assert not any(name in sections for name in IMAGE_SECTIONS)
    assert f"kcv report {digits_run} adds them" in text
    assert_self_contained(text)
    page = page_data(path)
    assert_numbers_match(page, digits_run)
    metrics = read_json(digits_run / "metrics.json")
    assert f"{metrics['test']['accuracy']:.4f} on {metrics['test']['count']} images" in text
    history_epochs = len((digits_run / "history.csv").read_text().strip().splitlines()) - 1
    assert len(page["learning_rates"]) == history_epochs
    assert not list(digits_run.glob(".report.html.partial-*"))


@pytest.fixture(scope="module")
def full_digits_report(digits_run, tmp_path_factory):
    """kcv report of the digits run, with every part, written once for this module."""
    out = tmp_path_factory.mktemp("digits_report") / "digits.html"
    # A process of its own: where Grad-CAM is computed (this process or a TensorFlow one) depends on
    # what the process has imported, and the test checks the choice a user's kcv report makes.
    result = run_kcv("report", digits_run, "--out", out, "--top-losses", "6", "--gradcam", "4", "--preview", "8")
    assert result.returncode == 0, result.stderr
    return out


def test_full_report_of_a_digits_run(digits_run, full_digits_report):
    from kerascv_app.config import Config
    from kerascv_app.data.prepare import evaluation_dataset, prepare_data
    from kerascv_app.evaluate.metrics import predict_probabilities
    from kerascv_app.model_dir import open_model_directory

    out = full_digits_report
    text = out.read_text()
    sections = section_ids(text)
    assert all(name in sections for name in QUICK_SECTIONS + IMAGE_SECTIONS), sections
    assert_self_contained(text)
    page = page_data(out)
    assert_numbers_match(page, digits_run)

    # Independently: the test split as evaluation reads it, and the model's losses on it.
    config = Config.from_dict(read_json(digits_run / "config.json"))
    prepared = prepare_data(config, None)
    dataset = evaluation_dataset(prepared, config, "test")
    pixels = np.concatenate([images for images, _ in dataset.as_numpy_iterator()])
    probabilities, labels = predict_probabilities(open_model_directory(digits_run).load_model(), dataset)
    losses = -np.log(np.clip(probabilities[np.arange(len(labels)), labels], 1e-12, 1))
    shown = [entry["index"] for entry in page["top_losses"]]
    assert len(shown) == 6 and len(set(shown)) == 6
    assert [entry["loss"] for entry in page["top_losses"]] == pytest.approx(losses[shown], abs=1e-4)
    unshown = np.delete(losses, shown)
    assert min(entry["loss"] for entry in page["top_losses"]) >= unshown.max() - 1e-4
    # Each thumbnail is that test image, enlarged by whole pixels.
    thumbnails = re.findall(r'<section id="top-losses">.*?</section>', text, re.S)[0]
    for index, uri in zip(shown, images_of(thumbnails)):
        picture = decoded(uri)
        scale = picture.shape[0] // pixels.shape[1]
        assert np.array_equal(picture[::scale, ::scale], pixels[index][..., 0])
    for entry in page["top_losses"]:
        assert entry["true"] == page["class_names"][labels[entry["index"]]]
        assert entry["probability"] == pytest.approx(probabilities[entry["index"]].max(), abs=1e-4)

    preview = re.findall(r'<section id="preview">.*?</section>', text, re.S)[0]
    assert len(images_of(preview)) == 16 and "pad_crop" in preview  # 8 pairs, the digits recipe's ops named

    cams = page["gradcam"]
    assert len(cams) == 4 and len(images_of(re.findall(r'<section id="gradcam">.*?</section>', text, re.S)[0])) == 8
    assert all(entry["where"] == "this process" and entry["layer"] == "conv3" for entry in cams)
    assert all(entry["probability_difference"] < 1e-4 for entry in cams)
    correct = [entry["correct"] for entry in cams]
    assert correct == sorted(correct), "wrong predictions come first"
    assert f"trained with {BACKEND}" in text


@pytest.mark.skipif(CHROMIUM is None, reason="needs a real browser: Debian's chromium (apt-get install -y chromium)")
def test_the_page_renders_in_chromium(full_digits_report, tmp_path):
    """Opened from disk in headless chromium: every image loads, the console stays silent."""
    screenshot = tmp_path / "page.png"
    result = subprocess.run(
        [sys.executable, REPO_ROOT / "bench" / "report_browser.py", full_digits_report, "--screenshot", screenshot],
        capture_output=True,
        text=True,
        timeout=300,
    )
    check = json.loads(result.stdout.strip().splitlines()[-1])
    assert result.returncode == 0 and check["ok"], check
    assert check["images"] == len(images_of(full_digits_report.read_text())) and check["smallest_width"] > 0
    assert Image.open(screenshot).size == (1200, 2400)


def quadrant_data(count: int, seed: int = 0):
    """16x16 grey images of faint noise; only the bottom-right quadrant carries the class:
    vertical stripes (class 0) or horizontal stripes (class 1)."""
    random = np.random.default_rng(seed)
    images = random.integers(0, 40, size=(count, 16, 16, 1)).astype(np.uint8)
    labels = random.integers(0, 2, size=count)
    stripes = np.zeros((8, 8), np.uint8)
    stripes[:, ::2] = 220
    for image, label in zip(images, labels):
        image[8:, 8:, 0] = np.maximum(image[8:, 8:, 0], stripes if label == 0 else stripes.T)
    return images, labels


def test_gradcam_peaks_in_the_quadrant_that_carries_the_class(tmp_path):
    import keras
    from keras import layers

    from kerascv_app.model_dir import ModelDirectory
    from kerascv_app.report.gradcam import feature_layer, gradcam

    keras.utils.set_random_seed(0)
    images, labels = quadrant_data(256)
    # The convolutions are a nested model, as a transfer run's backbone is: the map explained is
    # the backbone's output in the outer model (the digits report explains a flat model's conv3).
    backbone_inputs = keras.Input((16, 16, 1))
    x = layers.Conv2D(8, 3, padding="same", activation="relu", name="conv1")(backbone_inputs)
    backbone = keras.Model(
        backbone_inputs, layers.Conv2D(8, 3, padding="same", activation="relu", name="conv2")(x), name="backbone"
    )
    inputs = keras.Input((16, 16, 1))
    x = backbone(layers.Rescaling(1 / 255.0)(inputs))
    x = layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, layers.Dense(2)(x))
    model.compile(
        optimizer=keras.optimizers.Adam(1e-2),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    model.fit(images.astype("float32"), labels, epochs=12, batch_size=32, verbose=0)
    test_images, test_labels = quadrant_data(16, seed=1)
    logits = keras.ops.convert_to_numpy(model(test_images.astype("float32")))
    assert np.mean(logits.argmax(axis=1) == test_labels) == 1.0, (
        "the model must have learned the task for its attention to mean anything"
    )
    model.save(tmp_path / "model.keras")
    ModelDirectory(
        path=tmp_path,
        kind="run",
        class_names=("vertical", "horizontal"),
        image_size=(16, 16),
        channels=1,
        precision="float32",
        backend=BACKEND,
    ).write()

    assert feature_layer(model).name == "backbone"
    # A model whose maps are all before its first weights (or none at all) has nothing to explain.
    flat = keras.Model(inputs, layers.Dense(2)(layers.Flatten()(inputs)))
    assert feature_layer(flat) is None

    result = gradcam(tmp_path, test_images, test_labels)
    assert result.where == ("this process" if BACKEND == "tensorflow" else "a TensorFlow subprocess")
    assert result.layer == "backbone" and result.maps.shape == (16, 16, 16)
    for heatmap in result.maps:
        quadrants = [heatmap[:8, :8].mean(), heatmap[:8, 8:].mean(), heatmap[8:, :8].mean()]
        assert heatmap[8:, 8:].mean() > 2 * max(quadrants), (heatmap[8:, 8:].mean(), quadrants)
        peak = np.unravel_index(heatmap.argmax(), heatmap.shape)
        assert peak[0] >= 7 and peak[1] >= 7, peak


@pytest.fixture
def three_runs(member_runs):
    """The ensemble tests' three runs that learned and share their splits (conftest.py), trained once."""
    return member_runs


# Where the ensemble tests train the three member runs anyway (tests/test_ensemble.py); the page is
# written from the runs' records, whatever backend trained them, and jax writes run reports above.
@pytest.mark.backends("tensorflow", "torch")
def test_ensemble_report_and_a_comparison(three_runs, tmp_path):
    from kerascv_app.report import write_report

    ensemble = tmp_path / "ensemble"
    result = run_kcv("ensemble", *three_runs, "--average", "--out", ensemble)
    assert result.returncode == 0, result.stderr
    text = (ensemble / "report.html").read_text()
    assert all(
        name in section_ids(text)
        for name in ("summary", "confusion", "classification-report", "calibration", "ensemble-members")
    )
    assert_self_contained(text)
    page = page_data(ensemble / "report.html")
    assert_numbers_match(page, ensemble)
    metrics = read_json(ensemble / "metrics.json")
    assert page["test"]["expected_calibration_error"] == pytest.approx(metrics["test"]["expected_calibration_error"])
    ensemble_probabilities, labels = saved(ensemble)
    ensemble_right = ensemble_probabilities.argmax(axis=1) == labels

    comparison = tmp_path / "comparison.html"
    write_report([*three_runs, ensemble], comparison)
    text = comparison.read_text()
    assert section_ids(text) == ["comparison", "curves", "per-class", "ensemble-members", "configs"]
    assert_self_contained(text)
    page = page_data(comparison)
    assert [row["name"] for row in page["rows"]] == [path.name for path in [*three_runs, ensemble]]
    for row, directory in zip(page["rows"], [*three_runs, ensemble]):
        recorded = read_json(directory / "metrics.json")
        assert row["accuracy"] == recorded["test"]["accuracy"] and row["loss"] == recorded["test"]["loss"]
        assert f"<td>{recorded['test']['accuracy']:.4f}</td>" in text
        assert page["per_class_accuracy"][directory.name] == pytest.approx(
            list(recorded["test"]["per_class_accuracy"].values())
        )
    (members_record,) = page["ensembles"]
    for member, directory in zip(members_record["members"], three_runs):
        probabilities, member_labels = saved(directory)
        member_right = probabilities.argmax(axis=1) == member_labels
        assert member["fixed"] == int(np.sum(ensemble_right & ~member_right))
        assert member["broken"] == int(np.sum(~ensemble_right & member_right))
        assert member["accuracy_gain"] == pytest.approx(
            metrics["test"]["accuracy"] - read_json(directory / "metrics.json")["test"]["accuracy"]
        )


def write_image_folder(root, classes=("circle", "square", "cross"), per_class: int = 20):
    random = np.random.default_rng(0)
    for index, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for number in range(per_class):
            pixels = random.integers(0, 60, size=(8, 8), dtype=np.uint8) + np.uint8(60 * index)
            Image.fromarray(pixels).save(root / name / f"{number}.png")
    return root


def test_bad_input_is_one_line_and_no_page(digits_run, tmp_path):
    from kerascv_app.errors import UserError
    from kerascv_app.report import write_report, write_report_quietly

    # No folder, a folder that is not a run, and a run that did not finish.
    with pytest.raises(UserError, match="does not exist"):
        write_report([tmp_path / "nowhere"])
    with pytest.raises(UserError, match="not a run directory"):
        write_report([tmp_path], tmp_path / "a.html")
    unfinished = tmp_path / "unfinished"
    shutil.copytree(digits_run, unfinished)
    (unfinished / "report.html").unlink()
    record = read_json(unfinished / "run.json")
    (unfinished / "run.json").write_text(json.dumps({**record, "status": "failed"}))
    with pytest.raises(UserError, match="not a finished run"):
        write_report([unfinished])
    assert not (unfinished / "report.html").exists()
    # kcv fit's own call never raises: one warning line instead.
    assert write_report_quietly(tmp_path / "missing") is None

    # A run of three classes read from an image folder that is then removed.
    images = write_image_folder(tmp_path / "shapes")
    runs = tmp_path / "runs"
    result = kcv_in_process(
        "fit", DIGITS, "--smoke", "--quiet", "--runs-dir", runs, "--set", f"data.source=folder:{images}"
    )
    assert result.returncode == 0, result.stderr
    (folder_run,) = list(runs.iterdir())
    with pytest.raises(UserError, match="a comparison needs runs of the same classes"):
        write_report([digits_run, folder_run], tmp_path / "b.html")
    shutil.rmtree(images)
    out = tmp_path / "c.html"
    result = kcv_in_process("report", folder_run, "--out", out)
    assert_one_line_error(
        result,
        "cannot be read where it read them",
        "top losses, Grad-CAM and the augmentation preview",
        "--data-dir",
        "--top-losses 0 --gradcam 0 --preview 0",
    )
    assert not out.exists() and not list(tmp_path.glob(".c.html.partial-*"))
    assert not (tmp_path / "a.html").exists() and not (tmp_path / "b.html").exists()
    # Without the parts that need the images, the page is written.
    write_report([folder_run], out, top_losses=0, gradcam=0, preview=0)
    assert "summary" in section_ids(out.read_text()) and "top-losses" not in section_ids(out.read_text())
