"""The run directory: everything needed to trust, repeat and reuse one training run.

    runs/<recipe>-<timestamp>/
      run.json              status (running, finished, failed, interrupted), recipe, backend, times
      config.json           the resolved config (recipe plus overrides)
      recipe.py             a copy of the recipe source
      environment.json      versions, backend, precision, devices, seed, data fingerprint
      splits.json           split sizes and fingerprints (ensembles need equal splits)
      history.csv           one row per epoch
      metrics.json          validation and test metrics
      model.keras           the trained model
      predictions/val.npz   probabilities and labels (ensembles are built from these)
      predictions/test.npz
      confusion_matrix.png, curves.png, tensorboard/
      backup/               checkpoints while the run is unfinished (kerascv_app/train/checkpoint.py)
      lock                  pid and host of the process training the run (held with flock)

A run is finished only when ``run.json`` says so; that line is written last.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import socket
from pathlib import Path

from kerascv_app.errors import UserError

STATUS_FILE = "run.json"
LOCK_FILE = "lock"


def write_json_atomically(path: Path, value) -> None:
    """Writes through a temporary file and a rename, so a reader never sees half a file."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(value, indent=2, sort_keys=True, default=str) + "\n")
    os.replace(temporary, path)


class RunDirectory:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    # Creating and opening

    @classmethod
    def create(cls, runs_dir: str | Path, recipe_name: str) -> RunDirectory:
        runs_dir = Path(runs_dir)
        runs_dir.mkdir(parents=True, exist_ok=True)
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        for attempt in range(1000):
            suffix = f"-{attempt}" if attempt else ""
            path = runs_dir / f"{recipe_name}-{stamp}{suffix}"
            try:
                path.mkdir()
                return cls(path)
            except FileExistsError:
                continue
        raise UserError(f"cannot create a run directory in {runs_dir}: too many runs named {recipe_name}-{stamp}")

    @classmethod
    def open(cls, path: str | Path) -> RunDirectory:
        """Opens an existing run directory, or refuses clearly."""
        run = cls(path)
        if not run.path.is_dir():
            raise UserError(f"run directory {run.path} does not exist: give a folder made by kcv fit (see kcv runs)")
        if not (run.path / STATUS_FILE).is_file() or not (run.path / "config.json").is_file():
            raise UserError(
                f"{run.path} is not a run directory (no {STATUS_FILE} or config.json): give a folder made by kcv fit"
            )
        try:
            run.status_record()
        except ValueError as error:
            raise UserError(f"{run.path / STATUS_FILE} is corrupt: this run directory cannot be used") from error
        return run

    # Status

    def status_record(self) -> dict:
        return json.loads((self.path / STATUS_FILE).read_text())

    @contextlib.contextmanager
    def marking_failures(self):
        """Training inside: a Ctrl-C marks the run interrupted, an error marks it failed."""
        try:
            yield
        except KeyboardInterrupt:
            self.set_status("interrupted")
            raise
        except Exception as error:
            # The reason stays in run.json, so kcv runs, export and the next user can say why.
            self.set_status("failed", reason=failure_reason(error))
            raise

    @contextlib.contextmanager
    def locked(self):
        """Holds the run's lock: one process trains a run at a time.

        An ``flock`` on ``lock``, which holds the owner's pid and host for the message: the
        kernel releases it when the process ends, however it ends, so a lock is never stale
        after a kill, and no process can take it while its owner lives.
        """
        import fcntl

        descriptor = os.open(self.path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                owner = os.pread(descriptor, 200, 0).decode(errors="replace").split()
                pid, host = (owner + ["?", "?"])[:2]
                raise UserError(
                    f"{self.path} is being trained by process {pid} on {host}: "
                    f"wait for it to end, or stop it (kill {pid}) before resuming"
                ) from None
            os.ftruncate(descriptor, 0)
            os.pwrite(descriptor, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
            yield
        finally:
            os.close(descriptor)  # releases the flock

    def is_locked(self) -> bool:
        """Whether a live process holds the run's lock (on this host)."""
        import fcntl

        path = self.path / LOCK_FILE
        if not path.is_file():
            return False
        descriptor = os.open(path, os.O_RDONLY)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(descriptor)
        return False

    def set_status(self, status: str, **fields) -> None:
        record = {}
        if (self.path / STATUS_FILE).is_file():
            record = self.status_record()
        if status in ("running", "finished"):
            record.pop("reason", None)  # a resumed or finished run no longer fails for it
        record.update(fields)
        record["status"] = status
        record["updated"] = datetime.datetime.now().isoformat(timespec="seconds")
        if status == "running":
            record["pid"] = os.getpid()
            record["host"] = socket.gethostname()
        write_json_atomically(self.path / STATUS_FILE, record)

    def status(self) -> str:
        """finished, failed, running, or interrupted (said running, but its process is gone)."""
        record = self.status_record()
        status = record.get("status", "unknown")
        if (
            status == "running"
            and record.get("host") == socket.gethostname()
            and not (process_alive(record.get("pid")) or self.is_locked())
        ):
            return "interrupted"
        return status

    @property
    def is_finished(self) -> bool:
        return self.status() == "finished"

    # Files

    def file(self, name: str) -> Path:
        return self.path / name

    def write_json(self, name: str, value) -> None:
        write_json_atomically(self.path / name, value)

    def read_json(self, name: str) -> dict:
        path = self.path / name
        if not path.is_file():
            raise UserError(
                f"{path} is missing: the run did not finish (see kcv runs), resume it with kcv fit --resume {self.path}"
            )
        try:
            value = json.loads(path.read_text())
        except (ValueError, OSError) as error:
            raise UserError(
                f"{path} is corrupt ({type(error).__name__}: {error}): this run directory cannot be used as it is"
            ) from None
        if not isinstance(value, dict):
            raise UserError(f"{path} is corrupt (not a JSON object): this run directory cannot be used as it is")
        return value

    @property
    def model_path(self) -> Path:
        return self.path / "model.keras"

    @property
    def backup_dir(self) -> Path:
        return self.path / "backup"

    @property
    def predictions_dir(self) -> Path:
        return self.path / "predictions"


def failure_reason(error: BaseException) -> str:
    """One line: the error's type and the first line of its message."""
    message = str(error).strip().splitlines()
    return f"{type(error).__name__}: {message[0]}" if message else type(error).__name__


def process_alive(pid) -> bool:
    if not pid:
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def find_runs(runs_dir: str | Path) -> list[RunDirectory]:
    """Run directories directly under ``runs_dir``, oldest first."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        raise UserError(f"runs folder {runs_dir} does not exist: pass the folder given to kcv fit --runs-dir")
    runs = [RunDirectory(p) for p in sorted(runs_dir.iterdir()) if (p / STATUS_FILE).is_file()]
    return sorted(runs, key=lambda run: run.path.stat().st_mtime)


# Package versions recorded in every run's environment.json (None where not installed).
RECORDED_PACKAGES = (
    "kerascv_app",
    "keras",
    "tensorflow",
    "tensorflow-datasets",
    "jax",
    "jaxlib",
    "torch",
    "numpy",
    "scikit-learn",
    "pillow",
)


def environment_record(config, backend: str, devices: list[str], prepared, data_dir, engine: dict) -> dict:
    """environment.json: what a run trained on and with. ``engine`` holds the loop's own facts
    (distribution, replicas, ...). Keras- and TensorFlow-free, so the fast loop can use it."""
    import platform
    import sys
    from importlib import metadata

    versions = {}
    for package in RECORDED_PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "backend": backend,
        "precision": config.train.precision,
        "devices": devices,
        **engine,
        "seed": config.train.seed,
        "data_source": config.data.source,
        "data_dir": str(Path(data_dir).resolve()) if data_dir else None,
        "data_fingerprint": prepared.data.fingerprint,
        "class_names": prepared.class_names,
        "skipped_files": prepared.data.skipped,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "command": sys.argv,
        "versions": versions,
    }
