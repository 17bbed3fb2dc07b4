"""Images/s delivered by kcv's tf.data pipeline against a PyTorch DataLoader, same images, same ops.

Two augmentation sets (kerascv_app.augment.spec): SEED_PRESET (the source's flip + pad-4
crop) and HEAVY_PRESET (+ rotation, colour jitter, gaussian noise, random erasing), and
"none" (decode and batch only) as the bound below both. Both
sides read the same class-balanced subset of the CIFAR-10 JPEG copy, decode, augment and
batch (128), shuffled; each is measured over full passes after one warm-up pass, and the
best pass counts (the one least disturbed by other work on the machine).

- tf.data: make_dataset exactly as kcv fit builds it, with pipeline placement. Measured
  twice: with data.cache = "memory" (kcv's default: decoded images are cached, so the
  timed pass only shuffles, batches and augments) and with "none" (every JPEG decoded
  again each pass, as the DataLoader does). It delivers uint8 images: normalisation is
  in the model.
- DataLoader: bench/pipeline_torchvision.py in --seed-python (torchvision beside a CPU
  torch), 2 workers as in the source, persistent; it delivers normalised float tensors.

The honest comparison is the uncached one (both decode every epoch); the cached one is
what kcv fit does by default. Target: tf.data at least 3x the DataLoader for both sets.

    python bench/pipeline.py --data PATH --seed-python .venv-torchvision/bin/python [--train-per-class 1000]

(.venv-torchvision: see bench/seed_vs_kcv.py; PATH: the CIFAR-10 JPEG copy, or set KCV_CIFAR10_JPEG.)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cifar10_jpeg import add_data_argument  # noqa: E402
from seed_vs_kcv import REPO_ROOT, balanced_subset  # noqa: E402

DEFAULT_SEED_PYTHON = ".venv-torchvision/bin/python"
# "none": decoding and batching only, the bound below any augmentation.
SET_NAMES = ("none", "seed", "heavy")


def list_images(root: Path) -> tuple[list[str], list[int]]:
    """Paths and labels of a class-per-folder tree, classes in sorted order (as ImageFolder)."""
    paths, labels = [], []
    for label, class_folder in enumerate(sorted(p for p in root.iterdir() if p.is_dir())):
        for file in sorted(class_folder.iterdir()):
            paths.append(str(file))
            labels.append(label)
    return paths, labels


def tf_data_rate(
    paths: list[str], labels: list[int], set_name: str, cache: str, batch_size: int, timed_passes: int
) -> float:
    """Images/s of kcv's training pipeline: the best of ``timed_passes`` passes after a warm-up pass."""
    from kerascv_app.augment.spec import HEAVY_PRESET, SEED_PRESET
    from kerascv_app.config import AugmentConfig, DataConfig
    from kerascv_app.data.base import FileSplit
    from kerascv_app.data.pipeline import make_dataset

    operations = {"none": (), "seed": SEED_PRESET, "heavy": HEAVY_PRESET}[set_name]
    data = DataConfig(image_size=(32, 32), channels=3, batch_size=batch_size, cache=cache, shuffle_buffer=len(paths))
    dataset = make_dataset(FileSplit(paths, labels), 10, data, AugmentConfig(ops=operations), training=True, seed=0)
    count_images(dataset)  # warm-up: traces the functions, fills the cache
    rates = []
    for _ in range(timed_passes):
        start = time.perf_counter()
        rates.append(count_images(dataset) / (time.perf_counter() - start))
    return max(rates)


def count_images(dataset) -> int:
    return sum(int(images.shape[0]) for images, _ in dataset)


def dataloader_rate(python: str, data_dir: Path, set_name: str, batch_size: int, timed_passes: int) -> dict:
    command = [
        python,
        str(REPO_ROOT / "bench" / "pipeline_torchvision.py"),
        "--data-dir",
        str(data_dir),
        "--set",
        set_name,
        "--batch-size",
        str(batch_size),
        "--timed-epochs",
        str(timed_passes),
    ]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stderr}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--seed-python",
        default=DEFAULT_SEED_PYTHON if Path(DEFAULT_SEED_PYTHON).exists() else None,
        help="A Python with torch and torchvision.",
    )
    add_data_argument(parser)
    parser.add_argument("--train-per-class", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--timed-passes", type=int, default=3)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results" / "pipeline.json")
    arguments = parser.parse_args()
    if not arguments.seed_python:
        parser.error(
            "--seed-python is needed: a Python with torch and torchvision (e.g. .venv-torchvision/bin/python, see "
            "bench/seed_vs_kcv.py)"
        )

    sys.path.insert(0, str(REPO_ROOT))
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from kerascv_app.data.folder import extract_archive  # the same safe, cached extraction kcv uses

    root = extract_archive(arguments.archive)
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        data_dir = Path(scratch) / "train"
        image_count = balanced_subset(root / "train", data_dir, arguments.train_per_class)
        paths, labels = list_images(data_dir)
        print(
            f"{image_count} CIFAR-10 JPEG training images, batch {arguments.batch_size}, {os.cpu_count()} CPU cores",
            flush=True,
        )
        for set_name in SET_NAMES:
            row = {"set": set_name}
            row["tf_data_cached"] = tf_data_rate(
                paths, labels, set_name, "memory", arguments.batch_size, arguments.timed_passes
            )
            row["tf_data_uncached"] = tf_data_rate(
                paths, labels, set_name, "none", arguments.batch_size, arguments.timed_passes
            )
            row["dataloader"] = dataloader_rate(
                arguments.seed_python, data_dir, set_name, arguments.batch_size, arguments.timed_passes
            )["images_per_second"]
            row["ratio_uncached"] = row["tf_data_uncached"] / row["dataloader"]
            row["ratio_cached"] = row["tf_data_cached"] / row["dataloader"]
            print(json.dumps(row), flush=True)
            rows.append(row)

    print(
        f"\n{'set':6} {'tf.data cached':>15} {'tf.data uncached':>17} {'DataLoader (2 w)':>17} "
        f"{'ratio uncached':>15} {'ratio cached':>13}   (images/s)"
    )
    for row in rows:
        print(
            f"{row['set']:6} {row['tf_data_cached']:15.0f} {row['tf_data_uncached']:17.0f} "
            f"{row['dataloader']:17.0f} {row['ratio_uncached']:15.1f} {row['ratio_cached']:13.1f}"
        )
    print("target: tf.data >= 3x the DataLoader for the seed and heavy sets")
    arguments.out.parent.mkdir(parents=True, exist_ok=True)
    arguments.out.write_text(
        json.dumps(
            {"images": image_count, "batch_size": arguments.batch_size, "cpu_count": os.cpu_count(), "rows": rows},
            indent=2,
        )
        + "\n"
    )


if __name__ == "__main__":
    main()
