"""Peak memory of one epoch over TFRecord shards of N and of 10N images (target: at most 1.3x).

    python bench/tfrecord_memory.py --data PATH [--copies 10]

N is the CIFAR-10 JPEG copy's 50,000 training images, converted once by kcv convert. The
10N dataset is the same shards listed ten times (symbolic links, each record keeping its
label), so it costs no disk. Each size is streamed once through the real training pipeline
(read, decode, pad-4 crop and flip, batches of 128; cache off, the default 10,000-image
shuffle buffer) in a fresh process, which reports its peak resident memory (ru_maxrss).
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
from cifar10_jpeg import add_data_argument
from tfrecord_data import cifar10_records, measure_in_fresh_process

TARGET_RATIO = 1.3


def repeated_records(directory: Path, copies: int) -> Path:
    """A conversion listing every training shard ``copies`` times: copies x the images.

    Records carry their position in the original split; the labels file is tiled, so a
    position's label is the same in every copy, and each copy streams as the original.
    """
    target = directory.with_name(f"{directory.name}-x{copies}")
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir()
    metadata = json.loads((directory / "metadata.json").read_text())
    train = metadata["splits"]["train"]
    shards = []
    total = len(train["shards"]) * copies
    for copy in range(copies):
        for number, shard in enumerate(train["shards"]):
            name = f"train-{copy * len(train['shards']) + number:05d}-of-{total:05d}.tfrecord"
            (target / name).symlink_to((directory / shard["file"]).resolve())
            shards.append({"file": name, "count": shard["count"]})
    labels = np.tile(np.load(directory / train["labels_file"]), copies)
    np.save(target / "train-labels.npy", labels)
    metadata["splits"] = {
        "train": {
            **train,
            "count": int(len(labels)),
            "shards": shards,
            "class_counts": (np.array(train["class_counts"]) * copies).tolist(),
        }
    }
    metadata["fingerprint"] = f"{metadata['fingerprint']}-x{copies}"
    (target / "metadata.json").write_text(json.dumps(metadata))
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_argument(parser)
    parser.add_argument("--copies", type=int, default=10)
    arguments = parser.parse_args()
    records = cifar10_records(arguments.archive)
    small = measure_in_fresh_process(f"tfrecord:{records}")
    large = measure_in_fresh_process(f"tfrecord:{repeated_records(records, arguments.copies)}")
    ratio = large["peak_rss_mb"] / small["peak_rss_mb"]
    for label, record in (("N", small), (f"{arguments.copies}N", large)):
        print(
            f"{label:>4}: {record['images']:>7} images in {record['seconds']:6.1f} s, peak RSS "
            f"{record['peak_rss_mb']} MB (after loading: {record['rss_after_loading_mb']} MB)"
        )
    print(f"peak RSS ratio {arguments.copies}N / N: {ratio:.2f} (target at most {TARGET_RATIO})")


if __name__ == "__main__":
    main()
