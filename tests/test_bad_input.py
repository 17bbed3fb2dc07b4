"""Every kind of bad input: one clear line, exit code 2, no traceback, nothing left behind.

The refusals run the command line's entry point in this process (kcv_in_process: the same
exit status and stderr, without a new process's TensorFlow import); one refusal and the runs
that train go through a real process (run_kcv)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from kcv_testing import REPO_ROOT, assert_one_line_error, kcv_in_process, run_kcv
from PIL import Image

DIGITS = REPO_ROOT / "recipes" / "digits.py"

GOOD_RECIPE = """
from kerascv_app.config import Config, DataConfig, ModelConfig, TrainConfig

def get_config():
    return Config(name="tiny", data=DataConfig(source={source!r}, image_size=(8, 8), channels={channels}, batch_size=8),
                  model=ModelConfig(name={model!r}, hidden_units=8), train=TrainConfig(epochs=1))
"""


def write_recipe(folder, text: str):
    path = folder / "recipe.py"
    path.write_text(text)
    return path


def fit_fails(tmp_path, *arguments, fragments=(), run=kcv_in_process):
    runs = tmp_path / "runs"
    result = run("fit", *arguments, "--runs-dir", runs, "--quiet")
    assert_one_line_error(result, *fragments)
    # Nothing half-written: no run directory was created.
    assert not runs.exists() or not any(runs.iterdir())
    return result


@pytest.mark.parametrize(
    "text, fragments",
    [
        ("def get_config(:\n", ["syntax error at line 1"]),
        ("x = 1\n", ["defines no get_config()"]),
        ("def get_config():\n    return {'name': 'x'}\n", ["returned dict"]),
        (
            "from kerascv_app.config import Config, DataConfig\n\ndef get_config():\n"
            "    return Config(data=DataConfig(sauce='digits'))\n",
            ["line 4", "sauce"],
        ),
        (
            "from kerascv_app.config import Config, TrainConfig\n\ndef get_config():\n"
            "    return Config(train=TrainConfig(epochs='ten'))\n",
            ["train.epochs", "wrong type", "int"],
        ),
        (
            "from kerascv_app.config import Config, TrainConfig\n\ndef get_config():\n"
            "    return Config(train=TrainConfig(epochs=-1))\n",
            ["train.epochs", "-1"],
        ),
        (
            "from kerascv_app.config import Config\n\ndef get_config():\n    return Config(name='cifar/v2')\n",
            ["name = 'cifar/v2' is invalid", "'cifar_v2'"],
        ),
    ],
    ids=["syntax", "no-get-config", "wrong-return", "unknown-key", "wrong-type", "bad-value", "name-with-slash"],
)
def test_broken_recipes(tmp_path, text, fragments):
    fit_fails(tmp_path, write_recipe(tmp_path, text), fragments=fragments)


def test_missing_recipe(tmp_path):
    fit_fails(tmp_path, tmp_path / "nope.py", fragments=["nope.py not found"])


@pytest.mark.parametrize(
    "override, fragments",
    [
        ("train.epocs=3", ["no field 'epocs'"]),
        ("training.epochs=3", ["unknown section 'training'"]),
        ("train.epochs=three", ["train.epochs", "wrong type"]),
        ("train.epochs", ["expected section.key=value"]),
        ("data.image_size=8", ["data.image_size"]),
        ("train.learning_rate=inf", ["train.learning_rate = inf", "finite"]),
        ("model.dropout=nan", ["model.dropout = nan", "finite"]),
        ("data.image_size=2,2", ["data.image_size = (2, 2) is too small", "seed_cnn", "8,8"]),
        ("data.classes=3", ["data.classes = ['3']", "fewer than two classes"]),
    ],
)
def test_bad_overrides(tmp_path, override, fragments):
    fit_fails(tmp_path, DIGITS, "--set", override, fragments=fragments)


def test_a_refusal_from_a_real_process_is_one_line_with_exit_status_2(tmp_path):
    """End to end, what the in-process refusals stand for: the installed entry point's exit status."""
    fit_fails(tmp_path, DIGITS, "--set", "train.epocs=3", fragments=["no field 'epocs'"], run=run_kcv)


def test_unknown_model(tmp_path):
    recipe = write_recipe(tmp_path, GOOD_RECIPE.format(source="digits", channels=1, model="alexnet"))
    fit_fails(tmp_path, recipe, fragments=["model.name = 'alexnet'", "seed_cnn"])


def test_unknown_dataset(tmp_path):
    recipe = write_recipe(tmp_path, GOOD_RECIPE.format(source="imagenette", channels=1, model="seed_cnn"))
    fit_fails(tmp_path, recipe, fragments=["data.source = 'imagenette'"])


def test_missing_data_path(tmp_path):
    missing = tmp_path / "no_such_folder"
    recipe = write_recipe(tmp_path, GOOD_RECIPE.format(source=f"folder:{missing}", channels=3, model="seed_cnn"))
    fit_fails(tmp_path, recipe, fragments=[str(missing)])


def write_image_tree(root, classes=("cat", "dog"), per_class=6):
    random = np.random.default_rng(0)
    for name in classes:
        (root / name).mkdir(parents=True)
        for index in range(per_class):
            Image.fromarray(random.integers(0, 255, (10, 12, 3), dtype=np.uint8)).save(root / name / f"{index}.png")


def test_empty_class_folder(tmp_path):
    images = tmp_path / "images"
    write_image_tree(images)
    (images / "bird").mkdir()
    recipe = write_recipe(tmp_path, GOOD_RECIPE.format(source=f"folder:{images}", channels=3, model="seed_cnn"))
    fit_fails(tmp_path, recipe, fragments=["bird"])


def test_folder_of_only_corrupt_images(tmp_path):
    images = tmp_path / "images"
    for name in ("cat", "dog"):
        (images / name).mkdir(parents=True)
        (images / name / "broken.jpg").write_bytes(b"this is not a jpeg")
    recipe = write_recipe(tmp_path, GOOD_RECIPE.format(source=f"folder:{images}", channels=3, model="seed_cnn"))
    fit_fails(tmp_path, recipe, fragments=[str(images)])


# This test and the next under tensorflow only: images are decoded, skipped and counted by the
# tf.data pipeline that feeds every backend; the run records them through the lifecycle all
# runs share (the fast loop's own decoder: tests/test_fast_cifar.py).
@pytest.mark.backends("tensorflow")
def test_corrupt_images_among_good_ones_are_skipped_and_named(tmp_path):
    images = tmp_path / "images"
    write_image_tree(images, per_class=10)
    (images / "cat" / "truncated.jpg").write_bytes((images / "cat" / "0.png").read_bytes()[:10])
    Image.new("RGB", (9, 9)).save(images / "dog" / "cut.jpg")
    (images / "dog" / "cut.jpg").write_bytes((images / "dog" / "cut.jpg").read_bytes()[:-40])
    recipe = write_recipe(tmp_path, GOOD_RECIPE.format(source=f"folder:{images}", channels=3, model="seed_cnn"))
    result = run_kcv("fit", recipe, "--runs-dir", tmp_path / "runs", "--quiet")
    assert result.returncode == 0, result.stderr
    assert "truncated.jpg" in result.stderr and "cut.jpg" in result.stderr and "2" in result.stderr
    run_dir = next((tmp_path / "runs").iterdir())
    skipped = json.loads((run_dir / "environment.json").read_text())["skipped_files"]
    assert sorted(path.rsplit("/", 1)[-1] for path in skipped) == ["cut.jpg", "truncated.jpg"]


@pytest.mark.parametrize("command", ["evaluate", "resume"])
def test_a_folder_that_is_not_a_run_directory(tmp_path, command):
    (tmp_path / "something").mkdir()
    arguments = (
        ["evaluate", tmp_path / "something"] if command == "evaluate" else ["fit", "--resume", tmp_path / "something"]
    )
    assert_one_line_error(kcv_in_process(*arguments), "not a run directory")
    assert_one_line_error(kcv_in_process("evaluate", tmp_path / "missing"), "does not exist")


def test_corrupt_model_file(tmp_path, digits_run):
    # A copy of the shared trained run: the refusal is about the file, not about how it was trained.
    run_dir = shutil.copytree(digits_run, tmp_path / digits_run.name)
    model = run_dir / "model.keras"
    model.write_bytes(model.read_bytes()[:100])
    assert_one_line_error(kcv_in_process("evaluate", run_dir), "model.keras", "corrupt")


def test_unknown_backend_and_runs_folder(tmp_path):
    assert_one_line_error(kcv_in_process("runs", tmp_path / "nowhere"), "does not exist")
    result = kcv_in_process("fit", DIGITS, "--runs-dir", tmp_path / "runs", env={"KERAS_BACKEND": "theano"})
    assert_one_line_error(result, "theano")


def test_bad_option_values_are_usage_errors_without_traceback(tmp_path):
    result = kcv_in_process("fit", DIGITS, "--seed", "abc", "--runs-dir", tmp_path / "runs")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "Invalid value for '--seed'" in result.stderr
    assert not (tmp_path / "runs").exists()


def garble_middle(path):
    """Keeps a JPEG's first and last bytes (so the start-up check passes) and overwrites part
    of its middle with 0xff bytes (marker starts) until TensorFlow's decoder refuses it."""
    import tensorflow as tf

    original = path.read_bytes()
    for length in (300, 200, 400, 600):
        data = bytearray(original)
        middle = len(data) // 2
        data[middle - length // 2 : middle + length // 2] = b"\xff" * length
        try:
            tf.io.decode_image(bytes(data))
        except tf.errors.InvalidArgumentError:
            assert data[:32] == original[:32] and data[-64:] == original[-64:]
            path.write_bytes(bytes(data))
            return
    raise AssertionError(f"could not garble {path} into an undecodable JPEG")


@pytest.mark.backends("tensorflow")
def test_an_image_that_does_not_decode_mid_training_is_skipped_and_named(tmp_path):
    from PIL import Image

    images = tmp_path / "images"
    random = np.random.default_rng(0)
    for split, per_class in (("train", 12), ("test", 4)):
        for name in ("cat", "dog"):
            (images / split / name).mkdir(parents=True)
            for index in range(per_class):
                Image.fromarray(random.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(
                    images / split / name / f"{index}.jpg", quality=90
                )
    garble_middle(images / "train" / "cat" / "3.jpg")
    garble_middle(images / "test" / "dog" / "1.jpg")
    recipe = write_recipe(tmp_path, GOOD_RECIPE.format(source=f"folder:{images}", channels=3, model="seed_cnn"))
    result = run_kcv("fit", recipe, "--runs-dir", tmp_path / "runs", "--quiet", "--set", "data.val_fraction=0")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert "3.jpg" in result.stderr and "1.jpg" in result.stderr and "could not be decoded" in result.stderr
    run_dir = next((tmp_path / "runs").iterdir())
    assert json.loads((run_dir / "run.json").read_text())["status"] == "finished"
    environment = json.loads((run_dir / "environment.json").read_text())
    assert sorted(
        path.rsplit("/", 2)[-2] + "/" + path.rsplit("/", 1)[-1] for path in environment["skipped_while_training"]
    ) == ["cat/3.jpg", "dog/1.jpg"]
    # The test metrics count the images that decoded, and the saved predictions are those images'.
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["test"]["count"] == 7
    assert len(np.load(run_dir / "predictions" / "test.npz")["labels"]) == 7
