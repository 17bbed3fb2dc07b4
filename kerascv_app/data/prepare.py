"""From a config to ready datasets: load the source, pick classes, split, build tf.data."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

from kerascv_app.config import Config
from kerascv_app.data.base import LoadedData, select_classes
from kerascv_app.data.pipeline import CacheChoice, choose_cache, make_dataset
from kerascv_app.data.sources import load_source
from kerascv_app.data.splits import Splits, make_splits


@dataclass
class PreparedData:
    data: LoadedData
    splits: Splits
    #: data.cache resolved once for all splits (auto: memory or streaming).
    cache: CacheChoice | None = None

    @property
    def class_names(self) -> list[str]:
        return self.data.class_names

    @property
    def num_classes(self) -> int:
        return len(self.data.class_names)

    def steps_per_epoch(self, batch_size: int) -> int:
        return max(1, math.ceil(len(self.splits.train) / batch_size))


def undecodable_files(prepared: PreparedData) -> list[str]:
    """Files that passed the start-up check but did not decode while training or evaluating."""
    from kerascv_app.data.base import FileSplit

    found = []
    for split in (prepared.splits.train, prepared.splits.validation, prepared.splits.test):
        if isinstance(split, FileSplit):
            found.extend(path for path in split.undecodable_paths() if path not in found)
    return found


def report_undecodable_files(run, prepared: PreparedData) -> list[str]:
    """Adds the files that failed to decode to environment.json's skipped files and names
    them in one warning line, as the start-up check does for the files it skips."""
    import sys

    failed = undecodable_files(prepared)
    if not failed:
        return []
    environment = run.read_json("environment.json")
    environment["skipped_files"] = list(dict.fromkeys([*environment.get("skipped_files", []), *failed]))
    environment["skipped_while_training"] = failed
    run.write_json("environment.json", environment)
    named = ", ".join(failed[:5]) + (f" and {len(failed) - 5} more" if len(failed) > 5 else "")
    print(
        f"warning: skipped {len(failed)} image file(s) that could not be decoded: {named} (listed in "
        f"{run.file('environment.json')})",
        file=sys.stderr,
    )
    return failed


def prepare_data(config: Config, data_dir: str | Path | None) -> PreparedData:
    data = load_source(config.data.source, data_dir)
    data = select_classes(data, config.data.classes)
    splits = make_splits(data, config.data)
    image_count = len(splits.train) + len(splits.validation) + len(splits.test)
    return PreparedData(data=data, splits=splits, cache=choose_cache(config.data, image_count))


def _data_config(prepared: PreparedData, config: Config):
    if prepared.cache is None:
        return config.data
    return dataclasses.replace(config.data, cache=prepared.cache.mode)


def training_datasets(prepared: PreparedData, config: Config):
    """The shuffled, augmented training set and the plain validation set."""
    train = make_dataset(
        prepared.splits.train,
        prepared.num_classes,
        _data_config(prepared, config),
        config.augment,
        training=True,
        seed=config.train.seed,
        split_name="train",
    )
    validation = evaluation_dataset(prepared, config, "validation")
    return train, validation


def training_epochs(prepared: PreparedData, config: Config, first_epoch: int, end_epoch: int, skip_batches: int = 0):
    """Training batches of epochs first_epoch..end_epoch - 1, replayable (see make_training_epochs)."""
    from kerascv_app.data.pipeline import make_training_epochs

    return make_training_epochs(
        prepared.splits.train,
        prepared.num_classes,
        _data_config(prepared, config),
        config.augment,
        config.train.seed,
        first_epoch,
        end_epoch,
        skip_batches,
    )


def evaluation_dataset(prepared: PreparedData, config: Config, split_name: str):
    split = getattr(prepared.splits, split_name)
    if len(split) == 0:
        return None
    if config.train.loop == "fast":
        # The fast loop's runs are read as uint8 arrays, without TensorFlow, in training and after.
        from kerascv_app.data.arrays import ArrayBatches, split_arrays

        arrays = split_arrays(split, config.data.image_size, config.data.channels, prepared.data.fingerprint)
        return ArrayBatches(arrays, prepared.num_classes, config.data.batch_size)
    return make_dataset(
        split, prepared.num_classes, _data_config(prepared, config), training=False, split_name=split_name
    )
