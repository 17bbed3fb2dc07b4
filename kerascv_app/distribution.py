"""Distribution: how a run trains on the devices and workers it has.

    one worker, one device            none
    one worker, several GPUs          mirrored (TensorFlow), data_parallel (JAX)
    several workers (TF_CONFIG or     multi_worker_mirrored (TensorFlow), data_parallel over
      KERAS_DISTRIBUTION_*)           every process's devices (JAX)

Keras has no multi-device engine for the torch backend: it trains on one device. The engine
starts once per process, first in kcv fit (:func:`start_distribution`), after the backend
was chosen (kerascv_app/backend.py, which also splits the host CPU when KCV_CPU_DEVICES asks).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from kerascv_app.backend import devices
from kerascv_app.config import Config
from kerascv_app.errors import UserError


def choose_distribution(requested: str, backend: str, device_list: list[str], cluster: Cluster | None = None) -> str:
    """Resolves ``train.distribution``: 'auto' picks from the cluster and the devices present.

    Several workers (``cluster``): MultiWorkerMirroredStrategy on TensorFlow, DataParallel
    over every process's devices on JAX. One worker: none on one device; on several GPUs
    MirroredStrategy (TensorFlow) or DataParallel (JAX). CPU devices made by KCV_CPU_DEVICES
    are used only when asked for by name. Keras has no multi-device engine for the torch
    backend, so it stays on one device.
    """
    cluster = cluster or Cluster()
    if cluster.workers > 1:
        return _multi_worker_distribution(requested, backend)
    if requested == "multi_worker_mirrored":
        raise UserError(
            "train.distribution = 'multi_worker_mirrored' needs a cluster: set TF_CONFIG "
            f"on every worker (see docs/scale.md), or use {_single_worker_choices(backend)}"
        )
    accelerators = [d for d in device_list if not d.startswith("cpu")]
    if requested == "auto":
        if len(accelerators) < 2:
            return "none"
        return {"tensorflow": "mirrored", "jax": "data_parallel"}.get(backend, "none")
    if requested == "mirrored" and backend != "tensorflow":
        raise UserError(
            "train.distribution = 'mirrored' needs the tensorflow "
            f"backend, not {backend}: use {_single_worker_choices(backend)}"
        )
    if requested == "data_parallel" and backend != "jax":
        raise UserError(
            "train.distribution = 'data_parallel' needs the jax backend, "
            f"not {backend}: use {_single_worker_choices(backend)}"
        )
    return requested


def _multi_worker_distribution(requested: str, backend: str) -> str:
    engine = {"tensorflow": "multi_worker_mirrored", "jax": "data_parallel"}.get(backend)
    if engine is None:
        raise UserError(_NO_MULTI_WORKER_ENGINE.format(backend=backend))
    if requested not in ("auto", engine):
        raise UserError(
            f"train.distribution = {requested!r} cannot train on several workers "
            f"with {backend}: use 'auto' or {engine!r}, or start one worker only"
        )
    return engine


def _single_worker_choices(backend: str) -> str:
    return {"tensorflow": "'mirrored', 'auto' or 'none'", "jax": "'data_parallel', 'auto' or 'none'"}.get(
        backend, "'auto' or 'none' (torch trains on one device)"
    )


# ---------------------------------------------------------------------------- clusters

#: Keras's own variables for a multi-process JAX run, read by keras.distribution.initialize().
JAX_PROCESS_VARIABLES = (
    "KERAS_DISTRIBUTION_JOB_ADDRESSES",
    "KERAS_DISTRIBUTION_NUM_PROCESSES",
    "KERAS_DISTRIBUTION_PROCESS_ID",
)


@dataclass(frozen=True)
class Cluster:
    """The workers (machines or processes) training together, and which one this is."""

    workers: int = 1
    worker_index: int = 0


def cluster_from_environment(backend: str) -> Cluster:
    """TF_CONFIG (TensorFlow) or KERAS_DISTRIBUTION_* (JAX); one worker when neither is set."""
    if backend == "tensorflow" and os.environ.get("TF_CONFIG"):
        return _cluster_from_tf_config(os.environ["TF_CONFIG"])
    if backend == "jax" and os.environ.get("KERAS_DISTRIBUTION_NUM_PROCESSES"):
        return _cluster_from_keras_variables()
    if backend == "torch" and (os.environ.get("TF_CONFIG") or os.environ.get("KERAS_DISTRIBUTION_NUM_PROCESSES")):
        # Refused rather than ignored: each worker would silently train a model of its own.
        raise UserError(_NO_MULTI_WORKER_ENGINE.format(backend=backend))
    return Cluster()


_NO_MULTI_WORKER_ENGINE = (
    "the {backend} backend has no multi-worker engine in Keras: train on one machine (unset TF_CONFIG and "
    "KERAS_DISTRIBUTION_*), or use --backend tensorflow or jax"
)


def _cluster_from_tf_config(text: str) -> Cluster:
    """TF_CONFIG = {"cluster": {"chief": [...], "worker": ["host:port", ...]},
    "task": {"type": "worker", "index": i}}.
    """
    try:
        tf_config = json.loads(text)
        cluster, task = tf_config.get("cluster", {}), tf_config.get("task", {})
        chiefs, workers = list(cluster.get("chief", [])), list(cluster.get("worker", []))
        task_type, task_index = task.get("type", "worker"), int(task.get("index", 0))
    except (ValueError, AttributeError, TypeError) as error:
        raise UserError(
            f'TF_CONFIG is not valid JSON of the form {{"cluster": {{"worker": '
            f'[...]}}, "task": {{"type": "worker", "index": 0}}}} ({error})'
        ) from error
    if task_type not in ("chief", "worker") or not 0 <= task_index < len(chiefs if task_type == "chief" else workers):
        raise UserError(
            f"TF_CONFIG's task {task_type}:{task_index} is not in its cluster "
            f"({len(chiefs)} chief, {len(workers)} workers): give each worker its own index"
        )
    # The chief, when there is one, is worker 0; it writes the run directory.
    worker_index = task_index if task_type == "chief" else task_index + len(chiefs)
    return Cluster(workers=len(chiefs) + len(workers), worker_index=worker_index)


def _cluster_from_keras_variables() -> Cluster:
    missing = [name for name in JAX_PROCESS_VARIABLES if not os.environ.get(name)]
    if missing:
        raise UserError(
            f"a multi-process JAX run needs {', '.join(JAX_PROCESS_VARIABLES)}; missing: {', '.join(missing)}"
        )
    try:
        workers, worker_index = (
            int(os.environ["KERAS_DISTRIBUTION_NUM_PROCESSES"]),
            int(os.environ["KERAS_DISTRIBUTION_PROCESS_ID"]),
        )
    except ValueError as error:
        raise UserError(
            f"KERAS_DISTRIBUTION_NUM_PROCESSES and KERAS_DISTRIBUTION_PROCESS_ID must be integers ({error})"
        ) from error
    if not 0 <= worker_index < workers:
        raise UserError(f"KERAS_DISTRIBUTION_PROCESS_ID = {worker_index} is not in 0..{workers - 1}")
    return Cluster(workers=workers, worker_index=worker_index)


# ---------------------------------------------------------------------------- distribution


@dataclass
class Distribution:
    """The distribution engine a run trains with, started once per process.

    ``strategy`` is the tf.distribute strategy (mirrored, multi_worker_mirrored): the model
    and its optimizer are created in :meth:`scope`. DataParallel (JAX) is set globally by
    keras.distribution when started.
    """

    name: str
    replicas: int = 1
    cluster: Cluster = field(default_factory=Cluster)
    strategy: object = None

    @property
    def is_chief(self) -> bool:
        return self.cluster.worker_index == 0

    @contextlib.contextmanager
    def scope(self):
        if self.strategy is None:
            yield self
            return
        with self.strategy.scope():
            yield self

    def runs_dir(self, runs_dir: Path) -> Path:
        """Where this worker's run directory goes: the chief's in ``runs_dir``, the others'
        in ``runs_dir/.worker-N``, so that workers sharing a file system never collide."""
        return Path(runs_dir) if self.is_chief else Path(runs_dir) / f".worker-{self.cluster.worker_index}"

    def adapt_dataset(self, dataset, global_batch_size: int):
        """A batched (images, labels) dataset, as this engine must receive it.

        Both multi-worker engines shard the global stream after batching: every worker reads
        and decodes the same stream (same seeds, deterministic order) and keeps its own part
        of each global batch, so every global batch is what one device would have trained on.
        TensorFlow: tf.distribute's AutoShardPolicy.DATA, set explicitly (AUTO would shard
        TFRecord files instead, giving workers unequal step counts, which deadlocks).
        JAX: Keras's DataParallel does the same (auto_shard_dataset). A JAX device mesh needs
        every batch to split evenly over its devices, so DataParallel drops each epoch's last
        partial batch (fewer than one batch of images, a different one each epoch).
        """
        import tensorflow as tf

        if self.name == "multi_worker_mirrored":
            options = tf.data.Options()
            options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
            return dataset.with_options(options)
        if self.name == "data_parallel":
            return dataset.rebatch(global_batch_size, drop_remainder=True)
        return dataset

    def training_config(self, config: Config) -> Config:
        """The config training uses: the recipe's, with its rates scaled to its batch size
        (train.learning_rate_batch_size) and train.scale_batch_with_replicas applied,
        checked against this engine before anything is written."""
        config = scale_for_replicas(config.with_learning_rates_for_batch_size(), self.replicas)
        if self.name == "data_parallel" and config.data.batch_size % self.replicas:
            raise UserError(
                f"data.batch_size = {config.data.batch_size} does not split "
                f"evenly over the {self.replicas} devices of data_parallel: "
                f"use a multiple of {self.replicas}, or set train.scale_batch_with_replicas = true"
            )
        return config

    def record(self, config: Config) -> dict:
        """For environment.json: what the run trained with, and the batch and rate it used."""
        return {
            "distribution": self.name,
            "replicas": self.replicas,
            "workers": self.cluster.workers,
            "worker_index": self.cluster.worker_index,
            "global_batch_size": config.data.batch_size,
            "learning_rate": config.train.learning_rate,
        }


_started: Distribution | None = None


def start_distribution(requested: str, backend: str) -> Distribution:
    """Starts the distribution engine for ``train.distribution``; call it before any TensorFlow op.

    TensorFlow's multi-worker runtime refuses to start once TensorFlow has run an op, and
    JAX's multi-process runtime must start before JAX looks at its devices, so this runs
    first in kcv fit. An engine starts once per process; a later call asking for the same one
    returns it. The request is checked on every call, so that a second run in the same process
    (the tests run kcv in process) is refused as a first one would be.
    """
    global _started
    cluster = cluster_from_environment(backend)
    multi_worker = cluster.workers > 1
    name = choose_distribution(requested, backend, [] if multi_worker else devices(), cluster)
    if _started is not None and _started.name == name:
        return _started
    if _started is not None and multi_worker:
        raise UserError(
            f"train.distribution = {name!r} cannot start: this process already trains with "
            f"{_started.name!r}; start a new process for it"
        )
    _started = _start_multi_worker(name, cluster) if multi_worker else _start_single_worker(name)
    return _started


def _start_multi_worker(name: str, cluster: Cluster) -> Distribution:
    if name == "multi_worker_mirrored":
        strategy = _keras_compatible_multi_worker_strategy()
        return Distribution(name, strategy.num_replicas_in_sync, cluster, strategy)
    import keras

    # Reads KERAS_DISTRIBUTION_*, starts jax.distributed (coordinator = the first address).
    keras.distribution.initialize()
    return _start_data_parallel(cluster)


def _start_single_worker(name: str) -> Distribution:
    if name == "mirrored":
        import tensorflow as tf

        # GPUs when there are, else the CPU devices KCV_CPU_DEVICES made (MirroredStrategy's
        # own default would take only the first CPU).
        kind = "GPU" if tf.config.list_logical_devices("GPU") else "CPU"
        strategy = tf.distribute.MirroredStrategy([device.name for device in tf.config.list_logical_devices(kind)])
        return Distribution(name, strategy.num_replicas_in_sync, Cluster(), strategy)
    if name == "data_parallel":
        return _start_data_parallel(Cluster())
    return Distribution(name)


def _start_data_parallel(cluster: Cluster) -> Distribution:
    import jax
    import keras

    keras.distribution.set_distribution(keras.distribution.DataParallel())
    return Distribution("data_parallel", len(jax.devices()), cluster)


def _keras_compatible_multi_worker_strategy():
    """A MultiWorkerMirroredStrategy that accepts the reductions Keras 3.15's trainer asks of it.

    Before the first step Keras reduces a whole (uint8 images, labels) batch in one call, to
    learn its shapes, and it reduces per-replica scalar logs with axis=0. This strategy's own
    reduce refuses all three: nested structures, uint8 (collective ops take floats and 32/64
    bit integers only) and axis=0 on scalars; MirroredStrategy's accepts them. Reducing each
    tensor of the structure, other dtypes through float32, and scalars across replicas only,
    is what Keras means. Without this, model.fit fails before its first step.
    """
    import tensorflow as tf

    collective_dtypes = (tf.float16, tf.bfloat16, tf.float32, tf.float64, tf.int32, tf.int64)

    class KerasCompatibleMultiWorkerMirroredStrategy(tf.distribute.MultiWorkerMirroredStrategy):
        def reduce(self, reduce_op, value, axis):
            parent = super()

            def reduce_one(per_replica):
                local = self.experimental_local_results(per_replica)[0]
                reduce_axis = None if local.shape.rank == 0 else axis
                if local.dtype in collective_dtypes:
                    return parent.reduce(reduce_op, per_replica, reduce_axis)
                as_float = tf.nest.map_structure(
                    lambda part: tf.cast(part, tf.float32), per_replica, expand_composites=True
                )
                return tf.cast(parent.reduce(reduce_op, as_float, reduce_axis), local.dtype)

            return tf.nest.map_structure(reduce_one, value)

    return KerasCompatibleMultiWorkerMirroredStrategy()


def scale_for_replicas(config: Config, replicas: int) -> Config:
    """train.scale_batch_with_replicas: global batch = per-replica batch x replicas, and the
    learning rate scaled linearly with it. Otherwise the config is used as it is."""
    if not config.train.scale_batch_with_replicas or replicas == 1:
        return config
    return dataclasses.replace(
        config,
        data=dataclasses.replace(config.data, batch_size=config.data.batch_size * replicas),
        train=dataclasses.replace(
            config.train,
            learning_rate=config.train.learning_rate * replicas,
            fine_tune_learning_rate=config.train.fine_tune_learning_rate * replicas,
        ),
    )
