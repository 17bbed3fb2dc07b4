"""Data sources by name: ``kcv fit`` reads any of these from a recipe's ``data.source``.

digits            scikit-learn's bundled 8x8 digits (no download)
fashion_mnist     IDX files from --data-dir, /usr/share/datasets/fashion-mnist or the Keras cache
idx:DIR           any MNIST-format IDX files in DIR
cifar10, cifar100 the original python-format archive (or its extracted batches)
folder:PATH       a class-per-folder image tree, or a .tar/.tar.gz of one
tfds:NAME         a tensorflow-datasets dataset prepared in --data-dir
tfrecord:DIR      sharded TFRecords written by kcv convert (streamed, any size)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kerascv_app.data.base import ArraySplit, LoadedData, fingerprint_arrays
from kerascv_app.errors import UserError


def load_source(source: str, data_dir: str | Path | None = None) -> LoadedData:
    """Loads the named source; ``data_dir`` is where its files are (or will be downloaded)."""
    kind, _, argument = source.partition(":")
    data_dir = Path(data_dir) if data_dir else None
    if kind == "digits":
        return load_digits()
    if kind == "fashion_mnist":
        from kerascv_app.data.idx import load_fashion_mnist

        return load_fashion_mnist(Path(argument) if argument else data_dir)
    if kind == "idx":
        from kerascv_app.data.idx import load_idx_directory

        return load_idx_directory(_required_path(argument, data_dir, source))
    if kind in ("cifar10", "cifar100"):
        from kerascv_app.data.cifar import load_cifar

        return load_cifar(kind, Path(argument) if argument else data_dir)
    if kind == "folder":
        from kerascv_app.data.folder import load_image_folder

        return load_image_folder(_required_path(argument, data_dir, source))
    if kind == "tfds":
        from kerascv_app.data.tfds_source import load_tfds

        if not argument:
            raise UserError("data.source = 'tfds:' names no dataset: write tfds:NAME, e.g. tfds:mnist")
        return load_tfds(argument, data_dir)
    if kind == "tfrecord":
        from kerascv_app.data.tfrecord import load_tfrecord

        return load_tfrecord(_required_path(argument, data_dir, source))
    raise UserError(
        f"data.source = {source!r} is unknown: use digits, fashion_mnist, idx:DIR, cifar10, cifar100, folder:PATH, "
        "tfds:NAME or tfrecord:DIR"
    )


def _required_path(argument: str, data_dir: Path | None, source: str) -> Path:
    """folder:, idx: and tfrecord: take a path; an empty one means --data-dir, a relative one is under it."""
    if not argument:
        if data_dir is None:
            raise UserError(f"data.source = {source!r} needs a path: write {source}PATH or pass --data-dir PATH")
        return data_dir
    path = Path(argument).expanduser()
    if not path.is_absolute() and data_dir is not None:
        path = data_dir / path
    return path


def load_digits() -> LoadedData:
    """scikit-learn's 1,797 8x8 digits (values 0..16), scaled to uint8; ships with sklearn."""
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    images = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)
    labels = bunch.target.astype(np.int64)
    return LoadedData(
        name="digits",
        class_names=[str(d) for d in range(10)],
        train=ArraySplit(images, labels),
        test=None,
        fingerprint=fingerprint_arrays(images, labels),
    )


# ---------------------------------------------------------------------------- --data PATH

#: Source names that need no path; with a colon, each kind below takes its argument.
NAMED_SOURCES = ("digits", "fashion_mnist", "cifar10", "cifar100")
SOURCE_KINDS = ("digits", "fashion_mnist", "idx", "cifar10", "cifar100", "folder", "tfds", "tfrecord")

#: What each format needs, for the line that answers an unknown folder.
FORMAT_NEEDS = (
    "a CIFAR python archive (cifar-10-python.tar.gz) or its batches (data_batch_1..5, test_batch, batches.meta)",
    "a class-per-folder tree (<class>/<image>, or train/<class>/ and test/<class>/) or a .tar/.tar.gz of one",
    "IDX files (train-images-idx3-ubyte[.gz] and train-labels-idx1-ubyte[.gz])",
    "a kcv convert folder (metadata.json and *.tfrecord shards)",
    "a TFDS data folder (NAME/VERSION/dataset_info.json)",
)


@dataclass(frozen=True)
class DetectedData:
    """What ``--data`` resolved to: a ``data.source`` and, for TFDS, the data folder it needs."""

    source: str
    data_dir: Path | None = None


def resolve_data_option(text: str, recipe_source: str = "") -> DetectedData:
    """``--data PATH`` (the format detected from what is there) or ``--data kind:...`` (as named).

    The recipe's source refines a detected format that cannot tell its own class names:
    IDX files for a ``fashion_mnist`` recipe are Fashion-MNIST.
    """
    kind, colon, _ = text.partition(":")
    if (colon and kind in SOURCE_KINDS) or (text in NAMED_SOURCES and not Path(text).exists()):
        return DetectedData(text)
    path = Path(text).expanduser()
    if not path.exists():
        raise UserError(
            f"--data {text}: no such file or folder (a source name is one of {', '.join(NAMED_SOURCES)}, or "
            "kind:ARGUMENT, e.g. folder:PATH)"
        )
    detected = detect_format(path.resolve())
    if detected.source.startswith("idx:") and recipe_source.partition(":")[0] == "fashion_mnist":
        return DetectedData("fashion_mnist:" + detected.source.partition(":")[2])
    return detected


def detect_format(path: Path) -> DetectedData:
    """The one format ``path`` holds; an unknown or ambiguous one gets a line saying what was found."""
    if path.is_file():
        return _detect_file(path)
    found = _formats_in_folder(path)
    if len(found) == 1:
        return found[0][1]
    if found:
        names = "; ".join(f"{description} ({detected.source})" for description, detected in found)
        raise UserError(
            f"{path} holds more than one dataset format: {names}; name the one you mean with --data kind:PATH"
        )
    listing = _short_listing(path)
    raise UserError(f"{path} holds no dataset kcv can read ({listing}); it needs one of: {'; '.join(FORMAT_NEEDS)}")


def _detect_file(path: Path) -> DetectedData:
    from kerascv_app.data.cifar import LAYOUTS
    from kerascv_app.data.folder import ARCHIVE_SUFFIXES
    from kerascv_app.data.idx import SPLIT_FILES

    name = path.name.lower()
    if name.endswith(ARCHIVE_SUFFIXES):
        # The CIFAR archives hold their batch folder first; an image tree's archive holds images.
        first_folder = _first_archive_member(path).split("/")[0]
        for kind, layout in LAYOUTS.items():
            if first_folder == layout.folder or name == layout.archive:
                return DetectedData(f"{kind}:{path}")
        return DetectedData(f"folder:{path}")
    idx_names = {file_name for names in SPLIT_FILES.values() for file_name in names}
    if name.removesuffix(".gz") in idx_names:
        return DetectedData(f"idx:{path.parent}")
    raise UserError(f"{path} is a file kcv cannot read as a dataset; it needs one of: {'; '.join(FORMAT_NEEDS)}")


def _first_archive_member(path: Path) -> str:
    import tarfile

    try:
        with tarfile.open(path) as archive:
            member = archive.next()
    except (tarfile.TarError, OSError, EOFError) as error:
        raise UserError(f"{path} is not a readable .tar/.tar.gz archive ({error}): copy it again") from error
    return member.name.lstrip("./") if member is not None else ""


def _formats_in_folder(path: Path) -> list[tuple[str, DetectedData]]:
    from kerascv_app.data.cifar import LAYOUTS
    from kerascv_app.data.idx import SPLIT_FILES
    from kerascv_app.data.tfrecord import METADATA_FILE, PLAN_FILE

    found = []
    for kind, layout in LAYOUTS.items():
        if (
            any((folder / layout.meta).is_file() for folder in (path, path / layout.folder))
            or (path / layout.archive).is_file()
        ):
            found.append((f"{kind} python batches", DetectedData(f"{kind}:{path}")))
    if any(path.glob(f"{SPLIT_FILES['train'][0]}*")):
        found.append(("IDX files", DetectedData(f"idx:{path}")))
    if (path / METADATA_FILE).is_file() or (path / PLAN_FILE).is_file():
        found.append(("a kcv convert folder", DetectedData(f"tfrecord:{path}")))
    tfds = _tfds_dataset(path)
    if tfds is not None:
        found.append(("a TFDS data folder", tfds))
    if not found and _has_class_folders(path):
        found.append(("a class-per-folder image tree", DetectedData(f"folder:{path}")))
    return found


def _tfds_dataset(path: Path) -> DetectedData | None:
    """NAME/VERSION/dataset_info.json or NAME/CONFIG/VERSION/... under a TFDS data folder (or the NAME folder
    itself)."""
    infos = [
        info
        for pattern in ("*/dataset_info.json", "*/*/dataset_info.json", "*/*/*/dataset_info.json")
        for info in path.glob(pattern)
    ]
    names = sorted(
        {"/".join(info.relative_to(path).parts[:-2]) for info in infos if len(info.relative_to(path).parts) > 2}
    )
    if len(names) == 1:
        return DetectedData(f"tfds:{names[0]}", path)
    if len(names) > 1:
        raise UserError(
            f"{path} is a TFDS data folder with several datasets ({', '.join(names)}): name one with --data "
            f"tfds:NAME --data-dir {path}"
        )
    if any(info.relative_to(path).parts[:-1] for info in infos):  # path is NAME/ itself: VERSION/dataset_info.json
        return DetectedData(f"tfds:{path.name}", path.parent)
    return None


def _has_class_folders(path: Path) -> bool:
    """Image files one or two folders down: <class>/<image> or <split>/<class>/<image>."""
    from kerascv_app.data.folder import IMAGE_EXTENSIONS

    for pattern in ("*/*", "*/*/*"):
        for candidate in path.glob(pattern):
            if candidate.suffix.lower() in IMAGE_EXTENSIONS and candidate.is_file():
                return True
    return False


def _short_listing(path: Path) -> str:
    entries = sorted(entry.name + ("/" if entry.is_dir() else "") for entry in path.iterdir())
    if not entries:
        return "it is empty"
    shown = ", ".join(entries[:6])
    return f"found {shown}" + (f" and {len(entries) - 6} more" if len(entries) > 6 else "")
