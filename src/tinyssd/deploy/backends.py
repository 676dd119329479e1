"""Inference backends: one interface, chosen from one table by the model file's suffix and a runtime name.

A backend has a :class:`~tinyssd.model.contract.InferenceContract` (classes, input, decoding)
and ``detect(canvas (B, 3, S, S) uint8, nms_threshold=None)`` -> per picture ``boxes``
(normalised xyxy), ``scores`` and ``labels``. A checkpoint runs in PyTorch; an ``.onnx`` export
in ONNX Runtime (the default) or OpenVINO. Adding a runtime is its module and one row of
:data:`RUNTIMES`.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor

from tinyssd.deploy.metadata import ONNX_SUFFIX, PROGRAM_SUFFIX, TORCHSCRIPT_SUFFIX
from tinyssd.errors import CheckpointError, ConfigError
from tinyssd.model.contract import InferenceContract
from tinyssd.model.module import TinySSDModule
from tinyssd.model.run_files import shipped_model

__all__ = [
    "RUNTIMES",
    "CheckpointBackend",
    "InferenceBackend",
    "is_exported",
    "load_backend",
    "resolve_device",
    "runtime_names",
]


def resolve_device(device: str | torch.device) -> torch.device:
    """``auto`` -> ``cuda`` when available, else ``cpu``; an unusable device is a :class:`ConfigError`."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ConfigError(f"device={device!r} is not a device name; use auto, cpu, cuda or cuda:N.") from err
    if resolved.type == "cuda" and (
        not torch.cuda.is_available() or (resolved.index or 0) >= torch.cuda.device_count()
    ):
        raise ConfigError(f"device={device} but this machine has no such CUDA GPU; use device=cpu or device=auto.")
    if resolved.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device={device} but MPS is not available here; use device=cpu or device=auto.")
    if resolved.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"device={device} is not supported; use auto, cpu, cuda or cuda:N.")
    return resolved


class InferenceBackend(Protocol):
    """What runs a trained model: its contract, its device, and ``detect``."""

    path: Path
    device: torch.device
    runtime: str

    @property
    def contract(self) -> InferenceContract: ...

    def check_nms_threshold(self, nms_threshold: float | None) -> None: ...

    def detect(self, canvas: Tensor, nms_threshold: float | None = None) -> list[dict[str, Tensor]]: ...


class CheckpointBackend:
    """A :class:`~tinyssd.model.module.TinySSDModule` (from a checkpoint) on a torch device."""

    runtime = "torch"

    def __init__(self, module: TinySSDModule, device: torch.device | str = "cpu", path: str | os.PathLike = "") -> None:
        self.device = resolve_device(device)
        self.module = module.to(self.device).eval()
        self.path = Path(path)

    @classmethod
    def load(cls, path: str | os.PathLike, device: torch.device | str = "cpu", threads: int = 0) -> CheckpointBackend:
        from tinyssd.model.checkpoints import load_module

        return cls(load_module(path), device, path)

    @property
    def contract(self) -> InferenceContract:
        return self.module.contract

    def check_nms_threshold(self, nms_threshold: float | None) -> None:
        """Any threshold: NMS runs in tinyssd."""

    def detect(self, canvas: Tensor, nms_threshold: float | None = None) -> list[dict[str, Tensor]]:
        return self.module.detect(canvas.to(self.device), nms_threshold=nms_threshold)


# suffix -> runtime name -> "module:class" (imported only when chosen); the first runtime is the default.
RUNTIMES: dict[str, dict[str, str]] = {
    ".ckpt": {"torch": "tinyssd.deploy.backends:CheckpointBackend"},
    ONNX_SUFFIX: {
        "onnxruntime": "tinyssd.deploy.onnx_runtime:OnnxModel",
        "openvino": "tinyssd.deploy.openvino_runtime:OpenVinoModel",
    },
}
# Any other suffix is read as a checkpoint (.pt, .pth: torch.load refuses what is not one).
CHECKPOINT_SUFFIX = ".ckpt"


def runtime_names() -> list[str]:
    return ["auto", *dict.fromkeys(name for row in RUNTIMES.values() for name in row)]


def is_exported(path: str | os.PathLike) -> bool:
    """Whether ``path`` names an exported model (by its suffix), not a checkpoint."""
    return Path(path).suffix.lower() == ONNX_SUFFIX


def load_backend(
    path: str | os.PathLike, runtime: str = "auto", device: torch.device | str = "cpu", threads: int = 0
) -> Any:
    """The backend for a model file (or a shipped model's name): its suffix picks the row of :data:`RUNTIMES`,
    ``runtime`` the column."""
    path = shipped_model(path) or path
    suffix = Path(path).suffix.lower()
    if suffix == TORCHSCRIPT_SUFFIX:
        raise CheckpointError(
            f"{path} is a TorchScript export: run it with torch.jit.load in your own code (loading one runs the "
            "code inside it, so tinyssd only loads .ckpt and .onnx files). Give the .ckpt or an .onnx export."
        )
    if suffix == PROGRAM_SUFFIX:
        raise CheckpointError(
            f"{path} is a torch.export program: run it with torch.export.load in your own code, after import "
            "tinyssd.deploy.graph (its NMS operator); torch.export.load unpickles, so tinyssd only loads .ckpt and "
            ".onnx files. Give the .ckpt or an .onnx export."
        )
    row = RUNTIMES.get(suffix, RUNTIMES[CHECKPOINT_SUFFIX])
    name = next(iter(row)) if runtime in (None, "auto") else runtime
    if name not in row:
        kind = "an exported model" if suffix in RUNTIMES and suffix != CHECKPOINT_SUFFIX else "a checkpoint"
        raise ConfigError(
            f"runtime={runtime} cannot run {path} ({kind}); its runtimes are {', '.join(['auto', *row])}."
        )
    module_name, _, class_name = row[name].partition(":")
    backend_class = getattr(importlib.import_module(module_name), class_name)
    if backend_class is CheckpointBackend:
        return CheckpointBackend.load(path, device, threads)
    return backend_class(path, device=device, threads=threads)
