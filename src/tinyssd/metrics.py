"""Detection metrics: the chapter's class error and bbox MAE, and mAP inputs.

States are sums reduced with ``sum`` across processes, so values are exact under DDP.
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.detection import MeanAveragePrecision
from torchvision.ops import box_iou

from tinyssd.boxes import CHAPTER_DISPLAY_THRESHOLD, to_pixels, valid_rows

__all__ = ["BBoxMAE", "ClassError", "DetectionPrecisionRecall", "make_map_metric", "to_pixel_targets"]


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


class DetectionPrecisionRecall(Metric):
    """Precision and recall of the detections scoring at least ``threshold``.

    A detection is a true positive when it overlaps a ground truth of its class by IoU >=
    ``iou_threshold`` and no higher-scoring detection already took that ground truth.
    ``update(preds, targets)`` takes the torchmetrics detection format (lists of dicts with
    ``boxes``, ``scores``, ``labels``; boxes in one coordinate system). ``compute()`` returns
    ``{"precision", "recall"}``.
    """

    full_state_update = False
    is_differentiable = False

    def __init__(self, threshold: float = CHAPTER_DISPLAY_THRESHOLD, iou_threshold: float = 0.5, **kwargs) -> None:
        super().__init__(**kwargs)
        self.threshold, self.iou_threshold = threshold, iou_threshold
        for name in ("tp", "num_preds", "num_targets"):
            self.add_state(name, default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: list[dict[str, Tensor]], targets: list[dict[str, Tensor]]) -> None:
        for pred, target in zip(preds, targets, strict=True):
            keep = pred["scores"] >= self.threshold
            order = pred["scores"][keep].argsort(descending=True)
            boxes, labels = pred["boxes"][keep][order], pred["labels"][keep][order]
            self.num_preds += len(boxes)
            self.num_targets += len(target["boxes"])
            if len(boxes) == 0 or len(target["boxes"]) == 0:
                continue
            iou = box_iou(boxes.float(), target["boxes"].float())
            iou = torch.where(labels[:, None] == target["labels"][None, :], iou, torch.zeros_like(iou))
            best_iou, best_gt = iou.max(dim=1)
            hit = torch.nn.functional.one_hot(best_gt, len(target["boxes"])) * (best_iou >= self.iou_threshold)[:, None]
            # A ground truth counts once: only its first (highest-scoring) hit is a true positive.
            first = (hit.cumsum(dim=0) == 1) & (hit == 1)
            self.tp += first.sum()

    def compute(self) -> dict[str, Tensor]:
        tp = self.tp.double()
        return {"precision": tp / self.num_preds.clamp(min=1), "recall": tp / self.num_targets.clamp(min=1)}


def make_map_metric(num_classes: int, backend: str = "faster_coco_eval") -> MeanAveragePrecision:
    """COCO-style mAP over boxes in pixels; per-class AP when there is more than one class.

    ``extended_summary`` keeps the precision array, from which the PR curve is drawn.
    """
    if backend == "faster_coco_eval":
        # It prints its whole COCO summary at INFO on every evaluation.
        logging.getLogger("faster_coco_eval").setLevel(logging.WARNING)
    return MeanAveragePrecision(
        box_format="xyxy", iou_type="bbox", class_metrics=num_classes > 1, backend=backend, extended_summary=True
    )


def to_pixel_targets(labels: Tensor, width: int, height: int) -> list[dict[str, Tensor]]:
    """Padded ``labels (B, G, 5)`` normalised -> per-image ``{"boxes" (pixels), "labels"}``."""
    out = []
    for row in labels:
        valid = valid_rows(row)
        out.append({"boxes": to_pixels(row[valid, 1:].float(), width, height), "labels": row[valid, 0].long()})
    return out
