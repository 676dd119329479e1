"""Checkpoints: where a run keeps them, how they are written, loaded and checked (resuming: pipeline.resume).

A checkpoint is data, never code. It is loaded with ``torch.load(weights_only=True)`` (no
arbitrary unpickling), its hyperparameters are checked against :mod:`tinyssd.model.specs`'s
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

from tinyssd.errors import CheckpointError, OutputError, TinySSDError
from tinyssd.files import atomic_torch_save
from tinyssd.model.run_files import describe_folder
from tinyssd.model.specs import build, check_plain, check_spec
from tinyssd.model.weights import check_tensors, is_exported_program, is_torchscript

__all__ = [
    "AtomicCheckpointIO",
    "check_compatible",
    "check_hparams",
    "load_checkpoint",
    "load_module",
    "module_from_checkpoint",
]

# Hyperparameters that are specs of an allowlisted kind; everything else must be plain data.
SPEC_KEYS = ("net", "loss", "optimizer", "scheduler")


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
            raise OutputError(
                f"the checkpoint {path} could not be written ({err.strerror or err}); the previous one is intact. "
                "Free disk space or give paths.log_dir a writable place, then resume with ckpt_path=last."
            ) from err
        return None


# --------------------------------------------------------------------------- loading


def check_hparams(hparams: Any, where: str = "checkpoint") -> None:
    """Refuse hyperparameters that name anything outside the allowlist (nothing is built)."""
    from tinyssd.model.module import TinySSDModule

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


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load and check a tinyssd checkpoint (``weights_only=True``; specs allowlisted)."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(describe_folder(path))
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist; give the path of a .ckpt file.")
    if not path.is_file():
        raise CheckpointError(f"{path} is not a regular file; give the path of a .ckpt file.")
    if is_torchscript(path):
        raise CheckpointError(
            f"{path} is a TorchScript program (torch.jit.save), not a checkpoint; tinyssd never loads TorchScript it "
            "is given (loading runs the code inside it). Give the .ckpt it was exported from, or an .onnx export."
        )
    if is_exported_program(path):
        raise CheckpointError(
            f"{path} is a torch.export program (.pt2), not a checkpoint; tinyssd never loads a program it is given "
            "(torch.export.load unpickles). Give the .ckpt it was exported from, or an .onnx export."
        )
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
    check_tensors(ckpt, "", path)
    check_hparams(hparams, str(path))
    return ckpt


def _non_finite(state: dict[str, torch.Tensor]) -> list[str]:
    return [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]


def module_from_checkpoint(ckpt: dict[str, Any], path: str | os.PathLike = "checkpoint"):
    """Rebuild the :class:`~tinyssd.model.module.TinySSDModule` a checked checkpoint describes, with its weights."""
    from tinyssd.model.module import TinySSDModule

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
        detail = "its anchors (model.net.sizes / model.net.ratios, or anchors=...) differ from the config's"
    raise CheckpointError(
        f"ckpt_path={path} cannot be resumed with this config: {detail}. Resume with the config the run was "
        "trained with (its config.yaml), or start a new run without ckpt_path."
    )
