"""Augmentation specs: checked when the recipe loads, named in errors, round-tripped through JSON."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from kcv_testing import REPO_ROOT, assert_one_line_error, kcv_in_process

from kerascv_app.augment.spec import OP_SCHEMAS, SEED_PRESET, parse_op_text, split_by_placement
from kerascv_app.config import AugmentConfig, Config, DataConfig, op
from kerascv_app.errors import UserError
from kerascv_app.recipe import load_recipe

# Specs are plain Python, checked when a config is made: no Keras backend is involved (the
# refusal through kcv fit comes before keras is imported), so the tensorflow run covers them.
pytestmark = pytest.mark.backend_independent


@pytest.mark.parametrize(
    "make, fragments",
    [
        (lambda: op("flip", probability=1.5), ["'flip'", "probability = 1.5", "[0, 1]"]),
        (lambda: op("randaugment", magnitude=-1), ["'randaugment'", "magnitude = -1", "[0, 10]"]),
        (lambda: op("blur"), ["'blur' is unknown", "rotate"]),
        (lambda: op("rotate", angle=10), ["'rotate' has no parameter 'angle'", "degrees"]),
        (lambda: op("rotate", fill="wrap"), ["'rotate'", "fill = 'wrap'", "'reflect'"]),
        (lambda: op("zoom", scale=(1.2, 0.8)), ["'zoom'", "scale = (1.2, 0.8)", "low <= high"]),
        (lambda: op("mixup", alpha=0), ["'mixup'", "alpha = 0", "(0, 10]"]),
        (lambda: op("pad_crop", padding=2.5), ["'pad_crop'", "padding = 2.5", "an integer"]),
        (lambda: op("gaussian_noise", stddev=True), ["'gaussian_noise'", "stddev = True"]),
    ],
)
def test_bad_parameters_are_refused_naming_the_op_and_the_value(make, fragments):
    with pytest.raises(UserError) as error:
        make()
    for fragment in fragments:
        assert fragment in str(error.value), (fragment, str(error.value))


def test_colour_ops_need_three_channels():
    with pytest.raises(UserError, match="'hue' needs colour images but data.channels = 1"):
        Config(data=DataConfig(channels=1), augment=AugmentConfig(ops=(op("hue"),)))
    with pytest.raises(UserError, match="'imagenet' needs colour images"):
        Config(data=DataConfig(channels=1), augment=AugmentConfig(normalization="imagenet"))


def test_overrides_see_each_other_whatever_their_order():
    config = Config(data=DataConfig(channels=1)).with_overrides(["augment.ops=hue:factor=0.1", "data.channels=3"])
    assert config.augment.ops == (op("hue", factor=0.1),)


def test_ops_round_trip_through_json():
    ops = SEED_PRESET + (
        op("zoom", scale=(0.9, 1.1)),
        op("erasing", fill="zero"),
        op("randaugment", num_ops=1, magnitude=5),
        op("mixup", alpha=0.4),
    )
    config = Config(augment=AugmentConfig(ops=ops, placement="device", normalization="imagenet"))
    values = json.loads(config.to_json())
    assert values["augment"]["ops"][2] == {
        "name": "zoom",
        "params": {"fill": "reflect", "probability": 1.0, "scale": [0.9, 1.1]},
    }
    assert Config.from_dict(values) == config


def test_command_line_form_of_ops():
    config = Config().with_overrides(["augment.ops=flip:mode=vertical,pad_crop:padding=4,zoom:scale=0.8/1.2,cutmix"])
    assert config.augment.ops == (
        op("flip", mode="vertical"),
        op("pad_crop", padding=4),
        op("zoom", scale=(0.8, 1.2)),
        op("cutmix"),
    )
    with pytest.raises(UserError, match="'rotate': degrees = -3"):
        parse_op_text("rotate:degrees=-3")
    with pytest.raises(UserError, match="is not key=value"):
        parse_op_text("rotate:15")


def test_every_op_has_a_meaning_and_valid_defaults():
    for name, schema in OP_SCHEMAS.items():
        assert schema.meaning
        assert op(name).arguments() == schema.defaults()


def test_mixing_ops_stay_in_the_pipeline_for_device_placement():
    ops = SEED_PRESET + (op("mixup"), op("rotate"))
    assert split_by_placement(ops, "pipeline") == (ops, ())
    assert split_by_placement(ops, "device") == ((op("mixup"),), SEED_PRESET + (op("rotate"),))


def test_seed_preset_is_the_source_augmentation():
    assert SEED_PRESET == (op("flip", mode="horizontal", probability=0.5), op("pad_crop", padding=4, fill="constant"))


def write_recipe(folder, ops_source: str):
    path = folder / "tiny.py"
    path.write_text(
        '"""A tiny recipe for tests."""\n'
        "from kerascv_app.config import AugmentConfig, Config, DataConfig, ModelConfig, TrainConfig, op\n\n\n"
        "def get_config():\n"
        "    return Config(name='tiny', data=DataConfig(source='digits', image_size=(8, 8), channels=1), "
        f"augment=AugmentConfig(ops={ops_source}),\n"
        "                  model=ModelConfig(hidden_units=8), train=TrainConfig(epochs=1))\n"
    )
    return path


@pytest.mark.parametrize(
    "ops_source, fragments",
    [
        ("(op('flip', probability=2.0),)", ["'flip'", "probability = 2.0"]),
        ("(op('randaugment', magnitude=-2),)", ["'randaugment'", "magnitude = -2"]),
        ("(op('warp'),)", ["'warp' is unknown"]),
        ("(op('rotate', radians=1),)", ["'rotate' has no parameter 'radians'"]),
    ],
)
def test_recipe_with_bad_ops_is_refused_at_load(tmp_path, ops_source, fragments):
    path = write_recipe(tmp_path, ops_source)
    with pytest.raises(UserError) as error:
        load_recipe(path)
    assert str(path) in str(error.value)
    for fragment in fragments:
        assert fragment in str(error.value)


def test_kcv_fit_refuses_a_bad_op_in_one_line(tmp_path):
    path = write_recipe(tmp_path, "(op('flip', probability=1.5),)")
    result = kcv_in_process("fit", path, "--runs-dir", tmp_path / "runs")
    assert_one_line_error(result, "'flip'", "probability = 1.5")
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_recipes_load_without_keras():
    code = (
        "import sys; from kerascv_app.recipe import load_recipe\n"
        f"load_recipe({str(REPO_ROOT / 'recipes' / 'cifar10_baseline.py')!r})\n"
        "assert 'keras' not in sys.modules and 'tensorflow' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
