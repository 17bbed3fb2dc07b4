"""Milliseconds per batch of 512 32x32 images for each augmentation op inside the model,
against the source net's training step on the same batch.

Each op runs in the Augmentation layer inside a keras.Model, compiled as the backend
compiles a training step (jax.jit; tf.function, with XLA where Keras would use it, i.e.
on a GPU; torch eagerly, as Keras trains under torch). The reference is one
``train_on_batch`` of the source's net (seed_cnn, as in recipes/cifar10_baseline.py) on
the same 512 images. Printed: ms per op, the seed and heavy sets as wholes, and the
heavy set's cost as a fraction of the step (target on a GPU: at most 10%).

Times are the best of several rounds (the least disturbed by other work on the machine).

    python bench/device_augment.py                          # the current backend (KERAS_BACKEND)
    python bench/device_augment.py --backends tensorflow,jax,torch
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
BATCH = 512
SIZE = 32


def best_milliseconds(function, rounds: int, calls: int) -> float:
    """Best average over ``rounds`` of ``calls`` calls, after two warm-up calls (compilation)."""
    function()
    function()
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(calls):
            function()
        best = min(best, (time.perf_counter() - start) / calls)
    return best * 1000


def compiled_augmentation(operations, images):
    """A no-argument function running the ops on ``images`` inside a compiled model."""
    import keras

    from kerascv_app.augment.layer import Augmentation

    inputs = keras.Input(images.shape[1:])
    model = keras.Model(inputs, Augmentation([operation.to_json() for operation in operations], seed=0)(inputs))
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        step = jax.jit(lambda state, batch: model.stateless_call([], state, batch, training=True))
        state = [variable.value for variable in model.non_trainable_variables]
        batch = jax.device_put(images)

        def run():
            nonlocal state
            outputs, state = step(state, batch)
            outputs.block_until_ready()

        return run
    if backend == "tensorflow":
        import tensorflow as tf

        jit = bool(tf.config.list_physical_devices("GPU"))
        step = tf.function(lambda batch: model(batch, training=True), jit_compile=jit)
        batch = tf.constant(images)
        return lambda: step(batch).numpy()
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    batch = torch.tensor(images, device=device)

    def run():
        outputs = model(batch, training=True)
        if device == "cuda":
            torch.cuda.synchronize()
        return outputs

    return run


def training_step(images):
    """One train_on_batch of the source's net on ``images``, as kcv fit compiles it."""
    import keras
    import numpy as np

    from kerascv_app.config import AugmentConfig, Config, DataConfig, ModelConfig, TrainConfig
    from kerascv_app.models import create_model
    from kerascv_app.train.optim import create_optimizer

    config = Config(
        data=DataConfig(image_size=(SIZE, SIZE), batch_size=BATCH),
        augment=AugmentConfig(),
        model=ModelConfig(name="seed_cnn", hidden_units=512),
        train=TrainConfig(optimizer="sgd", learning_rate=0.001),
    )
    model = create_model(config, num_classes=10)
    model.compile(
        optimizer=create_optimizer(config.train, steps_per_epoch=100),
        loss=keras.losses.CategoricalCrossentropy(from_logits=True),
    )
    labels = np.eye(10, dtype="float32")[np.arange(BATCH) % 10]
    return lambda: model.train_on_batch(images, labels)


def measure(rounds: int, calls: int) -> dict:
    import keras
    import numpy as np

    from kerascv_app.augment.spec import HEAVY_PRESET, OP_SCHEMAS, SEED_PRESET, op

    images = np.random.default_rng(0).integers(0, 256, (BATCH, SIZE, SIZE, 3)).astype("float32")
    cases = {name: (op(name),) for name, schema in OP_SCHEMAS.items() if not schema.mixes_labels}
    cases.update({"seed set": SEED_PRESET, "heavy set": HEAVY_PRESET})
    milliseconds = {}
    for name, operations in cases.items():
        milliseconds[name] = best_milliseconds(compiled_augmentation(operations, images), rounds, calls)
        print(f"  {keras.backend.backend():10} {name:15} {milliseconds[name]:9.2f} ms", file=sys.stderr, flush=True)
    step = best_milliseconds(training_step(images), rounds, calls)
    from kerascv_app.backend import devices

    return {
        "backend": keras.backend.backend(),
        "devices": devices(),
        "ops": milliseconds,
        "training_step": step,
        "heavy_over_step": milliseconds["heavy set"] / step,
    }


def run_backends(backends: list[str], rounds: int, calls: int) -> list[dict]:
    results = []
    for backend in backends:
        command = [sys.executable, __file__, "--rounds", str(rounds), "--calls", str(calls), "--json"]
        environment = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3"}
        completed = subprocess.run(command, env=environment, stdout=subprocess.PIPE, text=True, check=True)
        results.append(json.loads(completed.stdout.strip().splitlines()[-1]))
    return results


def print_table(results: list[dict]) -> None:
    print(f"\nms per batch of {BATCH} {SIZE}x{SIZE}x3 images, inside the model (best of several rounds)")
    print(f"{'op':16}" + "".join(f"{result['backend'] + ' ' + result['devices'][0]:>20}" for result in results))
    for name in results[0]["ops"]:
        print(f"{name:16}" + "".join(f"{result['ops'][name]:20.2f}" for result in results))
    print(f"{'training step':16}" + "".join(f"{result['training_step']:20.2f}" for result in results))
    print(f"{'heavy / step':16}" + "".join(f"{result['heavy_over_step']:20.2f}" for result in results))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--backends",
        default="",
        help="Comma-separated backends, each measured in its own process (default: the current one).",
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--calls", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="Print one JSON line (used for --backends).")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results" / "device_augment.json")
    arguments = parser.parse_args()
    sys.path.insert(0, str(REPO_ROOT))
    if arguments.backends:
        results = run_backends(arguments.backends.split(","), arguments.rounds, arguments.calls)
    else:
        from kerascv_app.backend import select_backend

        select_backend()
        results = [measure(arguments.rounds, arguments.calls)]
    if arguments.json:
        print(json.dumps(results[0]))
        return
    print_table(results)
    print(f"{os.cpu_count()} CPU cores")
    arguments.out.parent.mkdir(parents=True, exist_ok=True)
    arguments.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
