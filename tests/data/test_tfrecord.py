"""kcv convert and the tfrecord: source: real shards written from real sources, then streamed."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from kcv_testing import assert_one_line_error, run_kcv
from PIL import Image

from kerascv_app.config import DataConfig
from kerascv_app.data.base import select_classes
from kerascv_app.data.convert import convert
from kerascv_app.data.pipeline import make_dataset
from kerascv_app.data.sources import load_source
from kerascv_app.data.tfrecord import METADATA_FILE, PLAN_FILE, load_tfrecord
from kerascv_app.errors import UserError
from kerascv_app.faults import KILL_AFTER_RECORDS_VARIABLE

COLOURS = {"blue": 2, "green": 1, "red": 0}  # class folder -> the channel its images light up
TRAIN_PER_CLASS, TEST_PER_CLASS = 5, 2


def colour_image(path: Path, channel: int, number: int, image_format: str) -> None:
    """A 6x6 image lit in its class's channel; its brightness tells which file it was."""
    pixels = np.zeros((6, 6, 3), dtype=np.uint8)
    pixels[..., channel] = 100 + 10 * number
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, format=image_format)


@pytest.fixture(scope="module")
def colour_folder(tmp_path_factory) -> Path:
    """train/{blue,green,red}/ with 5 images each (PNG and JPEG), test/ with 2 each."""
    root = tmp_path_factory.mktemp("colours")
    for class_name, channel in COLOURS.items():
        for number in range(TRAIN_PER_CLASS):
            image_format, suffix = ("PNG", "png") if number % 2 else ("JPEG", "jpg")
            colour_image(root / "train" / class_name / f"{number}.{suffix}", channel, number, image_format)
        for number in range(TEST_PER_CLASS):
            colour_image(root / "test" / class_name / f"{number}.png", channel, number, "PNG")
    return root


@pytest.fixture(scope="module")
def colour_records(colour_folder, tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("converted") / "colours"
    convert(f"folder:{colour_folder}", directory, shards=3, workers=2, show_progress=False)
    return directory


@pytest.fixture(scope="module")
def digits_records(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("converted") / "digits"
    convert("digits", directory, shards=4, workers=2, show_progress=False)
    return directory


def read_records(path: Path) -> list[dict]:
    """Every record of a shard, parsed with TensorFlow alone (the format is plain tf.train.Example)."""
    import tensorflow as tf

    records = []
    for serialized in tf.data.TFRecordDataset(str(path)).as_numpy_iterator():
        example = tf.train.Example.FromString(serialized)
        features = example.features.feature
        records.append(
            {
                "image": features["image/encoded"].bytes_list.value[0],
                "label": features["image/class/label"].int64_list.value[0],
                "index": features["image/index"].int64_list.value[0],
            }
        )
    return records


def stream(split, batch_size: int = 64, training: bool = False, image_size=(8, 8), channels: int = 1):
    """(uint8 images, labels) of a split through the real pipeline, cache off."""
    config = DataConfig(image_size=image_size, channels=channels, batch_size=batch_size, cache="none")
    batches = list(
        make_dataset(split, max(split.labels, default=0) + 1, config, training=training, seed=3).as_numpy_iterator()
    )
    return np.concatenate([images for images, _ in batches]), np.concatenate(
        [labels.argmax(axis=1) for _, labels in batches]
    )


def test_convert_copies_the_files_bytes_and_describes_them_in_metadata(colour_folder, colour_records):
    metadata = json.loads((colour_records / METADATA_FILE).read_text())
    assert metadata["format"] == "kerascv_app.tfrecord" and metadata["version"] == 1
    assert metadata["class_names"] == ["blue", "green", "red"]
    assert (
        metadata["source"] == f"folder:{colour_folder}" and metadata["fingerprint"] and metadata["source_fingerprint"]
    )
    assert not (colour_records / PLAN_FILE).exists()
    for split_name, per_class, shard_count in (("train", TRAIN_PER_CLASS, 3), ("test", TEST_PER_CLASS, 1)):
        record = metadata["splits"][split_name]
        assert record["count"] == 3 * per_class and record["class_counts"] == [per_class] * 3
        assert [shard["file"] for shard in record["shards"]] == [
            f"{split_name}-{n:05d}-of-{shard_count:05d}.tfrecord" for n in range(shard_count)
        ]
        records = [entry for shard in record["shards"] for entry in read_records(colour_records / shard["file"])]
        assert [len(read_records(colour_records / shard["file"])) for shard in record["shards"]] == [
            shard["count"] for shard in record["shards"]
        ]
        # Files are stored as they were, byte for byte: no re-encoding.
        originals = {
            path.read_bytes(): metadata["class_names"].index(path.parent.name)
            for path in (colour_folder / split_name).rglob("*.*")
        }
        assert sorted(entry["image"] for entry in records) == sorted(originals)
        assert all(entry["label"] == originals[entry["image"]] for entry in records)
        # Positions run 0..n-1 in stored order, and the labels file follows that order.
        assert [entry["index"] for entry in records] == list(range(len(records)))
        np.testing.assert_array_equal(
            np.load(colour_records / record["labels_file"]), [entry["label"] for entry in records]
        )


def test_the_training_split_is_stored_shuffled(colour_records):
    """Folders list images class by class: the shards must not, or a bounded shuffle buffer could not mix classes."""
    labels = load_tfrecord(colour_records).train.labels
    assert sorted(labels) != list(labels) and sorted(labels) == sorted(np.repeat([0, 1, 2], TRAIN_PER_CLASS))


def test_digits_are_stored_as_lossless_png_and_stream_through_the_pipeline(digits_records):
    data, original = load_source(f"tfrecord:{digits_records}"), load_source("digits")
    assert data.name == f"tfrecord:{digits_records}" and data.class_names == original.class_names
    assert data.test is None and len(data.train) == len(original.train)
    images, labels = stream(data.train)
    np.testing.assert_array_equal(labels, data.train.labels)
    # Stored order is a seeded permutation of the source; every pixel survives PNG.
    order = np.random.default_rng(0).permutation(len(original.train))
    np.testing.assert_array_equal(images, original.train.images[order])
    np.testing.assert_array_equal(labels, original.train.labels[order])


def test_training_reads_every_image_once_in_a_seeded_order_that_changes_each_epoch(digits_records):
    import tensorflow as tf

    split = load_tfrecord(digits_records).train

    def epoch_signature(dataset) -> np.ndarray:
        """The order of an epoch, told by each record's encoded size."""
        sizes = dataset.map(lambda image, label: tf.strings.length(image))
        return np.fromiter(sizes.as_numpy_iterator(), dtype=np.int64)

    training_stream = split.to_training_dataset(seed=5)
    first_epoch, second_epoch = epoch_signature(training_stream), epoch_signature(training_stream)
    assert not np.array_equal(first_epoch, second_epoch)
    # The same seed gives the same stream in a fresh pipeline: what every worker of a cluster relies on.
    np.testing.assert_array_equal(epoch_signature(split.to_training_dataset(seed=5)), first_epoch)
    evaluation_images, evaluation_labels = stream(split)
    training_images, training_labels = stream(split, training=True)
    # Each image once, with its own label, whatever the order.
    assert image_label_pairs(training_images, training_labels) == image_label_pairs(
        evaluation_images, evaluation_labels
    )


def image_label_pairs(images: np.ndarray, labels: np.ndarray) -> list:
    return sorted(zip(map(bytes, images.reshape(len(images), -1)), labels.tolist()))


def test_subsets_and_chosen_classes_stream_only_their_records(digits_records):
    data = load_tfrecord(digits_records)
    picked = data.train.subset(np.array([40, 3, 3, 1000]))
    assert list(picked.ids) == [3, 3, 40, 1000]
    images, labels = stream(picked)
    np.testing.assert_array_equal(labels, picked.labels)
    np.testing.assert_array_equal(images[0], images[1])
    everything, _ = stream(data.train)
    np.testing.assert_array_equal(images, everything[[3, 3, 40, 1000]])

    chosen = select_classes(data, ("7", "1"))
    assert chosen.class_names == ["7", "1"] and set(chosen.train.labels) == {0, 1}
    _, chosen_labels = stream(chosen.train, training=True)
    assert sorted(chosen_labels) == sorted(chosen.train.labels)


def test_a_killed_conversion_resumes_and_keeps_its_finished_shards(colour_folder, tmp_path):
    destination = tmp_path / "records"
    # Six training shards of 2 or 3 images, written one at a time; killed inside the third.
    arguments = (
        "convert",
        f"folder:{colour_folder}",
        "--to",
        destination,
        "--shards",
        "6",
        "--workers",
        "1",
        "--quiet",
    )
    killed = run_kcv(*arguments, env={KILL_AFTER_RECORDS_VARIABLE: "7"})
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert not (destination / METADATA_FILE).exists() and (destination / PLAN_FILE).is_file()
    finished = sorted(destination.glob("*.tfrecord"))
    assert [path.name for path in finished] == ["train-00000-of-00006.tfrecord", "train-00001-of-00006.tfrecord"]
    # A shard's final name only ever names a whole shard; the interrupted one is hidden.
    assert [len(read_records(path)) for path in finished] == [3, 3]
    assert list(destination.glob(".train-00002-of-00006.tfrecord.partial-*"))
    with pytest.raises(UserError, match="unfinished conversion"):
        load_tfrecord(destination)
    kept = {path.name: path.stat().st_mtime_ns for path in finished}

    resumed = run_kcv(*arguments)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "2 kept from before" in resumed.stdout
    assert {name: (destination / name).stat().st_mtime_ns for name in kept} == kept
    assert not list(destination.glob(".*partial*"))
    data = load_tfrecord(destination)
    assert len(data.train) == 3 * TRAIN_PER_CLASS and len(data.test) == 3 * TEST_PER_CLASS
    images, labels = stream(data.train, image_size=(6, 6), channels=3)
    # Each image shows its class: the brightest channel of a red image is red.
    channel_of_class = [COLOURS[name] for name in data.class_names]
    assert [channel_of_class[label] for label in labels] == list(
        images.reshape(len(images), -1, 3).mean(axis=1).argmax(axis=1)
    )

    # Once finished, the same conversion has nothing left to write.
    again = convert(f"folder:{colour_folder}", destination, shards=6, workers=1, show_progress=False)
    assert again.shards_written == 0 and again.shards_kept == 8


def test_convert_refuses_bad_input(colour_folder, colour_records, tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    cases = [
        (("digits", foreign), {}, "is not empty and holds no conversion"),
        (("digits", a_file), {}, "is a file"),
        (("digits", tmp_path / "new"), {"shards": -1}, "--shards -1 is invalid"),
        (("digits", tmp_path / "new"), {"workers": 0}, "--workers 0 is invalid"),
        ((f"tfrecord:{colour_records}", tmp_path / "new"), {}, "is already converted"),
        # Another source into a finished conversion's folder.
        (("digits", colour_records), {}, "already holds a different conversion"),
    ]
    for (source, destination), options, message in cases:
        with pytest.raises(UserError, match=message):
            convert(source, destination, show_progress=False, **options)
    assert not (tmp_path / "new").exists() and sorted(path.name for path in foreign.iterdir()) == ["notes.txt"]
    # Through the command line: one line, exit code 2, nothing written.
    result = run_kcv("convert", "folder:" + str(tmp_path / "missing"), "--to", tmp_path / "out")
    assert_one_line_error(result, "does not exist")
    assert not (tmp_path / "out").exists()


def test_tfrecord_source_refuses_what_is_not_a_whole_conversion(colour_records, tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_source(f"tfrecord:{tmp_path / 'missing'}")
    with pytest.raises(UserError, match="has no metadata.json"):
        load_source(f"tfrecord:{tmp_path}")
    partial_copy = tmp_path / "copy"
    partial_copy.mkdir()
    for path in colour_records.iterdir():
        if path.name != "train-00001-of-00003.tfrecord":
            os.link(path, partial_copy / path.name)
    with pytest.raises(UserError, match="lacks 1 shard"):
        load_source("tfrecord:copy", data_dir=tmp_path)
