"""``kcv doctor``: what this machine offers kcv, and why a GPU would not be used.

Each backend is probed in this process, TensorFlow quietly (its import logging captured),
and a probe that fails is reported in its line instead of ending the report.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from importlib import metadata

from kerascv_app.backend import BACKENDS, INSTALL_COMMANDS, captured_stderr, is_installed, verbose


@dataclass
class BackendReport:
    name: str
    version: str | None = None
    devices: list[str] = field(default_factory=list)
    mixed_precision: str = ""
    problem: str = ""

    def lines(self) -> list[str]:
        if self.version is None:
            return [f"{self.name}: not installed; install it with {INSTALL_COMMANDS[self.name]}"]
        lines = [f"{self.name} {self.version}: {', '.join(self.devices) if self.devices else 'no devices found'}"]
        if self.problem:
            lines.append(f"  could not list its devices: {self.problem}")
        if self.mixed_precision:
            lines.append(f"  mixed precision: {self.mixed_precision}")
        return lines


def _version(package: str) -> str | None:
    """None when the package cannot be imported (what kcv needs), else its installed version."""
    if not is_installed(package):
        return None
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "(version unknown)"


def _mixed_precision(gpus: list[tuple[str, float | None]], capability: tuple[int, int] | None) -> str:
    """What --precision can use here: float16 wants tensor cores (compute capability 7.0),
    bfloat16 wants Ampere (8.0); on a CPU both run, slower than float32 for small nets."""
    if not gpus:
        return "no GPU: use float32 (mixed_float16/mixed_bfloat16 run on the CPU but are slower there)"
    if capability is None:
        return "mixed_float16 and mixed_bfloat16 are available on this GPU (its compute capability is not reported)"
    if capability >= (8, 0):
        return f"mixed_float16 and mixed_bfloat16 (compute capability {capability[0]}.{capability[1]})"
    if capability >= (7, 0):
        return f"mixed_float16 (compute capability {capability[0]}.{capability[1]}); mixed_bfloat16 needs 8.0"
    return f"compute capability {capability[0]}.{capability[1]} has no tensor cores: mixed precision will not be faster"


def _gpu_text(name: str, memory_bytes: float | None) -> str:
    return f"GPU {name}" + (f" ({memory_bytes / 2**30:.0f} GiB)" if memory_bytes else "")


def probe_tensorflow(report: BackendReport) -> None:
    import tensorflow as tf

    gpus, capability = [], None
    for device in tf.config.list_physical_devices("GPU"):
        details = tf.config.experimental.get_device_details(device)
        gpus.append((details.get("device_name", device.name), None))
        capability = capability or details.get("compute_capability")
    report.devices = [_gpu_text(*gpu) for gpu in gpus] + [
        f"{len(tf.config.list_physical_devices('CPU'))} CPU device(s)"
    ]
    if not gpus and tf.test.is_built_with_cuda() is False:
        report.problem = (
            "this TensorFlow is built without CUDA (pip install 'tensorflow[and-cuda]' for NVIDIA GPUs)"
            if _nvidia_present()
            else ""
        )
    elif not gpus and _nvidia_present():
        report.problem = (
            "an NVIDIA device is present but TensorFlow sees no GPU: "
            "check the driver and pip install 'tensorflow[and-cuda]'"
        )
    report.mixed_precision = _mixed_precision(gpus, tuple(capability) if capability else None)


def probe_jax(report: BackendReport) -> None:
    import jax

    gpus, capability = [], None
    devices = jax.devices()
    for device in devices:
        if device.platform == "gpu":
            stats = device.memory_stats() if hasattr(device, "memory_stats") else None
            gpus.append((device.device_kind, (stats or {}).get("bytes_limit")))
            text = getattr(device, "compute_capability", None)
            if text and capability is None:
                capability = tuple(int(part) for part in str(text).split(".")[:2])
    cpus = sum(1 for device in devices if device.platform == "cpu")
    report.devices = [_gpu_text(*gpu) for gpu in gpus] + ([f"{cpus} CPU device(s)"] if cpus else [])
    if not gpus and _nvidia_present():
        report.problem = 'an NVIDIA device is present but JAX sees none: pip install -U "jax[cuda12]"'
    report.mixed_precision = _mixed_precision(gpus, capability)


def probe_torch(report: BackendReport) -> None:
    import torch

    gpus, capability = [], None
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            properties = torch.cuda.get_device_properties(index)
            gpus.append((properties.name, properties.total_memory))
            capability = capability or (properties.major, properties.minor)
    report.devices = [_gpu_text(*gpu) for gpu in gpus] + ["the CPU"]
    if not gpus and _nvidia_present():
        build = "a CPU build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
        report.problem = (
            f"an NVIDIA device is present but torch ({build}) sees none: install the CUDA build from pytorch.org"
        )
    report.mixed_precision = _mixed_precision(gpus, capability)


PROBES = {"tensorflow": probe_tensorflow, "jax": probe_jax, "torch": probe_torch}


def _nvidia_present() -> bool:
    return os.path.exists("/dev/nvidia0") or os.path.exists("/proc/driver/nvidia/version")


def backend_reports() -> list[BackendReport]:
    reports = []
    for name in BACKENDS:
        report = BackendReport(name, _version(name))
        if report.version is not None:
            try:
                # Device discovery logs from C++ too (cuInit failures on a machine without a
                # driver): captured, unless KCV_VERBOSE asks for everything.
                if verbose():
                    PROBES[name](report)
                else:
                    with captured_stderr():
                        PROBES[name](report)
            except Exception as error:  # A broken install is reported, not raised: the rest still helps.
                report.problem = (
                    f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}"
                )
        reports.append(report)
    return reports


def storage_lines() -> list[str]:
    from kerascv_app.data.download import keras_datasets_dir
    from kerascv_app.data.folder import cache_dir
    from kerascv_app.data.pipeline import MEMORY_SHARE, available_memory

    tfds_dir = os.environ.get("TFDS_DATA_DIR") or os.path.join(os.path.expanduser("~"), "tensorflow_datasets")
    available = available_memory()
    return [
        f"extracted archives and decoded arrays: {cache_dir()} (KCV_CACHE_DIR)",
        f"downloads of cifar10, cifar100, fashion_mnist: {keras_datasets_dir()} (KERAS_HOME)",
        f"tfds: datasets: {tfds_dir} (TFDS_DATA_DIR, or --data-dir)",
        f"memory available: {available / 1e9:.1f} GB; data.cache = 'auto' keeps up "
        f"to {available * MEMORY_SHARE / 1e9:.1f} GB of decoded images in memory",
    ]


#: Optional features: the packages each needs, and the extra that installs them.
OPTIONAL_FEATURES = (
    ("hub: backbones (KerasHub presets)", ("keras_hub",), "hub"),
    ("kcv export --format onnx", ("tf2onnx", "onnx", "onnxruntime"), "onnx"),
)


def feature_lines() -> list[str]:
    """Which optional features are installed, with versions, or the command that installs them."""
    lines = []
    for feature, packages, extra in OPTIONAL_FEATURES:
        missing = [package for package in packages if not is_installed(package)]
        if missing:
            lines.append(
                f'{feature}: not installed ({", ".join(missing)}); install it with pip install -e ".[{extra}]"'
            )
        else:
            lines.append(
                f"{feature}: "
                + ", ".join(f"{_distribution(package)} {_distribution_version(package)}" for package in packages)
            )
    return lines


def _distribution(package: str) -> str:
    return {"keras_hub": "keras-hub"}.get(package, package)


def _distribution_version(package: str) -> str:
    try:
        return metadata.version(_distribution(package))
    except metadata.PackageNotFoundError:
        return "(version unknown)"


def report_lines() -> list[str]:
    chosen = os.environ.get("KERAS_BACKEND") or "tensorflow"
    lines = [f"backend kcv uses now: {chosen} (--backend or KERAS_BACKEND to change)"]
    for report in backend_reports():
        lines += report.lines()
    return (
        lines
        + ["optional:"]
        + [f"  {line}" for line in feature_lines()]
        + ["data:"]
        + [f"  {line}" for line in storage_lines()]
    )
