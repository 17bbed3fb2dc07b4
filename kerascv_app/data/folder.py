"""A class-per-folder tree of images, or a .tar/.tar.gz/.tgz archive of one (``folder:PATH``).

Layouts: ``train/<class>/*`` with optional ``test/<class>/*`` and ``val/<class>/*`` (or
``validation/``), or just ``<class>/*`` (then the test split is held out later). Folders
that only wrap the layout (an archive's top folder) are looked through. Class names are the
sorted folder names of the training split.

Every image file gets a cheap integrity check (its first and last bytes, no decoding), so
that a truncated or mislabelled file is skipped and reported instead of failing in the
middle of an epoch. Files are read again, one by one, while training: they stream.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import shutil
import sys
import tarfile
import tempfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np

from kerascv_app.data.base import FileSplit, LoadedData, fingerprint_ids
from kerascv_app.data.download import first_line
from kerascv_app.errors import UserError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif"})
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")
SPLIT_FOLDER_NAMES = {"train": ("train",), "test": ("test",), "validation": ("val", "validation")}

# Bytes read from each end of a file: enough for every signature and trailer checked, and
# for an end marker behind up to 4 KiB of zero padding (a disk block's worth).
HEAD_SIZE = 32
TAIL_SIZE = 4096
# How many skipped files the warning names before "and N more".
NAMED_IN_WARNING = 5


def load_image_folder(path: Path) -> LoadedData:
    path = Path(path).expanduser()
    if not path.exists():
        raise UserError(
            f"{path} does not exist: folder:PATH needs a folder with one sub-folder of images per class, or a "
            ".tar/.tar.gz of one"
        )
    root = _layout_root(extract_archive(path) if path.is_file() else path)
    split_folders = _split_folders(root)
    scans = {split: _scan_split(folder) for split, folder in split_folders.items()}
    _check_scans(root, split_folders, scans)
    skipped = [file for scan in scans.values() for file in scan.skipped]
    if skipped:
        _warn_skipped(root, skipped)
    kept = [file for scan in scans.values() for file in scan.kept]
    return LoadedData(
        name=f"folder:{path}",
        class_names=scans["train"].class_names,
        train=scans["train"].to_split(),
        test=scans["test"].to_split() if "test" in scans else None,
        validation=scans["validation"].to_split() if "validation" in scans else None,
        skipped=[file.path for file in skipped],
        # Relative paths and sizes: the same images fingerprint alike wherever they are extracted.
        fingerprint=fingerprint_ids([_relative(file.path, root) for file in kept], [file.size for file in kept]),
    )


def _relative(path: str, root: Path) -> str:
    # Every listed path starts with the root as written (os.scandir joins onto it); slicing is
    # much faster than os.path.relpath over tens of thousands of files.
    prefix = str(root) + os.sep
    return path[len(prefix) :] if path.startswith(prefix) else os.path.relpath(path, root)


# ---------------------------------------------------------------------------- layout


def _layout_root(folder: Path) -> Path:
    """Looks through folders that only wrap the layout, e.g. an archive's single top folder."""
    while True:
        subfolders = _subfolders(folder)
        if (
            len(subfolders) != 1
            or _image_files_in(folder)
            or _named_split(subfolders[0])
            or not _subfolders(subfolders[0])
        ):
            return folder
        folder = subfolders[0]


def _split_folders(root: Path) -> dict[str, Path]:
    """{"train": folder, and "test"/"validation" where the source has them}."""
    by_name = {subfolder.name.lower(): subfolder for subfolder in _subfolders(root)}
    if "train" not in by_name:
        return {"train": root}
    folders = {}
    for split, names in SPLIT_FOLDER_NAMES.items():
        found = [by_name[name] for name in names if name in by_name]
        if found:
            folders[split] = found[0]
    return folders


def _named_split(folder: Path) -> bool:
    return any(folder.name.lower() in names for names in SPLIT_FOLDER_NAMES.values())


def _subfolders(folder: Path) -> list[Path]:
    """Visible sub-folders, sorted; the ones archivers and file browsers add are left out."""
    with os.scandir(folder) as entries:
        return sorted(Path(entry.path) for entry in entries if entry.is_dir() and not _is_hidden(entry.name))


def _is_hidden(name: str) -> bool:
    return name.startswith(".") or name == "__MACOSX"


def _image_files_in(folder: Path) -> bool:
    with os.scandir(folder) as entries:
        return any(entry.is_file() and _has_image_extension(entry.name) for entry in entries)


def _has_image_extension(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


# ---------------------------------------------------------------------------- scanning


@dataclass
class ImageFile:
    path: str
    label: int
    size: int
    # Why the file cannot be an intact image, or None when it looks whole.
    problem: str | None


@dataclass
class SplitScan:
    folder: Path
    class_names: list[str]
    files: list[ImageFile] = field(default_factory=list)

    @property
    def kept(self) -> list[ImageFile]:
        return [file for file in self.files if file.problem is None]

    @property
    def skipped(self) -> list[ImageFile]:
        return [file for file in self.files if file.problem is not None]

    def check_every_class_readable(self) -> None:
        kept_counts = np.bincount([file.label for file in self.kept], minlength=len(self.class_names))
        for label, count in enumerate(kept_counts):
            if count == 0:
                class_folder = self.folder / self.class_names[label]
                example = next(file for file in self.skipped if file.label == label)
                raise UserError(
                    f"class folder {class_folder} has no readable image: all its files failed the integrity check "
                    f"(e.g. {os.path.basename(example.path)}: {example.problem}); replace them or remove the folder"
                )

    def to_split(self) -> FileSplit:
        kept = self.kept
        return FileSplit([file.path for file in kept], np.array([file.label for file in kept], dtype=np.int64))


def _scan_split(folder: Path) -> SplitScan:
    """Lists each class folder's image files (recursively, sorted) and checks them all."""
    class_folders = _subfolders(folder)
    if not class_folders:
        raise UserError(
            f"{folder} has no class folders: put each class's images in a sub-folder named after the class, e.g. "
            f"{folder / 'cat' / '0001.jpg'}"
        )
    paths, labels = [], []
    for label, class_folder in enumerate(class_folders):
        class_paths = sorted(_image_paths(class_folder))
        if not class_paths:
            extensions = ", ".join(sorted(IMAGE_EXTENSIONS))
            raise UserError(
                f"class folder {class_folder} has no images ({extensions}): add images or remove the folder"
            )
        paths += class_paths
        labels += [label] * len(class_paths)
    checks = check_image_files(paths)
    files = [
        ImageFile(path, label, size, problem)
        for path, label, (size, problem) in zip(paths, labels, checks, strict=True)
    ]
    return SplitScan(folder, [class_folder.name for class_folder in class_folders], files)


def _image_paths(folder: Path) -> list[str]:
    """Image files under ``folder`` at any depth; other files (.txt, .DS_Store, ...) are ignored."""
    paths = []
    pending = [str(folder)]
    while pending:
        with os.scandir(pending.pop()) as entries:
            for entry in entries:
                if _is_hidden(entry.name):
                    continue
                if entry.is_dir():
                    pending.append(entry.path)
                elif _has_image_extension(entry.name) and entry.is_file():
                    paths.append(entry.path)
    return paths


def check_image_files(paths: list[str]) -> list[tuple[int, str | None]]:
    """(size, problem) of each file, checked by a few threads: the work is waiting on the disk."""
    chunk_size = 512
    chunks = [paths[start : start + chunk_size] for start in range(0, len(paths), chunk_size)]
    with ThreadPoolExecutor(max_workers=min(8, len(chunks)) or 1) as pool:
        return [result for chunk in pool.map(_check_chunk, chunks) for result in chunk]


def _check_chunk(paths: list[str]) -> list[tuple[int, str | None]]:
    return [check_image_file(path) for path in paths]


def check_image_file(path: str) -> tuple[int, str | None]:
    """(size, problem): problem is None when the file starts and ends like a whole JPEG, PNG, GIF or BMP."""
    try:
        with open(path, "rb") as file:
            size = os.fstat(file.fileno()).st_size
            head = file.read(HEAD_SIZE)
            if size > HEAD_SIZE + TAIL_SIZE:
                file.seek(size - TAIL_SIZE)
                tail = file.read()
            else:
                tail = head + file.read()
    except OSError as error:
        return 0, f"cannot be read ({error.strerror})"
    if size == 0:
        return size, "empty file"
    # Zero padding after the end (some writers and copy tools add it) does not hurt decoding.
    tail = tail.rstrip(b"\0")
    if head.startswith(b"\xff\xd8\xff"):
        return size, None if tail.endswith(b"\xff\xd9") else "truncated JPEG (no end-of-image marker)"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return size, None if tail.endswith(b"IEND\xaeB`\x82") else "truncated PNG (no IEND chunk)"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return size, None if tail.endswith(b";") else "truncated GIF (no trailer byte)"
    if head.startswith(b"BM") and len(head) >= 6:
        declared_size = int.from_bytes(head[2:6], "little")
        return size, None if size >= declared_size else f"truncated BMP ({size} of {declared_size} bytes)"
    return size, "not a JPEG, PNG, GIF or BMP image (unknown signature)"


def _check_scans(root: Path, split_folders: dict[str, Path], scans: dict[str, SplitScan]) -> None:
    """Refuses a tree with nothing readable, splits whose classes differ, or a class without images."""
    files = [file for scan in scans.values() for file in scan.files]
    if not any(file.problem is None for file in files):
        example = files[0]
        raise UserError(
            f"no readable image in {root}: all {len(files)} image files failed the integrity check "
            f"(e.g. {_relative(example.path, root)}: {example.problem}); replace them with intact copies"
        )
    class_names = scans["train"].class_names
    for split, scan in scans.items():
        if scan.class_names != class_names:
            raise UserError(
                _class_mismatch(split_folders[split], scan.class_names, split_folders["train"], class_names)
            )
    for scan in scans.values():
        scan.check_every_class_readable()
    if len(class_names) < 2:
        raise UserError(
            f"{split_folders['train']} has only the class folder {class_names[0]!r}: a classifier needs two or more "
            "classes, one folder each"
        )


def _class_mismatch(folder: Path, class_names: list[str], train_folder: Path, train_class_names: list[str]) -> str:
    missing = sorted(set(train_class_names) - set(class_names))
    extra = sorted(set(class_names) - set(train_class_names))
    differences = "; ".join(
        part for part in (f"missing {missing}" if missing else "", f"extra {extra}" if extra else "") if part
    )
    return (
        f"the class folders of {folder} differ from those of {train_folder} ({differences}): every split needs the "
        "same class folders"
    )


def _warn_skipped(root: Path, skipped: list[ImageFile]) -> None:
    named = [f"{_relative(file.path, root)} ({file.problem})" for file in skipped[:NAMED_IN_WARNING]]
    more = f" and {len(skipped) - NAMED_IN_WARNING} more" if len(skipped) > NAMED_IN_WARNING else ""
    print(
        f"warning: skipped {len(skipped)} unreadable image file(s) in {root}: {', '.join(named)}{more}", file=sys.stderr
    )


# ---------------------------------------------------------------------------- archives


def extract_archive(archive: Path) -> Path:
    """Extracts ``archive`` once into the cache and returns the folder; later calls reuse it.

    The folder is named after the archive's absolute path, size and modification time, so
    a changed archive is extracted afresh. Extraction goes to a hidden sibling that is
    renamed into place at the end: an interrupted extraction never leaves a half-filled
    folder that a later run would take as complete.
    """
    if not archive.name.lower().endswith(ARCHIVE_SUFFIXES):
        raise UserError(
            f"{archive} is a file but not a .tar, .tar.gz or .tgz archive: folder:PATH needs a folder of class "
            "folders or an archive of one"
        )
    target = _extraction_folder(archive)
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent))
    try:
        with tarfile.open(archive, "r:*") as tar:
            tar.extractall(staging, members=_safe_members(tar, archive), filter="data")
        _move_into_place(staging, target)
    except BaseException as error:
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(error, tarfile.FilterError):
            raise UserError(
                f"{archive} member {error.tarinfo.name!r} cannot be extracted safely ({first_line(error)}): "
                "refusing the archive; make it again with plain files only"
            ) from error
        if isinstance(error, (tarfile.TarError, EOFError, zlib.error, OSError)):
            raise UserError(
                f"cannot extract {archive} ({first_line(error)}): the archive is damaged or incomplete; make or "
                "download it again"
            ) from error
        raise
    return target


def cache_dir() -> Path:
    return Path(os.environ.get("KCV_CACHE_DIR") or Path.home() / ".cache" / "kerascv_app").expanduser()


def _extraction_folder(archive: Path) -> Path:
    status = archive.stat()
    identity = f"{archive.resolve()}\0{status.st_size}\0{status.st_mtime_ns}"
    short_hash = hashlib.sha256(identity.encode()).hexdigest()[:12]
    stem = next(archive.name[: -len(suffix)] for suffix in ARCHIVE_SUFFIXES if archive.name.lower().endswith(suffix))
    return cache_dir() / "extracted" / f"{stem}-{short_hash}"


def _move_into_place(staging: Path, target: Path) -> None:
    try:
        os.rename(staging, target)
    except OSError:
        # Another process extracted the same archive meanwhile: keep its copy.
        if not target.is_dir():
            raise
        shutil.rmtree(staging, ignore_errors=True)


def _safe_members(tar: tarfile.TarFile, archive: Path):
    """The archive's members, refusing any that would land outside the extraction folder.

    tarfile's "data" filter refuses these too; checking first names the member in a
    one-line error and refuses the archive before anything of it is trusted.
    """
    for member in tar:
        problem = _unsafe(member)
        if problem:
            raise UserError(
                f"{archive} member {member.name!r} {problem}: refusing to extract the archive; make it again with "
                "relative paths only"
            )
        yield member


def _unsafe(member: tarfile.TarInfo) -> str | None:
    name = PurePosixPath(member.name)
    if name.is_absolute():
        return "has an absolute path"
    if ".." in name.parts:
        return "climbs out of the extraction folder (..)"
    if member.issym() or member.islnk():
        # A symbolic link is relative to its own folder, a hard link to the archive's root.
        base = posixpath.dirname(member.name) if member.issym() else ""
        link_target = posixpath.normpath(posixpath.join(base, member.linkname))
        if member.linkname.startswith("/") or link_target == ".." or link_target.startswith("../"):
            return f"is a link to {member.linkname!r}, outside the extraction folder"
    return None
