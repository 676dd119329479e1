"""Where a run keeps its checkpoints, and what a model argument names.

A run folder holds ``checkpoints/``: ``epoch_NNN.ckpt`` (the best by val mAP), ``best.ckpt``
(the same file under a fixed name) and ``last.ckpt`` (refreshed every epoch). Every command
that takes a model reads its argument with :func:`resolve_model_path`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from tinyssd.errors import CheckpointError, renamed_key_value

__all__ = [
    "BEST_CHECKPOINT",
    "CHECKPOINT_DIR",
    "LAST_CHECKPOINT",
    "NEWEST_RUN_NAMES",
    "best_checkpoint",
    "checkpoints_in",
    "describe_folder",
    "last_checkpoint",
    "model_argument",
    "resolve_model_path",
    "shipped_model",
    "shipped_models",
]


# A run folder keeps its checkpoints in checkpoints/: the best by val mAP and last.ckpt.
CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT = "last.ckpt"
# The best checkpoint by the monitored metric, under a name that does not change (the same file
# as the best epoch's ``epoch_NNN.ckpt``).
BEST_CHECKPOINT = "best.ckpt"
# What a model argument may name besides a file or a run folder.
NEWEST_RUN_NAMES = ("last", "best")
# Trained models that ship inside the package (src/tinyssd/models/NAME.ckpt), usable by name.
SHIPPED_FOLDER = Path(__file__).resolve().parents[1] / "models"


def last_checkpoint(run_dir: str | os.PathLike) -> Path:
    """``<run>/checkpoints/last.ckpt``."""
    return Path(run_dir) / CHECKPOINT_DIR / LAST_CHECKPOINT


def best_checkpoint(run_dir: Path) -> Path | None:
    """The run's best checkpoint (by its monitored metric): ``best.ckpt``; in runs older than it, the one
    its last state names, else its newest epoch file."""
    folder = run_dir / CHECKPOINT_DIR
    if (folder / BEST_CHECKPOINT).is_file():
        return folder / BEST_CHECKPOINT
    try:
        state = torch.load(last_checkpoint(run_dir), map_location="cpu", weights_only=True).get("callbacks", {})
        named = [Path(str(v.get("best_model_path"))) for v in state.values() if isinstance(v, dict)]
        named = [p for p in named if p.name and p.parent.resolve() == folder.resolve() and p.is_file()]
    except Exception:  # no or unreadable last.ckpt: the files decide
        named = []
    if named:
        return folder / named[0].name
    epochs = sorted(
        (p for p in folder.glob("*.ckpt") if p.name not in (LAST_CHECKPOINT, BEST_CHECKPOINT)),
        key=lambda p: p.stat().st_mtime,
    )
    return epochs[-1] if epochs else None


def shipped_models() -> list[str]:
    """The names of the trained models in the package (``banana``: experiment=best on the banana set)."""
    return sorted(p.stem for p in SHIPPED_FOLDER.glob("*.ckpt"))


def shipped_model(spec: str | os.PathLike) -> Path | None:
    """The package's file for a shipped model's name (``banana``), unless a file or folder of that name exists."""
    text = str(spec)
    if Path(text).exists() or text not in shipped_models():
        return None
    return SHIPPED_FOLDER / f"{text}.ckpt"


# The key eval, predict and export read their model from, and its old spelling (still read, with a note).
MODEL_KEY = "model"
OLD_MODEL_KEY = "ckpt_path"


def model_argument(cfg: Mapping[str, Any], command: str, default: str | None = None) -> tuple[str, str]:
    """The model a command was given: ``(key, value)`` from ``model=`` or, in its old spelling,
    ``ckpt_path=`` (logged with the new name); ``default`` when neither is given."""
    given = renamed_key_value(cfg, MODEL_KEY, OLD_MODEL_KEY, command, "the model", CheckpointError)
    if given:
        key, value = given
        if not isinstance(value, str | os.PathLike):
            raise CheckpointError(f"{key} must name a model (a file, a run folder, last, best, banana), got {value!r}.")
        return key, str(value)
    if default is not None:
        return MODEL_KEY, default
    raise CheckpointError(
        f"{command} needs a model: give model=PATH (a .ckpt or .onnx file), a run folder, model=last, model=best, "
        f"or a shipped model by name ({', '.join(shipped_models()) or 'none in this install'})."
    )


def resolve_model_path(
    spec: str | os.PathLike, runs_dir: Path, key: str = "ckpt_path", exclude: Path | None = None
) -> Path:
    """What a model argument names, as a file: a ``.ckpt``/``.onnx`` file; a run folder (its ``last.ckpt``);
    ``last`` or ``best`` (that checkpoint of the newest run under ``runs_dir``, other than ``exclude``, or of
    the run folder the command runs in);
    or a model shipped in the package by its name (``banana``).

    train.py (``ckpt_path``), eval.py, predict.py and export.py all resolve their model this way.
    """
    text = str(spec)
    shipped = shipped_model(text)
    if shipped is not None:
        return shipped
    if text in NEWEST_RUN_NAMES:
        runs = [p.parent.parent for p in runs_dir.glob(f"*/{CHECKPOINT_DIR}/{LAST_CHECKPOINT}")]
        runs = [r for r in runs if exclude is None or r.resolve() != exclude.resolve()]
        if not runs and last_checkpoint(Path.cwd()).is_file():  # run from inside a run folder: that run
            runs = [Path.cwd()]
        if not runs:
            raise CheckpointError(
                f"{key}={text} found no run with {CHECKPOINT_DIR}/{LAST_CHECKPOINT} under {runs_dir}."
            )
        newest = max(runs, key=lambda r: last_checkpoint(r).stat().st_mtime)
        if text == "last":
            return last_checkpoint(newest)
        best = best_checkpoint(newest)
        if best is None:
            raise CheckpointError(f"{key}=best: the newest run {newest} has no best checkpoint (was it validated?).")
        return best
    path = Path(text).expanduser()
    if path.is_dir():
        if not last_checkpoint(path).is_file():
            raise CheckpointError(
                describe_folder(path)
                if checkpoints_in(path)
                else f"{key}={path} is a folder without {CHECKPOINT_DIR}/{LAST_CHECKPOINT}; give a .ckpt file."
            )
        return last_checkpoint(path)
    return path


def checkpoints_in(folder: Path) -> list[Path]:
    """The ``.ckpt`` files of a folder or of its ``checkpoints/`` (never a deep walk: it may be ``/``)."""
    return sorted([*folder.glob("*.ckpt"), *(folder / CHECKPOINT_DIR).glob("*.ckpt")])


def describe_folder(path: Path) -> str:
    """A folder given where a checkpoint file was expected: what to give instead."""
    found = checkpoints_in(path)[:5]
    if not found:
        return f"{path} is a folder with no .ckpt file in it; give the path of a .ckpt file."
    return f"{path} is a folder; give one of its checkpoint files, e.g. {', '.join(str(p) for p in found)}."
