"""Train / validation / test splits: stratified, seeded and recorded.

The validation split is held out from training data; the test split is the source's
own, or held out once (also stratified) when the source has none. The test split is
never used for choices: early stopping and best checkpoints watch validation only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kerascv_app.config import DataConfig
from kerascv_app.data.base import ImageSplit, LoadedData, fingerprint_ids
from kerascv_app.errors import UserError


@dataclass
class Splits:
    train: ImageSplit
    validation: ImageSplit
    test: ImageSplit

    def record(self) -> dict:
        """What identifies these splits; runs that share it can be ensembled."""
        return {
            "train": len(self.train),
            "validation": len(self.validation),
            "test": len(self.test),
            "validation_fingerprint": fingerprint_ids(self.validation.ids),
            "test_fingerprint": fingerprint_ids(self.test.ids),
        }


def make_splits(data: LoadedData, config: DataConfig) -> Splits:
    seed = config.split_seed
    if len(data.train) == 0:
        raise UserError(f"{data.name} has no training images")
    train, test = data.train, data.test
    if test is None:
        train, test = _stratified_split(train, config.test_fraction, seed + 1, "test")
    if config.labelled_per_class:
        train = _per_class_cap(train, config.labelled_per_class, seed)
    validation = data.validation
    if validation is None:
        if config.val_fraction > 0:
            train, validation = _stratified_split(train, config.val_fraction, seed, "validation")
        else:
            validation = train.subset(np.arange(0))
    if config.max_train:
        train = _stratified_cap(train, config.max_train, seed)
    if config.max_eval:
        validation = _stratified_cap(validation, config.max_eval, seed)
        test = _stratified_cap(test, config.max_eval, seed)
    return Splits(train=train, validation=validation, test=test)


def _stratified_split(split: ImageSplit, fraction: float, seed: int, what: str):
    from sklearn.model_selection import train_test_split

    indices = np.arange(len(split))
    counts = np.bincount(split.labels)
    # Stratify only when every class can appear on both sides.
    stratify = (
        split.labels
        if counts[counts > 0].min() >= 2 and round(fraction * len(split)) >= np.count_nonzero(counts)
        else None
    )
    try:
        kept, held_out = train_test_split(indices, test_size=fraction, random_state=seed, stratify=stratify)
    except ValueError as error:
        raise UserError(
            f"cannot hold out a {what} split of {fraction:.0%} from {len(split)} images: {error}"
        ) from error
    return split.subset(np.sort(kept)), split.subset(np.sort(held_out))


def _per_class_cap(split: ImageSplit, limit: int, seed: int) -> ImageSplit:
    """At most ``limit`` images of each class, drawn at random (seeded), in their original order."""
    random = np.random.default_rng(seed + 3)
    kept = []
    for label in np.unique(split.labels):
        indices = np.flatnonzero(split.labels == label)
        kept.append(random.choice(indices, size=min(limit, len(indices)), replace=False))
    return split.subset(np.sort(np.concatenate(kept))) if kept else split


def _stratified_cap(split: ImageSplit, limit: int, seed: int) -> ImageSplit:
    if len(split) <= limit:
        return split
    _, kept = _stratified_split(split, limit / len(split), seed + 2, "capped")
    return kept
