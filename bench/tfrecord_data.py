"""Shared by the TFRecord benchmarks: the CIFAR-10 JPEG copy as a folder and as shards,
and one measured epoch of the real input pipeline (read, decode, augment; no model).

Not a benchmark itself: bench/tfrecord_memory.py and bench/tfrecord_throughput.py import it
and run :func:`measure_epoch` in fresh processes (``python bench/tfrecord_data.py SOURCE``),
so that one measurement's memory or warm caches never count in another's.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
BATCH_SIZE = 128


def jpeg_folder(archive: Path) -> Path:
    """The extracted copy (train/<class>/*.jpg, test/<class>/*.jpg), extracted once into kcv's cache."""
    from kerascv_app.data.folder import extract_archive

    return extract_archive(archive)


def cifar10_records(archive: Path) -> Path:
    """The copy converted by kcv convert once, into kcv's cache; a rerun finds it (or resumes it)."""
    from kerascv_app.data.convert import convert
    from kerascv_app.data.folder import cache_dir

    directory = cache_dir() / "bench" / f"{archive.name.split('.')[0]}-tfrecord"
    convert(f"folder:{jpeg_folder(archive)}", directory, shards=0, workers=2, show_progress=True)
    return directory


def measure_in_fresh_process(source: str, epochs: int = 1) -> dict:
    """Runs :func:`measure_epoch` in a new Python process and returns its record."""
    command = [sys.executable, str(Path(__file__).resolve()), source, str(epochs)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"measuring {source} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def measure_epoch(source: str, epochs: int) -> dict:
    """Streams the training split ``epochs`` times through make_dataset (cache off, the
    cifar10_baseline recipe's augmentation: the source's flip and pad-4 crop); times the last
    epoch and reports the process's peak resident memory."""
    import dataclasses

    from kerascv_app.backend import select_backend

    select_backend("tensorflow")
    from kerascv_app.data.pipeline import make_dataset
    from kerascv_app.data.sources import load_source
    from kerascv_app.recipe import load_recipe

    config, _ = load_recipe(REPO_ROOT / "recipes" / "cifar10_baseline.py")
    data_config = dataclasses.replace(config.data, cache="none", batch_size=BATCH_SIZE)
    data = load_source(source)
    dataset = make_dataset(data.train, len(data.class_names), data_config, config.augment, training=True, seed=0)
    loaded_rss = peak_rss_megabytes()
    for _ in range(epochs):
        start, images = time.perf_counter(), 0
        for batch, _ in dataset:
            images += int(batch.shape[0])
        seconds = time.perf_counter() - start
    return {
        "source": source,
        "images": images,
        "seconds": round(seconds, 2),
        "images_per_second": round(images / seconds),
        "peak_rss_mb": round(peak_rss_megabytes()),
        "rss_after_loading_mb": round(loaded_rss),
    }


def peak_rss_megabytes() -> float:
    # Linux reports ru_maxrss in kilobytes.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


if __name__ == "__main__":
    print(json.dumps(measure_epoch(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 1)))
