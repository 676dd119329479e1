"""tinyssd: the SSD chapter's TinySSD as a PyTorch Lightning + Hydra project."""

from tinyssd.anchors import (
    decode_offsets,
    encode_offsets,
    multibox_detection,
    multibox_detection_per_image,
    multibox_prior,
    multibox_target,
)
from tinyssd.data import BananaDataModule, BananaDataset, load_split
from tinyssd.errors import CheckpointError, ConfigError, DataError, TinySSDError
from tinyssd.loss import MultiBoxLoss
from tinyssd.metrics import BBoxMAE, ClassError
from tinyssd.model import TinySSD
from tinyssd.module import TinySSDModule

__version__ = "0.1.0"

__all__ = [
    "BBoxMAE",
    "BananaDataModule",
    "BananaDataset",
    "CheckpointError",
    "ClassError",
    "ConfigError",
    "DataError",
    "MultiBoxLoss",
    "TinySSD",
    "TinySSDError",
    "TinySSDModule",
    "decode_offsets",
    "encode_offsets",
    "load_split",
    "multibox_detection",
    "multibox_detection_per_image",
    "multibox_prior",
    "multibox_target",
]
