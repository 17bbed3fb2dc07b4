"""Backend, precision and devices: the choices that must happen before keras runs.

Keras fixes its backend when it is first imported, so :func:`select_backend` must run
before anything imports keras (the CLI calls it first; recipes import only the config).
It also splits the host CPU into several devices when KCV_CPU_DEVICES asks, which must
happen before TensorFlow or JAX look at their devices. How a run uses the devices
(one, mirrored, data parallel, several workers) is kerascv_app/distribution.py.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.util
import os
import sys
import tempfile

from kerascv_app.config import PRECISIONS
from kerascv_app.errors import UserError

BACKENDS = ("tensorflow", "jax", "torch")

#: KCV_VERBOSE=1 (or kcv --verbose) lets TensorFlow's start-up logging through.
VERBOSE_VARIABLE = "KCV_VERBOSE"

#: Splits the host CPU into this many devices (TensorFlow logical devices, XLA host
#: devices), so that multi-device training can be tried and tested without GPUs. Applied
#: here, by select_backend, because it must precede TensorFlow's and JAX's device start.
CPU_DEVICES_VARIABLE = "KCV_CPU_DEVICES"

#: What installs a backend that a plain ``pip install -e .`` leaves out.
INSTALL_COMMANDS = {
    "tensorflow": "pip install -e .",
    "jax": 'pip install -e ".[jax]"',
    "torch": (
        'pip install torch==2.13.0 && pip install -e ".[torch]" (torch==2.13.0 '
        "is the CPU build here; take the CUDA build from pytorch.org for a GPU)"
    ),
}


def select_backend(requested: str | None = None) -> str:
    """Chooses the backend: the flag, then ``KERAS_BACKEND``, then tensorflow."""
    quiet_tensorflow_import()
    name = requested or os.environ.get("KERAS_BACKEND") or "tensorflow"
    if name not in BACKENDS:
        source = "--backend" if requested else "KERAS_BACKEND"
        raise UserError(f"{source} = {name!r} is not a backend: use one of {', '.join(BACKENDS)}")
    if not is_installed(name):
        source = "--backend" if requested else "KERAS_BACKEND"
        raise UserError(f"{source} = {name!r}, but {name} is not installed: {INSTALL_COMMANDS[name]}")
    if "keras" in sys.modules:
        import keras

        if keras.backend.backend() != name:
            raise UserError(
                f"keras was already imported with the {keras.backend.backend()} "
                f"backend; run kcv in a fresh process to use {name}"
            )
    os.environ["KERAS_BACKEND"] = name
    # TensorFlow is used for tf.data under every backend: keep it off the GPU and quiet
    # so that JAX or torch own the accelerator.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if name != "tensorflow":
        _hide_gpus_from_tensorflow()
    _split_host_cpu(name)
    return name


def is_installed(package: str) -> bool:
    """Whether ``package`` can be imported, without importing it (a backend takes seconds)."""
    if package in sys.modules:
        # None is how an import is blocked (sys.modules["tf2onnx"] = None): not importable.
        return sys.modules[package] is not None
    try:
        return importlib.util.find_spec(package) is not None
    except (ImportError, ValueError):
        return False


# ---------------------------------------------------------------------------- a quiet start


def verbose() -> bool:
    return os.environ.get(VERBOSE_VARIABLE, "").lower() not in ("", "0", "false", "no")


@contextlib.contextmanager
def captured_stderr():
    """Points file descriptor 2 at a temporary file, where C++ libraries write their logs.

    TensorFlow 2.21 logs from C++ at import, before absl's logging starts, whatever
    TF_CPP_MIN_LOG_LEVEL says ("All log messages before absl::InitializeLog()...", oneDNN,
    "Could not find cuda drivers", twice). What was captured is dropped when the block
    succeeds and written out when it fails, so an import error keeps its explanation.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        except BaseException:
            sys.stderr.flush()
            os.dup2(saved, 2)
            capture.seek(0)
            os.write(2, capture.read())
            raise
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)


class _QuietTensorFlowFinder(importlib.abc.MetaPathFinder):
    """Finds ``tensorflow`` as Python would, and runs its import inside :func:`captured_stderr`.

    A meta-path hook rather than an early ``import tensorflow``: commands and loops that do
    not need TensorFlow (``kcv runs``, the fast loop under JAX) must not pay for importing it,
    and wherever it is first imported (keras, tf.data, tensorflow-datasets) it is quiet.
    """

    _finding = False

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "tensorflow" or self._finding:
            return None
        # The other finders locate it; a lookup without an import (is_installed) changes nothing.
        self._finding = True
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            self._finding = False
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        exec_module = spec.loader.exec_module

        def quiet_exec_module(module):
            remove_quiet_tensorflow_import()
            if verbose():
                return exec_module(module)
            with captured_stderr():
                return exec_module(module)

        spec.loader.exec_module = quiet_exec_module
        return spec


def quiet_tensorflow_import() -> None:
    """Makes the first ``import tensorflow`` of this process quiet (unless KCV_VERBOSE=1)."""
    if "tensorflow" in sys.modules or any(isinstance(finder, _QuietTensorFlowFinder) for finder in sys.meta_path):
        return
    sys.meta_path.insert(0, _QuietTensorFlowFinder())


def remove_quiet_tensorflow_import() -> None:
    sys.meta_path[:] = [finder for finder in sys.meta_path if not isinstance(finder, _QuietTensorFlowFinder)]


def _hide_gpus_from_tensorflow() -> None:
    try:
        import tensorflow as tf

        # Listing GPUs starts CUDA, which logs from C++ where there is no driver ("failed call to cuInit").
        with contextlib.nullcontext() if verbose() else captured_stderr():
            tf.config.set_visible_devices([], "GPU")
    except (ImportError, RuntimeError):
        pass


# ---------------------------------------------------------------------------- precision and devices


def set_precision(policy: str) -> None:
    """Sets the global dtype policy; also needed before reloading a model saved under it."""
    if policy not in PRECISIONS:
        raise UserError(f"precision {policy!r} is unknown: use one of {', '.join(PRECISIONS)}")
    import keras

    keras.config.set_dtype_policy(policy)


def devices() -> list[str]:
    """The devices the current backend trains on, as 'kind:index' strings.

    TensorFlow: its GPUs, else its CPUs (several when KCV_CPU_DEVICES split the host CPU).
    JAX: every device of every process. Torch: its GPUs, else the CPU.
    """
    import keras

    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_logical_devices("GPU")
        if gpus:
            return [f"gpu:{i}" for i in range(len(gpus))]
        return [f"cpu:{i}" for i in range(len(tf.config.list_logical_devices("CPU")))]
    if backend == "jax":
        import jax

        return [f"{d.platform}:{d.id}" for d in jax.devices()]
    import torch

    if torch.cuda.is_available():
        return [f"gpu:{i}" for i in range(torch.cuda.device_count())]
    return ["cpu:0"]


def _split_host_cpu(backend: str) -> None:
    """KCV_CPU_DEVICES=N: N CPU devices, set before TensorFlow or JAX initialise their devices."""
    text = os.environ.get(CPU_DEVICES_VARIABLE)
    if not text:
        return
    if not text.isdigit() or int(text) < 1:
        raise UserError(f"{CPU_DEVICES_VARIABLE} = {text!r} is invalid: give a positive number of CPU devices")
    count = int(text)
    if backend == "jax":
        flag = f"--xla_force_host_platform_device_count={count}"
        if flag not in os.environ.get("XLA_FLAGS", ""):
            os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {flag}".strip()
    elif backend == "tensorflow":
        import tensorflow as tf

        host_cpu = tf.config.list_physical_devices("CPU")[0]
        if len(tf.config.get_logical_device_configuration(host_cpu) or [None]) == count:
            return  # Already split (select_backend called again in the same process).
        try:
            tf.config.set_logical_device_configuration(host_cpu, [tf.config.LogicalDeviceConfiguration()] * count)
        except RuntimeError as error:
            raise UserError(
                f"{CPU_DEVICES_VARIABLE} must take effect before "
                f"TensorFlow starts ({error}): run kcv in a fresh process"
            ) from error
