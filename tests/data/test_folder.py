"""Class-per-folder image trees and archives of them: real image files written with PIL."""

from __future__ import annotations

import io
import os
import re
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
from kcv_testing import CIFAR10_JPEG, NO_CIFAR10_JPEG
from PIL import Image

from kerascv_app.data.folder import check_image_file, load_image_folder
from kerascv_app.data.sources import load_source
from kerascv_app.errors import UserError

REAL_ARCHIVE = CIFAR10_JPEG
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    """Archives are extracted under the test's own folder, never into the user's cache."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("KCV_CACHE_DIR", str(cache))
    return cache


def save_image(path: Path, mode: str, size: tuple[int, int], image_format: str, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    image = Image.fromarray(pixels).convert(mode)
    image.save(path, format=image_format)
    return path


def write_class(folder_path: Path, seed: int) -> None:
    """One image of each supported format, size and colour mode."""
    save_image(folder_path / "rgb.jpg", "RGB", (10, 12), "JPEG", seed)
    save_image(folder_path / "gray.png", "L", (7, 5), "PNG", seed)
    save_image(folder_path / "alpha.PNG", "RGBA", (16, 16), "PNG", seed)
    save_image(folder_path / "palette.gif", "P", (9, 9), "GIF", seed)
    save_image(folder_path / "plain.bmp", "RGB", (20, 3), "BMP", seed)


def write_tree(root: Path) -> Path:
    """train/{cat,dog} with five good images each, one truncated JPEG and one fake JPEG; test/{cat,dog}."""
    for split in ("train", "test"):
        for seed, class_name in enumerate(("cat", "dog")):
            write_class(root / split / class_name, seed)
    whole = (root / "train" / "cat" / "rgb.jpg").read_bytes()
    (root / "train" / "cat" / "truncated.jpg").write_bytes(whole[: len(whole) // 2])
    (root / "train" / "dog" / "garbage.jpg").write_bytes(b"this is not an image at all")
    (root / "train" / "dog" / "notes.txt").write_text("ignored")
    (root / "train" / "dog" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    return root


def make_tar(archive: Path, source: Path, top_folder: str | None = None) -> Path:
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(source, arcname=top_folder or ".")
    return archive


def test_loads_train_and_test_and_skips_broken_files(tmp_path, capsys):
    root = write_tree(tmp_path / "tree")
    data = load_image_folder(root)

    assert data.class_names == ["cat", "dog"]
    assert (len(data.train), len(data.test)) == (10, 10)
    assert data.validation is None
    assert np.bincount(data.train.labels).tolist() == [5, 5]
    assert data.train.element_kind == "encoded"
    assert sorted(Path(path).name for path in data.skipped) == ["garbage.jpg", "truncated.jpg"]
    warning = capsys.readouterr().err
    assert warning.count("warning:") == 1
    assert (
        "skipped 2" in warning and "truncated.jpg (truncated JPEG" in warning and "garbage.jpg (not a JPEG" in warning
    )
    assert not any(path.endswith((".txt", ".DS_Store")) for path in data.train.paths)


def test_every_format_decodes_through_the_pipeline(tmp_path, decode_batches):
    data = load_image_folder(write_tree(tmp_path / "tree"))
    batches = decode_batches(data.train, num_classes=2)
    assert [images.shape for images, _ in batches] == [(4, 16, 16, 3), (4, 16, 16, 3), (2, 16, 16, 3)]
    assert all(images.dtype == np.uint8 for images, _ in batches)
    labels = np.concatenate([one_hot.argmax(axis=1) for _, one_hot in batches])
    np.testing.assert_array_equal(labels, data.train.labels)


def test_class_folders_alone_have_no_test_split(tmp_path):
    root = tmp_path / "classes"
    for seed, class_name in enumerate(("ant", "bee", "cow")):
        write_class(root / class_name, seed)
    data = load_image_folder(root)
    assert data.class_names == ["ant", "bee", "cow"]
    assert data.test is None and len(data.train) == 15


def test_validation_folder_is_the_sources_validation_split(tmp_path):
    root = write_tree(tmp_path / "tree")
    for seed, class_name in enumerate(("cat", "dog")):
        write_class(root / "val" / class_name, seed)
    assert len(load_image_folder(root).validation) == 10


def test_files_in_nested_folders_count_for_their_class(tmp_path):
    root = tmp_path / "nested"
    write_class(root / "cat" / "2023" / "summer", 0)
    write_class(root / "dog", 1)
    data = load_image_folder(root)
    assert np.bincount(data.train.labels).tolist() == [5, 5]


def test_empty_class_folder_is_named(tmp_path):
    root = write_tree(tmp_path / "tree")
    (root / "train" / "bird").mkdir()
    (root / "train" / "bird" / "readme.txt").write_text("no images yet")
    with pytest.raises(UserError, match=r"class folder .*train/bird has no images"):
        load_image_folder(root)


def test_class_folder_of_only_broken_images_is_named(tmp_path):
    root = write_tree(tmp_path / "tree")
    for split in ("train", "test"):
        write_class(root / split / "bird", 2)
    (root / "test" / "bird" / "rgb.jpg").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    for name in ("gray.png", "alpha.PNG", "palette.gif", "plain.bmp"):
        (root / "test" / "bird" / name).unlink()
    with pytest.raises(UserError, match=r"class folder .*test/bird has no readable image: .*rgb.jpg: truncated PNG"):
        load_image_folder(root)


def test_test_classes_must_match_train(tmp_path):
    root = write_tree(tmp_path / "tree")
    write_class(root / "test" / "fox", 3)
    with pytest.raises(UserError, match=r"test differ from those of .*train \(extra \['fox'\]\)"):
        load_image_folder(root)


def test_all_corrupt_is_refused(tmp_path):
    for class_name in ("cat", "dog"):
        (tmp_path / "bad" / class_name).mkdir(parents=True)
        (tmp_path / "bad" / class_name / "x.jpg").write_bytes(b"\xff\xd8\xff\xe0 cut short")
    with pytest.raises(UserError, match="no readable image in .*all 2 image files failed"):
        load_image_folder(tmp_path / "bad")


def test_one_class_is_refused(tmp_path):
    write_class(tmp_path / "single" / "cat", 0)
    with pytest.raises(UserError, match="only the class folder 'cat'"):
        load_image_folder(tmp_path / "single")


def test_missing_path_is_refused(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_image_folder(tmp_path / "nowhere")


def test_archive_with_a_wrapping_folder_is_extracted_once(tmp_path, cache_dir, monkeypatch):
    tree = write_tree(tmp_path / "tree")
    archive = make_tar(tmp_path / "pets.tar.gz", tree, top_folder="pets")

    data = load_image_folder(archive)
    assert data.class_names == ["cat", "dog"] and (len(data.train), len(data.test)) == (10, 10)
    extracted = list((cache_dir / "extracted").iterdir())
    assert [entry.name.startswith("pets-") for entry in extracted] == [True]
    assert all(path.startswith(str(extracted[0])) for path in data.train.paths)
    assert data.fingerprint == load_image_folder(tree).fingerprint

    def no_extraction(*args, **kwargs):
        raise AssertionError("extracted again")

    monkeypatch.setattr(tarfile, "open", no_extraction)
    assert load_image_folder(archive).fingerprint == data.fingerprint


def test_changed_archive_is_extracted_afresh(tmp_path, cache_dir):
    tree = write_tree(tmp_path / "tree")
    archive = make_tar(tmp_path / "pets.tgz", tree)
    load_image_folder(archive)
    write_class(tree / "train" / "cat" / "more", 5)
    make_tar(archive, tree)
    os.utime(archive, ns=(time.time_ns(), time.time_ns() + 10**9))
    assert len(load_image_folder(archive).train) == 15
    assert len(list((cache_dir / "extracted").iterdir())) == 2


def test_source_dispatch_finds_a_relative_archive(tmp_path):
    make_tar(tmp_path / "pets.tar", write_tree(tmp_path / "tree"))
    assert load_source("folder:pets.tar", data_dir=tmp_path).class_names == ["cat", "dog"]


def malicious_tar(path: Path, member_name: str, link_target: str | None = None) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        good = tarfile.TarInfo("cat/fine.txt")
        good.size = 2
        tar.addfile(good, io.BytesIO(b"ok"))
        member = tarfile.TarInfo(member_name)
        if link_target is None:
            member.size = 4
            tar.addfile(member, io.BytesIO(b"evil"))
        else:
            member.type = tarfile.SYMTYPE
            member.linkname = link_target
            tar.addfile(member)
    return path


@pytest.mark.parametrize(
    "member_name, link_target, complaint",
    [
        ("../evil", None, "climbs out"),
        ("cat/../../evil", None, "climbs out"),
        ("/tmp/kcv-test-evil-absolute", None, "has an absolute path"),
        ("cat/link", "../../evil", "is a link to '../../evil'"),
        ("cat/link", "/etc/passwd", "is a link to '/etc/passwd'"),
    ],
)
def test_archive_members_outside_the_target_are_refused(tmp_path, cache_dir, member_name, link_target, complaint):
    (tmp_path / "work").mkdir()
    archive = malicious_tar(tmp_path / "work" / "bad.tar.gz", member_name, link_target)
    with pytest.raises(UserError, match=re.escape(f"member '{member_name}' {complaint}")):
        load_image_folder(archive)
    assert not any(
        path.exists() for path in (tmp_path / "evil", tmp_path / "work" / "evil", Path("/tmp/kcv-test-evil-absolute"))
    )
    assert list((cache_dir / "extracted").iterdir()) == []  # the half-done extraction is gone


def test_damaged_archive_is_refused_and_leaves_nothing(tmp_path, cache_dir):
    archive = make_tar(tmp_path / "pets.tar.gz", write_tree(tmp_path / "tree"))
    archive.write_bytes(archive.read_bytes()[:2000])
    with pytest.raises(UserError, match="cannot extract .*pets.tar.gz"):
        load_image_folder(archive)
    assert list((cache_dir / "extracted").iterdir()) == []


def test_a_file_that_is_not_an_archive_is_refused(tmp_path):
    image = save_image(tmp_path / "one.png", "RGB", (4, 4), "PNG")
    with pytest.raises(UserError, match="not a .tar, .tar.gz or .tgz archive"):
        load_image_folder(image)


def test_integrity_check_reads_signatures_and_trailers(tmp_path):
    jpeg = save_image(tmp_path / "a.jpg", "RGB", (8, 8), "JPEG")
    padded = tmp_path / "padded.jpg"
    padded.write_bytes(jpeg.read_bytes() + b"\0" * 3000)
    png = save_image(tmp_path / "a.png", "RGB", (64, 64), "PNG")
    cut_png = tmp_path / "cut.png"
    cut_png.write_bytes(png.read_bytes()[:-12])
    bmp = save_image(tmp_path / "a.bmp", "RGB", (30, 30), "BMP")
    cut_bmp = tmp_path / "cut.bmp"
    cut_bmp.write_bytes(bmp.read_bytes()[:-100])
    gif = save_image(tmp_path / "a.gif", "P", (8, 8), "GIF")
    cut_gif = tmp_path / "cut.gif"
    cut_gif.write_bytes(gif.read_bytes()[:-1])
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")

    problems = {
        path.name: check_image_file(str(path))[1]
        for path in (jpeg, padded, png, cut_png, bmp, cut_bmp, gif, cut_gif, empty)
    }
    assert problems == {
        "a.jpg": None,
        "padded.jpg": None,
        "a.png": None,
        "cut.png": "truncated PNG (no IEND chunk)",
        "a.bmp": None,
        "cut.bmp": f"truncated BMP ({bmp.stat().st_size - 100} of {bmp.stat().st_size} bytes)",
        "a.gif": None,
        "cut.gif": "truncated GIF (no trailer byte)",
        "empty.jpg": "empty file",
    }


@pytest.fixture(scope="session")
def session_cache_dir(tmp_path_factory) -> str:
    """The session's extraction cache, so that the 60,000-image archive is extracted once.

    Under tox that is the cache the three backends share (KCV_CACHE_DIR); otherwise one
    made for this session.
    """
    return os.environ.get("KCV_CACHE_DIR") or str(tmp_path_factory.mktemp("kcv-cache"))


@pytest.mark.shared_data
@pytest.mark.slow
@pytest.mark.skipif(not REAL_ARCHIVE.is_file(), reason=NO_CIFAR10_JPEG)
def test_real_cifar10_jpeg_archive(session_cache_dir, monkeypatch, decode_batches):
    monkeypatch.setenv("KCV_CACHE_DIR", session_cache_dir)
    data = load_image_folder(REAL_ARCHIVE)

    assert data.class_names == CIFAR10_CLASSES
    assert (len(data.train), len(data.test)) == (50_000, 10_000)
    assert np.bincount(data.train.labels).tolist() == [5_000] * 10
    assert np.bincount(data.test.labels).tolist() == [1_000] * 10
    assert data.skipped == []

    # Listing and checking again, with the archive already extracted, takes seconds.
    started = time.perf_counter()
    assert load_image_folder(REAL_ARCHIVE).fingerprint == data.fingerprint
    assert time.perf_counter() - started < 10

    first_batch = decode_batches(data.test.subset(np.arange(8)), num_classes=10, image_size=(32, 32), batch_size=8)[0]
    assert first_batch[0].shape == (8, 32, 32, 3) and first_batch[0].dtype == np.uint8
