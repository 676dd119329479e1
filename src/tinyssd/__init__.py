"""tinyssd: the SSD chapter's TinySSD as a PyTorch Lightning + Hydra project."""

from tinyssd.anchors import decode_offsets, encode_offsets, multibox_prior, multibox_target
from tinyssd.data import DetectionIndex
from tinyssd.datamodule import DetectionDataModule, DetectionDataset
from tinyssd.detector import Detections, Detector
from tinyssd.errors import CheckpointError, ConfigError, DataError, RunInterrupted, TinySSDError, TrainingError
from tinyssd.formats.banana import BananaDataModule, load_split
from tinyssd.formats.coco import CocoDataModule
from tinyssd.formats.voc import VocDataModule
from tinyssd.formats.yolo import YoloDataModule
from tinyssd.images import read_image
from tinyssd.loss import MultiBoxLoss
from tinyssd.metrics import BBoxMAE, ClassError
from tinyssd.model import TinySSD
from tinyssd.module import TinySSDModule
from tinyssd.postprocess import multibox_detection, multibox_detection_per_image
from tinyssd.runtime import OnnxModel

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
