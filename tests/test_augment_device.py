"""Augmentation inside the model: training only, XLA kept, saved and reloaded, and the
command line around it (kcv fit with each placement, kcv preview)."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest
from kcv_testing import REPO_ROOT, assert_one_line_error, kcv_in_process, run_kcv

from kerascv_app.augment.layer import Augmentation
from kerascv_app.augment.spec import OP_SCHEMAS, op
from kerascv_app.config import SEED_PRESET, AugmentConfig, Config, DataConfig, ModelConfig
from kerascv_app.models import create_model

IMAGE_OPS = tuple(op(name) for name, schema in OP_SCHEMAS.items() if not schema.mixes_labels)
TINY_MODEL = ModelConfig(name="seed_cnn", hidden_units=8)


def images(batch=4, size=16):
    return np.random.default_rng(0).integers(0, 256, (batch, size, size, 3)).astype("float32")


def device_config(ops, **augment):
    return Config(
        data=DataConfig(image_size=(16, 16)),
        augment=AugmentConfig(ops=ops, placement="device", **augment),
        model=TINY_MODEL,
    )


def test_device_ops_are_the_identity_at_inference():
    layer = Augmentation([operation.to_json() for operation in IMAGE_OPS], seed=3)
    batch = images()
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer(batch, training=False)), batch)
    assert not np.array_equal(keras.ops.convert_to_numpy(layer(batch, training=True)), batch)


def test_device_augmentation_keeps_the_training_step_compilable():
    """Keras's geometric layers set supports_jit = False, which would turn XLA off for the
    whole step (the GUIDE's 45 s epoch under JAX); ours keep it on."""
    from keras.src.trainers.trainer import model_supports_jit

    model = create_model(device_config(IMAGE_OPS), num_classes=3)
    assert model_supports_jit(model)


def compiled_for_any_batch_size(layer):
    """The layer in training mode, traced once for an unknown batch size and compiled by XLA
    under TensorFlow (as Keras does on a GPU) and JAX; eager under torch, as Keras trains."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        compiled = tf.function(
            lambda batch: layer(batch, training=True),
            jit_compile=True,
            input_signature=[tf.TensorSpec((None, 16, 16, 3), tf.float32)],
        )

        def run_tensorflow(batch):
            return compiled(tf.constant(batch)).numpy()

        return run_tensorflow
    if backend == "jax":
        import jax

        layer.build((None, 16, 16, 3))
        step = jax.jit(lambda state, batch: layer.stateless_call([], state, batch, training=True)[0])

        def run_jax(batch):
            return np.asarray(step([variable.value for variable in layer.non_trainable_variables], batch))

        return run_jax

    def run_torch(batch):
        return keras.ops.convert_to_numpy(layer(batch, training=True))

    return run_torch


def test_device_ops_compile_for_any_batch_size():
    run = compiled_for_any_batch_size(Augmentation([operation.to_json() for operation in IMAGE_OPS], seed=3))
    augmented = run(images(batch=3))
    assert augmented.shape == (3, 16, 16, 3) and 0 <= augmented.min() and augmented.max() <= 255


def test_model_holds_only_the_image_ops_and_the_seed():
    model = create_model(device_config(SEED_PRESET + (op("mixup"), op("rotate"))), num_classes=3)
    layer = model.get_layer("augment")
    assert layer.operations == [operation.to_json() for operation in SEED_PRESET + (op("rotate"),)]
    assert (
        create_model(Config(augment=AugmentConfig(ops=SEED_PRESET), model=TINY_MODEL), num_classes=3).layers[1].name
        == "normalize"
    )


def test_saved_model_reloads_safely_with_its_augmentation(tmp_path):
    model = create_model(
        device_config(SEED_PRESET + (op("rotate", degrees=10), op("randaugment", num_ops=1))), num_classes=3
    )
    batch = images()
    path = tmp_path / "model.keras"
    model.save(path)
    reloaded = keras.saving.load_model(path, safe_mode=True)
    assert (
        reloaded.get_layer("augment").get_config()["operations"]
        == model.get_layer("augment").get_config()["operations"]
    )
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(reloaded(batch, training=False)),
        keras.ops.convert_to_numpy(model(batch, training=False)),
        atol=1e-5,
    )
    # A reloaded layer starts from its seed, as a new one does.
    fresh = Augmentation(model.get_layer("augment").operations, seed=model.get_layer("augment").seed)
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(reloaded.get_layer("augment")(batch, training=True)),
        keras.ops.convert_to_numpy(fresh(batch, training=True)),
    )


def test_imagenet_normalization_is_in_the_model():
    model = create_model(Config(augment=AugmentConfig(normalization="imagenet"), model=TINY_MODEL), num_classes=3)
    mean_image = np.broadcast_to(np.array([0.485, 0.456, 0.406], "float32") * 255, (1, 32, 32, 3))
    normalized = keras.Model(model.inputs[0], model.get_layer("normalize").output)(mean_image)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(normalized), 0.0, atol=1e-4)


def fit_smoke(tmp_path, recipe, *settings):
    result = run_kcv(
        "fit",
        recipe,
        "--smoke",
        "--quiet",
        "--runs-dir",
        tmp_path,
        *[item for setting in settings for item in ("--set", setting)],
    )
    assert result.returncode == 0, result.stderr
    (run_dir,) = [path for path in tmp_path.iterdir() if path.is_dir()]
    return run_dir


def test_kcv_fit_with_device_placement(tmp_path):
    run_dir = fit_smoke(
        tmp_path,
        REPO_ROOT / "recipes" / "digits.py",
        "augment.placement=device",
        "augment.ops=pad_crop:padding=1,rotate:degrees=10,gaussian_noise:stddev=4,mixup",
    )
    config = json.loads((run_dir / "config.json").read_text())
    assert config["augment"]["placement"] == "device" and [item["name"] for item in config["augment"]["ops"]] == [
        "pad_crop",
        "rotate",
        "gaussian_noise",
        "mixup",
    ]
    assert json.loads((run_dir / "metrics.json").read_text())["test"]["accuracy"] > 0


HEAVY_RECIPE = '''"""Digits in colour with a heavy augmentation set, for tests."""
from kerascv_app.config import SEED_PRESET, AugmentConfig, Config, DataConfig, ModelConfig, TrainConfig, op


def get_config():
    return Config(
        name="heavy",
        data=DataConfig(source="digits", image_size=(16, 16), channels=3, batch_size=32),
        augment=AugmentConfig(ops=SEED_PRESET + (
            op("rotate", degrees=15), op("brightness"), op("contrast"), op("saturation"), op("hue"),
            op("gaussian_noise", stddev=6), op("salt_pepper"), op("erasing"),
                op("randaugment", num_ops=1, magnitude=5), op("cutmix"),
        ), placement="pipeline", normalization="imagenet"),
        model=ModelConfig(name="seed_cnn", hidden_units=16),
        train=TrainConfig(epochs=1, optimizer="adamw", learning_rate=1e-3),
    )
'''


# Under tensorflow only: pipeline augmentation is tf.data, the same graph under every backend (the
# model behind it is a plain seed_cnn); the device-side set trains under each backend above.
@pytest.mark.backends("tensorflow")
def test_kcv_fit_with_a_heavy_set_in_the_pipeline(tmp_path):
    recipe = tmp_path / "heavy.py"
    recipe.write_text(HEAVY_RECIPE)
    run_dir = fit_smoke(tmp_path / "runs", recipe)
    assert json.loads((run_dir / "metrics.json").read_text())["test"]["accuracy"] > 0


def test_kcv_preview_writes_a_grid(tmp_path):
    from PIL import Image

    from kerascv_app.augment.preview import figure_size_pixels

    out = tmp_path / "grid.png"
    result = run_kcv(
        "preview",
        REPO_ROOT / "recipes" / "digits.py",
        "--n",
        10,
        "--out",
        out,
        "--set",
        "augment.ops=pad_crop:padding=1,mixup",
    )
    assert result.returncode == 0, result.stderr
    with Image.open(out) as grid:
        assert grid.format == "PNG" and grid.size == figure_size_pixels(10)


@pytest.mark.backend_independent  # refused before a backend is chosen
@pytest.mark.parametrize(
    "arguments, fragment",
    [
        (("--n", "0"), "--n 0 is invalid"),
        (("--out", "grid.jpg"), "must be a .png file"),
        (("--out", "missing/grid.png"), "does not exist"),
    ],
)
def test_kcv_preview_refuses_bad_input_in_one_line(tmp_path, arguments, fragment):
    options = {"--n": "4", "--out": "grid.png"}
    options.update(dict(zip(arguments[::2], arguments[1::2])))
    # Checked before the recipe is read: in this process.
    result = kcv_in_process(
        "preview",
        REPO_ROOT / "recipes" / "digits.py",
        *[item for pair in options.items() for item in pair],
        cwd=tmp_path,
    )
    assert_one_line_error(result, fragment)
