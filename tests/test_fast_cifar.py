"""The fast loop (train.loop = "fast") and airbench's parts: whitening, identity init,
device augmentation, test-time augmentation, TensorFlow-free loading and training."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import site
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from kcv_testing import BACKEND, CIFAR10_JPEG, REPO_ROOT, run_kcv

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
    np.testing.assert_allclose(output_covariance, np.diag(eigenvalues / (eigenvalues + 5e-4 * eigenvalues.mean())), atol=2e-3)
    assert output_covariance[0, 0] > 0.99 and np.all(np.abs(output_covariance - np.diag(np.diag(output_covariance))) < 2e-3)


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
    np.testing.assert_allclose(ops.convert_to_numpy(whitening.kernel), ops.convert_to_numpy(reference.kernel), rtol=1e-4, atol=1e-4)
    restored = PatchWhitening.from_config(whitening.get_config())
    assert (restored.patch_size, restored.epsilon) == (2, whitening.epsilon)


def test_identity_convolution_is_the_identity_on_its_inputs():
    images = np.random.default_rng(2).normal(size=(2, 6, 6, 4)).astype(np.float32)
    same_width = keras.layers.Conv2D(4, 3, padding="same", use_bias=False, kernel_initializer=IdentityConvolution(seed=3))
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
    augmented = ops.convert_to_numpy(flip_and_shift(ops.convert_to_tensor(images), ops.convert_to_tensor(flips), ops.convert_to_tensor(offsets), 2))
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
    np.testing.assert_array_equal(ops.convert_to_numpy(draw_epoch_plan(1000, 1, 5, 2, True).permutation), ops.convert_to_numpy(plans[1].permutation))
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
    expected = softmax(ops.convert_to_numpy(tta_logits(lambda views: model(views, training=False), images)).astype(np.float64))
    np.testing.assert_allclose(probabilities, expected, rtol=1e-4, atol=1e-6)
    assert labels.tolist() == [0, 1, 2, 3, 4]


def test_linear_schedule_rises_then_falls():
    from kerascv_app.train.optim import learning_rate_schedule

    schedule = learning_rate_schedule(TrainConfig(schedule="linear", learning_rate=2.0, epochs=10, warmup_epochs=2.0), steps_per_epoch=10)
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

    config = Config(augment=AugmentConfig(ops=(op("flip"), op("pad_crop", padding=2, fill="reflect"))), train=TrainConfig(loop="fast"))
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


def test_fast_runs_cannot_be_resumed(tmp_path):
    from kerascv_app.runs import RunDirectory
    from kerascv_app.train.fit import resume

    run = RunDirectory.create(tmp_path, "cifar10_fast")
    run.set_status("running")
    run.write_json("config.json", Config(train=TrainConfig(loop="fast")).to_dict())
    with pytest.raises(UserError, match="no state to resume"):
        resume(run, BACKEND)


# ---------------------------------------------------------------------------- whole runs


@pytest.fixture(scope="module")
def image_source(tmp_path_factory) -> str:
    """The CIFAR-10 JPEG copy when it is beside the checkout, else a generated folder of
    10 classes whose colour tells the class."""
    if CIFAR10_JPEG.is_file():
        return f"folder:{CIFAR10_JPEG}"
    from PIL import Image

    root = tmp_path_factory.mktemp("coloured_classes")
    random = np.random.default_rng(7)
    # 64 per class: data.max_train = 512 keeps a stratified 80% (a cap must leave at least one
    # image per class out; 52 per class asked for 512 of 520 and was refused).
    for split, count in (("train", 64), ("test", 50)):
        for label in range(10):
            folder = root / split / f"class{label}"
            folder.mkdir(parents=True)
            for index in range(count):
                colour = np.array([25 * label, 255 - 25 * label, 128], dtype=np.float64)
                image = np.clip(colour + random.normal(0, 40, size=(32, 32, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(image).save(folder / f"{index}.png")
    return f"folder:{root}"


def short_run_arguments(image_source: str, runs_dir: Path) -> list[str]:
    """512 training images, 500 test images, a quarter-width net, 4 epochs of 4 steps."""
    return [
        "fit", RECIPE, "--runs-dir", runs_dir, "--quiet", "--precision", "float32",
        "--set", f"data.source={image_source}", "--set", "data.max_train=512", "--set", "data.max_eval=500",
        "--set", "data.batch_size=128", "--set", "model.width=16", "--set", "train.epochs=4",
        "--set", "train.lookahead_start_epoch=2", "--set", "train.whitening_bias_epochs=2",
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
        losses = [float(row["loss"]) for row in csv.DictReader(handle)]
    assert len(losses) == 4 and losses[-1] < losses[0] - 0.1, losses
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["test"]["count"] == 500
    # Chance is 0.1.
    assert metrics["test_tta"]["accuracy"] > 0.18, metrics["test_tta"]["accuracy"]
    timing = metrics["timing"]
    assert 0 < timing["train_seconds"] < timing["wall_seconds"] and len(timing["epoch_seconds"]) == 4
    assert json.loads((run_dir / "run.json").read_text())["status"] == "finished"
    assert json.loads((run_dir / "environment.json").read_text())["loop"] == "fast"

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
# Run by the jax and torch environments; the tensorflow one has no TensorFlow-free backend
# installed, and deselects it (tests/conftest.py).
@pytest.mark.other_backend_than_tensorflow
def test_the_whole_fast_path_runs_where_tensorflow_is_not_installed(tmp_path, image_source):
    packages = site_packages_without_tensorflow(tmp_path / "site")
    environment = {
        **os.environ, "PYTHONPATH": os.pathsep.join([str(packages), str(REPO_ROOT)]), "KERAS_BACKEND": BACKEND,
    }

    def python(*arguments):
        return subprocess.run([sys.executable, "-S", *map(str, arguments)], env=environment, capture_output=True, text=True, timeout=600, cwd=tmp_path)

    probe = python("-c", "import importlib.util, sys; sys.exit(importlib.util.find_spec('tensorflow') is not None)")
    assert probe.returncode == 0, "tensorflow is still importable: the test would prove nothing"
    # kcv fit then kcv evaluate --tta in one process, which then lists what it imported.
    script = f"""
import json, sys
from pathlib import Path
from kerascv_app.cli import app
app(["fit", {str(RECIPE)!r}, "--smoke", "--quiet", "--runs-dir", "runs", "--set", {f"data.source={image_source}"!r}], standalone_mode=False)
(run_dir,) = Path("runs").iterdir()
app(["evaluate", str(run_dir), "--tta", "--json"], standalone_mode=False)
print(json.dumps(sorted({{name.split(".")[0] for name in sys.modules if name.startswith("tensor")}})))
"""
    result = python("-c", script)
    assert result.returncode == 0, result.stderr
    evaluated = json.loads(result.stdout[result.stdout.index("{") : result.stdout.rindex("}") + 1])
    assert evaluated["count"] == 128
    # Neither TensorFlow nor TensorBoard (installed here, as on the GPU machines) was imported.
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []
    run_dir = only_run(tmp_path / "runs")
    assert json.loads((run_dir / "run.json").read_text())["status"] == "finished"
    for name in ("model.keras", "history.csv", "metrics.json", "predictions/test.npz", "curves.png"):
        assert (run_dir / name).is_file(), name


def test_evaluate_tta_works_for_runs_of_the_keras_loop(digits_run):
    """--tta applies to any run: here 8x8 grayscale digits read through tf.data."""
    plain = run_kcv("evaluate", digits_run, "--json")
    augmented = run_kcv("evaluate", digits_run, "--tta", "--json")
    assert plain.returncode == 0 and augmented.returncode == 0, augmented.stderr
    plain_metrics, augmented_metrics = json.loads(plain.stdout), json.loads(augmented.stdout)
    assert augmented_metrics["count"] == plain_metrics["count"]
    # Other views, other predictions: the same images, not the same numbers.
    assert augmented_metrics["loss"] != plain_metrics["loss"]
