"""Runs you can trust: a run that failed after training is never used, the smoke switch
never overrides what the user set, and config values that would train nonsense are refused."""

from __future__ import annotations

import json
import math

import pytest
from kcv_testing import REPO_ROOT, assert_one_line_error, kcv_in_process, run_kcv

from kerascv_app.config import Config, TrainConfig
from kerascv_app.errors import UserError

DIGITS = REPO_ROOT / "recipes" / "digits.py"


def test_a_failure_after_training_marks_the_run_failed_and_no_command_uses_its_model(
    tmp_path, digits_run, digit_images
):
    runs = tmp_path / "runs"
    result = run_kcv("fit", DIGITS, "--smoke", "--quiet", "--runs-dir", runs, env={"KCV_FAULT": "evaluation"})
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert [line for line in result.stderr.splitlines() if line.startswith("error:")] == [
        "error: RuntimeError: fault injected by KCV_FAULT=evaluation (an unexpected failure: set KCV_VERBOSE=1 to "
        "see the traceback)"
    ]
    (run_dir,) = list(runs.iterdir())
    # Training had saved model.keras and model.json before the failure: they are there,
    # and still no command may take them for the run's result.
    assert (run_dir / "model.keras").is_file() and (run_dir / "model.json").is_file()
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "failed" and "fault injected" in record["reason"]
    # The refusals come before any model is loaded: in this process.
    assert_one_line_error(
        kcv_in_process("export", run_dir, "--base", tmp_path / "saved_models"),
        str(run_dir),
        "failed, not finished",
        "fault injected",
    )
    assert not (tmp_path / "saved_models").exists()
    assert_one_line_error(kcv_in_process("predict", run_dir, digit_images[0]), "failed, not finished")
    assert_one_line_error(kcv_in_process("evaluate", run_dir), "did not finish", "failed")
    assert_one_line_error(
        kcv_in_process("ensemble", digits_run, run_dir, "--average", "--out", tmp_path / "ensemble"),
        "failed, not finished",
    )
    assert not (tmp_path / "ensemble").exists()


@pytest.mark.backend_independent  # the config alone: no Keras backend
def test_smoke_mode_keeps_what_the_user_set_explicitly():
    from kerascv_app.cli import _resolved_config

    config, _ = _resolved_config(DIGITS, ["train.epochs=3", "data.max_train=500"], None, 5, True)
    assert config.train.epochs == 3 and config.data.max_train == 500 and config.train.seed == 5
    # What the user did not set is still shrunk.
    assert config.data.max_eval == Config().smoke().data.max_eval
    plain, _ = _resolved_config(DIGITS, [], None, None, True)
    assert plain.train.epochs == 1


@pytest.mark.backend_independent  # the config alone: no Keras backend
@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan])
@pytest.mark.parametrize("field_name", ["learning_rate", "weight_decay", "label_smoothing", "warmup_epochs"])
def test_non_finite_numbers_are_refused_in_every_float_field(field_name, value):
    with pytest.raises(UserError, match=f"train.{field_name} = .* finite"):
        TrainConfig(**{field_name: value})


@pytest.mark.backend_independent  # the config alone: no Keras backend
@pytest.mark.parametrize("name", ["cifar/v2", "../escape", "", "my run"])
def test_a_name_keras_or_the_runs_folder_cannot_hold_is_refused(name):
    with pytest.raises(UserError, match="name = .* letters, digits"):
        Config(name=name)


@pytest.mark.parametrize("setting, expected", [("false", False), ("true", True)])
def test_the_jit_compile_setting_reaches_keras(setting, expected):
    from kerascv_app.data.prepare import prepare_data
    from kerascv_app.models import create_model
    from kerascv_app.train.fit import compile_model

    config = Config().with_overrides(
        ["data.image_size=8,8", "data.channels=1", "model.hidden_units=8", f"train.jit_compile={setting}"]
    )
    prepared = prepare_data(config, None)
    model = create_model(config, prepared.num_classes)
    compile_model(model, config, prepared)
    assert model.jit_compile is expected


@pytest.mark.backend_independent  # the config alone: no Keras backend
def test_an_unknown_jit_compile_setting_is_refused():
    with pytest.raises(UserError, match="train.jit_compile = 'maybe'"):
        TrainConfig(jit_compile="maybe")
