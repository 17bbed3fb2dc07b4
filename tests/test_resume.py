"""Preemptible training (issue 13) and the resume items of issue 12.

The equivalence test kills a run with SIGKILL (fault injection, KCV_KILL_AT) at the first
batch, at the last batch and at the epoch boundary, damages the newest checkpoint once,
resumes each time, and expects the weights of the uninterrupted run with the same seed,
bit for bit: on the CPU every backend is deterministic here, and any difference in data
order, optimizer state, learning-rate position or random state would show. A run that
restarted its epoch would need the data order and the generator states of that epoch's
start, which it no longer has: the weights would differ.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest
from kcv_testing import BACKEND, REPO_ROOT, assert_one_line_error, kcv_in_process, run_kcv

DIGITS = REPO_ROOT / "recipes" / "digits.py"
# 11 batches an epoch (1,293 training images); dropout and pipeline augmentation draw random
# numbers; the EMA, accumulated gradients and clipping are optimizer state that must survive.
SETTINGS = [
    "--set",
    "train.epochs=2",
    "--set",
    "data.batch_size=128",
    "--set",
    "train.checkpoint_every=2",
    "--set",
    "train.ema=0.9",
    "--set",
    "train.gradient_accumulation_steps=2",
    "--set",
    "train.clip_norm=1.0",
    "--quiet",
]
STEPS = 11


def model_weights(run_dir: Path) -> dict[str, np.ndarray]:
    """Every array in the saved model's weights file, read without Keras."""
    import h5py

    with zipfile.ZipFile(run_dir / "model.keras") as archive:
        weights = h5py.File(io.BytesIO(archive.read("model.weights.h5")), "r")
        arrays = {}
        weights.visititems(
            lambda name, item: arrays.__setitem__(name, item[()]) if isinstance(item, h5py.Dataset) else None
        )
    return arrays


def single_run(runs: Path) -> Path:
    (run_dir,) = [path for path in runs.iterdir() if path.is_dir()]
    return run_dir


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    runs = tmp_path_factory.mktemp("uninterrupted")
    result = run_kcv("fit", DIGITS, "--runs-dir", runs, *SETTINGS)
    assert result.returncode == 0, result.stderr
    return single_run(runs)


def resume_killed_at(run_dir: Path, kill_at: str | None):
    return run_kcv(
        "fit", "--resume", run_dir, "--quiet", env={"KCV_KILL_AT": kill_at} if kill_at else {"KCV_KILL_AT": ""}
    )


def test_a_run_killed_at_the_first_batch_the_last_batch_and_the_epoch_boundary_ends_with_the_uninterrupted_weights(
    uninterrupted, tmp_path
):
    runs = tmp_path / "runs"
    killed = run_kcv("fit", DIGITS, "--runs-dir", runs, *SETTINGS, env={"KCV_KILL_AT": "0:1"})
    assert killed.returncode == -9, killed.stderr
    run_dir = single_run(runs)
    assert run_kcv("runs", runs).stdout.count("interrupted") == 1

    # First batch: the newest checkpoint is the one written before the first step.
    killed = resume_killed_at(run_dir, f"0:{STEPS}")
    assert killed.returncode == -9, killed.stderr
    assert f"at epoch 1, batch 1 of {STEPS}" in killed.stderr

    # Last batch, killed before the epoch's end: checkpoints after batches 8 and 10 (every 2).
    checkpoints = sorted(path.name for path in (run_dir / "backup").iterdir())
    assert checkpoints == ["checkpoint-1-000000-000008.npz", "checkpoint-1-000000-000010.npz"]
    # A kill while the newest was written: damaged, so the resume falls back to batch 8.
    newest = run_dir / "backup" / checkpoints[-1]
    newest.write_bytes(newest.read_bytes()[:100])
    killed = resume_killed_at(run_dir, "0:0")
    assert killed.returncode == -9, killed.stderr
    assert re.search(r"checkpoint \S+checkpoint-1-000000-000010.npz is damaged .*falling back", killed.stderr), (
        killed.stderr
    )
    assert f"at epoch 1, batch 9 of {STEPS}" in killed.stderr

    # The epoch boundary: killed right after the end-of-epoch checkpoint.
    finished = resume_killed_at(run_dir, None)
    assert finished.returncode == 0, finished.stderr
    assert f"at epoch 2, batch 1 of {STEPS}" in finished.stderr

    expected, got = model_weights(uninterrupted), model_weights(run_dir)
    assert expected.keys() == got.keys()
    for name in expected:
        np.testing.assert_array_equal(got[name], expected[name], err_msg=name)
    with open(run_dir / "history.csv") as handle:
        assert [row["epoch"] for row in csv.DictReader(handle)] == ["0", "1"]
    config = json.loads((run_dir / "config.json").read_text())["train"]
    assert (config["ema"], config["gradient_accumulation_steps"], config["clip_norm"], config["checkpoint_every"]) == (
        0.9,
        2,
        1.0,
        "2",
    )
    assert not (run_dir / "backup").exists()


# ------------------------------------------------------------------ refusals (one line, exit 2)
# Each is made before a model is built: the command line's entry point runs in this process.


def fake_run(tmp_path: Path, **records) -> Path:
    """A run directory as a killed kcv fit leaves it, without training anything."""
    from kerascv_app.recipe import load_recipe

    run_dir = tmp_path / "digits-run"
    run_dir.mkdir()
    config, _ = load_recipe(DIGITS)
    contents = {
        "run.json": {
            "status": "running",
            "pid": 999999999,
            "host": os.uname().nodename,
            "recipe": "digits",
            "backend": BACKEND,
        },
        "config.json": config.to_dict(),
        "environment.json": {
            "backend": BACKEND,
            "command": ["kcv", "fit", "recipes/digits.py", "--set", "train.epochs=3"],
        },
        "splits.json": {},
        **records,
    }
    for name, value in contents.items():
        (run_dir / name).write_text(value if isinstance(value, str) else json.dumps(value))
    (run_dir / "recipe.py").write_text(DIGITS.read_text())
    return run_dir


@pytest.mark.parametrize(
    "arguments",
    [["--set", "train.epochs=5"], ["--seed", "3"], ["--precision", "mixed_bfloat16"], ["--smoke"], [str(DIGITS)]],
)
def test_resume_refuses_what_would_change_the_run(tmp_path, arguments):
    result = kcv_in_process("fit", "--resume", fake_run(tmp_path), *arguments)
    assert_one_line_error(result, "does not take", "--data-dir")


@pytest.mark.parametrize("name", ["environment.json", "config.json", "splits.json"])
def test_a_corrupt_record_under_resume_is_one_line(tmp_path, name):
    run_dir = fake_run(tmp_path, **{name: '{"backend": "tensorfl'})
    result = kcv_in_process("fit", "--resume", run_dir)
    assert_one_line_error(result, name)


def test_a_missing_backup_folder_offers_the_command_that_restarts_the_run(tmp_path):
    from kerascv_app.errors import UserError
    from kerascv_app.runs import RunDirectory
    from kerascv_app.train.fit import resume

    with pytest.raises(
        UserError,
        match=r"no checkpoint to resume from .*train it again with: kcv fit recipes/digits.py --set train.epochs=3",
    ):
        resume(RunDirectory.open(fake_run(tmp_path)), BACKEND)


def test_a_running_run_is_refused_naming_its_process_and_listed_as_running(tmp_path):
    from kerascv_app.errors import UserError
    from kerascv_app.runs import RunDirectory

    run = RunDirectory.open(fake_run(tmp_path))
    # The pid in run.json is gone: interrupted.
    assert run.status() == "interrupted"
    with run.locked():
        assert run.status() == "running"
        with pytest.raises(UserError, match=f"being trained by process {os.getpid()} on {os.uname().nodename}"):
            with run.locked():
                pass
        # flock: another open of the lock file is refused, in this process as in any other.
        result = kcv_in_process("fit", "--resume", run.path)
        assert_one_line_error(result, f"being trained by process {os.getpid()}")
    # Released on exit (flock): the next writer may take it.
    with run.locked():
        pass
    assert run.status() == "interrupted"


def test_a_loss_that_becomes_infinite_fails_the_run_in_one_line(tmp_path):
    runs = tmp_path / "runs"
    result = run_kcv(
        "fit",
        DIGITS,
        "--runs-dir",
        runs,
        "--quiet",
        "--set",
        "train.epochs=1",
        "--set",
        "data.max_train=256",
        "--set",
        "train.optimizer=sgd",
        "--set",
        "train.learning_rate=1e30",
        "--set",
        "train.schedule=constant",
    )
    assert_one_line_error(result, "the training loss became", "is marked failed", "kcv fit")
    status = json.loads((single_run(runs) / "run.json").read_text())
    assert status["status"] == "failed" and "loss became" in status["reason"]


# ------------------------------------------------------------------ in-process units


def test_checkpoint_every_takes_steps_or_a_time():
    from kerascv_app.config import TrainConfig, parse_checkpoint_every
    from kerascv_app.errors import UserError

    assert parse_checkpoint_every("500") == (500, None)
    assert parse_checkpoint_every("10min") == (None, 600.0)
    assert parse_checkpoint_every("30s") == (None, 30.0)
    for bad in ("0", "-3", "ten", "5 parsecs", "1.5"):
        with pytest.raises(UserError, match="train.checkpoint_every"):
            TrainConfig(checkpoint_every=bad)


def test_optimizer_options_reach_the_keras_optimizer():
    from kerascv_app.config import TrainConfig
    from kerascv_app.train.optim import create_optimizer

    optimizer = create_optimizer(
        TrainConfig(ema=0.99, gradient_accumulation_steps=4, clip_norm=2.0), steps_per_epoch=10
    )
    assert optimizer.use_ema and optimizer.ema_momentum == 0.99
    assert optimizer.gradient_accumulation_steps == 4 and optimizer.global_clipnorm == 2.0
    plain = create_optimizer(TrainConfig(), steps_per_epoch=10)
    assert not plain.use_ema and plain.gradient_accumulation_steps is None and plain.global_clipnorm is None


def test_the_best_value_survives_a_resume_so_a_worse_epoch_keeps_the_best_weights(tmp_path):
    import keras

    from kerascv_app.train.checkpoint import BestWeights

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    path = tmp_path / "best.weights.h5"
    before = BestWeights(path, "val_accuracy", use_ema=False)
    before.set_model(model)
    before.on_epoch_end(0, {"val_accuracy": 0.9})
    assert path.is_file()
    saved = path.read_bytes()
    # The resumed process's callback gets the state from the checkpoint.
    after = BestWeights(path, "val_accuracy", use_ema=False)
    after.set_model(model)
    after.set_state(json.loads(json.dumps(before.get_state())))
    model.layers[0].kernel.assign(np.ones((2, 1)))
    after.on_epoch_end(1, {"val_accuracy": 0.5})
    assert path.read_bytes() == saved
    after.on_epoch_end(2, {"val_accuracy": 0.95})
    assert path.read_bytes() != saved


def test_every_damaged_checkpoint_is_named_and_skipped(tmp_path):
    import keras

    from kerascv_app.train.checkpoint import CheckpointStore, Position

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1), keras.layers.Dropout(0.5)])
    model.compile(optimizer="sgd", loss="mse")
    store = CheckpointStore(tmp_path / "backup")
    for batch in (1, 2, 3):
        store.save(model, Position(1, 0, batch), {})
    # Only the newest two are kept, and no partial file is left behind.
    names = ["checkpoint-1-000000-000003.npz", "checkpoint-1-000000-000002.npz"]
    assert [path.name for path in store.complete()] == names
    assert sorted(path.name for path in (tmp_path / "backup").iterdir()) == sorted(names)
    # One flipped byte in the middle: the zip's CRC-32 tells.
    newest = store.complete()[0]
    data = bytearray(newest.read_bytes())
    data[len(data) // 2] ^= 0xFF
    newest.write_bytes(bytes(data))
    warnings = []
    path, restored = store.latest(warn=warnings.append)
    assert restored.position == Position(1, 0, 2) and len(warnings) == 1 and "000003.npz is damaged" in warnings[0]
    path.write_bytes(b"garbage")
    assert store.latest(warn=warnings.append) is None and len(warnings) == 3
