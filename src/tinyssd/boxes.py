"""Box and label conventions, named once.

* Boxes are corner coordinates ``(x1, y1, x2, y2)``. In the data pipeline, the model, the
  anchors and the loss they are normalised to ``[0, 1]`` by the picture's width and height;
  the metrics, the drawings and :class:`~tinyssd.deploy.detector.Detector` work in pixels.
* Ground truth is ``labels (..., G, 5)``: one ``[class, x1, y1, x2, y2]`` row per object,
  normalised, padded to a common ``G`` with rows whose class is :data:`PAD_CLASS`, so that
  pictures with different object counts stack into one batch. A picture with no objects is all
  padding.
* An *ignored* object (a COCO ``iscrowd`` region, a VOC ``difficult`` object) keeps its box but
  its class ``c`` is stored as ``-2 - c`` (:func:`ignore_classes`): training treats it like
  padding (it is not trained on), evaluation uses it as an ignore region (a detection on it is
  neither a true nor a false positive), as COCO and VOC evaluate.
* The chapter's detection thresholds.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = [
    "BOX_TOLERANCE",
    "CHAPTER_DISPLAY_THRESHOLD",
    "CHAPTER_NMS_THRESHOLD",
    "CHAPTER_POS_THRESHOLD",
    "PAD_CLASS",
    "ignore_classes",
    "ignored_class",
    "ignored_rows",
    "pad_labels",
    "pad_rows",
    "pixel_scale",
    "to_normalised",
    "to_pixels",
    "valid_rows",
]

# The class of a padding row of a label tensor (real classes are 0..C-1).
PAD_CLASS = -1.0
# How far (as a fraction of the picture's side) an annotated box may pass the picture's edge and
# still be read as touching it: the rounding of annotation files (YOLO's six decimals, floats
# written by tools), not an annotation error. Such a box is clipped to the edge; farther is an error.
BOX_TOLERANCE = 1e-5
# The chapter's multibox_detection: NMS IoU threshold, and the background-probability cut
# below which an anchor is not a detection (its default, 0.009999999).
CHAPTER_NMS_THRESHOLD = 0.5
CHAPTER_POS_THRESHOLD = 0.009999999
# The chapter's threshold for showing a detection.
CHAPTER_DISPLAY_THRESHOLD = 0.9


def valid_rows(labels: Tensor) -> Tensor:
    """``labels (..., G, 5)`` -> ``(..., G)`` bool: the rows that are objects, not padding."""
    return labels[..., 0] >= 0


def ignore_classes(classes: Tensor) -> Tensor:
    """Class ids ``c >= 0`` -> the stored class of the same objects marked ignored (``-2 - c``)."""
    return -2 - classes


def ignored_rows(labels: Tensor) -> Tensor:
    """``labels (..., G, 5)`` -> ``(..., G)`` bool: the rows that are ignored objects."""
    return labels[..., 0] <= -2


def ignored_class(labels: Tensor) -> Tensor:
    """``labels (..., G, 5)`` -> ``(..., G)`` the class id of each row as if it were not ignored."""
    return torch.where(ignored_rows(labels), -2 - labels[..., 0], labels[..., 0])


def pad_rows(labels: Tensor, rows: int) -> Tensor:
    """``labels (G, 5)`` -> ``(rows, 5)``: padding rows appended (``rows >= G``)."""
    out = torch.full((rows, labels.shape[-1]), PAD_CLASS, dtype=labels.dtype, device=labels.device)
    out[: labels.shape[0]] = labels
    return out


def pad_labels(per_image: Sequence[Tensor]) -> Tensor:
    """A list of ``(G_i, 5)`` label tensors -> ``(N, max G_i, 5)`` (at least one row each)."""
    rows = max([len(labels) for labels in per_image] + [1])
    return torch.stack([pad_rows(labels, rows) for labels in per_image])


def pixel_scale(width: float, height: float, device: torch.device | str | None = None) -> Tensor:
    """``(4,)`` float32 ``[width, height, width, height]``: multiplies normalised xyxy into pixels."""
    return torch.tensor([width, height, width, height], dtype=torch.float32, device=device)


def to_pixels(boxes: Tensor, width: float, height: float) -> Tensor:
    """Normalised ``(..., 4)`` xyxy -> pixels of a ``width`` x ``height`` picture."""
    return boxes * pixel_scale(width, height, boxes.device)


def to_normalised(boxes: Tensor, width: float, height: float) -> Tensor:
    """Pixel ``(..., 4)`` xyxy of a ``width`` x ``height`` picture -> normalised."""
    return boxes / pixel_scale(width, height, boxes.device)
