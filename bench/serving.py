"""Serving on this CPU: the SavedModel (TensorFlow, its serving_default signature) against
model.onnx (onnxruntime), same model, same images, one run.

    kcv fit recipes/cifar10_baseline.py --smoke --data PATH --runs-dir /tmp/bench_runs
    python bench/serving.py /tmp/bench_runs/cifar10_baseline-*  [--calls 200]

The run (the source's CIFAR-10 net: conv 32-64-64, fc 512, 32x32x3; --smoke trains it for
one short epoch, which changes its weights, not its cost) is exported twice into a
temporary base, by `kcv export` and `kcv export --format onnx`, each verified against the
Keras model as usual. Then, in one fresh process per engine, one after the other: uint8
images (random, seed 0) at batch 1 and batch 32, a few warm-up calls, then `--calls` timed
calls each (TensorFlow: `loaded.signatures["serving_default"](images=...)`, results taken
to NumPy; onnxruntime: `session.run`, CPU provider). Both use their default thread pools
(one thread per core). Prints per call p50 and p99 latency and images/s (batch / mean
latency), the ratio onnx / savedmodel, and writes bench/results/serving.json. The
probabilities of both engines are compared too (largest difference), so that a fast wrong
model would show.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
BATCH_SIZES = (1, 32)
WARMUP_CALLS = 10


def measure(engine: str, model_path: str, images_path: str, calls: int) -> dict:
    """Runs in a fresh process: times ``calls`` calls per batch size with one engine."""
    import time

    import numpy as np

    images = np.load(images_path)["images"]
    if engine == "savedmodel":
        import tensorflow as tf

        loaded = tf.saved_model.load(model_path)
        signature = loaded.signatures["serving_default"]

        def predict(batch):
            return signature(images=tf.constant(batch))["probabilities"].numpy()

        version = tf.__version__
    else:
        import onnxruntime

        session = onnxruntime.InferenceSession(str(Path(model_path) / "model.onnx"), providers=["CPUExecutionProvider"])

        def predict(batch):
            return session.run(["probabilities"], {"images": batch})[0]

        version = onnxruntime.__version__
    result = {"version": version, "batches": {}}
    for batch_size in BATCH_SIZES:
        batch = np.ascontiguousarray(images[:batch_size])
        for _ in range(WARMUP_CALLS):
            probabilities = predict(batch)
        latencies = []
        for _ in range(calls):
            start = time.perf_counter()
            predict(batch)
            latencies.append(time.perf_counter() - start)
        latencies = np.array(latencies)
        result["batches"][str(batch_size)] = {
            "calls": calls,
            "p50_ms": float(np.percentile(latencies, 50) * 1e3),
            "p99_ms": float(np.percentile(latencies, 99) * 1e3),
            "images_per_second": float(batch_size / latencies.mean()),
        }
        result.setdefault("probabilities", {})[str(batch_size)] = probabilities.tolist()
    return result


def export(run_dir: Path, base: Path, export_format: str) -> Path:
    command = [
        sys.executable,
        "-m",
        "kerascv_app.cli",
        "export",
        str(run_dir),
        "--base",
        str(base),
        "--name",
        "bench",
        "--format",
        export_format,
    ]
    result = subprocess.run(command, capture_output=True, text=True, env=_environment())
    if result.returncode != 0:
        sys.exit(f"kcv export --format {export_format} failed:\n{result.stderr[-2000:]}")
    return base / "onnx" / "bench" / "1" if export_format == "onnx" else base / "bench" / "1"


def measure_in_subprocess(engine: str, model_path: Path, images_path: Path, calls: int) -> dict:
    code = (
        f"import json, sys; sys.path.insert(0, {str(REPO_ROOT / 'bench')!r}); import serving; "
        f"print(json.dumps(serving.measure({engine!r}, {str(model_path)!r}, {str(images_path)!r}, {calls:d})))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_environment())
    if result.returncode != 0:
        sys.exit(f"measuring {engine} failed:\n{result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def _environment() -> dict:
    return {
        **os.environ,
        "TF_CPP_MIN_LOG_LEVEL": "3",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
    }


def main() -> None:
    import numpy as np

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "run_dir", type=Path, help="A finished run (kcv fit), e.g. of recipes/cifar10_baseline.py --smoke."
    )
    parser.add_argument("--calls", type=int, default=200, help="Timed calls per engine and batch size.")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results" / "serving.json")
    arguments = parser.parse_args()

    model_info = json.loads((arguments.run_dir / "model.json").read_text())
    height, width = model_info["image_size"]
    with tempfile.TemporaryDirectory(prefix="kcv-bench-serving-") as folder:
        base = Path(folder) / "saved_models"
        paths = {
            "savedmodel": export(arguments.run_dir, base, "savedmodel"),
            "onnx": export(arguments.run_dir, base, "onnx"),
        }
        images_path = Path(folder) / "images.npz"
        images = np.random.default_rng(0).integers(
            0, 256, size=(max(BATCH_SIZES), height, width, model_info["channels"]), dtype=np.uint8
        )
        np.savez(images_path, images=images)
        measured = {
            engine: measure_in_subprocess(engine, path, images_path, arguments.calls) for engine, path in paths.items()
        }

    agreement = max(
        float(
            np.abs(
                np.array(measured["onnx"]["probabilities"][key])
                - np.array(measured["savedmodel"]["probabilities"][key])
            ).max()
        )
        for key in measured["onnx"]["probabilities"]
    )
    print(f"{'engine':<12} {'batch':>5} {'p50 ms':>9} {'p99 ms':>9} {'images/s':>10}")
    for engine, result in measured.items():
        for batch_size, figures in result["batches"].items():
            print(
                f"{engine:<12} {batch_size:>5} {figures['p50_ms']:>9.3f} {figures['p99_ms']:>9.3f} "
                f"{figures['images_per_second']:>10.1f}"
            )
    ratios = {}
    for batch_size in map(str, BATCH_SIZES):
        onnx, saved = measured["onnx"]["batches"][batch_size], measured["savedmodel"]["batches"][batch_size]
        ratios[batch_size] = {
            "images_per_second": onnx["images_per_second"] / saved["images_per_second"],
            "p50": onnx["p50_ms"] / saved["p50_ms"],
            "p99": onnx["p99_ms"] / saved["p99_ms"],
        }
        print(
            f"onnx / savedmodel at batch {batch_size}: {ratios[batch_size]['images_per_second']:.2f}x the images/s, "
            f"p50 {ratios[batch_size]['p50']:.2f}x, p99 {ratios[batch_size]['p99']:.2f}x"
        )
    print(f"largest difference of the two engines' probabilities: {agreement:.2e}")

    for result in measured.values():
        del result["probabilities"]
    results = {
        "run": str(arguments.run_dir.resolve()),
        "model": (
            f"{json.loads((arguments.run_dir / 'config.json').read_text())['model']['name']}, "
            f"{height}x{width}x{model_info['channels']}"
        ),
        "machine": {"processor": platform.processor() or platform.machine(), "cores": os.cpu_count()},
        "engines": measured,
        "ratio_onnx_over_savedmodel": ratios,
        "max_probability_difference": agreement,
    }
    arguments.out.parent.mkdir(parents=True, exist_ok=True)
    arguments.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {arguments.out}")


if __name__ == "__main__":
    main()
