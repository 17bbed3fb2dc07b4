"""Ensemble members: finished runs that saw the same data, classes and splits.

Members are compared with the first one (or, when none is named, with the newest
finished run in the runs folder). Combining runs whose test images differ, or whose
class indices mean different things, would give numbers that look right and are not,
so any difference is refused with one line naming the member and what differs.
"""

from __future__ import annotations

import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kerascv_app.errors import UserError
from kerascv_app.model_dir import ModelDirectory, open_model_directory
from kerascv_app.runs import RunDirectory, find_runs

PREDICTION_FILES = {"validation": "val.npz", "test": "test.npz"}
#: The data settings that decide which images are in the validation and test splits
#: (data.max_train caps training images only, after the validation split is held out).
SPLIT_SETTINGS = ("source", "split_seed", "val_fraction", "test_fraction", "max_eval", "labelled_per_class", "classes")


@dataclass(frozen=True)
class Member:
    """A finished run, with the records that say what it was trained and tested on."""

    run: RunDirectory
    model_directory: ModelDirectory
    config: dict
    environment: dict
    splits: dict

    @property
    def path(self) -> Path:
        return self.run.path

    @property
    def name(self) -> str:
        return self.run.path.name

    @property
    def class_names(self) -> list[str]:
        return list(self.model_directory.class_names)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (*self.model_directory.image_size, self.model_directory.channels)

    def saved_predictions(self, split_name: str) -> tuple[np.ndarray, np.ndarray] | None:
        """(probabilities, labels) saved by kcv fit, or None when the split is empty."""
        path = self.run.predictions_dir / PREDICTION_FILES[split_name]
        if not path.is_file():
            if split_name == "test" or self.splits.get("validation", 0):
                raise UserError(
                    f"{path} is missing: {self.path} is incomplete; evaluate it again or train it again with kcv fit"
                )
            return None
        try:
            with np.load(path) as saved:
                probabilities, labels = saved["probabilities"].astype(np.float64), saved["labels"].astype(np.int64)
        # A truncated .npz is a broken zip file (BadZipFile, or EOFError / zlib.error
        # inside a member); garbage is refused as a pickle (ValueError): all one answer.
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error) as error:
            raise UserError(
                f"{path} is corrupt or truncated ({type(error).__name__}: {_first_line(error)}): leave {self.path} "
                "out of the ensemble, or train it again with kcv fit (it writes the predictions)"
            ) from error
        if probabilities.ndim != 2 or labels.shape != (len(probabilities),):
            raise UserError(
                f"{path} holds probabilities of shape {probabilities.shape} and labels of shape {labels.shape}, not "
                f"(images, classes) and (images,): leave {self.path} out, or train it again with kcv fit"
            )
        return probabilities, labels

    def record(self) -> dict:
        """What ensemble.json says about this member."""
        return {
            "name": self.name,
            "path": str(self.path.resolve()),
            "backend": self.model_directory.backend,
            "precision": self.model_directory.precision,
            "recipe": self.config.get("name"),
            "model": self.config.get("model", {}).get("name"),
            "seed": self.config.get("train", {}).get("seed"),
        }


def open_member(path: str | Path) -> Member:
    """Opens a finished run directory as a member, or refuses it in one line."""
    run = RunDirectory.open(path)
    status = run.status()
    if status != "finished":
        raise UserError(
            f"{run.path} is {status}, not finished: only finished runs can be ensemble members (see kcv runs)"
        )
    try:
        records = {name: run.read_json(f"{name}.json") for name in ("config", "environment", "splits")}
    except ValueError as error:
        raise UserError(
            f"a record in {run.path} is corrupt ({error}): this run cannot be an ensemble member"
        ) from error
    return Member(run=run, model_directory=open_model_directory(run.path), **records)


def difference(member: Member, reference: Member) -> str | None:
    """What makes ``member`` unfit to be combined with ``reference``, or None."""
    if member.class_names != reference.class_names:
        return f"has classes {member.class_names} instead of {reference.class_names}"
    fingerprint, reference_fingerprint = (
        member.environment.get("data_fingerprint"),
        reference.environment.get("data_fingerprint"),
    )
    if fingerprint != reference_fingerprint:
        return (
            f"was trained on other data (data fingerprint {fingerprint} instead of "
            f"{reference_fingerprint}{_settings_text(member, reference, ('source',))})"
        )
    for split_name in ("validation", "test"):
        key = f"{split_name}_fingerprint"
        if member.splits.get(key) != reference.splits.get(key):
            return (
                f"has another {split_name} split ({split_name} fingerprint {member.splits.get(key)} instead of "
                f"{reference.splits.get(key)}{_settings_text(member, reference, SPLIT_SETTINGS)}): splits follow "
                "data.split_seed and the data settings, which must be equal (the model, augmentation and training "
                "may differ)"
            )
    if member.input_shape != reference.input_shape:
        return (
            f"takes {_shape_text(member.input_shape)} images instead of {_shape_text(reference.input_shape)}: one "
            "ensemble model has one input"
        )
    return None


def check_members(members: list[Member]) -> None:
    """At least two distinct members, each compatible with the first."""
    if len(members) < 2:
        raise UserError(f"an ensemble needs at least 2 members, got {len(members)}: name two or more finished runs")
    seen: dict[Path, Member] = {}
    for member in members:
        resolved = member.path.resolve()
        if resolved in seen:
            raise UserError(f"{member.path} is named twice: give each member once")
        seen[resolved] = member
    reference = members[0]
    for member in members[1:]:
        problem = difference(member, reference)
        if problem:
            raise UserError(f"member {member.path} differs from {reference.path}: it {problem}")


def members_from_paths(paths: list[Path]) -> list[Member]:
    members = [open_member(path) for path in paths]
    check_members(members)
    return members


def members_from_runs_folder(runs_dir: str | Path) -> tuple[list[Member], list[tuple[Path, str]]]:
    """Every finished run that can join the newest finished run, and the others with why not.

    Unfinished and unreadable runs are passed over silently: ``kcv runs`` lists them.
    """
    candidates = []
    for run in find_runs(runs_dir):
        try:
            candidates.append(open_member(run.path))
        except (UserError, ValueError):
            continue
    if not candidates:
        raise UserError(
            f"{runs_dir} holds no finished run: train members with kcv fit --runs-dir {runs_dir}, or name run "
            "directories"
        )
    # find_runs lists oldest first.
    newest = candidates[-1]
    members, skipped = [], []
    for candidate in candidates:
        problem = difference(candidate, newest)
        if problem:
            skipped.append((candidate.path, problem))
        else:
            members.append(candidate)
    if len(members) < 2:
        raise UserError(
            f"only 1 finished run in {runs_dir} shares the data, classes and splits of the newest, {newest.path}: "
            "an ensemble needs at least 2 (train more with the same data settings, e.g. other --seed values)"
        )
    check_members(members)
    return members, skipped


def differing_settings(member: Member, reference: Member, keys: tuple[str, ...]) -> list[str]:
    """'data.KEY is A, not B' for each data setting in ``keys`` that differs."""
    data, reference_data = member.config.get("data", {}), reference.config.get("data", {})
    return [
        f"data.{key} is {data.get(key)!r}, not {reference_data.get(key)!r}"
        for key in keys
        if data.get(key) != reference_data.get(key)
    ]


def _settings_text(member: Member, reference: Member, keys: tuple[str, ...]) -> str:
    differences = differing_settings(member, reference, keys)
    return f"; its {', '.join(differences)}" if differences else ""


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [""])[0]


def _shape_text(shape: tuple[int, int, int]) -> str:
    height, width, channels = shape
    return f"{height}x{width}x{channels}"
