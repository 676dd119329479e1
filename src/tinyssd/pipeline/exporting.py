"""``export.py``: export a checkpoint as its command line says, check the file, print and return a summary."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from tinyssd.deploy.export import (
    DEFAULT_OPSET,
    FORMAT_SUFFIXES,
    check_export_options,
    check_output_path,
    export_model,
    file_digest,
    verify_export,
)
from tinyssd.deploy.graph import DetectionGraph
from tinyssd.deploy.metadata import INPUT_NAME
from tinyssd.errors import ConfigError
from tinyssd.model.checkpoints import load_module
from tinyssd.model.run_files import SHIPPED_FOLDER, model_argument, resolve_model_path

log = logging.getLogger("tinyssd")

__all__ = ["export_from_config"]


def export_from_config(cfg: Any) -> dict[str, Any]:
    """``export``: export ``cfg.model``, check the file, print and return a summary."""
    import json
    import time

    key, ckpt_path = model_argument(cfg, "export")
    fmt, batch, opset, nms, dtype = cfg.format, cfg.batch, cfg.opset, cfg.nms, cfg.dtype
    fixed = check_export_options(fmt, batch, opset, dtype, nms)
    source = resolve_model_path(ckpt_path, Path(cfg.paths.log_dir) / "train" / "runs", key)
    # Beside the checkpoint; a model shipped in the package is exported into the run folder instead.
    beside = source.parent != SHIPPED_FOLDER
    default = source.with_suffix(FORMAT_SUFFIXES[fmt]) if beside else Path(cfg.paths.output_dir) / source.name
    output = Path(cfg.output).expanduser() if cfg.get("output") else default.with_suffix(FORMAT_SUFFIXES[fmt])
    if output.resolve() == source.resolve():
        raise ConfigError(f"output={output} is the checkpoint itself; give another file name.")
    check_output_path(output, fmt, cfg.get("overwrite", False))
    module = load_module(source)
    start = time.perf_counter()
    path, meta = export_model(module, output, fmt, batch, opset, dtype, nms)
    seconds = time.perf_counter() - start
    graph = DetectionGraph(module, input_dtype=dtype, nms=nms).eval()
    difference = verify_export(graph, path, fmt, fixed) if cfg.get("verify", True) else None
    summary = {
        "checkpoint": str(source.resolve()),
        "output": str(path.resolve()),
        "format": fmt,
        "opset": (opset or DEFAULT_OPSET) if fmt == "onnx" else None,
        "bytes": path.stat().st_size,
        "sha256": file_digest(path),
        "export_seconds": round(seconds, 2),
        "max_difference_vs_pytorch": difference,
        "metadata": json.loads(meta.to_json()),
    }
    shape = f"[{meta.batch or 'batch'}, 3, {meta.image_size}, {meta.image_size}]"
    checked = f"outputs equal PyTorch's within {difference:.2g}" if difference is not None else "not run (verify=false)"
    log.info(
        f"exported {source} -> {path} ({fmt}, {path.stat().st_size / 1e6:.2f} MB, {seconds:.1f} s)\n"
        f"  input  {INPUT_NAME}: {meta.input_dtype} {shape} ({meta.resize} resize)\n"
        f"  output {', '.join(meta.outputs)}\n"
        f"  classes {meta.class_names}; NMS {'in the graph' if meta.nms else 'left to tinyssd'} "
        f"(IoU {meta.nms_threshold:g}, score >= {meta.pos_threshold:g}, top {meta.max_detections})\n"
        f"  checked: {checked}"
    )
    return summary
