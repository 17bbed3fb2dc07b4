"""Splits as uint8 arrays, decoded without TensorFlow: the fast loop's data (``train.loop = "fast"``).

Image files are decoded with Pillow, in parallel processes for large splits, converted to
the recipe's channels and resized (bilinear, antialiased) where their size differs, like
the tf.data pipeline does (a pixel may differ by a level: another JPEG decoder). The
arrays are cached as ``.npz`` in ``$KCV_CACHE_DIR/arrays`` (default
``~/.cache/kerascv_app/arrays``), keyed by the data's fingerprint, the split's files (path,
size, modification time) and the size and channels asked for, so that the second run of
a recipe reads 50,000 CIFAR-10 images in a fraction of a second.

Nothing here imports TensorFlow or Keras.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kerascv_app.data.base import ArraySplit, FileSplit, ImageSplit
from kerascv_app.errors import UserError

# Changes whenever decoding changes, so that old cache files are not reused.
CACHE_FORMAT_VERSION = 2
# Files per task for the decoding processes; below two tasks' worth, one process decodes.
FILES_PER_TASK = 2048


@dataclass(frozen=True)
class ArrayData:
    """One split's images (N, height, width, channels) uint8 and labels (N,) int64."""

    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


class ArrayBatches:
    """Batches of (uint8 images, one-hot float32 labels) in order: what ``evaluation_dataset``
    returns for fast-loop runs, iterated like a tf.data dataset by ``as_numpy_iterator``."""

    def __init__(self, data: ArrayData, num_classes: int, batch_size: int):
        self.data = data
        self.num_classes = num_classes
        self.batch_size = batch_size

    def as_numpy_iterator(self):
        identity = np.eye(self.num_classes, dtype=np.float32)
        for start in range(0, len(self.data), self.batch_size):
            stop = start + self.batch_size
            yield self.data.images[start:stop], identity[self.data.labels[start:stop]]


# Arrays already loaded by this process (fit decodes once, then evaluates from memory).
_loaded: dict[str, ArrayData] = {}


def split_arrays(
    split: ImageSplit, image_size: tuple[int, int], channels: int, data_fingerprint: str = ""
) -> ArrayData:
    """The split's images as one uint8 array at ``image_size`` with ``channels``, and its labels."""
    key = _cache_key(split, image_size, channels, data_fingerprint)
    if key in _loaded:
        return _loaded[key]
    if isinstance(split, ArraySplit):
        images = (
            np.stack([_fit_array(image, image_size, channels) for image in split.images])
            if len(split)
            else _empty(image_size, channels)
        )
        data = ArrayData(images, split.labels.copy())
    elif isinstance(split, FileSplit):
        images, decoded = _cached_decode(split.paths, key, image_size, channels)
        # Like the tf.data pipeline, a file that passed the start-up check but does not decode
        # is left out and named at the end of the run (report_undecodable_files).
        split.mark_decoded(np.flatnonzero(decoded))
        split.mark_failed(np.flatnonzero(~decoded))
        data = ArrayData(images[decoded], split.labels[decoded].copy())
    else:
        raise UserError(
            f"train.loop = 'fast' cannot read a {type(split).__name__} (e.g. a tfds: source) without TensorFlow: "
            "use a folder:, cifar10, idx: or digits source"
        )
    _loaded[key] = data
    return data


def array_cache_dir() -> Path:
    from kerascv_app.data.folder import cache_dir

    return cache_dir() / "arrays"


def _cache_key(split: ImageSplit, image_size, channels: int, data_fingerprint: str) -> str:
    digest = hashlib.sha256()
    digest.update(
        f"{CACHE_FORMAT_VERSION}\0{tuple(image_size)}\0{channels}\0{data_fingerprint}\0{type(split).__name__}\0".encode()
    )
    if isinstance(split, FileSplit):
        for path in split.paths:
            status = os.stat(path)
            digest.update(f"{path}\0{status.st_size}\0{status.st_mtime_ns}\0".encode())
    else:
        digest.update(np.ascontiguousarray(split.ids).tobytes())
        if isinstance(split, ArraySplit):
            digest.update(hashlib.sha256(np.ascontiguousarray(split.images).tobytes()).digest())
    return digest.hexdigest()[:24]


def _cached_decode(paths: np.ndarray, key: str, image_size, channels: int) -> tuple[np.ndarray, np.ndarray]:
    """Every file's image (zeros where it did not decode) and whether it decoded."""
    cache_file = array_cache_dir() / f"{key}.npz"
    if cache_file.is_file():
        try:
            with np.load(cache_file) as stored:
                return stored["images"], stored["decoded"]
        except (OSError, ValueError, KeyError, EOFError):
            pass  # A damaged cache file is decoded again and replaced.
    images, decoded = decode_files(list(paths), image_size, channels)
    _write_atomically(cache_file, images, decoded)
    return images, decoded


def _write_atomically(path: Path, images: np.ndarray, decoded: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".npz.partial", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            np.savez(file, images=images, decoded=decoded)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def decode_files(paths: list[str], image_size, channels: int) -> tuple[np.ndarray, np.ndarray]:
    """Decodes image files to one (N, height, width, channels) uint8 array (zeros for a file
    that does not decode) and an (N,) bool array of those that did, in parallel processes
    when there are many (decoding a 32x32 JPEG is mostly Python overhead, which threads
    would serialise)."""
    if not paths:
        return _empty(image_size, channels), np.zeros(0, dtype=bool)
    chunks = [paths[start : start + FILES_PER_TASK] for start in range(0, len(paths), FILES_PER_TASK)]
    workers = min(len(chunks), os.cpu_count() or 1)
    if workers < 2:
        parts = [_decode_chunk(chunk, tuple(image_size), channels) for chunk in chunks]
    else:
        # "spawn": the parent may already run JAX or torch threads, which fork would copy half-alive.
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            parts = list(pool.map(_decode_chunk, chunks, [tuple(image_size)] * len(chunks), [channels] * len(chunks)))
    return np.concatenate([images for images, _ in parts]), np.concatenate([decoded for _, decoded in parts])


def _decode_chunk(paths: list[str], image_size: tuple[int, int], channels: int) -> tuple[np.ndarray, np.ndarray]:
    images = np.zeros((len(paths), *image_size, channels), dtype=np.uint8)
    decoded = np.ones(len(paths), dtype=bool)
    for index, path in enumerate(paths):
        try:
            images[index] = decode_file(path, image_size, channels)
        except UserError:
            decoded[index] = False
    return images, decoded


def decode_file(path: str, image_size: tuple[int, int], channels: int) -> np.ndarray:
    """One image file as (height, width, channels) uint8: first frame, RGB or grayscale."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.seek(0)
            image = image.convert("RGB" if channels == 3 else "L")
            if image.size != (image_size[1], image_size[0]):
                image = image.resize((image_size[1], image_size[0]), Image.BILINEAR, reducing_gap=None)
            pixels = np.asarray(image, dtype=np.uint8)
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as error:
        raise UserError(
            f"cannot decode {path} ({type(error).__name__}: {error}): replace or remove the file"
        ) from error
    return pixels.reshape(*image_size, channels)


def _fit_array(image: np.ndarray, image_size, channels: int) -> np.ndarray:
    """An in-memory uint8 image converted to ``channels`` and resized to ``image_size`` if needed."""
    from PIL import Image

    if image.shape[-1] != channels:
        image = (
            np.repeat(image, 3, axis=-1)
            if channels == 3
            else np.asarray(Image.fromarray(image).convert("L"))[..., None]
        )
    if image.shape[:2] == tuple(image_size):
        return image
    mode_image = Image.fromarray(image[..., 0] if channels == 1 else image)
    resized = np.asarray(mode_image.resize((image_size[1], image_size[0]), Image.BILINEAR), dtype=np.uint8)
    return resized.reshape(*image_size, channels)


def _empty(image_size, channels: int) -> np.ndarray:
    return np.zeros((0, *image_size, channels), dtype=np.uint8)
