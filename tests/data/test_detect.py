"""--data PATH: the format detected from what is there, each in its real format."""

from __future__ import annotations

import json
import tarfile

import numpy as np
import pytest
from kcv_testing import REPO_ROOT, assert_one_line_error, run_kcv, write_fashion_mnist
from PIL import Image

from kerascv_app.data.sources import detect_format, load_source, resolve_data_option
from kerascv_app.errors import UserError


def write_photos(root, classes=("cat", "dog", "owl"), per_class=12, size=(20, 24)):
    """A user's own folder: one sub-folder per class, JPEGs of any size, colour telling the class."""
    random = np.random.default_rng(3)
    for label, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for index in range(per_class):
            colour = np.array([80 * label, 200 - 60 * label, 100], dtype=np.float64)
            pixels = np.clip(colour + random.normal(0, 20, (*size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{index}.jpg", quality=90)
    return root


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return write_photos(tmp_path_factory.mktemp("photos") / "my_photos")


def test_a_cifar_python_archive_and_its_extracted_batches(cifar10_archive, tmp_path):
    assert detect_format(cifar10_archive).source == f"cifar10:{cifar10_archive}"
    with tarfile.open(cifar10_archive) as archive:
        archive.extractall(tmp_path, filter="data")
    assert detect_format(tmp_path).source == f"cifar10:{tmp_path}"
    assert detect_format(tmp_path / "cifar-10-batches-py").source == f"cifar10:{tmp_path / 'cifar-10-batches-py'}"
    assert len(load_source(detect_format(tmp_path).source).train) == 100


def test_a_class_per_folder_tree_and_its_archive(photos, tmp_path):
    assert detect_format(photos).source == f"folder:{photos}"
    archive = tmp_path / "photos.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(photos, arcname="my_photos")
    assert detect_format(archive).source == f"folder:{archive}"
    assert load_source(detect_format(archive).source).class_names == ["cat", "dog", "owl"]


def test_idx_files_and_fashion_mnist_for_a_fashion_recipe(tmp_path):
    folder = write_fashion_mnist(tmp_path / "fm", train_per_class=2, test_per_class=1)
    assert detect_format(folder).source == f"idx:{folder}"
    assert detect_format(folder / "train-images-idx3-ubyte.gz").source == f"idx:{folder}"
    # The files cannot tell their class names; a fashion_mnist recipe can.
    fashion = resolve_data_option(str(folder), recipe_source="fashion_mnist")
    assert fashion.source == f"fashion_mnist:{folder}"
    assert load_source(fashion.source).class_names[0] == "T-shirt/top"


def test_a_kcv_convert_folder(photos, tmp_path):
    from kerascv_app.data.convert import convert

    convert(f"folder:{photos}", tmp_path / "shards", show_progress=False)
    assert detect_format(tmp_path / "shards").source == f"tfrecord:{tmp_path / 'shards'}"


def test_a_tfds_data_folder(tmp_path):
    from test_tfds import TinyColours

    TinyColours(data_dir=str(tmp_path)).download_and_prepare()
    detected = detect_format(tmp_path)
    assert (detected.source, detected.data_dir) == ("tfds:tiny_colours", tmp_path)
    assert load_source(detected.source, detected.data_dir).class_names == ["red", "green", "blue"]
    # The dataset's own folder works too.
    inner = detect_format(tmp_path / "tiny_colours")
    assert (inner.source, inner.data_dir) == ("tfds:tiny_colours", tmp_path)


def test_source_spellings_pass_through_unchanged(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for spelling in ("cifar10", "digits", "folder:somewhere", "tfds:mnist", "idx:x"):
        assert resolve_data_option(spelling).source == spelling


def test_unknown_ambiguous_and_missing_paths_get_one_line(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "empty").mkdir()
    with pytest.raises(
        UserError,
        match=(
            r"holds no dataset kcv can read \(found empty/, notes.txt\); it needs one of: a CIFAR python "
            r"archive.*class-per-folder.*IDX.*kcv convert.*TFDS"
        ),
    ):
        detect_format(tmp_path)
    with pytest.raises(UserError, match="it is empty"):
        detect_format(tmp_path / "empty")
    with pytest.raises(UserError, match="cannot read as a dataset"):
        detect_format(tmp_path / "notes.txt")
    write_fashion_mnist(tmp_path / "both", train_per_class=1, test_per_class=1)
    (tmp_path / "both" / "batches.meta").write_bytes(b"")
    with pytest.raises(
        UserError, match=r"more than one dataset format: cifar10 python batches .*; IDX files .*--data kind:PATH"
    ):
        detect_format(tmp_path / "both")
    with pytest.raises(UserError, match="no such file or folder"):
        resolve_data_option(str(tmp_path / "nowhere"))


# Under tensorflow only: --data is resolved before a backend is chosen, and every backend trains on
# class-per-folder trees elsewhere (tests/test_hub.py's recipe test, the fast loop's tests).
@pytest.mark.backends("tensorflow")
def test_any_recipe_trains_on_a_users_photo_folder_with_one_flag(tmp_path):
    photos = write_photos(tmp_path / "my_photos")
    # A file that is not an image: skipped, and said in the summary at the end.
    (photos / "owl" / "broken.jpg").write_bytes(b"not a JPEG at all" * 20)
    result = run_kcv(
        "fit",
        REPO_ROOT / "recipes" / "cifar10_baseline.py",
        "--data",
        photos,
        "--smoke",
        "--quiet",
        "--runs-dir",
        tmp_path / "runs",
    )
    assert result.returncode == 0, result.stderr
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert (
        f"  skipped    1 unreadable image file(s), listed in {run_dir / 'environment.json'}"
        in result.stdout.splitlines()
    ), result.stdout
    config = json.loads((run_dir / "config.json").read_text())
    assert config["data"]["source"] == f"folder:{photos}" and config["model"]["name"] == "seed_cnn"
    assert json.loads((run_dir / "environment.json").read_text())["class_names"] == ["cat", "dog", "owl"]
    refused = run_kcv(
        "fit", REPO_ROOT / "recipes" / "digits.py", "--data", tmp_path / "nowhere", "--runs-dir", tmp_path / "runs2"
    )
    assert_one_line_error(refused, "--data", "no such file or folder")
    assert not (tmp_path / "runs2").exists()
