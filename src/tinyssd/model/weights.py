"""What a checkpoint's tensors must be: plain weights, checked before any arithmetic touches them.

``torch.load(weights_only=True)`` unpickles no code but rebuilds any tensor the file describes:
a stride-0 view claims a size its storage does not hold, and sparse, meta or quantized tensors
fail in torch's own words later. :func:`check_tensors` refuses each by name first.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import torch

from tinyssd.errors import CheckpointError

__all__ = ["WEIGHT_DTYPES", "check_tensors", "is_exported_program", "is_torchscript", "tensor_problem"]


# dtypes of TinySSD's weights and buffers (batch-norm counts are int64), and of optimizer state.


WEIGHT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64, torch.int32)


def _dense_layout(tensor: torch.Tensor) -> bool:
    """Whether the elements tile their storage exactly in some dimension order (contiguous, channels-last, ...)."""
    expected = 1
    for size, stride in sorted(
        ((n, s) for n, s in zip(tensor.shape, tensor.stride(), strict=True) if n != 1), key=lambda p: p[1]
    ):
        if stride != expected:
            return False
        expected *= size
    return True


def tensor_problem(tensor: torch.Tensor) -> str | None:
    """Why ``tensor`` is not a plain weight (dense, strided, no element shared, storage holding all), or None.

    Checked before any arithmetic: a stride-0 view (``x.expand(...)``) keeps one element of
    storage for a tensor of any size, so a small file could claim a huge model, and a check
    over its values would allocate that size.
    """
    if tensor.layout != torch.strided:
        return f"a {str(tensor.layout).removeprefix('torch.')} tensor (only dense weights are)"
    if tensor.device.type == "meta":
        return "a tensor without data (meta)"
    if tensor.is_quantized:
        return "a quantized tensor"
    if tensor.dtype not in WEIGHT_DTYPES:
        return f"a {str(tensor.dtype).removeprefix('torch.')} tensor"
    if not _dense_layout(tensor):
        return f"a strided view of shape {tuple(tensor.shape)} (strides {tensor.stride()}), not a plain tensor"
    needed = (tensor.storage_offset() + tensor.numel()) * tensor.element_size()
    if tensor.untyped_storage().nbytes() < needed:
        return f"a tensor of shape {tuple(tensor.shape)} whose storage holds fewer bytes than its elements need"
    return None


def check_tensors(value: Any, where: str, path: Path, depth: int = 0) -> None:
    """Every tensor anywhere in the checkpoint (weights, optimizer and callback state) is plain."""
    if depth > 32:
        raise CheckpointError(f"{path} was refused: its contents are nested absurdly deep (not a tinyssd checkpoint).")
    if torch.is_tensor(value):
        problem = tensor_problem(value)
        if problem:
            raise CheckpointError(
                f"{path}: {where} is {problem}; train.py writes dense weights only. The file was crafted or "
                "damaged; use a checkpoint written by train.py."
            )
    elif isinstance(value, dict):
        for key, item in value.items():
            check_tensors(item, f"{where}.{key}" if where else str(key), path, depth + 1)
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            check_tensors(item, f"{where}[{i}]", path, depth + 1)


def is_torchscript(path: Path) -> bool:
    """Whether ``path`` is a TorchScript archive (a zip holding Python code and constants)."""
    try:
        if not zipfile.is_zipfile(path):
            return False
        with zipfile.ZipFile(path) as archive:
            return any(n.endswith("/constants.pkl") or "/code/" in n for n in archive.namelist()[:10_000])
    except (OSError, zipfile.BadZipFile, ValueError):
        return False


def is_exported_program(path: Path) -> bool:
    """Whether ``path`` is a ``torch.export`` archive (``.pt2``: a zip with ``archive_format`` and ``models/``)."""
    try:
        if not zipfile.is_zipfile(path):
            return False
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()[:10_000]
    except (OSError, zipfile.BadZipFile, ValueError):
        return False
    return any(n.endswith("/archive_format") for n in names) and any("/models/" in n for n in names)
