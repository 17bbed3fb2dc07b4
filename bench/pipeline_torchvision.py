"""The reference side of bench/pipeline.py: torchvision transforms in a PyTorch DataLoader.

ImageFolder + transforms + DataLoader(batch_size=128, shuffle=True, num_workers=2), as
in the source document's example, with persistent workers so that no epoch pays for
starting them. Prints one JSON line: images/s of the best timed epoch (after one warm-up), and the mean.

    .venv-torchvision/bin/python bench/pipeline_torchvision.py --data-dir DIR --set none|seed|heavy
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from torch.utils.data import DataLoader
from torchvision import datasets, transforms


class GaussianNoise:
    """Adds gaussian noise to a [0, 1] tensor and clips (torchvision has no such transform)."""

    def __init__(self, stddev: float):
        self.stddev = stddev

    def __call__(self, tensor):
        return (tensor + torch.randn_like(tensor) * self.stddev).clamp(0.0, 1.0)


def build_transform(set_name: str):
    """The same operations as kerascv_app.augment.spec's SEED_PRESET and HEAVY_PRESET ("none": decode only)."""
    heavy = set_name == "heavy"
    steps = [] if set_name == "none" else [transforms.RandomHorizontalFlip(), transforms.RandomCrop(32, padding=4)]
    if heavy:
        steps += [transforms.RandomRotation(15), transforms.ColorJitter(0.2, 0.2, 0.2, 0.05)]
    steps.append(transforms.ToTensor())
    if heavy:
        steps.append(GaussianNoise(8.0 / 255.0))
    steps.append(transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)))
    if heavy:
        steps.append(transforms.RandomErasing(p=0.5))
    return transforms.Compose(steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--set", choices=["none", "seed", "heavy"], required=True)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--timed-epochs", type=int, default=1)
    arguments = parser.parse_args()

    torch.manual_seed(0)
    dataset = datasets.ImageFolder(arguments.data_dir, transform=build_transform(arguments.set))
    loader = DataLoader(
        dataset, batch_size=arguments.batch_size, shuffle=True, num_workers=arguments.workers, persistent_workers=True
    )
    rates = []
    for epoch in range(1 + arguments.timed_epochs):
        start = time.perf_counter()
        count = sum(len(labels) for _, labels in loader)
        if epoch > 0:  # epoch 0 warms up: workers start, files enter the page cache
            rates.append(count / (time.perf_counter() - start))
    # The best epoch, as bench/pipeline.py takes the best tf.data pass.
    print(
        json.dumps(
            {
                "images": len(dataset),
                "images_per_second": max(rates),
                "mean_images_per_second": sum(rates) / len(rates),
                "torch": torch.__version__,
            }
        )
    )


if __name__ == "__main__":
    main()
