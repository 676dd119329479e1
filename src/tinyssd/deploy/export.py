"""Export a trained TinySSD to ONNX, torch.export or TorchScript: the files, their metadata, the checks.

The graph written is :class:`tinyssd.deploy.graph.DetectionGraph`: the checkpoint's own inference,
end to end, NMS inside. Resizing pictures to the input size stays outside the graph, as in
every detector export: the metadata says how (``resize``, ``image_size``).

* ONNX (``torch.onnx.export``, dynamo exporter): NMS becomes ONNX ``NonMaxSuppression``;
  runs in ONNX Runtime, OpenVINO, TensorRT and others.
* torch.export (``.pt2``, :mod:`tinyssd.deploy.program`): PyTorch's own program format, for
  ``torch.export.load``, AOTInductor and ExecuTorch.
* TorchScript (``torch.jit.trace``): runs with ``torch.jit.load`` in Python or LibTorch; its
  NMS is torchvision's operator, so ``import torchvision`` first. Kept while torch ships it:
  torch deprecates TorchScript in favour of torch.export. tinyssd itself never loads a
  TorchScript or ``.pt2`` file it did not write (loading one runs its code or unpickles).

Every file is run once after writing and compared with PyTorch's detections.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tinyssd.deploy.graph import DetectionGraph, detection_difference, graph_detections, nms_keep_onnx
from tinyssd.deploy.metadata import (
    ARCHIVE_METADATA_FILE,
    INPUT_DTYPES,
    INPUT_NAME,
    METADATA_KEY,
    PROGRAM_SUFFIX,
    TORCHSCRIPT_SUFFIX,
    ExportMetadata,
    read_archive_metadata,
)
from tinyssd.errors import ConfigError

log = logging.getLogger("tinyssd")

__all__ = [
    "EXPORT_FORMATS",
    "FORMAT_SUFFIXES",
    "MIN_OPSET",
    "VERIFY_TOLERANCE",
    "check_export_options",
    "check_output_path",
    "export_model",
    "max_opset",
    "metadata_for",
    "read_torchscript_metadata",
    "run_exported",
    "verify_export",
]

EXPORT_FORMATS = ("onnx", "torch_export", "torchscript")
FORMAT_SUFFIXES = {"onnx": ".onnx", "torch_export": PROGRAM_SUFFIX, "torchscript": TORCHSCRIPT_SUFFIX}
# torch's ONNX exporter writes its operators at opset 18 and converts up from there.
MIN_OPSET = 18
DEFAULT_OPSET = 18


def max_opset() -> int:
    """The newest opset the installed ``onnx`` package knows (every export is then run in ONNX Runtime)."""
    import onnx

    return int(onnx.defs.onnx_opset_version())


def metadata_for(graph: DetectionGraph, module: nn.Module, batch: int | None) -> ExportMetadata:
    """The metadata an exported file of ``graph`` carries: the module's contract, as the graph decodes."""
    contract = replace(
        module.contract,
        image_size=graph.image_size,
        nms_threshold=graph.nms_threshold,
        pos_threshold=graph.pos_threshold,
        max_detections=graph.max_detections,
    )
    return ExportMetadata.from_contract(contract, graph.input_dtype, graph.nms, batch)


def check_export_options(fmt: Any, batch: Any, opset: Any, input_dtype: Any, nms: Any) -> int | None:
    """Refuse an unsupported format, batch, opset, dtype or nms value; returns the fixed batch (None: dynamic)."""
    if fmt not in EXPORT_FORMATS:
        raise ConfigError(f"format={fmt!r} is not an export format; use format=onnx, torch_export or torchscript.")
    if input_dtype not in INPUT_DTYPES:
        raise ConfigError(f"dtype={input_dtype!r} is not an input type; use dtype=uint8 or dtype=float32.")
    if not isinstance(nms, bool):
        raise ConfigError(f"nms={nms!r} must be true (NMS in the graph) or false (raw outputs).")
    fixed: int | None
    if batch == "dynamic":
        fixed = None
    elif isinstance(batch, int) and not isinstance(batch, bool) and batch >= 1:
        fixed = batch
    else:
        raise ConfigError(f"batch={batch!r} must be dynamic (any batch size) or a whole number >= 1.")
    if fmt != "onnx":
        if fixed is not None:
            raise ConfigError(
                f"batch=N fixes an ONNX graph's input shape; a format={fmt} graph takes any batch. "
                "Drop batch, or use format=onnx."
            )
        if opset is not None:
            raise ConfigError(f"opset is an ONNX setting; drop it for format={fmt}.")
        return None
    if opset is not None:
        newest = max_opset()
        if isinstance(opset, bool) or not isinstance(opset, int) or not MIN_OPSET <= opset <= newest:
            raise ConfigError(
                f"opset={opset!r} is not supported: the exporter writes opsets {MIN_OPSET} to {newest} (the newest "
                f"the installed onnx knows); use one of those, or drop opset for {DEFAULT_OPSET}."
            )
    return fixed


def _probe_writable(path: Path) -> None:
    if path.is_dir():
        raise ConfigError(f"output={path} is a folder; give a file name, e.g. output={path / 'model.onnx'}.")
    from tinyssd.files import make_writable_folder

    try:
        make_writable_folder(path.parent)
    except OSError as err:
        raise ConfigError(
            f"output={path} cannot be written ({err.strerror or err}); give a path in a folder you can write to."
        ) from err


def check_output_path(output: Path, fmt: str, overwrite: Any = False) -> None:
    """The output's name fits the format, and an existing file is replaced only with ``overwrite=true``."""
    if not isinstance(overwrite, bool):
        raise ConfigError(f"overwrite must be true or false, got {overwrite!r}.")
    suffix = FORMAT_SUFFIXES[fmt]
    if output.is_dir():
        raise ConfigError(f"output={output} is a folder; give a file name, e.g. output={output / ('model' + suffix)}.")
    if output.suffix.lower() != suffix:
        raise ConfigError(
            f"output={output} does not end in {suffix}, the {fmt} format's suffix; name the file "
            f"{output.with_suffix(suffix).name} (a file with another suffix, such as a checkpoint, is never replaced)."
        )
    if (output.exists() or output.is_symlink()) and not overwrite:
        raise ConfigError(
            f"output={output} already exists; nothing was replaced. Give another output=PATH, or overwrite=true to "
            "replace it."
        )


def export_model(
    module: nn.Module,
    path: str | os.PathLike,
    fmt: str = "onnx",
    batch: str | int = "dynamic",
    opset: int | None = None,
    input_dtype: str = "uint8",
    nms: bool = True,
) -> tuple[Path, ExportMetadata]:
    """Write ``module``'s detection graph to ``path`` (atomically) with its metadata.

    Returns the path and the metadata. Options are checked first (:func:`check_export_options`),
    and the output's folder is tried for writing before the (slow) export runs.
    """
    fixed = check_export_options(fmt, batch, opset, input_dtype, nms)
    path = Path(path)
    _probe_writable(path)
    graph = DetectionGraph(module, input_dtype=input_dtype, nms=nms).eval()
    meta = metadata_for(graph, module, fixed)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        if fmt == "onnx":
            _write_onnx(graph, tmp, fixed, opset or DEFAULT_OPSET, meta)
        elif fmt == "torch_export":
            from tinyssd.deploy.program import write_program

            write_program(graph, tmp, meta)
        else:
            _write_torchscript(graph, tmp, meta)
        os.replace(tmp, path)
    except OSError as err:
        raise ConfigError(f"output={path} could not be written ({err.strerror or err}).") from err
    finally:
        tmp.unlink(missing_ok=True)
    return path, meta


def _write_onnx(graph: DetectionGraph, path: Path, batch: int | None, opset: int, meta: ExportMetadata) -> None:
    # A dynamic batch is traced with 2 pictures: torch.export specialises a dimension of size 1.
    example = graph.example_input(batch or 2)
    dynamic = ({0: torch.export.Dim("batch", min=1)},) if batch is None else None
    # The exporter narrates every pass (prints and INFO logs); its errors still raise.
    for name in ("onnx_ir", "onnxscript", "torch.onnx"):
        logging.getLogger(name).setLevel(logging.WARNING)
    graph.onnx_topk = True
    with warnings.catch_warnings(), torch.no_grad(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            graph,
            (example,),
            dynamo=True,
            dynamic_shapes=dynamic,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=list(meta.outputs),
            external_data=False,
            custom_translation_table={torch.ops.tinyssd.nms_keep.default: nms_keep_onnx},
            optimize=True,
            verbose=False,
        )
    program.model.metadata_props[METADATA_KEY] = meta.to_json()
    program.model.doc_string = (
        f"TinySSD detector ({len(meta.class_names)} classes: {', '.join(meta.class_names)}), input {INPUT_NAME} "
        f"{meta.input_dtype} [batch, 3, {meta.image_size}, {meta.image_size}]; outputs {', '.join(meta.outputs)}."
    )
    program.save(str(path), external_data=False)


def _write_torchscript(graph: DetectionGraph, path: Path, meta: ExportMetadata) -> None:
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the tracer's notes on shape arithmetic
        traced = torch.jit.trace(graph.for_torchscript(), (graph.example_input(2),), check_trace=False)
    torch.jit.save(traced, str(path), _extra_files={ARCHIVE_METADATA_FILE: meta.to_json()})


def read_torchscript_metadata(path: str | os.PathLike) -> ExportMetadata:
    """The metadata of a TorchScript file this tinyssd exported (read without running the file)."""
    return read_archive_metadata(path, "TorchScript file")


# --------------------------------------------------------------------------- checking a written file

# Exported and PyTorch outputs agree to float32 rounding; more is a broken export.
VERIFY_TOLERANCE = 1e-4


def run_exported(path: Path, fmt: str, images: Tensor) -> tuple[Tensor, ...]:
    """Outputs of a file this tinyssd just wrote, for ``images`` (ONNX Runtime, torch.export or TorchScript)."""
    if fmt == "onnx":
        from tinyssd.deploy.onnx_runtime import OnnxModel

        model = OnnxModel(path)
        return tuple(torch.from_numpy(v) for v in model.run(images.numpy()).values())
    if fmt == "torch_export":
        from tinyssd.deploy.program import run_program

        return run_program(path, images)
    with torch.no_grad():
        return tuple(torch.jit.load(str(path))(images))


def verify_export(graph: DetectionGraph, path: Path, fmt: str, batch: int | None) -> float:
    """Run the written file on 1 and 3 pictures (or its fixed batch) and compare with ``graph`` in PyTorch.

    Returns the largest difference; raises ``RuntimeError`` above :data:`VERIFY_TOLERANCE`.
    """
    worst = 0.0
    generator = torch.Generator().manual_seed(0)
    for size in [batch] if batch else [1, 3]:
        # Blocky pictures: varied enough that no two anchors tie, as on real photographs.
        blocks = torch.rand(size, 3, 8, 8, generator=generator)
        images = F.interpolate(blocks, size=(graph.image_size, graph.image_size), mode="nearest")
        if graph.input_dtype == "uint8":
            images = (images * 255).round().to(torch.uint8)
        with torch.no_grad():
            expected = graph(images)
        actual = run_exported(path, fmt, images)
        if graph.nms:
            difference = detection_difference(graph_detections(expected), graph_detections(actual))
        else:
            difference = max(float((torch.as_tensor(a) - e).abs().max()) for e, a in zip(expected, actual, strict=True))
        worst = max(worst, difference)
    if worst > VERIFY_TOLERANCE:
        raise RuntimeError(
            f"the exported {path} does not reproduce the checkpoint (largest output difference {worst:.3g}); "
            "the runtime or opset miscompiles it. Try another opset, or another format."
        )
    return worst
