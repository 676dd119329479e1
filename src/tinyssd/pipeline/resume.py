"""Resuming: what ``ckpt_path`` means (``last``, a run folder, a ``.ckpt``) and where the run goes on.

A run continues in its own folder only from that run's newest state; an older checkpoint
starts a new run folder, so later checkpoints, ``metrics.csv`` rows and events are kept.
Files are loaded through :func:`tinyssd.model.checkpoints.load_checkpoint` (the one ``torch.load``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from tinyssd.errors import CheckpointError, shown
from tinyssd.model.checkpoints import load_checkpoint
from tinyssd.model.run_files import CHECKPOINT_DIR, last_checkpoint, resolve_model_path

__all__ = ["ResumePlan", "check_callback_paths", "newest_intact_checkpoint", "resolve_resume"]


def newest_intact_checkpoint(folder: Path, exclude: Path | None = None) -> Path | None:
    """The newest ``*.ckpt`` in ``folder`` that loads as a tinyssd checkpoint (by training step)."""
    best: tuple[int, float, Path] | None = None
    for candidate in folder.glob("*.ckpt"):
        if exclude is not None and candidate.resolve() == exclude.resolve():
            continue
        try:
            ckpt = load_checkpoint(candidate)
        except CheckpointError:
            continue
        key = (int(ckpt.get("global_step", 0)), candidate.stat().st_mtime, candidate)
        if best is None or key[:2] > best[:2]:
            best = key
    return best[2] if best else None


class ResumePlan:
    """What ``ckpt_path`` resolves to: the file, its loaded contents, and the run folder to continue in.

    ``run`` is ``None`` when training continues in a new run folder (``note`` says why).
    """

    def __init__(self, path: Path, ckpt: dict[str, Any], run: Path | None, note: str) -> None:
        self.path, self.ckpt, self.run, self.note = path, ckpt, run, note


def _load_for_resume(path: Path) -> dict[str, Any]:
    try:
        return load_checkpoint(path)
    except CheckpointError as err:
        if path.is_file() and path.parent.name == CHECKPOINT_DIR:
            intact = newest_intact_checkpoint(path.parent, exclude=path)
            hint = (
                f" The newest intact checkpoint of that run is {intact}: resume with ckpt_path={intact} "
                "(training then continues in a new run folder)."
                if intact
                else " That run has no other intact checkpoint; start a new run."
            )
            raise CheckpointError(f"{err}{hint}") from err
        raise


# ModelCheckpoint state entries that name files it may later delete.
_CALLBACK_PATH_KEYS = ("best_model_path", "kth_best_model_path", "last_model_path")


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def check_callback_paths(ckpt: dict[str, Any], path: Path, runs: tuple[Path, ...] = ()) -> None:
    """Refuse callback state that could make Lightning delete a file it did not write.

    On resume, ModelCheckpoint restores the paths of earlier checkpoints and later deletes the
    ones it replaces when they lie under its folder by a plain prefix test, which
    ``<folder>/../../x`` passes, and so does ``<folder>/link/x`` where ``link`` is a symbolic
    link to another folder; a remote URL would go to fsspec. So every path the state names is
    resolved: one that lies in a run folder (``runs``: the checkpoint's own and the one training
    continues in) must resolve inside that folder, and one that passes through a link must
    resolve inside one of them. Genuine paths (also those of a run folder moved elsewhere, which
    Lightning then leaves alone) pass.
    """
    own = path.parent.parent if path.parent.name == CHECKPOINT_DIR else path.parent
    folders = [(Path(os.path.abspath(f)), f.resolve()) for f in (own, *runs)]
    for name, state in (ckpt.get("callbacks") or {}).items():
        if not isinstance(state, dict):
            continue
        best_k = state.get("best_k_models")
        named = [state.get(k) for k in (*_CALLBACK_PATH_KEYS, "dirpath")] + list(
            best_k if isinstance(best_k, dict) else []
        )
        for entry in named:
            if not entry:
                continue
            text = str(entry)
            unsafe = "://" in text or ".." in Path(text).parts or "\0" in text
            if not unsafe:
                lexical, real = Path(os.path.abspath(text)), Path(text).resolve()
                escapes = any(_inside(lexical, folder) and not _inside(real, resolved) for folder, resolved in folders)
                through_link = lexical != real and not any(_inside(real, resolved) for _, resolved in folders)
                unsafe = escapes or through_link
            if unsafe:
                raise CheckpointError(
                    f"{path} was refused: its {name} state names {shown(text)}, which resolves outside the run "
                    f"({'a URL or a .. path' if '://' in text or '..' in text else 'through a symbolic link'}); "
                    "resuming would let Lightning replace or delete a file outside the run. Use a checkpoint written "
                    "by train.py, in a run folder without links to other folders."
                )


def resolve_resume(ckpt_path: str, runs_dir: Path, current_run: Path) -> ResumePlan:
    """Resolve ``ckpt_path`` (``last``, a run folder, or a ``.ckpt``) and decide where the run goes on.

    Training continues in the checkpoint's own run folder only when the checkpoint is that
    run's newest state; resuming from an older checkpoint of a run starts a new run folder, so
    the newer progress (``last.ckpt``, ``metrics.csv`` rows, events) is never overwritten.
    """
    path = resolve_model_path(ckpt_path, runs_dir, "ckpt_path", exclude=current_run)
    ckpt = _load_for_resume(path)
    check_callback_paths(ckpt, path, (current_run,))
    run = (
        path.parent.parent
        if path.parent.name == CHECKPOINT_DIR and (path.parent.parent / "config.yaml").exists()
        else None
    )
    if run is None:
        return ResumePlan(
            path, ckpt, None, f"{path} is not inside a run folder; training continues in a new run folder"
        )
    last = last_checkpoint(run)
    if last.resolve() == path.resolve():
        return ResumePlan(path, ckpt, run, f"resuming {run} from {path}")
    try:
        newest_step = int(load_checkpoint(last).get("global_step", -1)) if last.is_file() else -1
    except CheckpointError:
        newest_step = None  # last.ckpt is damaged: the run's newest state is unknown
    if newest_step is not None and int(ckpt.get("global_step", 0)) >= newest_step:
        return ResumePlan(path, ckpt, run, f"resuming {run} from {path}")
    return ResumePlan(
        path,
        ckpt,
        None,
        f"{path} is older than {run}'s newest state ({last}); training continues in a new run folder so that "
        "run's later checkpoints and metrics are kept",
    )
