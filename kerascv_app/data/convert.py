"""``kcv convert SOURCE --to DIR``: any source ``kcv fit`` reads, written once as sharded TFRecords.

The format (files, record features, metadata.json) and the reader are in
kerascv_app/data/tfrecord.py. Writing is parallel (``--workers`` shards at once), atomic per
shard (a shard is written under a hidden name and renamed when complete, so a shard's final
name always means a whole shard) and resumable (a rerun keeps the finished shards and writes
the others).
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kerascv_app import faults
from kerascv_app.data.base import ImageSplit, LoadedData, fingerprint_arrays, fingerprint_ids
from kerascv_app.data.sources import load_source
from kerascv_app.data.tfrecord import (
    FORMAT_NAME,
    FORMAT_VERSION,
    IMAGE_KEY,
    INDEX_KEY,
    LABEL_KEY,
    METADATA_FILE,
    PLAN_FILE,
    SPLIT_NAMES,
    read_metadata,
)
from kerascv_app.errors import UserError

# The training split is written in this seeded random order: folders list their images
# class by class, and a bounded shuffle buffer over class-sorted shards would not mix classes.
STORED_ORDER_SEED = 0
# Default shard size: about 100 MB of ImageNet-sized JPEGs per training shard.
IMAGES_PER_SHARD = 1024
# Progress is reported every this many records, not every record.
PROGRESS_EVERY = 64


# ---------------------------------------------------------------------------- planning


@dataclass(frozen=True)
class ShardPlan:
    """One shard to write: which images of the source split, in which order."""

    split_name: str
    number: int
    total: int
    # Positions in the source's split, in the order the source will stream them.
    source_indices: np.ndarray
    # Their labels, in that order.
    labels: np.ndarray
    # The stored position of the shard's first record within its split.
    first_position: int

    @property
    def file_name(self) -> str:
        return f"{self.split_name}-{self.number:05d}-of-{self.total:05d}.tfrecord"

    @property
    def count(self) -> int:
        return len(self.labels)


def plan_conversion(data: LoadedData, training_shards: int) -> list[ShardPlan]:
    """Every shard of every split, deterministically: a rerun plans the same shards.

    ``training_shards`` = 0 picks about IMAGES_PER_SHARD images per shard. The other splits
    get shards in proportion to their size, at least one.
    """
    if training_shards == 0:
        training_shards = max(1, -(-len(data.train) // IMAGES_PER_SHARD))
    plans = []
    for split_name in SPLIT_NAMES:
        split = getattr(data, split_name)
        if split is None or len(split) == 0:
            continue
        if split_name == "train":
            order = np.random.default_rng(STORED_ORDER_SEED).permutation(len(split))
            shard_count = min(training_shards, len(split))
        else:
            order = np.arange(len(split))
            shard_count = min(len(split), max(1, round(training_shards * len(split) / len(data.train))))
        first_position = 0
        for number, source_indices in enumerate(np.array_split(order, shard_count)):
            # The source decides the streaming order of a subset (TFDS streams in stored
            # order); its labels follow that order, and so do the stored positions.
            labels = split.subset(source_indices).labels
            plans.append(ShardPlan(split_name, number, shard_count, source_indices, labels, first_position))
            first_position += len(source_indices)
    return plans


def conversion_fingerprint(data: LoadedData, plans: list[ShardPlan]) -> str:
    """What identifies the converted dataset: the source's data and every shard's contents."""
    # The per-record arrays are hashed as bytes: millions of records hash in milliseconds.
    records = fingerprint_arrays(
        np.concatenate([plan.labels for plan in plans]), np.concatenate([plan.source_indices for plan in plans])
    )
    return fingerprint_ids(
        [FORMAT_NAME, FORMAT_VERSION, data.fingerprint, records], [f"{plan.file_name}:{plan.count}" for plan in plans]
    )


def split_labels(plans: list[ShardPlan], split_name: str) -> np.ndarray:
    return np.concatenate([plan.labels for plan in plans if plan.split_name == split_name]).astype(np.int64)


# ---------------------------------------------------------------------------- writing


@dataclass
class ConversionResult:
    directory: Path
    counts: dict[str, int]
    shards_written: int
    shards_kept: int
    skipped_files: list[str]


def convert(
    source: str,
    destination: Path,
    data_dir: Path | None = None,
    shards: int = 0,
    workers: int = 4,
    show_progress: bool = True,
) -> ConversionResult:
    """Writes ``source`` as sharded TFRecords into ``destination``; resumes a partial conversion."""
    if shards < 0:
        raise UserError(
            f"--shards {shards} is invalid: give a positive number of training shards, or 0 for one per "
            f"{IMAGES_PER_SHARD} images"
        )
    if workers < 1:
        raise UserError(f"--workers {workers} is invalid: give a positive number of shards to write at once")
    destination = Path(destination).expanduser()
    if destination.exists() and not destination.is_dir():
        raise UserError(
            f"--to {destination} is a file: give a folder (new, empty, or an earlier conversion of the same source)"
        )
    if source.partition(":")[0] == "tfrecord":
        raise UserError(f"{source} is already converted: train on it with --set data.source={source}")
    data = load_source(source, data_dir)
    plans = plan_conversion(data, shards)
    fingerprint = conversion_fingerprint(data, plans)
    _claim_destination(destination, source, fingerprint)
    if (destination / METADATA_FILE).is_file():
        return ConversionResult(destination, _split_counts(plans), 0, len(plans), data.skipped)
    _remove_partial_shards(destination)
    written = _write_shards(data, plans, destination, workers, show_progress)
    _write_labels_and_metadata(destination, source, data, plans, fingerprint)
    return ConversionResult(destination, _split_counts(plans), written, len(plans) - written, data.skipped)


def _claim_destination(destination: Path, source: str, fingerprint: str) -> None:
    """Makes ``destination`` this conversion's folder, or refuses one that holds something else."""
    from kerascv_app.runs import write_json_atomically

    plan_path, metadata_path = destination / PLAN_FILE, destination / METADATA_FILE
    if metadata_path.is_file():
        finished = read_metadata(destination)
        if finished["fingerprint"] != fingerprint:
            raise UserError(
                f"{destination} already holds a different conversion (of {finished.get('source')}): choose a new "
                "--to folder"
            )
        return
    if plan_path.is_file():
        try:
            planned = json.loads(plan_path.read_text())["fingerprint"]
        except (ValueError, KeyError, TypeError):
            planned = None
        if planned != fingerprint:
            raise UserError(
                f"{destination} holds an unfinished conversion of other data or other --shards: rerun that "
                "conversion, or choose a new --to folder"
            )
        return
    if destination.is_dir() and any(destination.iterdir()):
        raise UserError(f"--to {destination} is not empty and holds no conversion: choose a new or empty folder")
    destination.mkdir(parents=True, exist_ok=True)
    write_json_atomically(
        plan_path, {"format": FORMAT_NAME, "version": FORMAT_VERSION, "source": source, "fingerprint": fingerprint}
    )


def _remove_partial_shards(destination: Path) -> None:
    """Shards a killed conversion left half-written (never under a shard's final name)."""
    for partial in destination.glob(".*.partial-*"):
        partial.unlink(missing_ok=True)


def _write_shards(
    data: LoadedData, plans: list[ShardPlan], destination: Path, workers: int, show_progress: bool
) -> int:
    """Writes the shards not yet there, ``workers`` at a time; returns how many it wrote.

    Threads, not processes: the work is tf.data reading and encoding and the record writer,
    which release the GIL, and TensorFlow does not survive a fork.
    """
    pending = [plan for plan in plans if not (destination / plan.file_name).is_file()]
    progress = _ConversionProgress(sum(plan.count for plan in plans), show_progress)
    progress.advance(sum(plan.count for plan in plans) - sum(plan.count for plan in pending))
    killer = faults.RecordKiller.from_environment()
    with progress, ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [
            pool.submit(_write_shard, getattr(data, plan.split_name), plan, destination, progress, killer)
            for plan in pending
        ]
        for future in futures:
            future.result()
    return len(pending)


def _write_shard(split: ImageSplit, plan: ShardPlan, destination: Path, progress, killer) -> None:
    import tensorflow as tf

    final_path = destination / plan.file_name
    partial_path = destination / f".{plan.file_name}.partial-{os.getpid()}"
    written = 0
    with tf.io.TFRecordWriter(str(partial_path)) as writer:
        for encoded, label in _encoded_stream(split.subset(plan.source_indices)).as_numpy_iterator():
            writer.write(_example(encoded, int(label), plan.first_position + written))
            written += 1
            killer.count_one()
            if written % PROGRESS_EVERY == 0:
                progress.advance(PROGRESS_EVERY)
    progress.advance(written % PROGRESS_EVERY)
    if written != plan.count:
        partial_path.unlink(missing_ok=True)
        raise UserError(
            f"the source gave {written} images for {plan.file_name} instead of {plan.count}: it changed during the "
            "conversion; convert again"
        )
    _make_durable(partial_path)
    # The rename is the commit: the final name only ever names a whole shard.
    os.replace(partial_path, final_path)


def _encoded_stream(split: ImageSplit):
    """(image file bytes, label): files as they are, decoded arrays as PNG (lossless)."""
    import tensorflow as tf

    dataset = split.to_dataset()
    if split.element_kind == "decoded":
        dataset = dataset.map(
            lambda image, label: (tf.io.encode_png(image), label), num_parallel_calls=tf.data.AUTOTUNE
        )
    return dataset.prefetch(tf.data.AUTOTUNE)


def _example(encoded: bytes, label: int, position: int) -> bytes:
    import tensorflow as tf

    feature = {
        IMAGE_KEY: tf.train.Feature(bytes_list=tf.train.BytesList(value=[encoded])),
        LABEL_KEY: tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
        INDEX_KEY: tf.train.Feature(int64_list=tf.train.Int64List(value=[position])),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def _make_durable(path: Path) -> None:
    """Flushes the file to disk before it is renamed, so a crash cannot leave a named empty shard."""
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def _write_labels_and_metadata(
    destination: Path, source: str, data: LoadedData, plans: list[ShardPlan], fingerprint: str
) -> None:
    from kerascv_app.runs import write_json_atomically

    splits = {}
    for split_name in dict.fromkeys(plan.split_name for plan in plans):
        labels = split_labels(plans, split_name)
        labels_file = f"{split_name}-labels.npy"
        temporary = destination / f".{labels_file}.tmp.npy"
        np.save(temporary, labels.astype(np.int32))
        os.replace(temporary, destination / labels_file)
        splits[split_name] = {
            "count": int(len(labels)),
            "class_counts": np.bincount(labels, minlength=len(data.class_names)).tolist(),
            "labels_file": labels_file,
            "shards": [
                {"file": plan.file_name, "count": plan.count} for plan in plans if plan.split_name == split_name
            ],
        }
    metadata = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "source": source,
        "source_name": data.name,
        "source_fingerprint": data.fingerprint,
        "fingerprint": fingerprint,
        "class_names": list(data.class_names),
        "splits": splits,
        "skipped": list(data.skipped),
        "record_features": {IMAGE_KEY: "bytes", LABEL_KEY: "int64", INDEX_KEY: "int64"},
    }
    # Written last: its presence is what makes the folder a finished conversion.
    write_json_atomically(destination / METADATA_FILE, metadata)
    (destination / PLAN_FILE).unlink(missing_ok=True)


def _split_counts(plans: list[ShardPlan]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for plan in plans:
        counts[plan.split_name] = counts.get(plan.split_name, 0) + plan.count
    return counts


class _ConversionProgress:
    """A rich progress bar over images, advanced from the writer threads (rich is thread-safe)."""

    def __init__(self, total: int, enabled: bool):
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.enabled = enabled
        self.progress = Progress(
            TextColumn("[bold]converting"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            disable=not enabled,
        )
        self.task = self.progress.add_task("images", total=total)

    def advance(self, count: int) -> None:
        if count:
            self.progress.advance(self.task, count)

    def __enter__(self):
        self.progress.start()
        return self

    def __exit__(self, *exc):
        self.progress.stop()
        return False
