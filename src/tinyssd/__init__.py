"""tinyssd: the SSD chapter's TinySSD as a PyTorch Lightning + Hydra project."""

from tinyssd.data.datamodule import DetectionDataModule
from tinyssd.data.dataset import DetectionDataset
from tinyssd.data.formats.banana import BananaDataModule, load_split
from tinyssd.data.formats.coco import CocoDataModule
from tinyssd.data.formats.voc import VocDataModule
from tinyssd.data.formats.yolo import YoloDataModule
from tinyssd.data.index import DetectionIndex
from tinyssd.deploy.detector import Detections, Detector
from tinyssd.deploy.onnx_runtime import OnnxModel
from tinyssd.errors import CheckpointError, ConfigError, DataError, RunInterrupted, TinySSDError, TrainingError
from tinyssd.images import read_image
from tinyssd.model.anchors import decode_offsets, encode_offsets, multibox_prior, multibox_target
from tinyssd.model.loss import MultiBoxLoss
from tinyssd.model.metrics import BBoxMAE, ClassError
from tinyssd.model.module import TinySSDModule
from tinyssd.model.net import TinySSD
from tinyssd.model.postprocess import multibox_detection, multibox_detection_per_image

__version__ = "0.1.0"

__all__ = [
    "BBoxMAE",
    "BananaDataModule",
    "CheckpointError",
    "ClassError",
    "CocoDataModule",
    "ConfigError",
    "DataError",
    "DetectionDataModule",
    "DetectionDataset",
    "DetectionIndex",
    "Detections",
    "Detector",
    "MultiBoxLoss",
    "OnnxModel",
    "RunInterrupted",
    "TinySSD",
    "TinySSDError",
    "TinySSDModule",
    "TrainingError",
    "VocDataModule",
    "YoloDataModule",
    "decode_offsets",
    "encode_offsets",
    "load_split",
    "multibox_detection",
    "multibox_detection_per_image",
    "multibox_prior",
    "multibox_target",
    "read_image",
]
