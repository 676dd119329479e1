"""``format=torch_export``: the detection graph as a ``torch.export`` program (a ``.pt2`` archive).

``torch.export`` is PyTorch's successor to TorchScript (whose ``torch.jit.trace``/``save`` now
warn that they are deprecated): one ATen graph with the weights, for ``torch.export.load`` in
Python, AOTInductor (``torch._inductor.aoti_compile_and_package``) or ExecuTorch. The batch size
stays dynamic. NMS is tinyssd's operator ``tinyssd::nms_keep`` (one op with a fixed-shape output,
as ONNX's ``NonMaxSuppression``), so the program runs where ``tinyssd.deploy.graph`` has been
imported; with ``nms=false`` it holds ATen operators only.

The metadata is the archive's extra file ``tinyssd.json``, read here without loading the program:
``torch.export.load`` unpickles, so tinyssd loads no ``.pt2`` but the one it has just written.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import torch
from torch import Tensor

from tinyssd.deploy.graph import DetectionGraph
from tinyssd.deploy.metadata import ARCHIVE_METADATA_FILE, ExportMetadata, read_archive_metadata

__all__ = ["read_program_metadata", "run_program", "write_program"]


def write_program(graph: DetectionGraph, path: Path, meta: ExportMetadata) -> None:
    """Export ``graph`` with ``torch.export`` (any batch size) and save it to ``path`` with ``meta``."""
    # Traced with 2 pictures: torch.export specialises a dimension of size 1.
    dynamic = ({0: torch.export.Dim("batch", min=1)},)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.export.export(graph, (graph.example_input(2),), dynamic_shapes=dynamic, strict=False)
    # Through memory: the archive's top folder is named after the file it is saved to, not a temporary one.
    buffer = io.BytesIO()
    torch.export.save(program, buffer, extra_files={ARCHIVE_METADATA_FILE: meta.to_json()})
    path.write_bytes(buffer.getvalue())


def run_program(path: Path, images: Tensor) -> tuple[Tensor, ...]:
    """Outputs of a ``.pt2`` file tinyssd has just written, for ``images`` (never an untrusted file: it unpickles)."""
    # tinyssd::nms_keep, the program's NMS operator, is registered by tinyssd.deploy.graph (imported above).
    with torch.no_grad():
        return tuple(torch.export.load(path).module()(images))


def read_program_metadata(path: str | os.PathLike) -> ExportMetadata:
    """The metadata of a ``.pt2`` file this tinyssd exported (read without loading the program)."""
    return read_archive_metadata(path, "torch.export program")
