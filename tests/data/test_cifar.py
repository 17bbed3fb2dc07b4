"""CIFAR-10/100 in the original python format: real pickled batches in a real tar.gz, written here."""

from __future__ import annotations

import dataclasses
import io
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest

from kerascv_app.data import cifar
from kerascv_app.data.cifar import load_cifar
from kerascv_app.errors import UserError

CIFAR10_NAMES = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
PER_BATCH = 3


def batch(seed: int, count: int, label_keys: dict[bytes, int]) -> dict:
    """A batch as CIFAR pickles it: N x 3072 bytes (red, green, blue planes) and label lists."""
    generator = np.random.default_rng(seed)
    content = {b"batch_label": b"batch %d" % seed, b"data": generator.integers(0, 256, (count, 3072), dtype=np.uint8)}
    for key, class_count in label_keys.items():
        content[key] = generator.integers(0, class_count, count).tolist()
    return content


def cifar10_files() -> dict[str, dict]:
    files = {f"data_batch_{number}": batch(number, PER_BATCH, {b"labels": 10}) for number in range(1, 6)}
    files["test_batch"] = batch(0, PER_BATCH, {b"labels": 10})
    files["batches.meta"] = {b"label_names": CIFAR10_NAMES, b"num_vis": 3072}
    return files


def cifar100_files() -> dict[str, dict]:
    labels = {b"fine_labels": 100, b"coarse_labels": 20}
    return {
        "train": batch(1, 7, labels),
        "test": batch(2, 4, labels),
        "meta": {
            b"fine_label_names": [b"class%d" % number for number in range(100)],
            b"coarse_label_names": [b"super%d" % n for n in range(20)],
        },
    }


def write_archive(path: Path, folder: str, files: dict[str, object]) -> Path:
    with tarfile.open(path, "w:gz") as archive:
        for name, content in files.items():
            # Protocol 2, as the published python-2 pickles.
            data = pickle.dumps(content, protocol=2)
            member = tarfile.TarInfo(f"{folder}/{name}")
            member.size = len(data)
            archive.addfile(member, io.BytesIO(data))
    return path


def write_folder(folder: Path, files: dict[str, object]) -> Path:
    folder.mkdir(parents=True)
    for name, content in files.items():
        (folder / name).write_bytes(pickle.dumps(content, protocol=2))
    return folder


def expected_images(batch_content: dict) -> np.ndarray:
    return batch_content[b"data"].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)


def check_cifar10(data, files):
    assert data.class_names == [name.decode() for name in CIFAR10_NAMES]
    assert data.train.images.shape == (5 * PER_BATCH, 32, 32, 3) and data.train.images.dtype == np.uint8
    np.testing.assert_array_equal(data.train.images[:PER_BATCH], expected_images(files["data_batch_1"]))
    np.testing.assert_array_equal(data.train.images[-PER_BATCH:], expected_images(files["data_batch_5"]))
    np.testing.assert_array_equal(data.train.labels[:PER_BATCH], files["data_batch_1"][b"labels"])
    np.testing.assert_array_equal(data.test.images, expected_images(files["test_batch"]))
    assert data.train.images.flags["C_CONTIGUOUS"]


@pytest.fixture
def cifar10_tar(tmp_path):
    files = cifar10_files()
    return write_archive(tmp_path / "cifar-10-python.tar.gz", "cifar-10-batches-py", files), files


def test_reads_the_archive(cifar10_tar):
    archive, files = cifar10_tar
    check_cifar10(load_cifar("cifar10", archive), files)


def test_reads_the_folder_holding_the_archive(cifar10_tar):
    archive, files = cifar10_tar
    data = load_cifar("cifar10", archive.parent)
    check_cifar10(data, files)
    assert data.fingerprint == load_cifar("cifar10", archive).fingerprint


def test_reads_the_extracted_folder(tmp_path):
    files = cifar10_files()
    extracted = write_folder(tmp_path / "cifar-10-batches-py", files)
    check_cifar10(load_cifar("cifar10", extracted), files)
    check_cifar10(load_cifar("cifar10", tmp_path), files)  # its parent works too


def test_cifar100_uses_the_fine_labels(tmp_path):
    files = cifar100_files()
    archive = write_archive(tmp_path / "cifar-100-python.tar.gz", "cifar-100-python", files)
    for location in (archive, tmp_path, write_folder(tmp_path / "extracted" / "cifar-100-python", files)):
        data = load_cifar("cifar100", location)
        assert len(data.class_names) == 100 and data.class_names[5] == "class5"
        assert (len(data.train), len(data.test)) == (7, 4)
        np.testing.assert_array_equal(data.train.labels, files["train"][b"fine_labels"])
        np.testing.assert_array_equal(data.test.images, expected_images(files["test"]))


def test_found_in_the_keras_cache(tmp_path, monkeypatch):
    files = cifar10_files()
    # Where keras.datasets.cifar10.load_data() of Keras 3 leaves the extracted batches.
    write_folder(tmp_path / "datasets" / "cifar-10-batches-py-target" / "cifar-10-batches-py", files)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    check_cifar10(load_cifar("cifar10", None), files)


def test_corrupt_archive_is_refused(tmp_path):
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(os.urandom(4096))
    with pytest.raises(UserError, match="cannot read .*cifar-10-python.tar.gz"):
        load_cifar("cifar10", tmp_path)


def test_truncated_archive_is_refused(cifar10_tar):
    archive, _ = cifar10_tar
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(UserError, match=str(archive)):
        load_cifar("cifar10", archive)


def test_incomplete_archive_names_what_is_missing(tmp_path):
    files = cifar10_files()
    del files["data_batch_3"]
    archive = write_archive(tmp_path / "cifar-10-python.tar.gz", "cifar-10-batches-py", files)
    with pytest.raises(UserError, match="lacks data_batch_3"):
        load_cifar("cifar10", archive)


class RunsCode:
    """A pickle that would call os.system when loaded."""

    def __reduce__(self):
        return (os.system, ("touch should-not-exist",))


def test_a_pickle_that_runs_code_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    files = cifar10_files()
    files["test_batch"] = {b"data": RunsCode(), b"labels": []}
    archive = write_archive(tmp_path / "cifar-10-python.tar.gz", "cifar-10-batches-py", files)
    with pytest.raises(UserError, match="posix.system|os.system"):
        load_cifar("cifar10", archive)
    assert not (tmp_path / "should-not-exist").exists()


def test_missing_path_is_refused(tmp_path):
    with pytest.raises(UserError, match="does not exist.*cifar-10-python.tar.gz"):
        load_cifar("cifar10", tmp_path / "nowhere")


def test_offline_download_names_data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras-home"))
    # A host that never resolves (RFC 2606), so the download fails at once, online or not.
    layout = dataclasses.replace(cifar.LAYOUTS["cifar10"], url="https://cifar.invalid/cifar-10-python.tar.gz")
    monkeypatch.setitem(cifar.LAYOUTS, "cifar10", layout)
    with pytest.raises(UserError, match="could not download .*--data-dir") as caught:
        load_cifar("cifar10", None)
    assert "\n" not in str(caught.value)
