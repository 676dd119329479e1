"""Detection metrics: the chapter's class error and bbox MAE, and mAP inputs.

States are sums reduced with ``sum`` across processes, so values are exact under DDP.
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.detection import MeanAveragePrecision

__all__ = ["BBoxMAE", "ClassError", "make_map_metric", "to_pixel_targets"]

# faster_coco_eval prints its whole COCO summary at INFO on every evaluation.
logging.getLogger("faster_coco_eval").setLevel(logging.WARNING)


class ClassError(Metric):
    """Fraction of anchors whose arg-max class differs from the label (the chapter's ``1 - acc``).

    ``update(cls_preds (B, A, C+1), cls_labels (B, A))``.
    """

    full_state_update = False
    higher_is_better = False
    is_differentiable = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("correct", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, cls_preds: Tensor, cls_labels: Tensor) -> None:
        self.correct += (cls_preds.argmax(dim=-1) == cls_labels).sum()
        self.total += cls_labels.numel()

    def compute(self) -> Tensor:
        return 1 - self.correct.double() / self.total.clamp(min=1)


class BBoxMAE(Metric):
    """Mean absolute offset error over all ``4A`` offsets, masked to positive anchors (the chapter's).

    ``update(bbox_preds (B, 4A), bbox_labels (B, 4A), bbox_masks (B, 4A))``.
    """

    full_state_update = False
    higher_is_better = False
    is_differentiable = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("abs_error", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, bbox_preds: Tensor, bbox_labels: Tensor, bbox_masks: Tensor) -> None:
        self.abs_error += ((bbox_labels - bbox_preds.float()) * bbox_masks).abs().sum().double()
        self.total += bbox_labels.numel()

    def compute(self) -> Tensor:
        return self.abs_error / self.total.clamp(min=1)


def make_map_metric(num_classes: int, backend: str = "faster_coco_eval") -> MeanAveragePrecision:
    """COCO-style mAP over boxes in pixels; per-class AP when there is more than one class."""
    return MeanAveragePrecision(box_format="xyxy", iou_type="bbox", class_metrics=num_classes > 1, backend=backend)


def to_pixel_targets(labels: Tensor, width: int, height: int) -> list[dict[str, Tensor]]:
    """Padded ``labels (B, G, 5)`` normalised -> per-image ``{"boxes" (pixels), "labels"}``."""
    scale = torch.tensor([width, height, width, height], dtype=torch.float32, device=labels.device)
    out = []
    for row in labels:
        valid = row[:, 0] >= 0
        out.append({"boxes": row[valid, 1:].float() * scale, "labels": row[valid, 0].long()})
    return out
