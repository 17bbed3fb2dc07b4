"""The fast loop (train.loop = "fast") and airbench's parts: whitening, identity init,
device augmentation, test-time augmentation, TensorFlow-free loading and training."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import re
import site
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from kcv_testing import BACKEND, CIFAR10_JPEG, REPO_ROOT, kcv_in_process, run_kcv

# After kcv_testing, which chooses the backend before keras is imported.
import keras  # isort: skip
from keras import ops  # isort: skip

from kerascv_app.augment.shift import flip_and_shift, reflect_pad
from kerascv_app.config import AugmentConfig, Config, TrainConfig, op
from kerascv_app.errors import UserError
from kerascv_app.evaluate.tta import tta_logits
from kerascv_app.models.identity_init import IdentityConvolution
from kerascv_app.models.whitening import PatchWhitening, initialize_whitening
from kerascv_app.train.fast_steps import draw_epoch_plan

RECIPE = REPO_ROOT / "recipes" / "cifar10_fast.py"


def correlated_images(count: int, size: int, seed: int = 0) -> np.ndarray:
    """Smooth, colour-correlated images: their patches have a covariance far from identity."""
    random = np.random.default_rng(seed)
    noise = random.normal(size=(count, size + 1, size + 1, 1))
    smooth = (noise[:, 1:, 1:] + noise[:, :-1, 1:] + noise[:, 1:, :-1]) / 3
    colours = smooth * np.array([1.0, 0.8, 0.5]) + 0.2 * random.normal(size=(count, size, size, 3))
    return colours.astype(np.float32)


def explicit_patch_covariance(images: np.ndarray, patch_size: int) -> np.ndarray:
    """The definition, in float64 with loops: every patch flattened in (row, column, channel) order."""
    count, height, width, channels = images.shape
    patches = [
        images[n, row : row + patch_size, column : column + patch_size, :].reshape(-1)
        for n in range(count)
        for row in range(height - patch_size + 1)
        for column in range(width - patch_size + 1)
    ]
    flat = np.asarray(patches, dtype=np.float64)
    return flat.T @ flat / len(flat)


def test_patch_whitening_equals_its_definition():
    images = correlated_images(16, 9)
    layer = PatchWhitening(patch_size=2, epsilon=5e-4)
    layer.build(images.shape)
    layer.adapt(images)

    covariance = explicit_patch_covariance(images, 2)
    eigenvalues = np.linalg.eigvalsh(covariance)[::-1]
    regularised = covariance + 5e-4 * eigenvalues.mean() * np.eye(12)
    kernel = ops.convert_to_numpy(layer.kernel).astype(np.float64)
    filters = kernel.reshape(12, 24)
    # The filters are V diag(1/sqrt(lambda + epsilon')), so F F^T = (C + epsilon' I)^-1
    # whatever the eigenvectors' signs; the second half are the negatives of the first.
    np.testing.assert_allclose(filters[:, :12] @ filters[:, :12].T, np.linalg.inv(regularised), rtol=1e-3, atol=1e-3)
    np.testing.assert_array_equal(filters[:, 12:], -filters[:, :12])
    # On the training patches the outputs are whitened: their covariance is
    # diag(lambda / (lambda + epsilon')), about the identity, largest eigenvalue first.
    outputs = ops.convert_to_numpy(layer(images)).astype(np.float64)[..., :12].reshape(-1, 12)
    output_covariance = outputs.T @ outputs / len(outputs)
    np.testing.assert_allclose(
        output_covariance, np.diag(eigenvalues / (eigenvalues + 5e-4 * eigenvalues.mean())), atol=2e-3
    )
    assert output_covariance[0, 0] > 0.99 and np.all(
        np.abs(output_covariance - np.diag(np.diag(output_covariance))) < 2e-3
    )


def test_whitening_is_fitted_to_what_the_layer_receives():
    """initialize_whitening passes the model's images through the normalisation first."""
    inputs = keras.Input((8, 8, 3))
    whitening = PatchWhitening(name="whitening")
    model = keras.Model(inputs, whitening(keras.layers.Rescaling(1 / 127.5, -1.0)(inputs)))
    pixels = np.random.default_rng(1).integers(0, 256, size=(6, 8, 8, 3)).astype(np.float32)
    initialize_whitening(model, pixels)

    reference = PatchWhitening()
    reference.build(pixels.shape)
    reference.adapt(pixels / 127.5 - 1.0)
    np.testing.assert_allclose(
        ops.convert_to_numpy(whitening.kernel), ops.convert_to_numpy(reference.kernel), rtol=1e-4, atol=1e-4
    )
    restored = PatchWhitening.from_config(whitening.get_config())
    assert (restored.patch_size, restored.epsilon) == (2, whitening.epsilon)


def test_identity_convolution_is_the_identity_on_its_inputs():
    images = np.random.default_rng(2).normal(size=(2, 6, 6, 4)).astype(np.float32)
    same_width = keras.layers.Conv2D(
        4, 3, padding="same", use_bias=False, kernel_initializer=IdentityConvolution(seed=3)
    )
    np.testing.assert_allclose(ops.convert_to_numpy(same_width(images)), images, atol=1e-6)

    wider = keras.layers.Conv2D(8, 3, padding="same", use_bias=False, kernel_initializer=IdentityConvolution(seed=3))
    outputs = ops.convert_to_numpy(wider(images))
    np.testing.assert_allclose(outputs[..., :4], images, atol=1e-6)
    drawn = ops.convert_to_numpy(wider.kernel)[..., 4:]
    # PyTorch's default for the other channels: uniform in +-1/sqrt(fan_in), fan_in = 3 * 3 * 4.
    assert np.abs(drawn).max() <= 1 / 6 + 1e-6 and drawn.std() > 0.07
    assert IdentityConvolution.from_config(IdentityConvolution(seed=3).get_config()).seed == 3


def test_reflect_pad_matches_numpy():
    images = np.arange(2 * 5 * 6 * 3, dtype=np.uint8).reshape(2, 5, 6, 3)
    padded = ops.convert_to_numpy(reflect_pad(ops.convert_to_tensor(images), 2))
    np.testing.assert_array_equal(padded, np.pad(images, ((0, 0), (2, 2), (2, 2), (0, 0)), mode="reflect"))
    assert padded.dtype == np.uint8


def test_flip_and_shift_keeps_shapes_dtype_and_each_image_its_own():
    images = np.stack([np.full((8, 8, 3), 10 * index, dtype=np.uint8) for index in range(6)])
    images[:, 0, 0, 0] += 1  # an off-centre mark, to see flips and shifts
    flips = np.array([True, False, True, False, True, False])
    offsets = np.array([[0, 0], [4, 4], [2, 2], [0, 4], [2, 0], [1, 3]], dtype=np.int32)
    augmented = ops.convert_to_numpy(
        flip_and_shift(ops.convert_to_tensor(images), ops.convert_to_tensor(flips), ops.convert_to_tensor(offsets), 2)
    )
    assert augmented.shape == images.shape and augmented.dtype == np.uint8
    # Every pixel still comes from its own image: labels stay with their images.
    for index in range(6):
        assert set(np.unique(augmented[index] // 10 * 10)) == {10 * index}
    # Each image equals a numpy reference: mirror, reflect-pad by 2, crop at its offset.
    for index in range(6):
        image = images[index][:, ::-1] if flips[index] else images[index]
        padded = np.pad(image, ((2, 2), (2, 2), (0, 0)), mode="reflect")
        row, column = offsets[index]
        np.testing.assert_array_equal(augmented[index], padded[row : row + 8, column : column + 8])


def test_alternating_flips_and_epoch_plans():
    plans = [draw_epoch_plan(1000, epoch, seed=5, padding=2, flip=True) for epoch in range(4)]
    flips = [ops.convert_to_numpy(plan.flips) for plan in plans]
    # Each image is mirrored on every other epoch, half of them starting at the first.
    for epoch in range(3):
        np.testing.assert_array_equal(flips[epoch + 1], ~flips[epoch])
    assert 400 < flips[0].sum() < 600
    for plan in plans:
        assert sorted(ops.convert_to_numpy(plan.permutation).tolist()) == list(range(1000))
        offsets = ops.convert_to_numpy(plan.offsets)
        assert offsets.min() == 0 and offsets.max() == 4
    # The same seed gives the same plan; another epoch another order.
    np.testing.assert_array_equal(
        ops.convert_to_numpy(draw_epoch_plan(1000, 1, 5, 2, True).permutation),
        ops.convert_to_numpy(plans[1].permutation),
    )
    assert not np.array_equal(ops.convert_to_numpy(plans[0].permutation), ops.convert_to_numpy(plans[1].permutation))
    assert not ops.convert_to_numpy(draw_epoch_plan(10, 0, 5, 0, flip=False).flips).any()


def tiny_classifier():
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, activation="relu", kernel_initializer=keras.initializers.RandomNormal(seed=1))(inputs)
    x = keras.layers.Flatten()(x)
    return keras.Model(inputs, keras.layers.Dense(5, kernel_initializer=keras.initializers.RandomNormal(seed=2))(x))


def test_tta_averages_the_six_views_like_airbench():
    model = tiny_classifier()
    images = np.random.default_rng(3).integers(0, 256, size=(3, 8, 8, 3)).astype(np.float32)
    logits = ops.convert_to_numpy(tta_logits(lambda views: model(views, training=False), images))
    assert logits.shape == (3, 5)

    def predict(views):
        return ops.convert_to_numpy(model(views, training=False))

    padded = np.pad(images, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
    views = {"plain": images, "down_right": padded[:, :8, :8], "up_left": padded[:, 2:, 2:]}
    mirrored = {name: 0.5 * predict(view) + 0.5 * predict(view[:, :, ::-1]) for name, view in views.items()}
    expected = 0.5 * mirrored["plain"] + 0.25 * mirrored["down_right"] + 0.25 * mirrored["up_left"]
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)


def test_predict_probabilities_with_tta_is_the_softmax_of_tta_logits():
    from kerascv_app.data.arrays import ArrayBatches, ArrayData
    from kerascv_app.evaluate.metrics import predict_probabilities, softmax

    model = tiny_classifier()
    images = np.random.default_rng(4).integers(0, 256, size=(5, 8, 8, 3)).astype(np.uint8)
    batches = ArrayBatches(ArrayData(images, np.array([0, 1, 2, 3, 4])), num_classes=5, batch_size=2)
    probabilities, labels = predict_probabilities(model, batches, test_time_augmentation=True)
    expected = softmax(
        ops.convert_to_numpy(tta_logits(lambda views: model(views, training=False), images)).astype(np.float64)
    )
    np.testing.assert_allclose(probabilities, expected, rtol=1e-4, atol=1e-6)
    assert labels.tolist() == [0, 1, 2, 3, 4]


def test_linear_schedule_rises_then_falls():
    from kerascv_app.train.optim import learning_rate_schedule

    schedule = learning_rate_schedule(
        TrainConfig(schedule="linear", learning_rate=2.0, epochs=10, warmup_epochs=2.0), steps_per_epoch=10
    )
    rates = [float(ops.convert_to_numpy(schedule(step))) for step in (0, 10, 20, 60, 100)]
    np.testing.assert_allclose(rates, [0.4, 1.2, 2.0, 2.0 - (2.0 - 0.14) * 0.5, 0.14], rtol=1e-5)


def test_fast_loop_settings_are_checked():
    with pytest.raises(UserError, match="train.optimizer"):
        TrainConfig(loop="fast", optimizer="adamw")
    with pytest.raises(UserError, match="loss scaling"):
        TrainConfig(loop="fast", precision="mixed_float16")
    with pytest.raises(UserError, match="train.loop"):
        TrainConfig(loop="eager")
    from kerascv_app.train.fast import fast_augmentation

    config = Config(
        augment=AugmentConfig(ops=(op("flip"), op("pad_crop", padding=2, fill="reflect"))),
        train=TrainConfig(loop="fast"),
    )
    assert (fast_augmentation(config).flip, fast_augmentation(config).padding) == (True, 2)
    with pytest.raises(UserError, match="not one the fast loop applies"):
        fast_augmentation(dataclasses.replace(config, augment=AugmentConfig(ops=(op("rotate"),))))


def test_arrays_decode_without_tensorflow_and_are_cached(tmp_path, monkeypatch):
    from PIL import Image

    from kerascv_app.data.arrays import array_cache_dir, split_arrays
    from kerascv_app.data.base import FileSplit

    monkeypatch.setenv("KCV_CACHE_DIR", str(tmp_path / "cache"))
    random = np.random.default_rng(6)
    pixels = random.integers(0, 256, size=(3, 6, 5, 3), dtype=np.uint8)
    paths = []
    for index, image in enumerate(pixels):
        paths.append(tmp_path / f"{index}.png")
        Image.fromarray(image).save(paths[-1])
    Image.fromarray(pixels[0]).convert("L").save(tmp_path / "gray.png")
    split = FileSplit(paths + [tmp_path / "gray.png"], np.array([0, 1, 2, 0]))

    arrays = split_arrays(split, (6, 5), 3, "fingerprint")
    np.testing.assert_array_equal(arrays.images[:3], pixels)
    gray = np.asarray(Image.fromarray(pixels[0]).convert("L"))
    np.testing.assert_array_equal(arrays.images[3], np.repeat(gray[..., None], 3, axis=-1))
    assert arrays.labels.tolist() == [0, 1, 2, 0]
    assert len(list(array_cache_dir().glob("*.npz"))) == 1
    resized = split_arrays(split, (4, 4), 1, "fingerprint")
    assert resized.images.shape == (4, 4, 4, 1) and resized.images.dtype == np.uint8
    assert len(list(array_cache_dir().glob("*.npz"))) == 2


def nan_digits_classifier(num_classes: int):
    """A model whose every prediction is NaN: what a diverged run leaves."""
    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(num_classes)])
    model.layers[-1].kernel.assign(np.full(model.layers[-1].kernel.shape, np.nan, dtype=np.float32))
    return model


def digits_fast_config() -> Config:
    from kerascv_app.config import DataConfig

    return Config(
        name="digits_fast",
        data=DataConfig(source="digits", image_size=(8, 8), channels=1, batch_size=32),
        train=TrainConfig(loop="fast"),
    )


def test_a_run_whose_predictions_are_not_finite_fails_with_its_reason(tmp_path):
    """Both trainers' finish (kerascv_app/train/lifecycle.py): NaN probabilities are refused
    before metrics or predictions are written, instead of reporting chance accuracy."""
    from kerascv_app.data.prepare import prepare_data
    from kerascv_app.train.lifecycle import PredictionsNotFinite, finish_run, started_run

    config = digits_fast_config()
    prepared = prepare_data(config, None)
    model = nan_digits_classifier(prepared.num_classes)
    with (
        pytest.raises(PredictionsNotFinite, match="not finite") as raised,
        started_run(tmp_path, config, "recipe", BACKEND, {}, prepared) as run,
    ):
        finish_run(run, model, config, prepared)
    assert isinstance(raised.value, UserError) and "\n" not in str(raised.value)
    status = run.status_record()
    assert status["status"] == "failed" and "probabilities are not finite" in status["reason"], status
    assert not (run.path / "metrics.json").exists() and not list(run.predictions_dir.glob("*.npz"))


def test_non_finite_tta_logits_fail_a_fast_run_before_its_model_is_saved(tmp_path):
    from types import SimpleNamespace

    from kerascv_app.data.prepare import prepare_data
    from kerascv_app.train.fast import FastResult, finish_fast_run
    from kerascv_app.train.lifecycle import PredictionsNotFinite, started_run

    config = digits_fast_config()
    prepared = prepare_data(config, None)
    trainer = SimpleNamespace(
        arrays={"test": [0, 1, 2]}, model=nan_digits_classifier(prepared.num_classes), config=config
    )
    logits = np.zeros((3, prepared.num_classes), dtype=np.float32)
    logits[1, 4] = np.inf
    result = FastResult(history=[{"epoch": 0, "loss": 1.0}], test_tta_logits=logits, timing={"train_seconds": 1.0})
    refused = pytest.raises(
        PredictionsNotFinite, match="test-time-augmented test logits are not finite for 1 of 3 images"
    )
    with refused, started_run(tmp_path, config, "recipe", BACKEND, {}, prepared) as run:
        finish_fast_run(run, trainer, prepared, result, data_seconds=0.0, wall_start=0.0)
    assert run.status_record()["status"] == "failed" and not run.model_path.exists()


def test_fast_runs_cannot_be_resumed(tmp_path):
    from kerascv_app.runs import RunDirectory
    from kerascv_app.train.fit import resume

    run = RunDirectory.create(tmp_path, "cifar10_fast")
    run.set_status("running")
    run.write_json("config.json", Config(train=TrainConfig(loop="fast")).to_dict())
    with pytest.raises(UserError, match="no state to resume"):
        resume(run, BACKEND)


# ---------------------------------------------------------------------------- whole runs


def coloured_classes(root: Path, counts: dict[str, int]) -> Path:
    """A folder of 10 classes of 32x32 PNGs whose colour tells the class: ``counts`` per split."""
    from PIL import Image

    random = np.random.default_rng(7)
    for split, count in counts.items():
        for label in range(10):
            folder = root / split / f"class{label}"
            folder.mkdir(parents=True)
            for index in range(count):
                colour = np.array([25 * label, 255 - 25 * label, 128], dtype=np.float64)
                image = np.clip(colour + random.normal(0, 40, size=(32, 32, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(image).save(folder / f"{index}.png")
    return root


def garble_png_middle(path: Path) -> None:
    """Keeps a PNG's signature and end (so the start-up check passes) and overwrites the middle
    of its compressed data, which Pillow then refuses to decode."""
    from PIL import Image

    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle - 100 : middle + 100] = b"\x00" * 200
    path.write_bytes(bytes(data))
    with pytest.raises((OSError, SyntaxError, ValueError)), Image.open(path) as image:
        image.load()


@pytest.fixture(scope="module")
def image_source(tmp_path_factory) -> str:
    """The CIFAR-10 JPEG copy when it is beside the checkout, else a generated folder of
    10 classes whose colour tells the class."""
    if CIFAR10_JPEG.is_file():
        return f"folder:{CIFAR10_JPEG}"
    # 64 per class: data.max_train = 512 keeps a stratified 80% (a cap must leave at least one
    # image per class out; 52 per class asked for 512 of 520 and was refused).
    return f"folder:{coloured_classes(tmp_path_factory.mktemp('coloured_classes'), {'train': 64, 'test': 50})}"


def short_run_arguments(image_source: str, runs_dir: Path) -> list[str]:
    """512 training images, 500 test images, a quarter-width net, 4 epochs of 8 steps.

    The recipe's learning rate (1.5) is for batches of 1024 (train.learning_rate_batch_size):
    the run scales it to 0.09375 at 64. Unscaled, at 128 it was 8 times too high (96 for the
    BatchNorm biases): the net ended on the edge of divergence with BatchNorm moving variances
    tens of times off the activations', and its evaluation predicted one or two classes (0.1 or
    0.2 accuracy) depending on rounding. On the CIFAR-10 JPEG copy (jax), at 0.1: loss
    2.311 -> 2.200, train accuracy 0.09 -> 0.27, test accuracy with TTA 0.218.
    """
    return [
        "fit",
        RECIPE,
        "--runs-dir",
        runs_dir,
        "--quiet",
        "--precision",
        "float32",
        "--set",
        f"data.source={image_source}",
        "--set",
        "data.max_train=512",
        "--set",
        "data.max_eval=500",
        "--set",
        "data.batch_size=64",
        "--set",
        "model.width=16",
        "--set",
        "train.epochs=4",
        "--set",
        "train.lookahead_start_epoch=2",
        "--set",
        "train.whitening_bias_epochs=2",
    ]


def only_run(runs_dir: Path) -> Path:
    (run_dir,) = [path for path in runs_dir.iterdir() if path.is_dir()]
    return run_dir


@pytest.mark.shared_data
def test_a_short_cpu_run_learns_and_tta_evaluation_agrees(tmp_path, image_source):
    result = run_kcv(*short_run_arguments(image_source, tmp_path / "runs"))
    assert result.returncode == 0, result.stderr
    run_dir = only_run(tmp_path / "runs")
    with open(run_dir / "history.csv") as handle:
        history = list(csv.DictReader(handle))
    losses = [float(row["loss"]) for row in history]
    # Learning, not noise: a net that does not learn stays within about 0.02 of its first loss.
    assert len(losses) == 4 and losses[-1] < losses[0] - 0.05, losses
    assert float(history[-1]["accuracy"]) > 0.18, history[-1]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["test"]["count"] == 500
    # Chance is 0.1.
    assert metrics["test_tta"]["accuracy"] > 0.18, metrics["test_tta"]["accuracy"]
    timing = metrics["timing"]
    assert 0 < timing["train_seconds"] < timing["wall_seconds"] and len(timing["epoch_seconds"]) == 4
    status = json.loads((run_dir / "run.json").read_text())
    assert status["status"] == "finished" and status["test_tta_accuracy"] == metrics["test_tta"]["accuracy"]
    environment = json.loads((run_dir / "environment.json").read_text())
    assert environment["loop"] == "fast"
    # The recipe's rate for 1024 images a step, scaled to this run's 64.
    assert environment["learning_rate"] == pytest.approx(1.5 * 64 / 1024, rel=1e-3)
    # The run lock was held by the training process (kcv fit --resume refuses while it lives).
    assert (run_dir / "lock").read_text().split() == [str(status["pid"]), status["host"]]
    # report.html is this run's: its class names and test accuracy (as kcv fit writes it).
    report = (run_dir / "report.html").read_text()
    data = json.loads(
        re.search(r'<script type="application/json" id="kcv-report-data">(.*?)</script>', report, re.DOTALL).group(1)
    )
    assert data["class_names"] == environment["class_names"] and data["path"] == str(run_dir)
    assert data["metrics"]["test"]["accuracy"] == metrics["test"]["accuracy"] and data["test"]["count"] == 500

    evaluated = run_kcv("evaluate", run_dir, "--tta", "--json")
    assert evaluated.returncode == 0, evaluated.stderr
    # The saved model, reloaded, gives the accuracy the run measured (float rounding aside).
    assert json.loads(evaluated.stdout)["accuracy"] == pytest.approx(metrics["test_tta"]["accuracy"], abs=0.005)


def site_packages_without_tensorflow(folder: Path) -> Path:
    """A folder of links to every installed package but TensorFlow's: on sys.path instead of
    site-packages (python -S), it makes an interpreter on which TensorFlow is not installed."""
    folder.mkdir()
    for site_packages in site.getsitepackages():
        for entry in Path(site_packages).iterdir():
            name = entry.name.lower()
            hidden = name.startswith(("tensorflow", "tf_keras", "__editable__", "kerascv_app")) or name.endswith(".pth")
            if not hidden and not (folder / entry.name).exists():
                (folder / entry.name).symlink_to(entry)
    return folder


@pytest.mark.shared_data
# Run by the jax environment: which modules the fast path imports does not depend on the backend,
# and torch trains the fast loop in test_a_short_cpu_run_learns_and_tta_evaluation_agrees. The
# tensorflow environment has no TensorFlow-free backend installed.
@pytest.mark.backends("jax")
def test_the_whole_fast_path_runs_where_tensorflow_is_not_installed(tmp_path):
    """kcv fit, its report.html and its record of files that did not decode, then kcv evaluate."""
    images = coloured_classes(tmp_path / "images", {"train": 24, "test": 12})
    undecodable = [images / "train" / "class3" / "5.png", images / "test" / "class7" / "2.png"]
    for path in undecodable:
        garble_png_middle(path)
    packages = site_packages_without_tensorflow(tmp_path / "site")
    environment = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(packages), str(REPO_ROOT)]),
        "KERAS_BACKEND": BACKEND,
    }

    def python(*arguments):
        return subprocess.run(
            [sys.executable, "-S", *map(str, arguments)],
            env=environment,
            capture_output=True,
            text=True,
            timeout=600,
            cwd=tmp_path,
        )

    probe = python("-c", "import importlib.util, sys; sys.exit(importlib.util.find_spec('tensorflow') is not None)")
    assert probe.returncode == 0, "tensorflow is still importable: the test would prove nothing"
    # kcv fit then kcv evaluate --tta in one process, which then lists what it imported.
    script = f"""
import json, sys
from pathlib import Path
from kerascv_app.cli import app
app(["fit", {str(RECIPE)!r}, "--smoke", "--quiet", "--runs-dir", "runs",
    "--set", {f"data.source=folder:{images}"!r}], standalone_mode=False)
(run_dir,) = Path("runs").iterdir()
app(["evaluate", str(run_dir), "--tta", "--json"], standalone_mode=False)
print(json.dumps(sorted({{name.split(".")[0] for name in sys.modules if name.startswith("tensor")}})))
"""
    result = python("-c", script)
    assert result.returncode == 0, result.stderr
    evaluated = json.loads(result.stdout[result.stdout.index("{") : result.stdout.rindex("}") + 1])
    # 120 test images, one of which does not decode.
    assert evaluated["count"] == 119
    # Neither TensorFlow nor TensorBoard (installed here, as on the GPU machines) was imported.
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []
    run_dir = only_run(tmp_path / "runs")
    assert json.loads((run_dir / "run.json").read_text())["status"] == "finished"
    for name in ("model.keras", "history.csv", "metrics.json", "predictions/test.npz", "curves.png", "report.html"):
        assert (run_dir / name).is_file(), name
    environment = json.loads((run_dir / "environment.json").read_text())

    def last_two(paths):
        return sorted("/".join(Path(path).parts[-2:]) for path in paths)

    assert last_two(environment["skipped_while_training"]) == ["class3/5.png", "class7/2.png"], environment
    assert last_two(environment["skipped_files"]) == ["class3/5.png", "class7/2.png"]
    assert "could not be decoded" in result.stderr and "5.png" in result.stderr
    assert "class7" in (run_dir / "report.html").read_text()


def test_evaluate_tta_works_for_runs_of_the_keras_loop(digits_run):
    """--tta applies to any run: here 8x8 grayscale digits read through tf.data."""
    plain = kcv_in_process("evaluate", digits_run, "--json")
    augmented = kcv_in_process("evaluate", digits_run, "--tta", "--json")
    assert plain.returncode == 0 and augmented.returncode == 0, augmented.stderr
    plain_metrics, augmented_metrics = json.loads(plain.stdout), json.loads(augmented.stdout)
    assert augmented_metrics["count"] == plain_metrics["count"]
    # Other views, other predictions: the same images, not the same numbers.
    assert augmented_metrics["loss"] != plain_metrics["loss"]
