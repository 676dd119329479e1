"""An exported ``.onnx`` model run by OpenVINO (``pip install openvino``; ``runtime=openvino``).

OpenVINO reads the same checked bytes as ONNX Runtime (never a path, so it opens no other
file) and compiles the graph for its CPU plugin in float32, so its detections equal ONNX
Runtime's up to float rounding.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import ClassVar

import numpy as np
import torch

from tinyssd.deploy.exported import EXPORT_AGAIN, ExportedModel
from tinyssd.errors import ConfigError

__all__ = ["OpenVinoModel"]


class OpenVinoModel(ExportedModel):
    """An exported ``.onnx`` TinySSD, run with OpenVINO on the CPU."""

    runtime = "openvino"
    INPUT_TYPES: ClassVar[dict[str, str]] = {"uint8": "u8", "float32": "f32"}

    def __init__(self, path: str | os.PathLike, device: torch.device | str = "cpu", threads: int = 0) -> None:
        try:
            # OpenVINO's import sets up absl logging and a telemetry thread that keep the sys.stderr
            # of that moment: give them the process's own, not a caller's temporary redirect.
            with contextlib.redirect_stderr(sys.__stderr__), contextlib.redirect_stdout(sys.__stdout__):
                import openvino as ov
        except ImportError as err:
            raise ConfigError(
                "runtime=openvino needs OpenVINO, which is not installed here: pip install openvino."
            ) from err
        if str(device) not in ("cpu", "auto"):
            raise ConfigError(f"device={device} is not available to tinyssd's OpenVINO runtime; use device=cpu.")
        super().__init__(path)
        # f32: on CPUs with bf16 OpenVINO otherwise computes in bf16 (scores then differ in the 3rd digit).
        config = {"INFERENCE_PRECISION_HINT": "f32", **({"INFERENCE_NUM_THREADS": threads} if threads else {})}
        try:
            self.model = ov.Core().read_model(model=self.data)
            self.compiled = ov.Core().compile_model(self.model, "CPU", config)
        except Exception as err:  # OpenVINO raises RuntimeError and its own types
            raise self.load_failure("OpenVINO", err, EXPORT_AGAIN + " Or run it with runtime=onnxruntime.") from err
        self.check_signature()

    def signature(self) -> tuple[list[str], str, list[int | None], list[tuple[str, int]]]:
        inputs, outputs = self.model.inputs, self.model.outputs
        if not inputs:
            return [], "", [], []
        shape = [d.get_length() if d.is_static else None for d in inputs[0].get_partial_shape()]
        dtype = inputs[0].get_element_type().get_type_name()
        names = [next(iter(i.get_names()), "") for i in inputs]
        outs = [(next(iter(o.get_names()), ""), o.get_partial_shape().rank.get_length()) for o in outputs]
        return names, dtype, shape, outs

    def run(self, images: np.ndarray) -> dict[str, np.ndarray]:
        result = self.compiled({"images": images})
        return {
            name: np.asarray(result[output])
            for name, output in zip(self.metadata.outputs, self.compiled.outputs, strict=True)
        }
