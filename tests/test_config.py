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
        (lambda: TrainConfig(learning_rate_batch_size=-64), "train.learning_rate_batch_size"),
    ],
)
def test_invalid_values_are_refused_by_name(make, fragment):
    with pytest.raises(UserError, match=fragment.replace(".", r"\.")):
        make()


def test_rates_tuned_for_one_batch_size_are_scaled_linearly_to_the_run_s():
    tuned = Config(
        data=DataConfig(batch_size=1024),
        train=TrainConfig(learning_rate=1.5, fine_tune_learning_rate=0.01, learning_rate_batch_size=1024),
    )
    assert tuned.with_learning_rates_for_batch_size() == tuned
    smaller = tuned.with_overrides(["data.batch_size=128"]).with_learning_rates_for_batch_size()
    assert smaller.train.learning_rate == pytest.approx(0.1875)
    assert smaller.train.fine_tune_learning_rate == pytest.approx(0.00125)
    assert "learning rate: 0.1875, scaled from train.learning_rate = 1.5 for 1024" in (
        tuned.with_overrides(["data.batch_size=128"]).learning_rate_scaling_line()
    )
    assert tuned.learning_rate_scaling_line() is None
    # Applying it again (a resume recomputes the training config) changes nothing.
    assert smaller.with_learning_rates_for_batch_size() == smaller
    unscaled = Config(data=DataConfig(batch_size=64), train=TrainConfig(learning_rate=1.5))
    assert unscaled.with_learning_rates_for_batch_size() == unscaled


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
