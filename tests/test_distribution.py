"""Multi-device and multi-worker training on the CPU, compared with one device.

Each backend is tested with its own engine, in fresh processes (devices and clusters are
fixed when a process starts): TensorFlow's MirroredStrategy on two logical CPU devices and
MultiWorkerMirroredStrategy with two local workers (TF_CONFIG); JAX's DataParallel on two
XLA host devices and over two local processes (jax.distributed); the torch backend, which
Keras gives no multi-device engine, refuses plainly.

What "matches" means: the final weights of a tiny model (the digits recipe, SGD, no
dropout, one epoch) agree within WEIGHT_TOLERANCE (measured: about 1e-8).

One Keras detail shapes the TensorFlow comparisons: under a tf.distribute strategy, Keras
draws a batch from a separate pass over the dataset before training (to build the model),
so the first epoch sees the shuffle order one pass later than on one device. Same batches
in distribution, not the same batches: strategy runs are compared with one device on a
stream in a fixed order, and with each other (both make that pass) on the shuffled,
augmented TFRecord stream. JAX makes no such pass and is compared shuffled throughout.
"""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from kcv_testing import BACKEND, REPO_ROOT, assert_one_line_error, kcv_in_process, run_kcv

WEIGHT_TOLERANCE = {"rtol": 1e-4, "atol": 1e-6}
DIGITS = REPO_ROOT / "recipes" / "digits.py"
# A tiny, deterministic model: dropout is random per replica, and Adam turns rounding noise
# in near-zero gradients into full-size steps, so SGD shows what the engines compute.
TINY_RUN = [
    "--smoke",
    "--quiet",
    "--set",
    "model.dropout=0",
    "--set",
    "train.optimizer=sgd",
    "--set",
    "train.learning_rate=0.05",
]
FIXED_ORDER = ["--set", "data.shuffle_buffer=1", "--set", "augment.ops="]
TRAINING_SHARDS = 3


@pytest.fixture(scope="module")
def digits_tfrecord(tmp_path_factory) -> Path:
    """The digits converted to three training shards, read shuffled and interleaved."""
    from kerascv_app.data.convert import convert

    directory = tmp_path_factory.mktemp("digits_tfrecord") / "digits"
    convert("digits", directory, shards=TRAINING_SHARDS, workers=2, show_progress=False)
    return directory


def fit_run(runs_dir: Path, *arguments, env: dict | None = None) -> Path:
    result = run_kcv("fit", DIGITS, "--runs-dir", runs_dir, *TINY_RUN, *arguments, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return only_run(runs_dir)


def fit_on_two_workers(runs_dir: Path, *arguments) -> tuple[Path, Path]:
    """Two local workers of one cluster, started together; returns (chief's run, worker 1's run)."""
    ports = [free_port(), free_port()]
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "kerascv_app.cli", "fit", DIGITS, "--runs-dir", runs_dir, *TINY_RUN, *arguments],
            env={**os.environ, "KERAS_BACKEND": BACKEND, **cluster_variables(ports, index)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for index in range(2)
    ]
    outputs = [process.communicate(timeout=600) for process in processes]
    for process, (_, stderr) in zip(processes, outputs):
        assert process.returncode == 0, stderr[-3000:]
    return only_run(runs_dir), only_run(runs_dir / ".worker-1")


def cluster_variables(ports: list[int], index: int) -> dict:
    if BACKEND == "tensorflow":
        cluster = {"worker": [f"localhost:{port}" for port in ports]}
        return {"TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})}
    return {
        "KERAS_DISTRIBUTION_JOB_ADDRESSES": f"localhost:{ports[0]}",
        "KERAS_DISTRIBUTION_NUM_PROCESSES": "2",
        "KERAS_DISTRIBUTION_PROCESS_ID": str(index),
    }


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("localhost", 0))
        return probe.getsockname()[1]


def only_run(runs_dir: Path) -> Path:
    runs = [path for path in Path(runs_dir).iterdir() if path.is_dir() and not path.name.startswith(".")]
    assert len(runs) == 1, runs
    return runs[0]


def saved_weights(run_dir: Path) -> dict[str, np.ndarray]:
    """Every array in model.keras's weights file (model and optimizer), read without Keras."""
    import h5py

    with zipfile.ZipFile(run_dir / "model.keras") as archive:
        contents = archive.read("model.weights.h5")
    arrays = {}
    with h5py.File(io.BytesIO(contents), "r") as weights_file:
        weights_file.visititems(
            lambda name, item: arrays.__setitem__(name, np.array(item)) if isinstance(item, h5py.Dataset) else None
        )
    return arrays


def assert_same_weights(run_a: Path, run_b: Path) -> None:
    weights_a, weights_b = saved_weights(run_a), saved_weights(run_b)
    assert weights_a.keys() == weights_b.keys()
    for name in weights_a:
        np.testing.assert_allclose(weights_b[name], weights_a[name], **WEIGHT_TOLERANCE, err_msg=name)


def environment(run_dir: Path) -> dict:
    return json.loads((run_dir / "environment.json").read_text())


DEVICE_ENGINE = {"tensorflow": "mirrored", "jax": "data_parallel"}
WORKER_ENGINE = {"tensorflow": "multi_worker_mirrored", "jax": "data_parallel"}


def test_two_devices_train_like_one(tmp_path, digits_tfrecord):
    if BACKEND == "torch":
        assert_torch_refuses_several_devices(tmp_path)
        return
    # TensorFlow is compared on a fixed order (see the module docstring); JAX shuffled.
    source = (
        ["--set", "data.source=digits", *FIXED_ORDER]
        if BACKEND == "tensorflow"
        else ["--set", f"data.source=tfrecord:{digits_tfrecord}"]
    )
    one_device = fit_run(tmp_path / "one", *source)
    two_devices = fit_run(
        tmp_path / "two", *source, "--set", f"train.distribution={DEVICE_ENGINE[BACKEND]}", env={"KCV_CPU_DEVICES": "2"}
    )
    assert_same_weights(one_device, two_devices)
    recorded = environment(two_devices)
    assert recorded["distribution"] == DEVICE_ENGINE[BACKEND] and recorded["replicas"] == 2 and recorded["workers"] == 1
    assert recorded["devices"] == ["cpu:0", "cpu:1"] and environment(one_device)["replicas"] == 1


def test_two_workers_train_like_one_process(tmp_path, digits_tfrecord):
    """Two local workers reading the shuffled, augmented TFRecord shards, each keeping its part of every global
    batch."""
    if BACKEND == "torch":
        assert_torch_refuses_several_workers(tmp_path)
        return
    source = ["--set", f"data.source=tfrecord:{digits_tfrecord}"]
    # The reference: one process, on as many devices as the two workers together.
    reference_engine = ["--set", f"train.distribution={DEVICE_ENGINE[BACKEND]}"] if BACKEND == "tensorflow" else []
    reference = fit_run(
        tmp_path / "reference", *source, *reference_engine, env={"KCV_CPU_DEVICES": "2"} if reference_engine else None
    )
    chief, worker = fit_on_two_workers(tmp_path / "cluster", *source)
    assert_same_weights(reference, chief)
    assert_same_weights(chief, worker)
    for index, run in enumerate((chief, worker)):
        recorded = environment(run)
        assert recorded["distribution"] == WORKER_ENGINE[BACKEND] and recorded["replicas"] == 2
        assert recorded["workers"] == 2 and recorded["worker_index"] == index
    # Both finished and evaluated alike: every worker predicts the whole test split.
    metrics = [json.loads((run / "metrics.json").read_text())["test"] for run in (chief, worker)]
    assert metrics[0]["accuracy"] == metrics[1]["accuracy"] and metrics[0]["count"] == metrics[1]["count"]


@pytest.mark.backend_independent  # the config alone
def test_batch_and_learning_rate_scale_with_replicas_only_when_asked():
    from kerascv_app.config import Config
    from kerascv_app.distribution import scale_for_replicas

    recipe = Config().with_overrides(["data.batch_size=32", "train.learning_rate=0.05"])
    assert scale_for_replicas(recipe, 4) == recipe
    scaled = scale_for_replicas(recipe.with_overrides(["train.scale_batch_with_replicas=true"]), 4)
    assert scaled.data.batch_size == 128 and scaled.train.learning_rate == pytest.approx(0.2)


@pytest.mark.backend_independent  # names and environment variables, no engine is started
def test_a_cluster_picks_the_backends_multi_worker_engine(monkeypatch):
    from kerascv_app.distribution import Cluster, choose_distribution, cluster_from_environment
    from kerascv_app.errors import UserError

    two_workers = Cluster(workers=2, worker_index=1)
    assert choose_distribution("auto", "tensorflow", [], two_workers) == "multi_worker_mirrored"
    assert choose_distribution("auto", "jax", [], two_workers) == "data_parallel"
    with pytest.raises(UserError, match="no multi-worker engine"):
        choose_distribution("auto", "torch", [], two_workers)
    with pytest.raises(UserError, match="cannot train on several workers"):
        choose_distribution("mirrored", "tensorflow", [], two_workers)
    with pytest.raises(UserError, match="needs a cluster"):
        choose_distribution("multi_worker_mirrored", "tensorflow", ["cpu:0"])

    # A chief, when there is one, is worker 0 and writes the run directory.
    cluster = {"chief": ["host0:1"], "worker": ["host1:1", "host2:1"]}
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 1}}))
    assert cluster_from_environment("tensorflow") == Cluster(workers=3, worker_index=2)
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(UserError, match="TF_CONFIG is not valid JSON"):
        cluster_from_environment("tensorflow")
    monkeypatch.delenv("TF_CONFIG")
    monkeypatch.setenv("KERAS_DISTRIBUTION_NUM_PROCESSES", "2")
    with pytest.raises(UserError, match="missing: KERAS_DISTRIBUTION_JOB_ADDRESSES, KERAS_DISTRIBUTION_PROCESS_ID"):
        cluster_from_environment("jax")


@pytest.mark.backend_independent  # tf.data only, which every backend's pipeline runs on TensorFlow
def test_each_engine_receives_the_dataset_it_needs(tmp_path):
    import tensorflow as tf

    from kerascv_app.distribution import Cluster, Distribution

    batches = tf.data.Dataset.range(10).batch(4)
    # TensorFlow's workers each keep their part of every global batch (not whole files).
    sharded = Distribution("multi_worker_mirrored", 2, Cluster(2, 1)).adapt_dataset(batches, 4)
    assert sharded.options().experimental_distribute.auto_shard_policy == tf.data.experimental.AutoShardPolicy.DATA
    # A JAX device mesh splits every batch evenly: the last partial batch is left out.
    even = Distribution("data_parallel", 2).adapt_dataset(batches, 4)
    assert [len(batch) for batch in even.as_numpy_iterator()] == [4, 4]
    assert [len(batch) for batch in Distribution("none").adapt_dataset(batches, 4).as_numpy_iterator()] == [4, 4, 2]
    # Workers sharing a file system never write into the same run directory.
    assert Distribution("data_parallel", 2, Cluster(2, 0)).runs_dir(tmp_path) == tmp_path
    assert Distribution("data_parallel", 2, Cluster(2, 1)).runs_dir(tmp_path) == tmp_path / ".worker-1"


@pytest.mark.backend_independent  # the config alone, no engine is started
def test_data_parallel_refuses_a_batch_its_devices_cannot_share():
    from kerascv_app.config import Config
    from kerascv_app.distribution import Distribution
    from kerascv_app.errors import UserError

    with pytest.raises(UserError, match="data.batch_size = 128 does not split evenly over the 3 devices"):
        Distribution("data_parallel", 3).training_config(Config())
    per_replica = Config().with_overrides(["train.scale_batch_with_replicas=true"])
    assert Distribution("data_parallel", 3).training_config(per_replica).data.batch_size == 384
    # TensorFlow's strategies split uneven batches themselves.
    assert Distribution("mirrored", 3).training_config(Config()).data.batch_size == 128


def assert_torch_refuses_several_devices(tmp_path):
    for engine, fragment in (("mirrored", "needs the tensorflow backend"), ("data_parallel", "needs the jax backend")):
        # Refused before a model is built: in this process.
        result = kcv_in_process(
            "fit", DIGITS, "--runs-dir", tmp_path / "runs", *TINY_RUN, "--set", f"train.distribution={engine}"
        )
        assert_one_line_error(result, fragment, "torch trains on one device")
    assert not (tmp_path / "runs").exists()


def assert_torch_refuses_several_workers(tmp_path):
    ports = [free_port(), free_port()]
    tf_config = {
        "TF_CONFIG": json.dumps(
            {"cluster": {"worker": [f"localhost:{port}" for port in ports]}, "task": {"type": "worker", "index": 0}}
        )
    }
    result = kcv_in_process("fit", DIGITS, "--runs-dir", tmp_path / "runs", *TINY_RUN, env=tf_config)
    assert_one_line_error(result, "torch backend has no multi-worker engine")
    assert not (tmp_path / "runs").exists()


def test_a_second_request_in_the_same_process_is_checked_like_the_first():
    """The engine starts once per process; a later request is still refused when wrong (a cached
    engine once let an in-process torch run train under train.distribution = 'mirrored')."""
    from kerascv_app.distribution import start_distribution
    from kerascv_app.errors import UserError

    started = start_distribution("none", BACKEND)
    assert start_distribution("none", BACKEND) is started
    wrong = "mirrored" if BACKEND != "tensorflow" else "data_parallel"
    with pytest.raises(UserError, match=f"'{wrong}' needs the"):
        start_distribution(wrong, BACKEND)
