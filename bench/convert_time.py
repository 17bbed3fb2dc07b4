"""How long `kcv convert` takes for the CIFAR-10 JPEG copy (60,000 images), against the
plainest possible conversion measured in the same run.

    python bench/convert_time.py --data PATH [--workers 2]

kcv: `kcv convert folder:FOLDER --to DIR --workers N` in a fresh process (wall time,
start-up included: what a user waits for), from the extracted folder. Reference: one
Python loop in a fresh process that reads every file and writes it, with its label, as a
tf.train.Example into a single TFRecord file (no shards, no parallelism, no check, no
metadata). Both start from a warm page cache (a first pass reads every file), so the
comparison is of the converters, not of the disk. Prints both times and kcv / reference.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "bench"))
from cifar10_jpeg import add_data_argument  # noqa: E402
from tfrecord_data import jpeg_folder  # noqa: E402

REFERENCE = r"""
import os, sys
import tensorflow as tf
root, target = sys.argv[1], sys.argv[2]
classes = sorted(os.listdir(os.path.join(root, "train")))
with tf.io.TFRecordWriter(target) as writer:
    for split in ("train", "test"):
        for label, name in enumerate(classes):
            folder = os.path.join(root, split, name)
            for file_name in sorted(os.listdir(folder)):
                with open(os.path.join(folder, file_name), "rb") as handle:
                    data = handle.read()
                example = tf.train.Example(features=tf.train.Features(feature={
                    "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[data])),
                    "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
                }))
                writer.write(example.SerializeToString())
"""


def timed(command: list[str]) -> float:
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    if result.returncode != 0:
        sys.exit(f"{' '.join(command[:5])} failed:\n{result.stderr[-2000:]}")
    return time.perf_counter() - start


def warm(root: Path) -> int:
    count = 0
    for folder, _, files in os.walk(root):
        for name in files:
            with open(os.path.join(folder, name), "rb") as handle:
                handle.read()
            count += 1
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_argument(parser)
    parser.add_argument("--workers", type=int, default=2)
    arguments = parser.parse_args()
    root = jpeg_folder(arguments.archive)
    images = warm(root)
    with tempfile.TemporaryDirectory() as scratch:
        kcv_seconds = timed(
            [
                sys.executable,
                "-m",
                "kerascv_app.cli",
                "convert",
                f"folder:{root}",
                "--to",
                str(Path(scratch) / "kcv"),
                "--workers",
                str(arguments.workers),
                "--quiet",
            ]
        )
        reference_seconds = timed(
            [sys.executable, "-c", REFERENCE, str(root), str(Path(scratch) / "reference.tfrecord")]
        )
    print(f"{os.cpu_count()} CPU cores, {images} images")
    print(f"kcv convert (--workers {arguments.workers}): {kcv_seconds:6.1f} s  ({images / kcv_seconds:,.0f} images/s)")
    print(f"reference (one loop, one file):  {reference_seconds:6.1f} s  ({images / reference_seconds:,.0f} images/s)")
    print(f"ratio kcv / reference: {kcv_seconds / reference_seconds:.2f}")


if __name__ == "__main__":
    main()
