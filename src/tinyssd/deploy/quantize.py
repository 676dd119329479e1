"""INT8 ONNX: ONNX Runtime's static quantization of an exported graph, calibrated on training pictures.

``export.py ... quantize=int8`` writes the fp32 graph as usual, then this module rewrites it in the
QDQ format (``QuantizeLinear``/``DequantizeLinear`` pairs around the convolutions: weights int8
per output channel, activations uint8 per tensor, their ranges measured on calibration pictures),
which ONNX Runtime runs as integer convolutions and other runtimes (TensorRT, OpenVINO) read as
well. Batch-norm layers are folded into the convolutions first, so each block is one integer
convolution. The first convolution, which reads the pixels, stays float32: its three-channel
kernels lose the most to int8 (measured on the banana model: every convolution quantized, val
mAP 0.654 against float32's 0.860; the first kept float32, 0.863), and it is a small share of the
work. So does everything after the network (softmax, box decoding, NMS); and the additions,
resizes and pooling between convolutions, which in int8 cost accuracy (0.816) for no speed. The
caller (:mod:`tinyssd.pipeline.exporting`) checks the accuracy the quantized graph keeps on the
val split against the fp32 graph's.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from tinyssd.deploy.metadata import INPUT_NAME, METADATA_KEY
from tinyssd.errors import ConfigError

__all__ = ["CALIBRATION_BATCH", "QUANTIZE_MODES", "calibration_pictures", "quantize_onnx"]

QUANTIZE_MODES = (None, "int8")
# Pictures per calibration run (ranges are min/max over all of them).
CALIBRATION_BATCH = 16


def _calibration_reader(images: Tensor) -> object:
    from onnxruntime.quantization import CalibrationDataReader

    class Pictures(CalibrationDataReader):
        """The calibration pictures, batch by batch, as the graph's input."""

        def __init__(self) -> None:
            self._batches: Iterator[np.ndarray] = (
                images[i : i + CALIBRATION_BATCH].numpy() for i in range(0, len(images), CALIBRATION_BATCH)
            )

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self._batches, None)
            return None if batch is None else {INPUT_NAME: batch}

    return Pictures()


def quantize_onnx(source: Path, target: Path, calibration: Tensor) -> None:
    """Write ``source`` (an fp32 tinyssd ``.onnx``) to ``target`` as INT8 QDQ, calibrated on ``calibration``.

    ``calibration (N, 3, S, S)`` pictures in the graph's input type. The metadata and description
    of ``source`` are kept.
    """
    try:
        import onnx
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
        from onnxruntime.quantization.shape_inference import quant_pre_process
    except ImportError as err:
        raise ConfigError(
            "quantize=int8 needs onnx and onnxruntime: pip install 'tinyssd[onnx]' (or pip install onnx onnxruntime)."
        ) from err
    if len(calibration) == 0:
        raise ConfigError("quantize=int8 needs calibration pictures, and the training split gave none.")
    original = onnx.load(str(source))
    # The quantizer narrates its passes; its errors still raise.
    logging.getLogger("onnxruntime").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory() as folder, contextlib.redirect_stdout(io.StringIO()):
        folded = Path(folder) / "folded.onnx"
        # ONNX Runtime's basic optimisations: batch norm folded into the convolutions, constants folded.
        quant_pre_process(str(source), str(folded), skip_symbolic_shape=True)
        graph = onnx.load(str(folded))
        for number, node in enumerate(graph.graph.node):
            node.name = node.name or f"node_{number}"
        onnx.save(graph, str(folded))
        first_conv = next(node.name for node in graph.graph.node if node.op_type == "Conv")  # nodes: topological
        quantize_static(
            str(folded),
            str(target),
            _calibration_reader(calibration.contiguous()),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=["Conv"],
            nodes_to_exclude=[first_conv],
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            extra_options={"CalibTensorRangeSymmetric": False},
        )
    model = onnx.load(str(target))
    del model.metadata_props[:]
    model.metadata_props.extend(p for p in original.metadata_props if p.key == METADATA_KEY)
    model.doc_string = f"{original.doc_string} INT8 (QDQ, calibrated on {len(calibration)} training pictures)."
    onnx.save(model, str(target))


def calibration_pictures(dataset: torch.utils.data.Dataset, count: int, dtype: str) -> Tensor:
    """``count`` pictures spread evenly over ``dataset`` (un-augmented), in the graph's input type."""
    picks = torch.linspace(0, len(dataset) - 1, min(count, len(dataset))).round().long().unique().tolist()
    images = torch.stack([dataset[i][0] for i in picks])
    if dtype == "uint8" and images.dtype != torch.uint8:
        images = (images.clamp(0, 1) * 255).round().to(torch.uint8)
    if dtype == "float32" and images.dtype == torch.uint8:
        images = images.float() / 255
    return images
