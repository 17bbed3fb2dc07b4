"""Where the benchmarks find the CIFAR-10 JPEG copy: `--data PATH`, or $KCV_CIFAR10_JPEG."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

#: The CIFAR-10 JPEG copy (train/<class>/, test/<class>/ in a .tar.gz): --data PATH, or KCV_CIFAR10_JPEG.
DEFAULT_ARCHIVE = Path(os.environ["KCV_CIFAR10_JPEG"]) if os.environ.get("KCV_CIFAR10_JPEG") else None
DATA_HELP = "the CIFAR-10 JPEG copy: a .tar.gz of train/<class>/ and test/<class>/ (default: $KCV_CIFAR10_JPEG)"


def add_data_argument(parser: argparse.ArgumentParser) -> None:
    """--data PATH (also spelled --archive), required unless $KCV_CIFAR10_JPEG names the copy."""
    parser.add_argument(
        "--data",
        "--archive",
        dest="archive",
        type=Path,
        default=DEFAULT_ARCHIVE,
        required=DEFAULT_ARCHIVE is None,
        help=DATA_HELP,
    )
