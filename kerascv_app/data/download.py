"""Downloads for the sources that have an online home (Fashion-MNIST, CIFAR), and Keras's cache.

keras is imported only inside :func:`download`: importing it fixes the backend, which the
CLI chooses first.
"""

from __future__ import annotations

import os
from pathlib import Path

from kerascv_app.errors import UserError


def keras_datasets_dir() -> Path:
    """Where ``keras.utils.get_file`` keeps datasets: ``$KERAS_HOME/datasets`` or ``~/.keras/datasets``."""
    # Worked out here rather than asked of keras, so that looking does not import keras.
    keras_home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return Path(keras_home) / "datasets"


def download(url: str, directory: Path, remedy: str) -> Path:
    """Downloads ``url`` into ``directory`` (kept there for next time) and returns the file's path.

    ``remedy`` finishes the one-line error shown when the download fails, e.g. offline:
    it tells where to put the files by hand.
    """
    import keras

    file_name = url.rsplit("/", 1)[-1]
    try:
        # keras removes a partial file when the download fails, so nothing half-written stays.
        downloaded = keras.utils.get_file(file_name, origin=url, cache_dir=str(directory), cache_subdir="")
    except Exception as error:  # get_file raises a bare Exception for network failures
        raise UserError(f"could not download {url} ({first_line(error)}): {remedy}") from error
    return Path(downloaded)


def first_line(error: BaseException) -> str:
    """An exception's message cut to one line, for a UserError that quotes it."""
    text = str(error).strip()
    # Some messages (tarfile's, tfds's) announce a list on the following lines.
    return text.splitlines()[0].rstrip(":") if text else type(error).__name__
