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
    verify_export,
)
from tinyssd.deploy.graph import DetectionGraph
from tinyssd.deploy.metadata import INPUT_NAME
from tinyssd.deploy.quantize import QUANTIZE_MODES
from tinyssd.errors import ConfigError
from tinyssd.files import file_digest
from tinyssd.model.checkpoints import load_module
from tinyssd.model.run_files import SHIPPED_FOLDER, model_argument, resolve_model_path

log = logging.getLogger("tinyssd")

__all__ = ["export_from_config"]


def export_from_config(cfg: Any) -> dict[str, Any]:
    """``export``: export ``cfg.model``, check the file, print and return a summary."""
    import json
    import tempfile
    import time

    key, ckpt_path = model_argument(cfg, "export")
    fmt, batch, opset, nms, dtype = cfg.format, cfg.batch, cfg.opset, cfg.nms, cfg.dtype
    fixed = check_export_options(fmt, batch, opset, dtype, nms)
    quantize = _check_quantize(cfg, fmt)
    source = resolve_model_path(ckpt_path, Path(cfg.paths.log_dir) / "train" / "runs", key)
    # Beside the checkpoint; a model shipped in the package is exported into the run folder instead.
    beside = source.parent != SHIPPED_FOLDER
    default = source.with_suffix(FORMAT_SUFFIXES[fmt]) if beside else Path(cfg.paths.output_dir) / source.name
    if quantize:
        default = default.with_name(f"{default.stem}.{quantize}{FORMAT_SUFFIXES[fmt]}")
    output = Path(cfg.output).expanduser() if cfg.get("output") else default.with_suffix(FORMAT_SUFFIXES[fmt])
    if output.resolve() == source.resolve():
        raise ConfigError(f"output={output} is the checkpoint itself; give another file name.")
    check_output_path(output, fmt, cfg.get("overwrite", False))
    module = load_module(source)
    start = time.perf_counter()
    graph = DetectionGraph(module, input_dtype=dtype, nms=nms).eval()
    quantized: dict[str, Any] | None = None
    if quantize:
        with tempfile.TemporaryDirectory() as folder:
            fp32, meta = export_model(module, Path(folder) / "fp32.onnx", fmt, batch, opset, dtype, nms)
            difference = verify_export(graph, fp32, fmt, fixed) if cfg.get("verify", True) else None
            quantized = quantize_from_config(cfg, module, fp32, output)
        path = output
    else:
        path, meta = export_model(module, output, fmt, batch, opset, dtype, nms)
        difference = verify_export(graph, path, fmt, fixed) if cfg.get("verify", True) else None
    seconds = time.perf_counter() - start
    summary = {
        "checkpoint": str(source.resolve()),
        "output": str(path.resolve()),
        "format": fmt,
        "opset": (opset or DEFAULT_OPSET) if fmt == "onnx" else None,
        "bytes": path.stat().st_size,
        "sha256": file_digest(path),
        "export_seconds": round(seconds, 2),
        "max_difference_vs_pytorch": difference,
        "quantization": quantized,
        "metadata": json.loads(meta.to_json()),
    }
    shape = f"[{meta.batch or 'batch'}, 3, {meta.image_size}, {meta.image_size}]"
    checked = f"outputs equal PyTorch's within {difference:.2g}" if difference is not None else "not run (verify=false)"
    if quantized:
        checked = (
            f"{checked} (the float32 graph); INT8 ({quantized['calibration_pictures']} calibration pictures): val mAP "
            f"{quantized['val_map_int8']:.4f} against fp32's {quantized['val_map_fp32']:.4f} "
            f"(difference {quantized['val_map_int8'] - quantized['val_map_fp32']:+.4f})"
        )
    log.info(
        f"exported {source} -> {path} ({fmt}, {path.stat().st_size / 1e6:.2f} MB, {seconds:.1f} s)\n"
        f"  input  {INPUT_NAME}: {meta.input_dtype} {shape} ({meta.resize} resize)\n"
        f"  output {', '.join(meta.outputs)}\n"
        f"  classes {meta.class_names}; NMS {'in the graph' if meta.nms else 'left to tinyssd'} "
        f"(IoU {meta.nms_threshold:g}, score >= {meta.pos_threshold:g}, top {meta.max_detections})\n"
        f"  checked: {checked}"
    )
    return summary


def _check_quantize(cfg: Any, fmt: str) -> str | None:
    quantize = cfg.get("quantize")
    if quantize not in QUANTIZE_MODES:
        raise ConfigError(f"quantize={quantize!r} is not a quantization; use quantize=int8, or null for float32.")
    if quantize and fmt != "onnx":
        raise ConfigError(f"quantize={quantize} quantizes an ONNX graph (ONNX Runtime); use format=onnx.")
    count = cfg.get("calibration", 0)
    if quantize and (isinstance(count, bool) or not isinstance(count, int) or count < 1):
        raise ConfigError(f"calibration={count!r} must be a number of training pictures >= 1, e.g. calibration=128.")
    return quantize


def quantize_from_config(cfg: Any, module: Any, fp32: Path, output: Path) -> dict[str, Any]:
    """Quantize the fp32 export ``fp32`` to ``output``, calibrated on the configured data's training split, and
    evaluate both on its val split; returns the calibration size and both val mAPs."""
    import lightning.pytorch as pl

    from tinyssd.data.dataset import DetectionDataset
    from tinyssd.deploy.backends import load_backend
    from tinyssd.deploy.quantize import calibration_pictures, quantize_onnx
    from tinyssd.files import atomic_write_bytes
    from tinyssd.pipeline.builders import quiet_lightning
    from tinyssd.pipeline.evaluation import BackendEvaluation, module_and_data_for_evaluation, run_evaluation

    _, datamodule = module_and_data_for_evaluation(cfg, module, fp32)
    for split in ("train", "val"):
        if not datamodule.has_split(split):
            raise ConfigError(
                f"quantize=int8 calibrates on the training split and checks on the val split, and the data set has no "
                f"{split} split; give the data the model was trained on (data=..., data.data_dir=...)."
            )
    train = DetectionDataset(datamodule.read_split("train"), datamodule.image_size, datamodule.resize, cache="none")
    calibration = calibration_pictures(train, cfg.calibration, cfg.dtype)
    quantized = fp32.with_name(f"int8{fp32.suffix}")
    quantize_onnx(fp32, quantized, calibration)
    quiet_lightning()
    maps = {}
    rank_zero = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    level = rank_zero.level
    rank_zero.setLevel(logging.WARNING)  # two evaluations inside an export: not Lightning's hardware summary
    try:
        for name, path in (("fp32", fp32), ("int8", quantized)):
            trainer = pl.Trainer(
                accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False
            )
            evaluation = run_evaluation(trainer, BackendEvaluation(load_backend(path)), datamodule, "val")
            maps[f"val_map_{name}"] = round(float(evaluation["map"]), 4)
    finally:
        rank_zero.setLevel(level)
    atomic_write_bytes(output, quantized.read_bytes(), "the INT8 model")
    return {"mode": "int8", "calibration_pictures": len(calibration), **maps}
