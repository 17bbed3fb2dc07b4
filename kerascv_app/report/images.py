"""Images for the report, read through the run's own data source, classes and splits.

The test split is rebuilt as ``kcv fit`` built it (kerascv_app/data/prepare.py) and checked
against the run's record: its fingerprint (splits.json) and its labels (the saved test
predictions). Only then is image ``i`` of the split the image whose probabilities are row ``i``
of predictions/test.npz, i.e. one of the images the metrics counted.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from kerascv_app.errors import UserError
from kerascv_app.report.sources import ReportSource

#: What the page leaves out without the images, named in the error that asks for --data-dir.
IMAGE_PARTS = "top losses, Grad-CAM and the augmentation preview"
OPT_OUT = "--top-losses 0 --gradcam 0 --preview 0"


@dataclasses.dataclass
class RebuiltData:
    config: object
    prepared: object


def rebuild_data(source: ReportSource, data_dir: str | Path | None) -> RebuiltData:
    """The run's data as it trained on it, or one line saying what is missing and what to do."""
    from kerascv_app.config import Config
    from kerascv_app.data.prepare import prepare_data

    config = Config.from_dict(source.config)
    location = data_dir if data_dir is not None else source.environment.get("data_dir")
    advice = (
        f"{IMAGE_PARTS} need them: pass --data-dir PATH where the data is now, or leave those parts out with {OPT_OUT}"
    )
    try:
        prepared = prepare_data(config, location)
    except UserError as error:
        raise UserError(
            f"the images of {source.path} ({config.data.source}) cannot be read where it read them ({error}); {advice}"
        ) from error
    if prepared.splits.record()["test_fingerprint"] != source.splits.get("test_fingerprint") or not np.array_equal(
        prepared.splits.test.labels, source.test.labels
    ):
        raise UserError(
            f"the test images found now for {source.path} ({config.data.source}) are not those it was evaluated on "
            f"(splits.json, predictions/test.npz); {advice}"
        )
    return RebuiltData(config=config, prepared=prepared)


def test_images(data: RebuiltData, indices: np.ndarray) -> np.ndarray:
    """The test images at ``indices`` (positions in the test split), uint8 (N, H, W, C), as
    evaluation fed them to the model: only those images are read and decoded."""
    from kerascv_app.data.prepare import PreparedData, evaluation_dataset
    from kerascv_app.data.splits import Splits

    config, prepared = data.config, data.prepared
    indices = np.asarray(indices, dtype=np.int64)
    if len(indices) == 0:
        height, width = config.data.image_size
        return np.zeros((0, height, width, config.data.channels), np.uint8)
    chosen = prepared.splits.test.subset(indices)
    empty = chosen.subset(np.arange(0))
    only_chosen = PreparedData(data=prepared.data, splits=Splits(train=empty, validation=empty, test=chosen))
    reading = dataclasses.replace(config, data=dataclasses.replace(config.data, batch_size=len(indices), cache="none"))
    batches = [np.asarray(images) for images, _ in evaluation_dataset(only_chosen, reading, "test").as_numpy_iterator()]
    return np.concatenate(batches).astype(np.uint8)


def test_image_ids(data: RebuiltData, indices: np.ndarray) -> list[str]:
    """What names each image in its source: a file path relative to nothing, or an array index."""
    return [str(identifier) for identifier in data.prepared.splits.test.ids[np.asarray(indices, dtype=np.int64)]]


def preview_cells(data: RebuiltData, count: int) -> dict:
    """kcv preview's sample (kerascv_app/augment/preview.py): the same training images, the
    same augmentation and label text, drawn as page thumbnails (matplotlib's grid of 32 axes
    took 5 s of a 20 s report) with the ops as the grid's title."""
    from kerascv_app.augment.preview import augment_sample, label_text, sample_training_images
    from kerascv_app.report.figures import thumbnail_uri

    config, names = data.config, data.prepared.class_names
    images, labels = sample_training_images(data.prepared, config, count)
    augmented, mixed_labels = augment_sample(config, images, labels)
    cells = [
        {
            "image": thumbnail_uri(image),
            "label": label_text(label, names),
            "augmented": thumbnail_uri(changed),
            "augmented_label": label_text(mixed, names),
        }
        for image, label, changed, mixed in zip(images, labels, augmented, mixed_labels)
    ]
    operations = ", ".join(str(operation) for operation in config.augment.ops) or "no augmentation"
    return {"title": f"{config.name} ({config.augment.placement}): {operations}", "cells": cells}
