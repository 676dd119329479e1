"""Checkpoints: where a run keeps them, how they are written, loaded, checked and resumed.

A checkpoint is data, never code. It is loaded with ``torch.load(weights_only=True)`` (no
arbitrary unpickling), its hyperparameters are checked against :mod:`tinyssd.specs`'s
allowlist before anything is built, and its weights must be finite. Writes go to a
temporary file beside the target and then ``os.replace`` (atomic on any filesystem, unlike a
move from ``$TMPDIR``), so a kill leaves the old file or the new one, never half of one.
"""

from __future__ import annotations

import inspect
import os
import pickle
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from tinyssd.errors import CheckpointError, TinySSDError
from tinyssd.specs import build, check_plain, check_spec

__all__ = [
    "CHECKPOINT_DIR",
    "LAST_CHECKPOINT",
    "AtomicCheckpointIO",
    "ResumePlan",
    "atomic_torch_save",
    "check_callback_paths",
    "check_compatible",
    "check_hparams",
    "last_checkpoint",
    "load_checkpoint",
    "load_module",
    "make_writable_folder",
    "module_from_checkpoint",
    "newest_intact_checkpoint",
    "resolve_resume",
]

# A run folder keeps its checkpoints in checkpoints/: the best by val mAP and last.ckpt.
CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT = "last.ckpt"
# Hyperparameters that are specs of an allowlisted kind; everything else must be plain data.
SPEC_KEYS = ("net", "loss", "optimizer", "scheduler")


def last_checkpoint(run_dir: str | os.PathLike) -> Path:
    """``<run>/checkpoints/last.ckpt``."""
    return Path(run_dir) / CHECKPOINT_DIR / LAST_CHECKPOINT


# --------------------------------------------------------------------------- writing


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to a temporary file in ``path``'s own folder, fsync, then ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def make_writable_folder(folder: str | os.PathLike) -> None:
    """Create ``folder`` (and parents) and write and delete a probe file in it; ``OSError`` if that fails.

    Entry points call it before slow work, so an unwritable output is reported first.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    probe = folder / f".tinyssd-write-test-{os.getpid()}"
    probe.write_bytes(b"")
    probe.unlink()


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint IO whose writes are atomic on any local filesystem."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO takes no storage_options")
        if "://" in str(path):  # remote storage: fsspec's own transaction
            return super().save_checkpoint(checkpoint, path, storage_options)
        try:
            atomic_torch_save(checkpoint, path)
        except OSError as err:
            raise CheckpointError(
                f"the checkpoint {path} could not be written ({err.strerror or err}); the previous one is intact. "
                "Free disk space or give paths.log_dir a writable place, then resume with ckpt_path=last."
            ) from err
        return None


# --------------------------------------------------------------------------- loading


def check_hparams(hparams: Any, where: str = "checkpoint") -> None:
    """Refuse hyperparameters that name anything outside the allowlist (nothing is built)."""
    from tinyssd.module import TinySSDModule

    if not isinstance(hparams, dict):
        raise CheckpointError(f"{where}: its hyper_parameters are not a mapping; it is not a tinyssd checkpoint.")
    accepted = set(inspect.signature(TinySSDModule.__init__).parameters) - {"self"}
    unknown = sorted(str(k) for k in hparams if k not in accepted)
    if unknown:
        raise CheckpointError(
            f"{where}: hyper_parameters {unknown} are not options of this tinyssd's model; "
            "use a checkpoint written by train.py of this version."
        )
    try:
        for key, value in hparams.items():
            if key in SPEC_KEYS and value is not None:
                check_spec(key, value, where=f"hyper_parameters.{key}")
            else:
                check_plain(value, f"hyper_parameters.{key}")
    except TinySSDError as err:
        raise CheckpointError(f"{where} was refused: {err}") from err
    except RecursionError as err:
        raise CheckpointError(f"{where} was refused: its settings are nested absurdly deep.") from err


def _checkpoints_in(folder: Path) -> list[Path]:
    """The ``.ckpt`` files of a folder or of its ``checkpoints/`` (never a deep walk: it may be ``/``)."""
    return sorted([*folder.glob("*.ckpt"), *(folder / CHECKPOINT_DIR).glob("*.ckpt")])


def _describe_folder(path: Path) -> str:
    found = _checkpoints_in(path)[:5]
    if not found:
        return f"{path} is a folder with no .ckpt file in it; give the path of a .ckpt file."
    return f"{path} is a folder; give one of its checkpoint files, e.g. {', '.join(str(p) for p in found)}."


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load and check a tinyssd checkpoint (``weights_only=True``; specs allowlisted)."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(_describe_folder(path))
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist; give the path of a .ckpt file.")
    if not path.is_file():
        raise CheckpointError(f"{path} is not a regular file; give the path of a .ckpt file.")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "global" not in str(err).lower():  # garbage bytes, not a refused Python object
            raise CheckpointError(
                f"{path} is not a loadable tinyssd checkpoint (it is truncated, corrupt or another kind of file). "
                "Use a .ckpt written by train.py (runs/<run>/checkpoints/)."
            ) from err
        raise CheckpointError(
            f"{path} holds Python objects other than tensors and plain data, and was refused (loading them could "
            "run code). tinyssd checkpoints hold only weights and plain settings; use a .ckpt written by train.py."
        ) from err
    except Exception as err:  # torch's unpickler fails on arbitrary bytes in many ways (IndexError, KeyError, ...)
        raise CheckpointError(
            f"{path} is not a loadable tinyssd checkpoint (it is truncated, corrupt or another kind of file: "
            f"{str(err).splitlines()[0][:160] if str(err) else type(err).__name__}). Use a .ckpt written by "
            "train.py (runs/<run>/checkpoints/)."
        ) from err
    hparams = ckpt.get("hyper_parameters") if isinstance(ckpt, dict) else None
    state = ckpt.get("state_dict") if isinstance(ckpt, dict) else None
    if not isinstance(hparams, dict) or not isinstance(state, dict) or not isinstance(hparams.get("net"), dict):
        raise CheckpointError(
            f"{path} is not a tinyssd checkpoint (it lacks the network spec and weights train.py saves); "
            "use a .ckpt from a tinyssd run's checkpoints/ folder."
        )
    if not all(isinstance(k, str) and torch.is_tensor(v) for k, v in state.items()):
        raise CheckpointError(
            f"{path}: its state_dict holds entries that are not tensors; it is not a tinyssd checkpoint."
        )
    check_hparams(hparams, str(path))
    return ckpt


def _non_finite(state: dict[str, torch.Tensor]) -> list[str]:
    return [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]


def module_from_checkpoint(ckpt: dict[str, Any], path: str | os.PathLike = "checkpoint"):
    """Rebuild the :class:`~tinyssd.module.TinySSDModule` a checked checkpoint describes, with its weights."""
    from tinyssd.module import TinySSDModule

    bad = _non_finite(ckpt["state_dict"])
    if bad:
        raise CheckpointError(
            f"{path} has NaN or infinite weights ({', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''}); "
            "it cannot detect anything. Use an earlier checkpoint of the run."
        )
    hparams = ckpt["hyper_parameters"]
    try:
        # The network first on the meta device (no memory): its shapes must be the file's own,
        # so a spec cannot make tinyssd allocate more than the weights the file really holds.
        with torch.device("meta"):
            net = build("net", hparams["net"])
        expected = {f"net.{k}": tuple(v.shape) for k, v in net.state_dict().items()}
        actual = {k: tuple(v.shape) for k, v in ckpt["state_dict"].items() if k.startswith("net.")}
        if expected != actual:
            differ = sorted(k for k in expected.keys() | actual.keys() if expected.get(k) != actual.get(k))
            raise CheckpointError(
                f"{path}: its weights do not fit the model its own settings describe ({differ[0]} is "
                f"{actual.get(differ[0])} in the file, {expected.get(differ[0])} by its settings). The file was "
                "edited or mixed from two runs; use a checkpoint written by train.py."
            )
        module = TinySSDModule(**hparams)
    except CheckpointError:
        raise
    except TinySSDError as err:
        raise CheckpointError(f"{path} describes a model this tinyssd cannot build: {err}") from err
    _load_weights(module, ckpt["state_dict"], path)
    return module


def _load_weights(module: torch.nn.Module, state: dict[str, torch.Tensor], path: str | os.PathLike) -> None:
    mismatch = _shape_mismatch(module, state)
    if mismatch:
        raise CheckpointError(
            f"{path}: its weights do not fit the model its own settings describe ({mismatch}). The file was "
            "edited or mixed from two runs; use a checkpoint written by train.py."
        )
    module.load_state_dict(state, strict=True)


def _shape_mismatch(module: torch.nn.Module, state: dict[str, torch.Tensor]) -> str:
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    extra = sorted(set(state) - set(own))
    if missing or extra:
        return f"missing {missing[:3]}, unexpected {extra[:3]}"
    for key, value in own.items():
        if tuple(value.shape) != tuple(state[key].shape):
            return f"{key} is {tuple(state[key].shape)} in the file, {tuple(value.shape)} in the model"
    return ""


def load_module(path: str | os.PathLike):
    """``module_from_checkpoint(load_checkpoint(path))``."""
    return module_from_checkpoint(load_checkpoint(path), path)


def check_compatible(module: torch.nn.Module, ckpt: dict[str, Any], path: str | os.PathLike) -> None:
    """Refuse to resume training ``module`` (built from the config) from a checkpoint of another model."""
    mismatch = _shape_mismatch(module, ckpt["state_dict"])
    if not mismatch:
        return
    theirs = ckpt["hyper_parameters"]["net"]
    ours = getattr(module, "hparams", {}).get("net") or {}
    detail = mismatch
    if theirs.get("num_classes") != ours.get("num_classes"):
        names = ckpt["hyper_parameters"].get("class_names")
        detail = (
            f"it detects {theirs.get('num_classes')} class(es) {names or ''} and the config "
            f"{ours.get('num_classes')} (data.num_classes)"
        )
    elif theirs.get("sizes") != ours.get("sizes") or theirs.get("ratios") != ours.get("ratios"):
        detail = "its anchors (model.sizes / model.ratios, or anchors=...) differ from the config's"
    raise CheckpointError(
        f"ckpt_path={path} cannot be resumed with this config: {detail}. Resume with the config the run was "
        "trained with (its config.yaml), or start a new run without ckpt_path."
    )


# --------------------------------------------------------------------------- resuming


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


def check_callback_paths(ckpt: dict[str, Any], path: Path) -> None:
    """Refuse callback state that could make Lightning delete a file it did not write.

    On resume, ModelCheckpoint restores the paths of earlier checkpoints and later deletes the
    ones it replaces when they lie under its folder by a plain prefix test, which
    ``<folder>/../../x`` passes; a remote URL would go to fsspec. Genuine paths (also those of a
    run folder moved elsewhere, which Lightning then leaves alone) have neither.
    """
    for name, state in (ckpt.get("callbacks") or {}).items():
        if not isinstance(state, dict):
            continue
        best_k = state.get("best_k_models")
        named = [state.get(k) for k in (*_CALLBACK_PATH_KEYS, "dirpath")] + list(
            best_k if isinstance(best_k, dict) else []
        )
        for entry in named:
            if entry and ("://" in str(entry) or ".." in Path(str(entry)).parts):
                raise CheckpointError(
                    f"{path} was refused: its {name} state names {str(entry)[:200]!r}; resuming would let Lightning "
                    "replace or delete a file outside the run. Use a checkpoint written by train.py."
                )


def resolve_resume(ckpt_path: str, runs_dir: Path, current_run: Path) -> ResumePlan:
    """Resolve ``ckpt_path`` (``last``, a run folder, or a ``.ckpt``) and decide where the run goes on.

    Training continues in the checkpoint's own run folder only when the checkpoint is that
    run's newest state; resuming from an older checkpoint of a run starts a new run folder, so
    the newer progress (``last.ckpt``, ``metrics.csv`` rows, events) is never overwritten.
    """
    path = Path(ckpt_path)
    if ckpt_path == "last":
        candidates = [
            p for p in runs_dir.glob(f"*/{CHECKPOINT_DIR}/{LAST_CHECKPOINT}") if p.parent.parent != current_run
        ]
        if not candidates:
            raise CheckpointError(
                f"ckpt_path=last found no run with {CHECKPOINT_DIR}/{LAST_CHECKPOINT} under {runs_dir}."
            )
        path = max(candidates, key=lambda p: p.stat().st_mtime)
    elif path.is_dir():
        if not last_checkpoint(path).is_file():
            raise CheckpointError(
                _describe_folder(path)
                if _checkpoints_in(path)
                else f"run folder {path} has no {CHECKPOINT_DIR}/{LAST_CHECKPOINT} to resume from."
            )
        path = last_checkpoint(path)
    ckpt = _load_for_resume(path)
    check_callback_paths(ckpt, path)
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
