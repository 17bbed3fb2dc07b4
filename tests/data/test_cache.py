"""data.cache: every setting evaluates the right images; auto picks memory or streaming."""

from __future__ import annotations

import json

import numpy as np
import pytest
from kcv_testing import BACKEND, REPO_ROOT, run_kcv

from kerascv_app.config import Config, DataConfig
from kerascv_app.data.pipeline import choose_cache
from kerascv_app.errors import UserError


def digits_config(cache: str) -> Config:
    # Caps make the training split larger than the others: a split reading another's cache shows in its count.
    return Config(name="digits_cache").with_overrides(
        [
            "data.image_size=8,8",
            "data.channels=1",
            "data.max_train=200",
            "data.max_eval=60",
            "data.batch_size=64",
            "train.epochs=1",
            f"data.cache={cache}",
        ]
    )


# Under tensorflow only: the caches are tf.data's under every backend, which feeds each backend's
# model the same batches (the backend-dependent part, training on them, is tested everywhere).
@pytest.mark.backends("tensorflow")
@pytest.mark.parametrize("cache", ["memory", "none", "auto", "path"])
def test_every_cache_setting_evaluates_the_splits_recorded_in_splits_json(tmp_path, cache):
    from kerascv_app.data.prepare import prepare_data
    from kerascv_app.train.fit import fit

    setting = str(tmp_path / "cache" / "c") if cache == "path" else cache
    if cache == "path":
        (tmp_path / "cache").mkdir()
    config = digits_config(setting)
    run = fit(config, "", BACKEND, runs_dir=tmp_path / "runs", show_progress=False)
    splits = json.loads(run.file("splits.json").read_text())
    metrics = json.loads(run.file("metrics.json").read_text())
    prepared = prepare_data(config, None)
    for split_name, file_name in (("validation", "val"), ("test", "test")):
        assert metrics[split_name]["count"] == splits[split_name], split_name
        predictions = np.load(run.file(f"predictions/{file_name}.npz"))
        np.testing.assert_array_equal(
            predictions["labels"], getattr(prepared.splits, split_name).labels, err_msg=split_name
        )
    recorded = json.loads(run.file("environment.json").read_text())["data_cache"]
    assert recorded["setting"] == setting and recorded["reason"]
    if cache == "path":
        # One cache per split, named after its contents.
        written = sorted(path.name.split("-")[1] for path in (tmp_path / "cache").glob("c-*.index"))
        assert written == ["test", "train", "validation"]


def test_auto_caches_in_memory_what_fits_in_a_quarter_of_the_memory_available():
    data = DataConfig(image_size=(32, 32), channels=3, cache="auto")
    one_image = 32 * 32 * 3
    fits = choose_cache(data, 1000, available=4 * 1000 * one_image)
    assert fits.mode == "memory" and "quarter" in fits.reason
    too_big = choose_cache(data, 1001, available=4 * 1000 * one_image)
    assert too_big.mode == "none" and "more than a quarter" in too_big.reason
    assert too_big.record() == {"setting": "auto", "chosen": "none", "reason": too_big.reason}


def test_a_cache_path_in_a_missing_folder_is_refused_before_the_run_exists(tmp_path):
    from kerascv_app.train.fit import fit

    with pytest.raises(UserError, match="does not exist"):
        fit(
            digits_config(str(tmp_path / "missing" / "x")), "", BACKEND, runs_dir=tmp_path / "runs", show_progress=False
        )
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


# The cache files are tf.data's under every backend; resuming under jax and torch: tests/test_resume.py.
@pytest.mark.backends("tensorflow")
def test_a_file_cache_left_half_written_by_a_kill_does_not_block_the_resume(tmp_path):
    import glob

    runs, cache = tmp_path / "runs", tmp_path / "cache"
    cache.mkdir()
    # A small shuffle buffer, so that the cache fills as training reads it, not all at once.
    settings = (
        "--set",
        "train.epochs=2",
        "--set",
        "data.shuffle_buffer=32",
        "--set",
        f"data.cache={cache}/digits",
        "--quiet",
        "--runs-dir",
        runs,
    )
    # Killed after two batches of the first epoch: the training split's cache is half written,
    # and TensorFlow's lockfile for it is left behind.
    killed = run_kcv("fit", REPO_ROOT / "recipes" / "digits.py", *settings, env={"KCV_KILL_AT": "0:2"})
    assert killed.returncode == -9, killed.stderr
    assert glob.glob(f"{cache}/digits-train-*.lockfile")
    (run_dir,) = list(runs.iterdir())
    resumed = run_kcv("fit", "--resume", run_dir, "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((run_dir / "run.json").read_text())["status"] == "finished"
    assert not glob.glob(f"{cache}/*.lockfile")
