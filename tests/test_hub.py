"""KerasHub backbones (model.backbone = "hub:PATH") on the backend under test.

The presets are KerasHub's own classes at toy sizes with random weights, written by
``save_to_preset`` into a temporary folder (tests/hub_presets.py): the same files a downloaded
preset has, so ``hub:FOLDER`` is the offline user's path. A random backbone cannot show that
its weights were transferred by accuracy alone, so one test compares the backbone inside the
trained model with KerasHub's own backbone and image converter on the same images; another
fine-tunes the whole backbone and asserts that the model learned.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from hub_presets import imagenet_scale_and_offset, write_resnet_preset, write_vit_preset
from kcv_testing import REPO_ROOT, assert_one_line_error, predicted, run_kcv

DIGITS_RECIPE = REPO_ROOT / "recipes" / "digits.py"
PRESET_SIZE = 16


def sets(*settings: str) -> list[str]:
    return [argument for setting in settings for argument in ("--set", setting)]


@pytest.fixture(scope="module")
def presets(tmp_path_factory):
    folder = tmp_path_factory.mktemp("presets")
    return {
        "resnet": write_resnet_preset(folder / "tiny_resnet", image_size=PRESET_SIZE),
        "vit": write_vit_preset(folder / "tiny_vit", image_size=PRESET_SIZE),
        "grayscale": write_resnet_preset(folder / "grayscale_resnet", image_size=PRESET_SIZE, channels=1),
    }


def fit(runs, *arguments, recipe=DIGITS_RECIPE):
    result = run_kcv("fit", recipe, "--quiet", "--runs-dir", runs, *arguments)
    assert result.returncode == 0, result.stderr
    (run_dir,) = [path for path in runs.iterdir() if path.is_dir()]
    return run_dir


# Under tensorflow only (6 minutes under torch): under jax and torch the hub transfer recipe's test
# below fine-tunes a hub backbone in two stages, and tests/test_export_onnx.py exports their runs
# to ONNX.
@pytest.mark.backends("tensorflow")
def test_fine_tuning_a_hub_backbone_learns_and_its_run_exports_and_predicts(presets, tmp_path, model_size_images):
    # Digits are 8x8 grayscale: the model repeats the channel and resizes to the preset's 16x16.
    run_dir = fit(
        tmp_path / "runs",
        *sets(
            f"model.backbone=hub:{presets['resnet']}",
            "train.epochs=1",
            "train.fine_tune_epochs=6",
            "train.fine_tune_learning_rate=0.003",
        ),
    )
    accuracy = json.loads((run_dir / "metrics.json").read_text())["test"]["accuracy"]
    assert accuracy > 0.9, f"fine-tuning the KerasHub backbone did not learn: test accuracy {accuracy}"
    transfer = json.loads((run_dir / "environment.json").read_text())["transfer"]
    assert transfer["backbone"] == f"hub:{presets['resnet']}"
    assert transfer["backbone_input"] == {"image_size": [PRESET_SIZE, PRESET_SIZE], "channels": 3}
    assert any("grayscale to RGB" in step for step in transfer["input_adaptation"])
    scale, offset = imagenet_scale_and_offset(3)
    assert f"{scale[0]:.6g}" in transfer["preprocessing"] and f"{offset[2]:.6g}" in transfer["preprocessing"]

    # Exported as ONNX, the path where a KerasHub model met converter problems (the SavedModel
    # path is the same code for every backbone: tests/test_export.py), and verified against the
    # Keras model by the export itself (1e-4, in its report). kcv
    # predict on a .onnx decodes with Pillow, not TensorFlow: on PNGs at the model's own size
    # (8x8 grey) the pixels are the same, so the probabilities must be the run's. (A resized or
    # JPEG image may differ by a level here and there, enough to flip an unsure top class.)
    onnx = run_kcv("export", run_dir, "--format", "onnx", "--base", tmp_path / "saved_models")
    assert onnx.returncode == 0, onnx.stderr
    (onnx_version,) = (tmp_path / "saved_models" / "onnx" / "digits").iterdir()
    assert json.loads((onnx_version / "export_report.json").read_text())["parity"]["max_difference"] <= 1e-4
    from_run, from_onnx = (
        run_kcv("predict", path, *model_size_images, "--top-k", "10", "--json")
        for path in (run_dir, onnx_version / "model.onnx")
    )
    run_probabilities, onnx_probabilities = predicted(from_run), predicted(from_onnx)
    assert list(onnx_probabilities) == [str(path) for path in model_size_images]
    for image, probabilities in run_probabilities.items():
        for name, probability in probabilities.items():
            assert onnx_probabilities[image][name] == pytest.approx(probability, abs=1e-4)


# The ResNet (spliced layer by layer) under jax, the ViT (nested whole) under tensorflow; under
# torch (5 minutes there) the hub transfer recipe's test builds the same model from a preset.
@pytest.mark.parametrize(
    "kind",
    [
        pytest.param("resnet", marks=pytest.mark.backends("jax")),
        pytest.param("vit", marks=pytest.mark.backends("tensorflow")),
    ],
)
def test_the_backbone_in_the_model_is_the_presets_backbone_after_its_image_converter(presets, tmp_path, kind):
    """Stage 1 leaves the backbone frozen: inside the run's model it must compute exactly what
    KerasHub's backbone computes on the output of the preset's image converter. A converter
    applied twice or not at all, or weights not loaded, would differ by far more than 1e-4.
    (resnet: its layers spliced into the model; vit: KerasHub's backbone kept whole, nested.)"""
    import keras
    import keras_hub

    from kerascv_app.model_dir import open_model_directory

    run_dir = fit(
        tmp_path / "runs",
        "--smoke",
        *sets(f"model.backbone=hub:{presets[kind]}", "data.channels=3", f"data.image_size={PRESET_SIZE},{PRESET_SIZE}"),
    )
    backbone = open_model_directory(run_dir).load_model().get_layer("backbone")
    images = np.random.default_rng(0).uniform(0, 255, size=(4, PRESET_SIZE, PRESET_SIZE, 3)).astype("float32")
    images[0] = 0.0
    images[1] = 255.0
    reference_backbone = keras_hub.models.Backbone.from_preset(str(presets[kind]))
    converter = keras_hub.layers.ImageConverter.from_preset(str(presets[kind]))
    expected = keras.ops.convert_to_numpy(reference_backbone(converter(images), training=False))
    actual = keras.ops.convert_to_numpy(backbone(images, training=False))
    assert actual.shape == expected.shape
    np.testing.assert_allclose(actual, expected, atol=1e-4, rtol=1e-4)
    if kind == "vit":
        # Its exact GELU (TensorFlow's Erfc) and captured position ids once failed the ONNX
        # conversion: the export verifies the file against the Keras model.
        onnx = run_kcv("export", run_dir, "--format", "onnx", "--base", tmp_path / "saved_models")
        assert onnx.returncode == 0, onnx.stderr
        (version,) = (tmp_path / "saved_models" / "onnx" / "digits").iterdir()
        assert json.loads((version / "export_report.json").read_text())["parity"]["max_difference"] <= 1e-4


def test_the_hub_transfer_recipe_fine_tunes_on_a_class_per_folder_dataset(presets, tmp_path):
    from PIL import Image
    from sklearn.datasets import load_digits

    photos = tmp_path / "photos"
    digits = load_digits()
    for index in range(150):
        label = int(digits.target[index])
        if label < 3:
            folder = photos / f"digit_{label}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray((digits.images[index] * (255 / 16)).astype(np.uint8)).resize((20, 20)).convert("RGB").save(
                folder / f"{index}.png"
            )
    run_dir = fit(
        tmp_path / "runs",
        "--data",
        photos,
        "--smoke",
        *sets(f"model.backbone=hub:{presets['resnet']}", f"data.image_size={PRESET_SIZE},{PRESET_SIZE}"),
        recipe=REPO_ROOT / "recipes" / "hub_transfer.py",
    )
    environment = json.loads((run_dir / "environment.json").read_text())
    stages = [stage["stage"] for stage in environment["transfer"]["stages"]]
    assert stages == [1, 2]
    assert "the top 2 of" in environment["transfer"]["stages"][1]["trains"]
    splits = json.loads((run_dir / "splits.json").read_text())
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert sorted(json.loads((run_dir / "model.json").read_text())["class_names"]) == ["digit_0", "digit_1", "digit_2"]
    assert metrics["test"]["count"] == splits["test"] > 0


def _not_a_preset(tmp_path, presets):
    folder = tmp_path / "downloads"
    folder.mkdir()
    (folder / "weights.h5").write_bytes(b"not a preset")
    return folder


def _backbone_only_preset(tmp_path, presets):
    import keras_hub

    folder = tmp_path / "backbone_only"
    keras_hub.models.Backbone.from_preset(str(presets["resnet"])).save_to_preset(str(folder))
    return folder


BAD_PRESETS = {
    "unknown-name": (
        lambda tmp_path, presets: "resnet_does_not_exist",
        [],
        "is neither a KerasHub preset nor a folder",
    ),
    "missing-folder": (lambda tmp_path, presets: tmp_path / "no_such_preset", [], "does not exist"),
    "not-a-preset": (_not_a_preset, [], "is not a KerasHub preset (it has no config.json)"),
    "no-image-converter": (_backbone_only_preset, [], "has no image converter"),
    "grayscale-preset-rgb-data": (
        lambda tmp_path, presets: presets["grayscale"],
        ["data.channels=3"],
        "takes grayscale images (1 channel) but data.channels = 3",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_PRESETS))
def test_a_bad_preset_is_refused_in_one_line_while_the_model_is_built(presets, tmp_path, case):
    """In process, where kcv fit builds the model before the run folder exists (the two
    command-line tests below show the exit status and that no run folder is left)."""
    from kerascv_app.errors import UserError
    from kerascv_app.models import create_model
    from kerascv_app.recipe import load_recipe

    make_preset, settings, fragment = BAD_PRESETS[case]
    config = load_recipe(DIGITS_RECIPE)[0].with_overrides(
        [f"model.backbone=hub:{make_preset(tmp_path, presets)}", *settings]
    )
    with pytest.raises(UserError) as refused:
        create_model(config, 10)
    message = str(refused.value)
    assert "model.backbone" in message and fragment in message and "\n" not in message, message


def fit_with_a_hub_preset_name(runs: Path, environment: dict):
    """kcv fit of the digits recipe on KerasHub's resnet_18_imagenet, in a real process (the
    environment decides what can be downloaded or imported)."""
    return run_kcv(
        "fit",
        DIGITS_RECIPE,
        "--smoke",
        "--runs-dir",
        runs,
        *sets("model.backbone=hub:resnet_18_imagenet"),
        env=environment,
    )


def test_a_preset_name_that_cannot_be_downloaded_names_the_cache_and_the_folder_way(tmp_path):
    """Offline: KerasHub's download of a built-in preset fails. The requests go through a proxy
    at a closed local port and the cache is an empty folder, so that this holds online too."""
    cache = tmp_path / "kagglehub_cache"
    closed_port = "http://127.0.0.1:9"
    environment = {
        "HTTPS_PROXY": closed_port,
        "https_proxy": closed_port,
        "HTTP_PROXY": closed_port,
        "http_proxy": closed_port,
        "NO_PROXY": "",
        "no_proxy": "",
        "KAGGLEHUB_CACHE": str(cache),
    }
    runs = tmp_path / "runs"
    result = fit_with_a_hub_preset_name(runs, environment)
    assert_one_line_error(
        result, "cannot download preset 'resnet_18_imagenet'", str(cache), "model.backbone=hub:/path/to/FOLDER"
    )
    assert not runs.exists() or not any(runs.iterdir())


def test_without_keras_hub_a_hub_backbone_names_the_install_command(tmp_path):
    hidden = tmp_path / "hidden"
    (hidden / "keras_hub").mkdir(parents=True)
    (hidden / "keras_hub" / "__init__.py").write_text("raise ImportError('keras_hub is hidden by this test')\n")
    environment = {"PYTHONPATH": os.pathsep.join(filter(None, [str(hidden), os.environ.get("PYTHONPATH")]))}
    runs = tmp_path / "runs"
    result = fit_with_a_hub_preset_name(runs, environment)
    assert_one_line_error(result, "needs KerasHub", 'pip install -e ".[hub]"')
    assert not runs.exists() or not any(runs.iterdir())
