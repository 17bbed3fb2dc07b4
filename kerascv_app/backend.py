"""Backend, precision and distribution: the choices that must happen before keras runs.

Keras fixes its backend when it is first imported, so :func:`select_backend` must run
before anything imports keras (the CLI calls it first; recipes import only the config).
"""

from __future__ import annotations

import os
import sys

from kerascv_app.config import PRECISIONS
from kerascv_app.errors import UserError

BACKENDS = ("tensorflow", "jax", "torch")


def select_backend(requested: str | None = None) -> str:
    """Chooses the backend: the flag, then ``KERAS_BACKEND``, then tensorflow."""
    name = requested or os.environ.get("KERAS_BACKEND") or "tensorflow"
    if name not in BACKENDS:
        source = "--backend" if requested else "KERAS_BACKEND"
        raise UserError(f"{source} = {name!r} is not a backend: use one of {', '.join(BACKENDS)}")
    if "keras" in sys.modules:
        import keras

        if keras.backend.backend() != name:
            raise UserError(f"keras was already imported with the {keras.backend.backend()} backend; run kcv in a fresh process to use {name}")
    os.environ["KERAS_BACKEND"] = name
    # TensorFlow is used for tf.data under every backend: keep it off the GPU and quiet
    # so that JAX or torch own the accelerator.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if name != "tensorflow":
        _hide_gpus_from_tensorflow()
    return name


def _hide_gpus_from_tensorflow() -> None:
    try:
        import tensorflow as tf

        tf.config.set_visible_devices([], "GPU")
    except (ImportError, RuntimeError):
        pass


def set_precision(policy: str) -> None:
    """Sets the global dtype policy; also needed before reloading a model saved under it."""
    if policy not in PRECISIONS:
        raise UserError(f"precision {policy!r} is unknown: use one of {', '.join(PRECISIONS)}")
    import keras

    keras.config.set_dtype_policy(policy)


def devices() -> list[str]:
    """The accelerators (or CPU) the current backend sees, as 'kind:index' strings."""
    import keras

    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_logical_devices("GPU")
        return [f"gpu:{i}" for i in range(len(gpus))] or ["cpu:0"]
    if backend == "jax":
        import jax

        return [f"{d.platform}:{d.id}" for d in jax.devices()]
    import torch

    if torch.cuda.is_available():
        return [f"gpu:{i}" for i in range(torch.cuda.device_count())]
    return ["cpu:0"]


def choose_distribution(requested: str, backend: str, device_list: list[str]) -> str:
    """Resolves ``train.distribution``: 'auto' picks from the devices present.

    One device: none. Several GPUs: MirroredStrategy on TensorFlow, DataParallel on JAX.
    The torch backend has no Keras-level multi-device engine, so it stays on one device.
    """
    accelerators = [d for d in device_list if not d.startswith("cpu")]
    if requested == "auto":
        if len(accelerators) < 2:
            return "none"
        return {"tensorflow": "mirrored", "jax": "data_parallel"}.get(backend, "none")
    if requested == "mirrored" and backend != "tensorflow":
        raise UserError(f"train.distribution = 'mirrored' needs the tensorflow backend, not {backend}: use 'data_parallel' on jax or 'none'")
    if requested == "data_parallel" and backend != "jax":
        raise UserError(f"train.distribution = 'data_parallel' needs the jax backend, not {backend}: use 'mirrored' on tensorflow or 'none'")
    return requested


class DistributionScope:
    """A context in which the model and optimizer are created for the chosen strategy."""

    def __init__(self, strategy_name: str):
        self.strategy_name = strategy_name
        self._scope = None

    def __enter__(self):
        if self.strategy_name == "mirrored":
            import tensorflow as tf

            self._scope = tf.distribute.MirroredStrategy().scope()
            self._scope.__enter__()
        elif self.strategy_name == "data_parallel":
            import keras

            keras.distribution.set_distribution(keras.distribution.DataParallel())
        return self

    def __exit__(self, *exc):
        if self._scope is not None:
            self._scope.__exit__(*exc)
        return False
