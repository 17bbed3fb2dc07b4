"""Preemption: a recipe trained while SIGKILL hits it at random moments, resumed each time.

    python bench/preemption.py [--recipe recipes/digits.py] [--epochs 6] [--kills 5]
                               [--checkpoint-every 8] [--backend tensorflow] [--seed 0]

Three runs with the same seed:
  A. uninterrupted, at the default train.checkpoint_every: the checkpoint overhead at the default;
  B. uninterrupted, at --checkpoint-every steps: the overhead at that interval;
  C. like B, but killed with SIGKILL --kills times, each at a random moment within one epoch's
     time after the process's first trained step, then resumed with kcv fit --resume.

Printed: the steps lost per kill (steps trained before the kill minus the step the resume
starts from; at most one checkpoint interval is the target), C's final test accuracy and
weights against B's and A's (the same is the target), and each interval's checkpoint time
as a share of training time (fit calls, validation included; at most 3% at the default is
the target). Each run is a fresh ``kcv fit`` process; this script patches nothing in them
but a counter (see --child).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def child(stats_path: str, step_path: str, arguments: list[str]) -> None:
    """Runs kcv with two measurements added to its checkpoint callback: the step reached
    (written after every batch, so a SIGKILL leaves the last one) and the seconds spent
    writing checkpoints and in fit."""
    from kerascv_app.train import checkpoint

    stats = {"save_seconds": 0.0, "saves": 0, "fit_seconds": 0.0}
    step_file = os.open(step_path, os.O_WRONLY | os.O_CREAT, 0o644)
    original_save = checkpoint.TrainingCheckpoint.save
    original_batch_end = checkpoint.TrainingCheckpoint.on_train_batch_end

    def save(self, position, before_fit=False):
        started = time.perf_counter()
        original_save(self, position, before_fit)
        stats["save_seconds"] += time.perf_counter() - started
        stats["saves"] += 1

    def on_train_batch_end(self, batch, logs=None):
        # Before the checkpoint logic: the batch is trained even if a kill comes during it.
        step = self._epoch * self.steps_per_epoch + self._offset + batch + 1
        os.pwrite(step_file, f"{step:12d}".encode(), 0)
        original_batch_end(self, batch, logs)

    def on_train_begin(self, logs=None):
        self._fit_started = time.perf_counter()

    def on_train_end(self, logs=None):
        stats["fit_seconds"] += time.perf_counter() - self._fit_started
        Path(stats_path).write_text(json.dumps(stats))

    checkpoint.TrainingCheckpoint.save = save
    checkpoint.TrainingCheckpoint.on_train_batch_end = on_train_batch_end
    checkpoint.TrainingCheckpoint.on_train_begin = on_train_begin
    checkpoint.TrainingCheckpoint.on_train_end = on_train_end
    from kerascv_app.cli import app

    sys.argv = ["kcv", *arguments]
    app()


class Runner:
    def __init__(self, work: Path, backend: str):
        self.work = work
        self.backend = backend
        self.count = 0

    def start(self, arguments: list[str]):
        self.count += 1
        stats, steps = self.work / f"stats{self.count}.json", self.work / f"steps{self.count}"
        command = [sys.executable, __file__, "--child", str(stats), str(steps), "--", *arguments]
        environment = {**os.environ, "KERAS_BACKEND": self.backend, "PYTHONPATH": str(REPO_ROOT)}
        log = open(self.work / f"log{self.count}.txt", "w+")
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=environment)
        return process, stats, steps, log


def read_step(path: Path) -> int:
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return 0
    return int(text) if text else 0


def finish(process, log) -> str:
    process.wait()
    log.seek(0)
    text = log.read()
    if process.returncode != 0:
        raise SystemExit(f"kcv failed ({process.returncode}):\n{text[-3000:]}")
    return text


def run_dir_of(runs: Path) -> Path:
    (run_dir,) = [path for path in runs.iterdir() if path.is_dir()]
    return run_dir


def weights(run_dir: Path) -> dict:
    import h5py

    with zipfile.ZipFile(run_dir / "model.keras") as archive:
        file = h5py.File(io.BytesIO(archive.read("model.weights.h5")), "r")
        arrays = {}
        file.visititems(
            lambda name, item: arrays.__setitem__(name, item[()]) if isinstance(item, h5py.Dataset) else None
        )
    return arrays


def max_difference(first: dict, second: dict) -> float:
    import numpy as np

    assert first.keys() == second.keys()
    return max(
        float(np.max(np.abs(first[key].astype(float) - second[key].astype(float)), initial=0.0)) for key in first
    )


def test_accuracy(run_dir: Path) -> float:
    return json.loads((run_dir / "metrics.json").read_text())["test"]["accuracy"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default=str(REPO_ROOT / "recipes" / "digits.py"))
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--checkpoint-every", default="8", help="B and C's train.checkpoint_every (steps)")
    parser.add_argument("--backend", default=os.environ.get("KERAS_BACKEND", "tensorflow"))
    parser.add_argument("--seed", type=int, default=0, help="the kill times' seed (training uses the recipe's)")
    options = parser.parse_args()
    chance = random.Random(options.seed)
    work = Path(tempfile.mkdtemp(prefix="kcv_preemption_"))
    runner = Runner(work, options.backend)
    common = ["fit", options.recipe, "--quiet", "--set", f"train.epochs={options.epochs}"]

    def uninterrupted(name: str, extra: list[str]):
        runs = work / name
        process, stats, _, log = runner.start([*common, "--runs-dir", str(runs), *extra])
        finish(process, log)
        return run_dir_of(runs), json.loads(stats.read_text())

    default_run, default_stats = uninterrupted("default", [])
    interval_run, interval_stats = uninterrupted(
        "interval", ["--set", f"train.checkpoint_every={options.checkpoint_every}"]
    )
    epoch_seconds = interval_stats["fit_seconds"] / options.epochs

    runs = work / "killed"
    arguments = [*common, "--runs-dir", str(runs), "--set", f"train.checkpoint_every={options.checkpoint_every}"]
    lost, kills = [], 0
    while True:
        process, _, steps, log = runner.start(arguments)
        if kills < options.kills:
            # Wait for the first trained step (start-up is not training), then a random moment within an epoch.
            first = read_step(steps)
            while process.poll() is None and read_step(steps) == first:
                time.sleep(0.05)
            time.sleep(chance.uniform(0.05, 1.0) * epoch_seconds)
        if kills < options.kills and process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()
            reached = read_step(steps)
            kills += 1
            log.close()
            arguments = ["fit", "--resume", str(run_dir_of(runs)), "--quiet"]
            # The next process says where it resumes; read it from its log once it does.
            lost.append(reached)
            continue
        text = finish(process, log)
        break
    # Resume positions, in order, from each resumed process's log.
    resumed_at = []
    for index in range(3, runner.count + 1):
        text = (work / f"log{index}.txt").read_text()
        match = re.search(r"at epoch (\d+), batch (\d+) of (\d+)", text)
        if match:
            epoch, batch, steps_per_epoch = map(int, match.groups())
            resumed_at.append((epoch - 1) * steps_per_epoch + batch - 1)
    steps_lost = [reached - resumed for reached, resumed in zip(lost, resumed_at[-len(lost) :])] if lost else []
    killed_run = run_dir_of(runs)

    default_weights, interval_weights, killed_weights = weights(default_run), weights(interval_run), weights(killed_run)

    def share(stats):
        return 100 * stats["save_seconds"] / stats["fit_seconds"]

    print(
        f"recipe {Path(options.recipe).name}, {options.epochs} epochs, backend {options.backend}, epoch "
        f"{epoch_seconds:.2f} s"
    )
    print(
        f"kills: {kills} at random moments within one epoch after training started; checkpoint every "
        f"{options.checkpoint_every} steps"
    )
    print(f"steps lost per kill: {steps_lost} (max {max(steps_lost, default=0)}; target <= {options.checkpoint_every})")
    print(
        f"test accuracy: killed and resumed {test_accuracy(killed_run):.4f}, uninterrupted "
        f"{test_accuracy(interval_run):.4f} (default interval {test_accuracy(default_run):.4f})"
    )
    print(
        "largest weight difference, killed vs uninterrupted: "
        f"{max_difference(killed_weights, interval_weights):.3g} (default interval run: "
        f"{max_difference(killed_weights, default_weights):.3g})"
    )
    print(
        f"checkpoint overhead at the default interval: {share(default_stats):.2f}% of training time "
        f"({default_stats['saves']} checkpoints, {default_stats['save_seconds']:.2f} s of "
        f"{default_stats['fit_seconds']:.1f} s)"
    )
    print(
        f"checkpoint overhead every {options.checkpoint_every} steps: {share(interval_stats):.2f}% "
        f"({interval_stats['saves']} checkpoints, {interval_stats['save_seconds']:.2f} s of "
        f"{interval_stats['fit_seconds']:.1f} s)"
    )


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        separator = sys.argv.index("--")
        child(sys.argv[2], sys.argv[3], sys.argv[separator + 1 :])
    else:
        main()
