"""tinyssd: the SSD chapter's TinySSD as a PyTorch Lightning + Hydra project."""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# Imported on first use (PEP 562): `tinyssd --help` and shell completion do not pay for torch and Lightning.
_EXPORTS = {
    "BBoxMAE": "tinyssd.model.metrics",
    "BananaDataModule": "tinyssd.data.formats.banana",
    "CheckpointError": "tinyssd.errors",
    "ClassError": "tinyssd.model.metrics",
    "CocoDataModule": "tinyssd.data.formats.coco",
    "ConfigError": "tinyssd.errors",
    "DataError": "tinyssd.errors",
    "DetectionDataModule": "tinyssd.data.datamodule",
    "DetectionDataset": "tinyssd.data.dataset",
    "DetectionIndex": "tinyssd.data.index",
    "Detections": "tinyssd.deploy.detector",
    "Detector": "tinyssd.deploy.detector",
    "MultiBoxLoss": "tinyssd.model.loss",
    "OnnxModel": "tinyssd.deploy.onnx_runtime",
    "RunInterrupted": "tinyssd.errors",
    "TinySSD": "tinyssd.model.net",
    "TinySSDError": "tinyssd.errors",
    "TinySSDModule": "tinyssd.model.module",
    "TrainingError": "tinyssd.errors",
    "VocDataModule": "tinyssd.data.formats.voc",
    "YoloDataModule": "tinyssd.data.formats.yolo",
    "decode_offsets": "tinyssd.model.anchors",
    "encode_offsets": "tinyssd.model.anchors",
    "load_split": "tinyssd.data.formats.banana",
    "multibox_detection": "tinyssd.model.postprocess",
    "multibox_detection_per_image": "tinyssd.model.postprocess",
    "multibox_prior": "tinyssd.model.anchors",
    "multibox_target": "tinyssd.model.anchors",
    "read_image": "tinyssd.images",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'tinyssd' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
