"""Transfer learning on the backend under test: backbones, two training stages, bad backbones.

The source runs are tiny (digits, one epoch): a ResNet-8 of width 4 trained on RGB digits
0-4 (it has BatchNorm layers to watch) and the session's seed_cnn digits run (grayscale).
The target is digits 5-9, in grayscale at 12x12, so the model adapts channels and size.
"""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
from kcv_testing import (
    BACKEND,
    CIFAR10_JPEG,
    NO_CIFAR10_JPEG,
    REPO_ROOT,
    assert_one_line_error,
    kcv_in_process,
    run_kcv,
)

from kerascv_app.config import Config, DataConfig
from kerascv_app.errors import UserError
from kerascv_app.recipe import load_recipe

DIGITS_RECIPE = REPO_ROOT / "recipes" / "digits.py"
SOURCE_SETTINGS = ["model.name=resnet", "model.depth=8", "model.width=4", "data.channels=3", "data.classes=0,1,2,3,4"]
TARGET_SETTINGS = [
    "data.classes=5,6,7,8,9",
    "data.channels=1",
    "data.image_size=12,12",
    "data.max_train=96",
    "data.max_eval=48",
    "train.epochs=1",
]


@pytest.fixture(scope="module")
def rgb_source_run(tmp_path_factory):
    """A finished ResNet-8 run on RGB digits 0-4: the backbone of these tests."""
    runs = tmp_path_factory.mktemp("source_runs")
    overrides = [argument for setting in SOURCE_SETTINGS for argument in ("--set", setting)]
    result = kcv_in_process("fit", DIGITS_RECIPE, "--smoke", "--quiet", "--runs-dir", runs, *overrides)
    assert result.returncode == 0, result.stderr
    (run_dir,) = [path for path in runs.iterdir() if path.is_dir()]
    return run_dir


def target_config(backbone: str, *settings: str) -> Config:
    config, _ = load_recipe(DIGITS_RECIPE)
    return config.with_overrides([f"model.backbone={backbone}", *TARGET_SETTINGS, *settings])


def weights_by_name(model) -> dict:
    """Each weight as "layer/variable", e.g. "stage3_block1_bn1/moving_mean"."""
    import keras

    return {
        f"{layer.name}/{variable.name}": keras.ops.convert_to_numpy(variable)
        for layer in model.layers
        for variable in layer.weights
    }


def source_features(run_dir, layer_name: str, images):
    import keras

    from kerascv_app.model_dir import open_model_directory

    source = open_model_directory(run_dir).load_model()
    cut = keras.Model(source.input, source.get_layer(layer_name).output)
    return keras.ops.convert_to_numpy(cut(images))


def random_images(shape, seed: int = 0):
    return np.random.default_rng(seed).integers(0, 256, size=shape).astype("float32")


# ---------------------------------------------------------------------------- backbones


def test_a_run_backbone_is_the_run_model_cut_at_the_layer_feeding_its_classifier(rgb_source_run, digits_run):
    import keras

    from kerascv_app.models.backbones import load_backbone

    backbone = load_backbone(target_config(f"run:{rgb_source_run}")).model
    assert backbone.name == "backbone" and backbone.layers[-1].name == "pool"
    assert backbone.inputs[0].shape[1:] == (8, 8, 3)
    # Its own normalisation, once; none of the source's classifier.
    names = [layer.name for layer in backbone.layers]
    assert names.count("normalize") == 1 and "classifier" not in names
    images = random_images((3, 8, 8, 3))
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(backbone(images)), source_features(rgb_source_run, "pool", images), atol=1e-5
    )
    # seed_cnn: the classifier fc2 is fed by fc1 through a dropout layer, which stays behind.
    grayscale = load_backbone(target_config(f"run:{digits_run}", "data.channels=1")).model
    assert grayscale.layers[-1].name == "fc1" and grayscale.inputs[0].shape[1:] == (8, 8, 1)


def test_the_source_runs_augmentation_layer_stays_behind(tmp_path):
    from kerascv_app.config import SEED_PRESET, AugmentConfig, ModelConfig
    from kerascv_app.model_dir import ModelDirectory
    from kerascv_app.models import create_model
    from kerascv_app.models.backbones import load_backbone

    source_config = Config(
        data=DataConfig(image_size=(8, 8)),
        augment=AugmentConfig(ops=SEED_PRESET, placement="device"),
        model=ModelConfig(hidden_units=8),
    )
    source = create_model(source_config, num_classes=3)
    assert "augment" in [layer.name for layer in source.layers]
    source.save(tmp_path / "model.keras")
    ModelDirectory(
        path=tmp_path,
        kind="run",
        class_names=("a", "b", "c"),
        image_size=(8, 8),
        channels=3,
        precision="float32",
        backend=BACKEND,
    ).write()
    backbone = load_backbone(
        Config(data=DataConfig(image_size=(8, 8))).with_overrides([f"model.backbone=run:{tmp_path}"])
    ).model
    assert [layer.name for layer in backbone.layers][:2] == ["backbone_image", "normalize"]
    assert "augment" not in [layer.name for layer in backbone.layers] and backbone.layers[-1].name == "fc1"


def test_the_transfer_model_adapts_inputs_and_applies_preprocessing_once(rgb_source_run):
    import keras

    from kerascv_app.models import create_model

    model = create_model(target_config(f"run:{rgb_source_run}"), num_classes=5)
    names = [layer.name for layer in model.layers]
    assert names[:4] == ["image", "grayscale_to_rgb", "resize_to_backbone", "backbone"]
    assert "normalize" not in names and model.get_layer("classifier").units == 5
    assert model.get_layer("backbone").trainable is False
    # The features the head sees are the source model's features of the adapted image.
    grayscale = random_images((2, 12, 12, 1))
    adapted = keras.ops.convert_to_numpy(
        keras.Model(model.input, model.get_layer("resize_to_backbone").output)(grayscale)
    )
    # What feeds the classifier: the backbone's features (the head's dropout is off at inference).
    features = keras.Model(model.input, model.get_layer("classifier").input)(grayscale)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(features), source_features(rgb_source_run, "pool", adapted), atol=1e-5
    )


def test_a_keras_applications_backbone_loads_weights_from_a_local_file(tmp_path):
    import keras

    from kerascv_app.custom_objects import register_custom_objects
    from kerascv_app.models import create_model

    reference = keras.applications.MobileNet(include_top=False, weights=None, input_shape=(32, 32, 3))
    weights_path = tmp_path / "mobilenet_notop.weights.h5"
    reference.save_weights(weights_path)
    config = Config(data=DataConfig(image_size=(32, 32), channels=1)).with_overrides(
        ["model.backbone=keras:MobileNet", f"model.backbone_weights={weights_path}"]
    )
    model = create_model(config, num_classes=3)
    backbone = model.get_layer("backbone")
    for expected, actual in zip(reference.get_weights(), backbone.get_weights()):
        np.testing.assert_array_equal(expected, actual)
    # MobileNet expects preprocess_input's "tf" mode: it is the backbone's first layer, once.
    assert [layer.name for layer in model.layers][:3] == ["image", "grayscale_to_rgb", "backbone"]
    assert [layer.name for layer in backbone.layers][:2] == ["backbone_image", "preprocess"] and backbone.layers[
        1
    ].mode == "tf"
    assert [layer.name for layer in model.layers][-3:] == ["head_pool", "classifier", "logits"]
    # Weights are compared rather than outputs: a first eager call of this net takes JAX ~10 s.
    model.save(tmp_path / "model.keras")
    register_custom_objects()
    reloaded = keras.saving.load_model(tmp_path / "model.keras", safe_mode=True)
    assert [layer.name for layer in reloaded.layers] == [layer.name for layer in model.layers]
    for expected, actual in zip(model.get_weights(), reloaded.get_weights()):
        np.testing.assert_array_equal(expected, actual)


@pytest.mark.parametrize("mode", ["tf", "torch", "caffe"])
def test_imagenet_preprocessing_matches_keras_applications_and_round_trips(mode):
    import keras

    from kerascv_app.models.layers import ImagenetPreprocessing

    images = random_images((2, 4, 4, 3))
    expected = keras.applications.imagenet_utils.preprocess_input(images.copy(), mode=mode)
    layer = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(ImagenetPreprocessing(mode)))
    assert isinstance(layer, ImagenetPreprocessing) and layer.mode == mode
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer(images)), expected, rtol=1e-5, atol=1e-4)


# ---------------------------------------------------------------------------- blocks


def test_blocks_are_found_from_the_graph(rgb_source_run):
    from kerascv_app.models.backbones import load_backbone
    from kerascv_app.models.blocks import backbone_blocks
    from kerascv_app.models.transfer import unfreeze_backbone

    backbone = load_backbone(target_config(f"run:{rgb_source_run}")).model
    blocks = backbone_blocks(backbone)
    assert [block[0].name for block in blocks] == [
        "normalize",
        "stage1_block1_conv1",
        "stage2_block1_conv1",
        "stage3_block1_conv1",
    ]
    assert blocks[-1][-1].name == "pool"

    from kerascv_app.models import create_model

    model = create_model(target_config(f"run:{rgb_source_run}"), num_classes=5)
    unfrozen = unfreeze_backbone(model, unfreeze_top=1)
    assert unfrozen and all(name.startswith("stage3_block1") for name in unfrozen)
    with pytest.raises(UserError, match="train.unfreeze_top = 9 but the backbone has 4 blocks"):
        create_model(
            target_config(f"run:{rgb_source_run}", "train.fine_tune_epochs=1", "train.unfreeze_top=9"), num_classes=5
        )


# ---------------------------------------------------------------------------- two stages


def test_stage_one_leaves_the_backbone_unchanged_and_stage_two_fine_tunes_its_top(rgb_source_run, tmp_path):
    from kerascv_app.model_dir import open_model_directory
    from kerascv_app.models.backbones import load_backbone
    from kerascv_app.train.fit import fit

    source = weights_by_name(load_backbone(target_config(f"run:{rgb_source_run}")).model)
    moving_means = [name for name in source if name.endswith("moving_mean")]
    assert moving_means, "the source backbone should have BatchNorm statistics"

    head_only = fit(
        target_config(f"run:{rgb_source_run}"), "", BACKEND, runs_dir=tmp_path / "stage1", show_progress=False
    )
    after_stage_one = weights_by_name(open_model_directory(head_only.path).load_model().get_layer("backbone"))
    for name, value in source.items():
        np.testing.assert_array_equal(after_stage_one[name], value, err_msg=name)

    fine_tuned = fit(
        target_config(f"run:{rgb_source_run}", "train.fine_tune_epochs=1", "train.unfreeze_top=1"),
        "",
        BACKEND,
        runs_dir=tmp_path / "stage2",
        show_progress=False,
    )
    model = open_model_directory(fine_tuned.path).load_model()
    after_stage_two = weights_by_name(model.get_layer("backbone"))
    changed = {name for name, value in source.items() if not np.array_equal(after_stage_two[name], value)}
    # The top block (kernels and BatchNorm statistics) learned; the blocks below did not.
    assert "stage3_block1_conv1/kernel" in changed and "stage3_block1_bn1/moving_mean" in changed
    assert all(name.startswith("stage3_block1") for name in changed), changed
    assert model.get_layer("classifier").units == 5
    with open(fine_tuned.file("history.csv")) as handle:
        assert [(row["epoch"], row["stage"]) for row in csv.DictReader(handle)] == [("0", "1"), ("1", "2")]
    transfer = fine_tuned.read_json("environment.json")["transfer"]
    assert transfer["backbone"] == f"run:{rgb_source_run.resolve()}" and transfer["feature_layer"] == "pool"
    assert transfer["input_adaptation"] == [
        "grayscale to RGB: the channel repeated 3 times (grayscale_to_rgb)",
        "resized from 12x12 to 8x8, bilinear (resize_to_backbone)",
    ]
    assert transfer["preprocessing"].startswith("the backbone run's own normalize layer")
    assert [stage["stage"] for stage in transfer["stages"]] == [1, 2]


# Under jax: tests/test_resume_stages.py resumes a transfer run inside each stage, exactly.
@pytest.mark.backends("tensorflow", "torch")
def test_a_transfer_run_resumes_in_stage_two_and_exports_like_any_run(rgb_source_run, tmp_path):
    from test_fit_cli import assert_complete_run

    runs = tmp_path / "runs"
    overrides = [
        argument for setting in (*TARGET_SETTINGS, "train.fine_tune_epochs=2") for argument in ("--set", setting)
    ]
    arguments = [
        "fit",
        DIGITS_RECIPE,
        "--quiet",
        "--runs-dir",
        runs,
        "--set",
        "model.backbone=run:latest:digits",
        *overrides,
    ]
    # run:latest:digits finds the source in its own runs folder, which is the --runs-dir here.
    shutil.copytree(rgb_source_run, runs / rgb_source_run.name)
    killed = run_kcv(*arguments, env={"KCV_KILL_AFTER_EPOCH": "2"})
    assert killed.returncode != 0
    (run_dir,) = [path for path in runs.iterdir() if path.is_dir() and path.name != rgb_source_run.name]
    config = json.loads((run_dir / "config.json").read_text())
    assert config["model"]["backbone"] == f"run:{(runs / rgb_source_run.name).resolve()}"

    resumed = run_kcv("fit", "--resume", run_dir, "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    assert_complete_run(run_dir, "digits", 5)
    with open(run_dir / "history.csv") as handle:
        assert [(row["epoch"], row["stage"]) for row in csv.DictReader(handle)] == [("0", "1"), ("1", "2"), ("2", "2")]
    assert not (run_dir / "backup").exists()
    exported = run_kcv("export", run_dir, "--base", tmp_path / "saved_models")
    assert exported.returncode == 0, exported.stderr
    assert (tmp_path / "saved_models" / "digits" / "1" / "saved_model.pb").is_file()


# ---------------------------------------------------------------------------- bad backbones


def test_a_grayscale_backbone_refuses_colour_images_in_one_line_and_leaves_no_run(digits_run, tmp_path):
    # Refused while the model is built, before a run folder exists: in this process.
    result = kcv_in_process(
        "fit",
        DIGITS_RECIPE,
        "--smoke",
        "--runs-dir",
        tmp_path / "runs",
        "--set",
        f"model.backbone=run:{digits_run}",
        "--set",
        "data.channels=3",
    )
    assert_one_line_error(result, "takes grayscale images (1 channel) but data.channels = 3", "data.channels=1")
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_imagenet_weights_offline_name_the_file_to_provide(tmp_path):
    # A real process: keras reads KERAS_HOME when it is imported.
    offline = {
        "https_proxy": "http://127.0.0.1:9",
        "HTTPS_PROXY": "http://127.0.0.1:9",
        "KERAS_HOME": str(tmp_path / "keras_home"),
    }
    result = run_kcv(
        "fit",
        DIGITS_RECIPE,
        "--smoke",
        "--runs-dir",
        tmp_path / "runs",
        "--set",
        "model.backbone=keras:MobileNet",
        "--set",
        "model.backbone_weights=imagenet",
        "--set",
        "data.image_size=32,32",
        env=offline,
    )
    expected_place = tmp_path / "keras_home" / "models" / "mobilenet_1_0_224_tf_no_top.h5"
    assert_one_line_error(result, "cannot be downloaded", f"put it at {expected_place}", "model.backbone_weights=PATH")


@pytest.mark.parametrize(
    "settings, fragment",
    [
        (["model.backbone=run:/nonexistent/run"], "/nonexistent/run does not exist"),
        (["model.backbone=run:{garbage}"], "is not a valid .keras file"),
        (["model.backbone=run:{ensemble}"], "is an ensemble"),
        (["model.backbone=keras:NoSuchNet"], "is not a supported keras.applications model"),
        (
            [
                "model.backbone=keras:MobileNet",
                "model.backbone_weights=/nonexistent.weights.h5",
                "data.image_size=32,32",
            ],
            "does not exist",
        ),
        (
            ["model.backbone=keras:MobileNet", "model.backbone_weights={other_weights}", "data.image_size=32,32"],
            "does not fit keras:MobileNet",
        ),
        (["model.backbone=run:{source}", "model.feature_layer=nope"], "model.feature_layer = 'nope' is not a layer"),
    ],
    ids=[
        "missing",
        "wrong-file",
        "ensemble",
        "unknown-application",
        "missing-weights",
        "wrong-weights",
        "unknown-feature-layer",
    ],
)
def test_bad_backbones_are_refused_by_name(rgb_source_run, tmp_path, settings, fragment):
    import keras

    from kerascv_app.models import create_model

    garbage = tmp_path / "garbage"
    shutil.copytree(rgb_source_run, garbage)
    (garbage / "model.keras").write_bytes(b"not a keras file")
    ensemble = tmp_path / "ensemble"
    ensemble.mkdir()
    info = json.loads((rgb_source_run / "model.json").read_text())
    (ensemble / "model.json").write_text(json.dumps({**info, "kind": "ensemble"}))
    other_weights = tmp_path / "other.weights.h5"
    keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)]).save_weights(other_weights)
    values = {"garbage": garbage, "ensemble": ensemble, "other_weights": other_weights, "source": rgb_source_run}
    config = Config(data=DataConfig(image_size=(8, 8))).with_overrides(
        [setting.format(**values) for setting in settings]
    )
    with pytest.raises(UserError, match=fragment.replace(".", r"\.")):
        create_model(config, num_classes=3)


def test_run_latest_needs_a_finished_run_of_that_recipe(rgb_source_run, tmp_path):
    from kerascv_app.models.backbones import resolve_backbone

    config = Config().with_overrides(["model.backbone=run:latest:digits"])
    resolved = resolve_backbone(config, rgb_source_run.parent)
    assert resolved.model.backbone == f"run:{rgb_source_run.resolve()}"
    with pytest.raises(UserError, match="holds no finished run of recipe cifar5_pretrain"):
        resolve_backbone(Config().with_overrides(["model.backbone=run:latest:cifar5_pretrain"]), rgb_source_run.parent)


@pytest.mark.backend_independent  # the config and NumPy splits: no Keras backend
@pytest.mark.parametrize(
    "settings, fragment",
    [
        (["train.fine_tune_epochs=3"], "need model.backbone"),
        (["model.backbone=run"], "model.backbone"),
        (["model.backbone=torchvision:resnet18"], "model.backbone"),
        (["model.backbone=run:some/run", "model.backbone_weights=x.h5"], "model.backbone_weights"),
        (["model.feature_layer=fc1"], "model.feature_layer"),
        (["data.labelled_per_class=-1"], "data.labelled_per_class"),
    ],
)
def test_transfer_fields_are_checked(settings, fragment):
    with pytest.raises(UserError, match=fragment.replace(".", r"\.")):
        Config().with_overrides(settings)


@pytest.mark.backend_independent  # the config and NumPy splits: no Keras backend
def test_smoke_shrinks_both_stages():
    config = (
        Config()
        .with_overrides(["model.backbone=keras:MobileNet", "train.epochs=15", "train.fine_tune_epochs=30"])
        .smoke()
    )
    assert config.train.epochs == 1 and config.train.fine_tune_epochs == 1


@pytest.mark.backend_independent  # the config and NumPy splits: no Keras backend
def test_labelled_per_class_caps_each_class_before_the_validation_split():
    from kerascv_app.data.sources import load_digits
    from kerascv_app.data.splits import make_splits

    data = load_digits()
    uncapped = make_splits(data, DataConfig(val_fraction=0.2))
    splits = make_splits(data, DataConfig(val_fraction=0.2, labelled_per_class=25))
    assert np.bincount(splits.train.labels).tolist() == [20] * 10
    assert np.bincount(splits.validation.labels).tolist() == [5] * 10
    # The test split is the same images whatever the budget.
    assert splits.record()["test_fingerprint"] == uncapped.record()["test_fingerprint"]


# ---------------------------------------------------------------------------- the shipped experiment


# Under tensorflow only: the three recipes chain runs through run:latest, which reads run records;
# pre-training, transfer and fine-tuning themselves are tested under every backend above.
@pytest.mark.shared_data
@pytest.mark.slow
@pytest.mark.backends("tensorflow")
@pytest.mark.skipif(not CIFAR10_JPEG.is_file(), reason=NO_CIFAR10_JPEG)
def test_the_cifar5_recipes_pretrain_transfer_and_train_from_scratch(tmp_path):
    runs = tmp_path / "runs"
    for recipe in ("cifar5_pretrain", "cifar5_transfer", "cifar5_scratch"):
        result = run_kcv(
            "fit",
            REPO_ROOT / "recipes" / f"{recipe}.py",
            "--data",
            CIFAR10_JPEG,
            "--smoke",
            "--quiet",
            "--runs-dir",
            runs,
        )
        assert result.returncode == 0, (recipe, result.stderr)
    records = {run.name.rsplit("-", 2)[0]: run for run in runs.iterdir()}
    assert sorted(records) == ["cifar5_pretrain", "cifar5_scratch", "cifar5_transfer"]
    transfer = json.loads((records["cifar5_transfer"] / "environment.json").read_text())
    assert transfer["class_names"] == ["dog", "frog", "horse", "ship", "truck"]
    assert transfer["transfer"]["backbone"] == f"run:{records['cifar5_pretrain'].resolve()}"
    assert transfer["transfer"]["feature_layer"] == "fc1" and transfer["transfer"]["input_adaptation"] == []
