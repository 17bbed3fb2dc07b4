"""XLA on the CPU: `jit_compile=True` against Keras's default, per backend, same run.

Keras resolves `jit_compile="auto"` to False for a model on the CPU with the tensorflow
backend (and torch's True means torch.compile), so a claim of "XLA" speed needs this
measurement. For each backend, in a fresh process: the source's CIFAR-10 net
(recipes/cifar10_baseline.py's model), batch 128 of 32x32x3 uint8 images held in memory, the
recipe's optimizer; the same seed and batches for both settings. Prints the steady time per
step (the first steps, which compile, are left out), the ratio jit/default, and the largest
difference of the losses over all steps (correctness: the same arithmetic), and the time of
the warm-up steps (where compilation happens: its cost, to be paid back by faster steps).

    python bench/jit_compile.py [--backends tensorflow,jax,torch] [--steps 60]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def measure(jit_compile: str, steps: int, warmup: int) -> dict:
    import time

    import keras
    import numpy as np

    from kerascv_app.data.prepare import PreparedData  # noqa: F401  (imports the package once)
    from kerascv_app.models import create_model
    from kerascv_app.recipe import load_recipe
    from kerascv_app.train.optim import create_optimizer

    config, _ = load_recipe(REPO_ROOT / "recipes" / "cifar10_baseline.py")
    keras.utils.set_random_seed(0)
    model = create_model(config, 10)
    model.compile(
        optimizer=create_optimizer(config.train, 100),
        loss=keras.losses.CategoricalCrossentropy(from_logits=True),
        jit_compile={"auto": "auto", "true": True, "false": False}[jit_compile],
    )
    random = np.random.default_rng(0)
    images = random.integers(0, 256, size=(8, 128, 32, 32, 3), dtype=np.uint8).astype("float32")
    labels = np.eye(10, dtype="float32")[random.integers(0, 10, size=(8, 128))]
    losses, times = [], []
    for step in range(warmup + steps):
        start = time.perf_counter()
        logs = model.train_on_batch(images[step % 8], labels[step % 8], return_dict=True)
        loss = float(logs["loss"])  # waits for the step to finish on every backend
        times.append(time.perf_counter() - start)
        losses.append(loss)
    steady = sorted(times[warmup:])
    return {
        "median_step_seconds": steady[len(steady) // 2],
        "warmup_seconds": sum(times[:warmup]),
        "losses": losses,
        "resolved": str(model.jit_compile),
    }


def run_backend(backend: str, jit_compile: str, steps: int, warmup: int) -> dict:
    code = (
        f"import json, sys; sys.path.insert(0, {str(REPO_ROOT)!r}); from bench.jit_compile import measure; "
        f"print(json.dumps(measure({jit_compile!r}, {steps:d}, {warmup:d})))"
    )
    environment = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=environment, timeout=1800)
    if result.returncode != 0:
        return {"error": (result.stderr.strip().splitlines() or ["?"])[-1][:200]}
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backends", default="tensorflow,jax,torch")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results" / "jit_compile.json")
    arguments = parser.parse_args()
    results = {}
    print(
        f"{'backend':12} {'default (resolved)':>22} {'jit_compile=True':>18} {'ratio':>7} {'max loss diff':>14} "
        f"{'warm-up s default / jit':>24}"
    )
    for backend in arguments.backends.split(","):
        default = run_backend(backend, "auto", arguments.steps, arguments.warmup)
        jitted = run_backend(backend, "true", arguments.steps, arguments.warmup)
        results[backend] = {"default": default, "jit": jitted}
        if "error" in default or "error" in jitted:
            print(f"{backend:12} {default.get('error', ''):>22} {jitted.get('error', ''):>18}")
            continue
        ratio = jitted["median_step_seconds"] / default["median_step_seconds"]
        difference = max(abs(a - b) for a, b in zip(default["losses"], jitted["losses"]))
        results[backend]["ratio"] = ratio
        print(
            f"{backend:12} {default['median_step_seconds'] * 1000:9.1f} ms ({default['resolved']:>5}) "
            f"{jitted['median_step_seconds'] * 1000:15.1f} ms {ratio:7.2f} {difference:14.2e} "
            f"{default['warmup_seconds']:11.1f} / {jitted['warmup_seconds']:.1f}"
        )
    arguments.out.parent.mkdir(parents=True, exist_ok=True)
    arguments.out.write_text(json.dumps(results, indent=2) + "\n")
    print("ratio < 1: jit_compile=True is faster on this CPU")


if __name__ == "__main__":
    main()
