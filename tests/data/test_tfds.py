"""tensorflow-datasets: a real (tiny) TFDS dataset generated and prepared here, then streamed."""

from __future__ import annotations

import time

import numpy as np
import pytest
import tensorflow_datasets as tfds

from kerascv_app.data import tfds_source
from kerascv_app.data.base import select_classes
from kerascv_app.data.tfds_source import TfdsSplit, load_tfds
from kerascv_app.errors import UserError

COLOURS = ["red", "green", "blue"]
SPLIT_SIZES = {"train": 30, "test": 9, "validation": 6}


class TinyColours(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """8x8 images filled with their class's colour, so that a decoded image tells its label.

    Not registered: load_tfds finds it the way it finds any prepared dataset, from its files.
    """

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        features = tfds.features.FeaturesDict(
            {"image": tfds.features.Image(shape=(8, 8, 3)), "label": tfds.features.ClassLabel(names=COLOURS)}
        )
        return tfds.core.DatasetInfo(builder=self, features=features, supervised_keys=("image", "label"))

    def _split_generators(self, dl_manager):
        return {split: self._generate_examples(split, size) for split, size in SPLIT_SIZES.items()}

    def _generate_examples(self, split, size):
        for number in range(size):
            label = number % len(COLOURS)
            image = np.zeros((8, 8, 3), dtype=np.uint8)
            image[..., label] = 200
            yield f"{split}-{number}", {"image": image, "label": label}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("tfds")
    TinyColours(data_dir=str(data_dir)).download_and_prepare()
    return data_dir


def colour_labels(images: np.ndarray) -> np.ndarray:
    """The label each decoded image shows: its brightest channel."""
    return images.reshape(len(images), -1, 3).mean(axis=1).argmax(axis=1)


def streamed(split, decode_batches, num_classes=3):
    batches = decode_batches(split, num_classes)
    images = np.concatenate([images for images, _ in batches])
    labels = np.concatenate([one_hot.argmax(axis=1) for _, one_hot in batches])
    return images, labels


def test_loads_labels_class_names_and_splits(prepared):
    data = load_tfds("tiny_colours", prepared)
    assert data.class_names == COLOURS
    assert (len(data.train), len(data.test), len(data.validation)) == (30, 9, 6)
    assert isinstance(data.train, TfdsSplit) and data.train.element_kind == "encoded"
    assert np.bincount(data.train.labels).tolist() == [10, 10, 10]
    assert data.fingerprint == load_tfds("tiny_colours", prepared).fingerprint


def test_streams_encoded_images_that_the_pipeline_decodes(prepared, decode_batches):
    data = load_tfds("tiny_colours", prepared)
    encoded, label = next(iter(data.train.to_dataset()))
    assert encoded.dtype.name == "string" and encoded.numpy().startswith(b"\x89PNG")
    batches = decode_batches(data.train, len(COLOURS))
    assert [images.shape for images, _ in batches][:2] == [(4, 16, 16, 3)] * 2 and batches[0][0].dtype == np.uint8
    images, labels = streamed(data.train, decode_batches)
    np.testing.assert_array_equal(labels, data.train.labels)  # the up-front labels are the streamed ones
    np.testing.assert_array_equal(colour_labels(images), labels)  # and belong to their images


def test_subset_streams_only_the_chosen_records(prepared, decode_batches):
    train = load_tfds("tiny_colours", prepared).train
    subset = train.subset(np.array([17, 2, 9, 25]))
    assert len(subset) == 4
    np.testing.assert_array_equal(subset.ids, [2, 9, 17, 25])  # stored order, as streamed
    images, labels = streamed(subset, decode_batches)
    np.testing.assert_array_equal(labels, subset.labels)
    np.testing.assert_array_equal(colour_labels(images), labels)
    nested = subset.subset(np.array([1, 3]))
    np.testing.assert_array_equal(nested.ids, [9, 25])
    np.testing.assert_array_equal(streamed(nested, decode_batches)[1], train.labels[[9, 25]])


def test_subset_with_repeated_indices_streams_repeats(prepared, decode_batches):
    train = load_tfds("tiny_colours", prepared).train
    bootstrap = train.subset(np.array([4, 1, 4, 4, 0]))
    np.testing.assert_array_equal(bootstrap.ids, [0, 1, 4, 4, 4])
    images, labels = streamed(bootstrap, decode_batches)
    np.testing.assert_array_equal(labels, train.labels[[0, 1, 4, 4, 4]])
    np.testing.assert_array_equal(colour_labels(images), labels)


def test_selected_classes_are_relabelled_in_the_stream(prepared, decode_batches):
    data = select_classes(load_tfds("tiny_colours", prepared), ("blue", "red"))
    assert len(data.train) == 20
    images, labels = streamed(data.train, decode_batches, num_classes=2)
    np.testing.assert_array_equal(labels, data.train.labels)
    np.testing.assert_array_equal(colour_labels(images), np.where(labels == 0, 2, 0))  # blue is now 0, red 1


def test_unknown_dataset_names_data_dir(tmp_path):
    with pytest.raises(UserError, match="tfds:no_such_dataset_here is neither .*--data-dir"):
        load_tfds("no_such_dataset_here", tmp_path)


def test_unprepared_dataset_offline_fails_at_once(tmp_path, monkeypatch):
    # A host that never resolves (RFC 2606): offline for this test, whatever the machine's network.
    monkeypatch.setattr(tfds_source, "CONNECTIVITY_PROBE", ("tfds-mirror.invalid", 443))
    for proxy_variable in ("https_proxy", "HTTPS_PROXY"):
        monkeypatch.delenv(proxy_variable, raising=False)
    started = time.perf_counter()
    with pytest.raises(UserError) as caught:
        load_tfds("mnist", tmp_path)
    assert time.perf_counter() - started < 10
    message = str(caught.value)
    assert "tfds:mnist is not prepared in" in message and "--data-dir" in message and "tfds build mnist" in message
    assert "\n" not in message
