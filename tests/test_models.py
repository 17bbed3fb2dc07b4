"""Every registered model: builds, names its layers, saves and reloads with the same outputs."""

from __future__ import annotations

import numpy as np
import pytest

from kerascv_app.config import SEED_PRESET, AugmentConfig, Config, DataConfig, ModelConfig, op
from kerascv_app.errors import UserError
from kerascv_app.models import create_model, model_names, register_model

TINY = {
    "seed_cnn": ModelConfig(name="seed_cnn", hidden_units=8, dropout=0.1, l1=1e-5, l2=1e-4),
    "resnet": ModelConfig(name="resnet", depth=8, width=4),
    "airbench_net": ModelConfig(name="airbench_net", width=4),
}


@pytest.mark.parametrize("name", model_names())
def test_model_builds_saves_and_reloads(tmp_path, name):
    import keras

    config = Config(
        data=DataConfig(image_size=(16, 16)),
        augment=AugmentConfig(ops=SEED_PRESET + (op("rotate", degrees=10), op("brightness")), placement="device"),
        model=TINY[name],
    )
    model = create_model(config, num_classes=5)
    inputs = np.random.default_rng(0).integers(0, 255, (2, 16, 16, 3)).astype("float32")
    outputs = keras.ops.convert_to_numpy(model(inputs, training=False))
    assert outputs.shape == (2, 5)
    # Every layer is named on purpose, none left to Keras's automatic names.
    for layer in model.layers:
        assert not any(
            layer.name.startswith(auto)
            for auto in ("conv2d", "dense", "batch_normalization", "max_pooling2d", "re_lu", "add", "dropout")
        ), layer.name
    path = tmp_path / "model.keras"
    model.save(path)
    reloaded = keras.saving.load_model(path)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(reloaded(inputs, training=False)), outputs, atol=1e-5)


def test_seed_cnn_matches_the_source_layout():
    model = create_model(Config(model=ModelConfig(name="seed_cnn")), num_classes=10)
    assert [model.get_layer(f"conv{i}").filters for i in (1, 2, 3)] == [32, 64, 64]
    # The third pooling makes fc1 take 64 * 4 * 4 inputs, as the source's view() expects.
    assert model.get_layer("fc1").kernel.shape == (64 * 4 * 4, 512)
    assert model.get_layer("fc2").kernel.shape == (512, 10)


def test_regularizers_add_losses():
    model = create_model(Config(model=ModelConfig(name="seed_cnn", hidden_units=8, l2=1e-3)), num_classes=3)
    model(np.zeros((1, 32, 32, 3), "float32"))
    assert len(model.losses) == 2


def test_resnet_refuses_a_depth_that_is_not_6n_plus_2():
    with pytest.raises(UserError, match="6n\\+2"):
        create_model(Config(model=ModelConfig(name="resnet", depth=10)), num_classes=3)


def test_registry_refuses_duplicates_and_unknown_names():
    with pytest.raises(ValueError, match="already registered"):
        register_model("seed_cnn")(lambda *a: None)
    with pytest.raises(UserError, match="unknown"):
        create_model(Config(model=ModelConfig(name="nope")), num_classes=3)
