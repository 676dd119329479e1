"""An exported ``.onnx`` model run by ONNX Runtime (``pip install tinyssd[onnx]``).

ONNX Runtime gets the file's bytes (checked by :class:`~tinyssd.deploy.exported.ExportedModel`)
and no custom-operator library, so it runs the standard operators of the graph and nothing else.
"""

from __future__ import annotations

import os
from typing import Any, ClassVar

import numpy as np
import torch

from tinyssd.deploy.exported import EXPORT_AGAIN, ExportedModel
from tinyssd.errors import ConfigError

__all__ = ["OnnxModel"]


def _import_onnxruntime():
    try:
        import onnxruntime
    except ImportError as err:
        raise ConfigError(
            "running an .onnx model needs ONNX Runtime, which is not installed here: pip install 'tinyssd[onnx]' "
            "(or pip install onnxruntime)."
        ) from err
    return onnxruntime


def _providers(ort: Any, device: torch.device | str) -> list[str]:
    available = ort.get_available_providers()
    kind = torch.device(device).type if str(device) != "auto" else "auto"
    if kind in ("cuda", "auto") and "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if kind == "cuda":
        raise ConfigError(
            "device=cuda but this ONNX Runtime has no CUDA provider (pip install onnxruntime-gpu); "
            "use device=cpu or device=auto."
        )
    if kind not in ("cpu", "auto"):
        raise ConfigError(f"device={device} is not available to ONNX Runtime; use device=cpu or device=auto.")
    return ["CPUExecutionProvider"]


class OnnxModel(ExportedModel):
    """An exported ``.onnx`` TinySSD, run with ONNX Runtime.

    ``detect(canvas (B, 3, S, S) uint8)`` gives what ``TinySSDModule.detect`` gives for the
    same pictures: per image, ``boxes`` (normalised xyxy), ``scores`` and ``labels``.
    """

    runtime = "onnxruntime"
    INPUT_TYPES: ClassVar[dict[str, str]] = {"uint8": "tensor(uint8)", "float32": "tensor(float)"}

    def __init__(self, path: str | os.PathLike, device: torch.device | str = "cpu", threads: int = 0) -> None:
        ort = _import_onnxruntime()
        super().__init__(path)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.log_severity_level = 3  # ONNX Runtime's own warnings are not the user's business
        try:
            self.session = ort.InferenceSession(self.data, options, providers=_providers(ort, device))
        except ConfigError:
            raise
        except Exception as err:  # onnxruntime raises its own Fail/InvalidGraph/... types
            hint = "it is damaged, or it needs operators this runtime does not have. " + EXPORT_AGAIN
            raise self.load_failure("ONNX Runtime", err, hint) from err
        self.check_signature()

    def signature(self) -> tuple[list[str], str, list[int | None], list[tuple[str, int]]]:
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        shape = [d if isinstance(d, int) else None for d in inputs[0].shape] if inputs else []
        dtype = inputs[0].type if inputs else ""
        return [i.name for i in inputs], dtype, shape, [(o.name, len(o.shape)) for o in outputs]

    def run(self, images: np.ndarray) -> dict[str, np.ndarray]:
        return dict(zip(self.metadata.outputs, self.session.run(None, {"images": images}), strict=True))
