"""Two-stage transfer runs resume inside either stage with the uninterrupted run's weights."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from kcv_testing import REPO_ROOT, run_kcv
from test_resume import model_weights, single_run

DIGITS = REPO_ROOT / "recipes" / "digits.py"
SOURCE_SETTINGS = ["model.name=resnet", "model.depth=8", "model.width=4", "data.classes=0,1,2,3,4"]
# 96 training images in batches of 32: 3 steps an epoch; stage 1 is epoch 0, stage 2 epochs 1-2.
TARGET_SETTINGS = [
    "data.classes=5,6,7,8,9",
    "data.max_train=96",
    "data.max_eval=48",
    "train.epochs=1",
    "train.fine_tune_epochs=2",
    "train.checkpoint_every=1",
]


def settings(*assignments: str) -> list[str]:
    return [argument for assignment in assignments for argument in ("--set", assignment)]


@pytest.fixture(scope="module")
def target_arguments(tmp_path_factory):
    runs = tmp_path_factory.mktemp("source")
    result = run_kcv("fit", DIGITS, "--smoke", "--quiet", "--runs-dir", runs, *settings(*SOURCE_SETTINGS))
    assert result.returncode == 0, result.stderr
    return ["fit", DIGITS, "--quiet", *settings(f"model.backbone=run:{single_run(runs)}", *TARGET_SETTINGS)]


# Under jax only. tensorflow and torch kill and resume a transfer run inside stage two in
# tests/test_transfer.py (test_a_transfer_run_resumes_in_stage_two_and_exports_like_any_run).
# A known bug: under torch the resumed transfer run's weights differ from the uninterrupted
# run's (by 4e-5 in one run, and its stage-2 optimizer moments by 1e-2 in another); the cause is
# not found yet.
@pytest.mark.backends("jax")
def test_a_transfer_run_killed_inside_stage_one_and_inside_stage_two_ends_with_the_uninterrupted_weights(
    target_arguments, tmp_path
):
    uninterrupted = run_kcv(*target_arguments, "--runs-dir", tmp_path / "uninterrupted")
    assert uninterrupted.returncode == 0, uninterrupted.stderr

    runs = tmp_path / "killed"
    killed = run_kcv(*target_arguments, "--runs-dir", runs, env={"KCV_KILL_AT": "0:2"})
    assert killed.returncode == -9, killed.stderr
    run_dir = single_run(runs)
    killed = run_kcv("fit", "--resume", run_dir, "--quiet", env={"KCV_KILL_AT": "1:2"})
    assert killed.returncode == -9, killed.stderr
    assert "at epoch 1, batch 3 of 3 (stage 1)" in killed.stderr
    finished = run_kcv("fit", "--resume", run_dir, "--quiet", env={"KCV_KILL_AT": ""})
    assert finished.returncode == 0, finished.stderr
    assert "at epoch 2, batch 3 of 3 (stage 2)" in finished.stderr

    expected, got = model_weights(single_run(tmp_path / "uninterrupted")), model_weights(run_dir)
    assert expected.keys() == got.keys()
    for name in expected:
        np.testing.assert_array_equal(got[name], expected[name], err_msg=name)
    with open(run_dir / "history.csv") as handle:
        assert [(row["epoch"], row["stage"]) for row in csv.DictReader(handle)] == [("0", "1"), ("1", "2"), ("2", "2")]
