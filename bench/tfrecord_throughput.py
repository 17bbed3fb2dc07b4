"""Images/s read, decoded and augmented from TFRecord shards against from a folder of JPEGs.

    python bench/tfrecord_throughput.py --data PATH [--rounds 2]

The same 50,000 CIFAR-10 training images (the JPEG copy), as its extracted folder and as
shards written by kcv convert, each streamed through the real training pipeline (cache
off, the source's flip and pad-4 crop, batches of 128) in a fresh process. Each process
streams two epochs and times the second, so that both read from a warm page cache: the
comparison is of the input pipelines, not of the disk. Rounds alternate the two sources;
the median of each is printed, and the ratio shards / folder.
"""

from __future__ import annotations

import argparse
import os
import statistics

from cifar10_jpeg import add_data_argument
from tfrecord_data import cifar10_records, jpeg_folder, measure_in_fresh_process


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_argument(parser)
    parser.add_argument("--rounds", type=int, default=2)
    arguments = parser.parse_args()
    sources = {
        "folder of JPEGs": f"folder:{jpeg_folder(arguments.archive)}",
        "TFRecord shards": f"tfrecord:{cifar10_records(arguments.archive)}",
    }
    rates: dict[str, list[int]] = {name: [] for name in sources}
    for _ in range(arguments.rounds):
        for name, source in sources.items():
            rates[name].append(measure_in_fresh_process(source, epochs=2)["images_per_second"])
    print(
        f"{os.cpu_count()} CPU cores; images/s, median of {arguments.rounds} (each round: "
        f"{', '.join(f'{name} {values[-1]}' for name, values in rates.items())})"
    )
    medians = {name: statistics.median(values) for name, values in rates.items()}
    for name, median in medians.items():
        print(f"{name:>16}: {median:8.0f} images/s")
    print(f"ratio shards / folder: {medians['TFRecord shards'] / medians['folder of JPEGs']:.2f}")


if __name__ == "__main__":
    main()
