"""A short fast-loop run, many seeds, with the recipe's learning rate scaled to the batch size
(train.learning_rate_batch_size) and without: how many runs end degenerate.

The run is the one tests/test_fast_cifar.py trains (512 CIFAR-10 training images, 500 test
images, a quarter-width airbench net, 4 epochs). The recipe's rate (1.5) is tuned for 1,024
images a step; a smaller batch with the rate unscaled takes steps many times too long for its
size, and the net can end on the edge of divergence, its evaluation predicting one or two
classes. Each seed runs five ways (--ways picks some), each its own `kcv fit` process:

    unscaled 128   data.batch_size=128, train.learning_rate_batch_size=0 (1.5 as given)
    scaled 128     data.batch_size=128 (1.5 x 128 / 1024 = 0.1875)
    scaled 64      data.batch_size=64 (0.09375), as the test runs it
    unscaled 32    data.batch_size=32, 1.5 as given: 32 times too long a step
    scaled 32      data.batch_size=32 (0.046875)

and the summary prints, per way, the test accuracy with test-time augmentation per seed, and
how many runs are degenerate (at most 0.12: chance is 0.1) or not finite (the run fails).

    python bench/fast_loop_batch_scaling.py --data PATH/cifar10-jpeg.tar.gz [--seeds 0 1 2 3]
        [--backend jax] [--ways "unscaled 32" "scaled 32"]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
RECIPE = REPO_ROOT / "recipes" / "cifar10_fast.py"
DEGENERATE_ACCURACY = 0.12
SHORT_RUN = [
    "data.max_train=512",
    "data.max_eval=500",
    "model.width=16",
    "train.epochs=4",
    "train.lookahead_start_epoch=2",
    "train.whitening_bias_epochs=2",
]
WAYS = {
    "unscaled 128": ["data.batch_size=128", "train.learning_rate_batch_size=0"],
    "scaled 128": ["data.batch_size=128"],
    "scaled 64": ["data.batch_size=64"],
    "unscaled 32": ["data.batch_size=32", "train.learning_rate_batch_size=0"],
    "scaled 32": ["data.batch_size=32"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="the CIFAR-10 JPEG copy (a .tar.gz or its folder)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument("--backend", default="jax")
    parser.add_argument("--ways", nargs="+", default=list(WAYS), help=f"among: {', '.join(WAYS)}")
    arguments = parser.parse_args()

    unknown = sorted(set(arguments.ways) - set(WAYS))
    if unknown:
        parser.error(f"--ways {unknown}: expected among {list(WAYS)}")
    ways = {way: WAYS[way] for way in arguments.ways}
    results: dict[str, list[float | None]] = {way: [] for way in ways}
    with tempfile.TemporaryDirectory() as runs_root:
        for seed in arguments.seeds:
            for way, settings in ways.items():
                accuracy = one_run(arguments, seed, settings, Path(runs_root) / f"{way.replace(' ', '_')}-{seed}")
                results[way].append(accuracy)
                shown = "not finite (run failed)" if accuracy is None else f"{accuracy:.3f}"
                print(f"seed {seed}  {way:13s}  test accuracy with TTA {shown}", flush=True)
    print(f"\n{arguments.backend}, seeds {arguments.seeds}: runs at most {DEGENERATE_ACCURACY} are degenerate")
    for way, accuracies in results.items():
        degenerate = sum(1 for value in accuracies if value is None or value <= DEGENERATE_ACCURACY)
        shown = ", ".join("failed" if value is None else f"{value:.3f}" for value in accuracies)
        print(f"{way:13s}  degenerate {degenerate}/{len(accuracies)}  ({shown})")


def one_run(arguments, seed: int, settings: list[str], runs_dir: Path) -> float | None:
    command = [sys.executable, "-m", "kerascv_app.cli", "fit", str(RECIPE), "--runs-dir", str(runs_dir)]
    command += ["--quiet", "--backend", arguments.backend, "--precision", "float32", "--seed", str(seed)]
    for setting in [f"data.source=folder:{arguments.data}", *SHORT_RUN, *settings]:
        command += ["--set", setting]
    finished = subprocess.run(command, capture_output=True, text=True, env=os.environ.copy())
    if finished.returncode != 0:
        if "not finite" in finished.stderr:
            return None
        raise SystemExit(f"kcv fit failed (exit {finished.returncode}):\n{finished.stderr[-2000:]}")
    (run_dir,) = [path for path in runs_dir.iterdir() if path.is_dir()]
    return json.loads((run_dir / "metrics.json").read_text())["test_tta"]["accuracy"]


if __name__ == "__main__":
    main()
