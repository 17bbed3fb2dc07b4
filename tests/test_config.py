"""The typed, frozen config: overrides, type checks, smoke mode, JSON round trip."""

from __future__ import annotations

import dataclasses

import pytest
from kcv_testing import REPO_ROOT

from kerascv_app.config import Config, DataConfig, TrainConfig
from kerascv_app.errors import UserError
from kerascv_app.recipe import load_recipe

# The config and the recipes are plain Python (a recipe loads without keras, see
# test_augment_spec): no Keras backend is involved, so the tensorflow run covers them.
pytestmark = pytest.mark.backend_independent

RECIPES = sorted((REPO_ROOT / "recipes").glob("*.py"))


def test_overrides_are_parsed_by_field_type():
    config = Config().with_overrides(
        [
            "train.epochs=5",
            "train.learning_rate=0.5",
            "train.nesterov=true",
            "data.image_size=16,24",
            "data.classes=cat,dog",
            "model.name=resnet",
        ]
    )
    assert config.train.epochs == 5 and config.train.learning_rate == 0.5 and config.train.nesterov is True
    assert (
        config.data.image_size == (16, 24) and config.data.classes == ("cat", "dog") and config.model.name == "resnet"
    )


def test_config_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        Config().train.epochs = 3


def test_json_round_trip():
    config = Config().with_overrides(["data.image_size=16,16", "data.classes=a,b", "train.warmup_epochs=1"])
    assert Config.from_dict(config.to_dict()) == config


@pytest.mark.parametrize(
    "make, fragment",
    [
        (lambda: TrainConfig(epochs="ten"), "train.epochs"),
        (lambda: TrainConfig(learning_rate=-1.0), "train.learning_rate"),
        (lambda: TrainConfig(optimizer="rmsprop"), "train.optimizer"),
        (lambda: DataConfig(image_size=(32,)), "data.image_size"),
        (lambda: DataConfig(channels=2), "data.channels"),
        (lambda: DataConfig(val_fraction=1.5), "data.val_fraction"),
        (lambda: TrainConfig(precision="float16"), "train.precision"),
    ],
)
def test_invalid_values_are_refused_by_name(make, fragment):
    with pytest.raises(UserError, match=fragment.replace(".", r"\.")):
        make()


def test_smoke_shrinks_the_run():
    smoke = Config(train=TrainConfig(epochs=30, warmup_epochs=2)).smoke()
    assert smoke.train.epochs == 1 and smoke.train.warmup_epochs == 0
    assert 0 < smoke.data.max_train <= 256 and 0 < smoke.data.max_eval <= 128


@pytest.mark.parametrize("recipe", RECIPES, ids=[path.stem for path in RECIPES])
def test_shipped_recipes_load_and_document_their_command(recipe):
    config, source = load_recipe(recipe)
    assert config.name == recipe.stem
    import ast

    docstring = ast.get_docstring(ast.parse(source))
    # Each part on its own: `A and B and C or D` once let a recipe without a Hardware line pass.
    for part in (f"kcv fit recipes/{recipe.name}", "Expected", "Hardware"):
        assert part in docstring, f"{recipe.name}'s docstring lacks {part!r}"
