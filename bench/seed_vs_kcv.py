"""The source document's PyTorch example against ``kcv fit recipes/cifar10_baseline.py``.

Same images (a class-balanced subset of the CIFAR-10 JPEG copy, or all of it), same
number of epochs, same net, augmentation and optimizer, one after the other on the same
machine. Prints time per epoch, images/s and test accuracy of both, and the ratio
kcv / seed of the time per epoch, for two kcv rows:
  - kcv cached (data.cache = "memory"): decoded images kept in RAM after the first epoch,
    how kcv runs a dataset that fits (target on a 2-core CPU: at most 0.67);
  - kcv uncached (data.cache = "none"): every epoch decodes every JPEG again, as the seed's
    DataLoader does: the like-for-like row (target: at most 0.40).

    python bench/seed_vs_kcv.py --data PATH --seed-python .venv-torchvision/bin/python
        [--train-per-class 1000] [--epochs 10]

PATH is the CIFAR-10 JPEG copy (train/<class>/, test/<class>/ in a .tar.gz; or set KCV_CIFAR10_JPEG).

The seed side needs torchvision, which does not fit beside the CPU torch of the test
environments: make a separate environment for it, e.g.
    python -m venv .venv-torchvision && .venv-torchvision/bin/pip install torch==2.14.1 torchvision==0.29.1
Both sides train without a validation split (the source has none) and are evaluated
once on the clean test images after the last epoch.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cifar10_jpeg import add_data_argument

REPO_ROOT = Path(__file__).resolve().parents[1]


def balanced_subset(source: Path, target: Path, per_class: int | None) -> int:
    """Links the first ``per_class`` images of each class (sorted names) into ``target``."""
    count = 0
    for class_folder in sorted(p for p in source.iterdir() if p.is_dir()):
        files = sorted(class_folder.iterdir())[:per_class] if per_class else sorted(class_folder.iterdir())
        (target / class_folder.name).mkdir(parents=True)
        for file in files:
            (target / class_folder.name / file.name).symlink_to(file.resolve())
        count += len(files)
    return count


def checked_run(command: list[str], env: dict | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        sys.exit(f"{' '.join(command[:4])} ... failed with exit code {result.returncode}:\n{result.stderr[-3000:]}")
    return result


def run_seed(python: str, train_dir: Path, test_dir: Path, epochs: int) -> dict:
    command = [
        python,
        str(REPO_ROOT / "bench" / "seed_pytorch.py"),
        "--train-dir",
        str(train_dir),
        "--test-dir",
        str(test_dir),
        "--epochs",
        str(epochs),
    ]
    start = time.perf_counter()
    result = checked_run(command)
    record = json.loads(result.stdout.strip().splitlines()[-1])
    record["wall_seconds"] = time.perf_counter() - start
    return record


def run_kcv(backend: str, data_root: Path, epochs: int, runs_dir: Path, cache: str) -> dict:
    command = [
        sys.executable,
        "-m",
        "kerascv_app.cli",
        "fit",
        str(REPO_ROOT / "recipes" / "cifar10_baseline.py"),
        "--backend",
        backend,
        "--runs-dir",
        str(runs_dir),
        "--quiet",
        "--set",
        f"data.source=folder:{data_root}",
        "--set",
        "data.val_fraction=0",
        "--set",
        f"train.epochs={epochs}",
        "--set",
        f"data.cache={cache}",
    ]
    start = time.perf_counter()
    checked_run(command, env={**os.environ, "KERAS_BACKEND": backend})
    wall = time.perf_counter() - start
    run_dir = next(runs_dir.iterdir())
    with open(run_dir / "history.csv", newline="") as handle:
        epoch_seconds = [float(row["epoch_seconds"]) for row in csv.DictReader(handle)]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return {
        "epoch_seconds": epoch_seconds,
        "train_images": metrics["validation"]["count"] or None,
        "test_accuracy": metrics["test"]["accuracy"],
        "wall_seconds": wall,
    }


def summary(name: str, record: dict, train_images: int) -> dict:
    seconds = record["epoch_seconds"]
    mean = statistics.mean(seconds)
    steady = statistics.mean(seconds[1:]) if len(seconds) > 1 else mean
    return {
        "name": name,
        "mean_epoch_seconds": mean,
        "steady_epoch_seconds": steady,
        "images_per_second": train_images / mean,
        "test_accuracy": record["test_accuracy"],
        "wall_seconds": record["wall_seconds"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--seed-python", required=True, help="A Python with torch and torchvision for the source's script."
    )
    add_data_argument(parser)
    parser.add_argument("--train-per-class", type=int, default=1000, help="0 = all 5,000 per class.")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--backend", default="tensorflow", choices=["tensorflow", "jax", "torch"])
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results" / "seed_vs_kcv.json")
    arguments = parser.parse_args()

    sys.path.insert(0, str(REPO_ROOT))
    from kerascv_app.data.folder import extract_archive  # the same safe, cached extraction kcv uses

    root = extract_archive(arguments.archive)
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        data_root = scratch / "cifar10"
        train_images = balanced_subset(root / "train", data_root / "train", arguments.train_per_class or None)
        test_images = balanced_subset(root / "test", data_root / "test", None)
        print(
            f"{train_images} training and {test_images} test images, {arguments.epochs} epochs, {os.cpu_count()} "
            "CPU cores",
            flush=True,
        )
        seed = summary(
            "seed (PyTorch, 2 DataLoader workers)",
            run_seed(arguments.seed_python, data_root / "train", data_root / "test", arguments.epochs),
            train_images,
        )
        print(json.dumps(seed), flush=True)
        kcv_rows = {}
        for cache, label, target in (("memory", "cached", 0.67), ("none", "uncached", 0.40)):
            record = run_kcv(arguments.backend, data_root, arguments.epochs, scratch / f"runs-{cache}", cache)
            kcv_rows[label] = {
                **summary(f"kcv fit ({arguments.backend}, {label})", record, train_images),
                "target": target,
            }
            print(json.dumps(kcv_rows[label]), flush=True)

    print()
    print(f"{'':44} {'s/epoch':>9} {'steady':>9} {'img/s':>9} {'test acc':>9} {'wall s':>8}")
    for row in (seed, *kcv_rows.values()):
        print(
            f"{row['name']:44} {row['mean_epoch_seconds']:9.2f} {row['steady_epoch_seconds']:9.2f} "
            f"{row['images_per_second']:9.0f} {row['test_accuracy']:9.4f} {row['wall_seconds']:8.1f}"
        )
    print()
    for label, row in kcv_rows.items():
        row["ratio"] = row["mean_epoch_seconds"] / seed["mean_epoch_seconds"]
        like = (
            "like for like: both decode every epoch"
            if label == "uncached"
            else "kcv's default for data that fits in memory"
        )
        print(f"ratio kcv {label}/seed, time per epoch: {row['ratio']:.2f} (target <= {row['target']:.2f}; {like})")
    arguments.out.parent.mkdir(parents=True, exist_ok=True)
    arguments.out.write_text(
        json.dumps(
            {
                "train_images": train_images,
                "test_images": test_images,
                "epochs": arguments.epochs,
                "seed": seed,
                "kcv": kcv_rows,
            },
            indent=2,
        )
        + "\n"
    )


if __name__ == "__main__":
    main()
