"""Mixed precision on the backend under test: loss scaling, training, and save and reload.

Measured on the CPU with Keras 3.15: all three backends train mixed_float16 (Keras's compile
wraps the optimizer in a LossScaleOptimizer on each) and mixed_bfloat16 (no loss scaling:
bfloat16 has float32's exponent range). A model reloaded without its policy keeps its
layers' policies but gets a plain optimizer and drops its state, which is why model.json
records the policy and ModelDirectory.load_model sets it first.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from kcv_testing import BACKEND, REPO_ROOT, kcv_in_process, run_kcv

MIXED_POLICIES = ("mixed_float16", "mixed_bfloat16")


@pytest.fixture(autouse=True)
def float32_afterwards():
    """The dtype policy is global: each test leaves it as the other tests expect it."""
    yield
    from kerascv_app.backend import set_precision

    set_precision("float32")


def tiny_model():
    import keras

    inputs = keras.Input((8, 8, 1))
    features = keras.layers.Conv2D(4, 3, activation="relu", name="convolution")(inputs)
    features = keras.layers.GlobalAveragePooling2D(name="pooling")(features)
    # Logits stay float32, as the models of kerascv_app.models do, so that softmax and loss are exact.
    logits = keras.layers.Dense(3, dtype="float32", name="logits")(features)
    model = keras.Model(inputs, logits)
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss=keras.losses.CategoricalCrossentropy(from_logits=True))
    return model


@pytest.mark.parametrize("policy", MIXED_POLICIES)
def test_mixed_precision_trains_and_reloads_with_its_policy(tmp_path, policy):
    import keras

    from kerascv_app.backend import set_precision
    from kerascv_app.model_dir import ModelDirectory

    set_precision(policy)
    model = tiny_model()
    # Keras's compile adds loss scaling for float16 only: bfloat16 does not underflow.
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer) == (policy == "mixed_float16")
    assert model.get_layer("convolution").compute_dtype == policy.removeprefix("mixed_")
    assert model.get_layer("convolution").variable_dtype == "float32"
    images = np.random.default_rng(0).uniform(0, 1, (16, 8, 8, 1)).astype("float32")
    labels = np.eye(3, dtype="float32")[np.arange(16) % 3]
    history = model.fit(images, labels, batch_size=8, epochs=2, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    assert keras.backend.standardize_dtype(model(images[:2]).dtype) == "float32"

    model.save(tmp_path / "model.keras")
    directory = ModelDirectory(
        path=tmp_path,
        kind="run",
        class_names=("a", "b", "c"),
        image_size=(8, 8),
        channels=1,
        precision=policy,
        backend=BACKEND,
    )
    directory.write()
    set_precision("float32")  # A fresh process: the policy comes from model.json, not from here.
    reloaded = directory.load_model()
    assert reloaded.get_layer("convolution").dtype_policy.name == policy
    assert isinstance(reloaded.optimizer, keras.optimizers.LossScaleOptimizer) == (policy == "mixed_float16")
    for original, restored in zip(model.get_weights(), reloaded.get_weights()):
        np.testing.assert_array_equal(original, restored)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(reloaded(images)), keras.ops.convert_to_numpy(model(images)), atol=1e-6
    )


def test_a_mixed_float16_run_records_its_policy_and_reloads_under_it(tmp_path):
    """kcv fit --precision mixed_float16: model.json and environment.json name the policy,
    kcv evaluate reproduces the test accuracy, and the model reloads with loss scaling."""
    import keras

    from kerascv_app.model_dir import open_model_directory

    result = run_kcv(
        "fit",
        REPO_ROOT / "recipes" / "digits.py",
        "--smoke",
        "--quiet",
        "--precision",
        "mixed_float16",
        "--runs-dir",
        tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = [path for path in tmp_path.iterdir() if path.is_dir()]
    assert json.loads((run_dir / "model.json").read_text())["precision"] == "mixed_float16"
    assert json.loads((run_dir / "environment.json").read_text())["precision"] == "mixed_float16"
    evaluated = kcv_in_process("evaluate", run_dir, "--json")
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    test_metrics = json.loads((run_dir / "metrics.json").read_text())["test"]
    assert json.loads(evaluated.stdout)["accuracy"] == pytest.approx(test_metrics["accuracy"], abs=1e-6)

    model = open_model_directory(run_dir).load_model()
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    policies = {layer.dtype_policy.name for layer in model.layers if layer.weights}
    # Every layer with weights computes in float16 except the float32 classifier.
    assert "mixed_float16" in policies and policies <= {"mixed_float16", "float32"}
