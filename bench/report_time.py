"""Times `kcv report` on a CIFAR-10 run against a 30 s target, on this machine.

    kcv fit recipes/cifar10_baseline.py --data PATH \\
        --set train.epochs=4 --set train.learning_rate=0.01 --set data.max_train=20000 --runs-dir runs/report
    python bench/report_time.py runs/report/cifar10_baseline-*/ [--rounds 2]

Each round runs the whole command in a fresh process, as a user would (start-up, TensorFlow's
import, rebuilding the splits from the 60,000 files, reading the 24 + 8 images, Grad-CAM, the
preview, every figure, writing the page): 24 top losses, 8 Grad-CAMs, 16 preview images.
Prints each round's wall time, the best, and its ratio to 30 s (below 1 meets the target).
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

TARGET_SECONDS = 30.0
REPO_ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--top-losses", type=int, default=24)
    parser.add_argument("--gradcam", type=int, default=8)
    arguments = parser.parse_args()
    splits = json.loads((arguments.run_dir / "splits.json").read_text())
    print(f"run {arguments.run_dir}: {splits['test']} test images, {splits['train']} training images")
    environment = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
    }
    times = []
    with tempfile.TemporaryDirectory(prefix="kcv-report-bench-") as folder:
        for round_number in range(arguments.rounds):
            out = Path(folder) / f"report-{round_number}.html"
            start = time.perf_counter()
            result = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "kerascv_app.cli",
                    "report",
                    str(arguments.run_dir),
                    "--out",
                    str(out),
                    "--top-losses",
                    str(arguments.top_losses),
                    "--gradcam",
                    str(arguments.gradcam),
                ],
                env=environment,
                capture_output=True,
                text=True,
            )
            seconds = time.perf_counter() - start
            if result.returncode != 0:
                print(result.stderr[-2000:], file=sys.stderr)
                return 1
            times.append(seconds)
            print(f"round {round_number + 1}: {seconds:.1f} s, page {out.stat().st_size / 1e6:.2f} MB")
    best = min(times)
    print(f"best {best:.1f} s; ratio to the {TARGET_SECONDS:.0f} s target: {best / TARGET_SECONDS:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
