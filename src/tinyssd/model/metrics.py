"""Detection metrics: the chapter's class error and bbox MAE, and mAP inputs.

States are sums reduced with ``sum`` across processes, so values are exact under DDP.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.detection import MeanAveragePrecision
from torchvision.ops import box_iou

from tinyssd.boxes import CHAPTER_DISPLAY_THRESHOLD, ignored_class, ignored_rows, to_pixels, valid_rows
from tinyssd.errors import ConfigError

__all__ = [
    "ALL_CLASSES",
    "MAP_BACKENDS",
    "BBoxMAE",
    "ClassError",
    "DetectionConfusionMatrix",
    "DetectionPrecisionRecall",
    "check_map_backend",
    "evaluation_summary",
    "make_map_metric",
    "to_pixel_targets",
]


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
        for pred, full_target in zip(preds, targets, strict=True):
            keep = pred["scores"] >= self.threshold
            order = pred["scores"][keep].argsort(descending=True)
            boxes, labels = pred["boxes"][keep][order], pred["labels"][keep][order]
            target, crowd = _split_crowd(full_target)
            if len(crowd["boxes"]) and len(boxes):
                # A detection on an ignore region (iscrowd / VOC difficult) is neither right nor wrong.
                on_crowd = (box_iou(boxes.float(), crowd["boxes"].float()) >= self.iou_threshold).any(dim=1)
                if len(target["boxes"]):
                    hits = box_iou(boxes.float(), target["boxes"].float()) >= self.iou_threshold
                    on_crowd &= ~(hits & (labels[:, None] == target["labels"][None, :])).any(dim=1)
                boxes, labels = boxes[~on_crowd], labels[~on_crowd]
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


def _split_crowd(target: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """A torchmetrics target -> (the objects that count, the ignore regions)."""
    crowd = target.get("iscrowd")
    if crowd is None or not bool(crowd.any()):
        empty = target["boxes"][:0]
        return target, {"boxes": empty, "labels": target["labels"][:0]}
    is_crowd = crowd.bool()
    return (
        {"boxes": target["boxes"][~is_crowd], "labels": target["labels"][~is_crowd]},
        {"boxes": target["boxes"][is_crowd], "labels": target["labels"][is_crowd]},
    )


class DetectionConfusionMatrix(Metric):
    """Detection confusion matrix over the classes and background, and the counts evaluated.

    Detections scoring at least ``threshold`` are matched to ground truth by IoU >=
    ``iou_threshold`` whatever their classes, greedily by IoU (each detection and each object
    matched once). ``matrix[t, p]`` counts objects of true class ``t`` detected as class ``p``;
    the last row (``t = C``, background) counts detections of no object (false positives), the
    last column (``p = C``) objects no detection found. A detection on an ignore region
    (``iscrowd``) that matches no object is not counted. ``images`` and ``objects`` count what
    was evaluated. ``update(preds, targets)`` takes the torchmetrics detection format.
    """

    full_state_update = False
    is_differentiable = False

    def __init__(
        self, num_classes: int, threshold: float = CHAPTER_DISPLAY_THRESHOLD, iou_threshold: float = 0.5, **kwargs
    ) -> None:
        super().__init__(**kwargs)
        self.num_classes, self.threshold, self.iou_threshold = num_classes, threshold, iou_threshold
        size = num_classes + 1
        self.add_state("matrix", default=torch.zeros(size, size, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("images", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: list[dict[str, Tensor]], targets: list[dict[str, Tensor]]) -> None:
        background = self.num_classes
        for pred, full_target in zip(preds, targets, strict=True):
            self.images += 1
            keep = pred["scores"] >= self.threshold
            boxes, labels = pred["boxes"][keep].float(), pred["labels"][keep].long()
            target, crowd = _split_crowd(full_target)
            gt_boxes, gt_labels = target["boxes"].float(), target["labels"].long()
            det_matched = torch.zeros(len(boxes), dtype=torch.bool, device=boxes.device)
            gt_matched = torch.zeros(len(gt_boxes), dtype=torch.bool, device=boxes.device)
            if len(boxes) and len(gt_boxes):
                iou = box_iou(boxes, gt_boxes)
                det_idx, gt_idx = torch.nonzero(iou >= self.iou_threshold, as_tuple=True)
                order = iou[det_idx, gt_idx].argsort(descending=True)
                for d, g in zip(det_idx[order].tolist(), gt_idx[order].tolist(), strict=True):
                    if not det_matched[d] and not gt_matched[g]:
                        det_matched[d] = gt_matched[g] = True
                        self.matrix[gt_labels[g], labels[d]] += 1
            missed = gt_labels[~gt_matched]
            self.matrix[:, background] += torch.bincount(missed, minlength=background + 1)
            spurious = ~det_matched
            if len(crowd["boxes"]) and spurious.any():
                on_crowd = (box_iou(boxes, crowd["boxes"].float()) >= self.iou_threshold).any(dim=1)
                spurious &= ~on_crowd
            self.matrix[background] += torch.bincount(labels[spurious], minlength=background + 1)

    def compute(self) -> dict[str, Tensor]:
        return {
            "matrix": self.matrix,
            "images": self.images,
            "objects": self.matrix[: self.num_classes].sum(),
        }


MAP_BACKENDS = ("faster_coco_eval", "pycocotools")
MAP_KEYS = ("map", "map_50", "map_75", "mar_100")


def check_map_backend(backend: Any, key: str = "map_backend") -> None:
    """Refuse a COCO evaluation backend torchmetrics does not have (``key``: where it was set)."""
    if backend not in MAP_BACKENDS:
        raise ConfigError(f"{key} must be one of {MAP_BACKENDS}, got {backend!r}.")


ALL_CLASSES = "all classes"  # the key of the PR curve averaged over classes (evaluation_summary)


def make_map_metric(num_classes: int, backend: str = "faster_coco_eval") -> MeanAveragePrecision:
    """COCO-style mAP over boxes in pixels, with per-class AP.

    ``extended_summary`` keeps the precision array, from which the PR curve is drawn.
    """
    check_map_backend(backend)
    if backend == "faster_coco_eval":
        # It prints its whole COCO summary at INFO on every evaluation.
        logging.getLogger("faster_coco_eval").setLevel(logging.WARNING)
    return MeanAveragePrecision(
        box_format="xyxy", iou_type="bbox", class_metrics=True, backend=backend, extended_summary=True
    )


def to_pixel_targets(labels: Tensor, width: int, height: int) -> list[dict[str, Tensor]]:
    """Padded ``labels (B, G, 5)`` normalised -> per-image ``{"boxes" (pixels), "labels", "iscrowd"}``.

    Ignored objects (:func:`tinyssd.boxes.ignored_rows`) come with ``iscrowd=1``: COCO's
    evaluation (and VOC's for ``difficult``) neither rewards nor punishes a detection on them.
    """
    out = []
    for row in labels:
        keep = valid_rows(row) | ignored_rows(row)
        out.append(
            {
                "boxes": to_pixels(row[keep, 1:].float(), width, height),
                "labels": ignored_class(row[keep]).long(),
                "iscrowd": ignored_rows(row[keep]).long(),
            }
        )
    return out


def evaluation_summary(
    split: str,
    map_result: dict[str, Tensor],
    pr: dict[str, Tensor],
    confusion: dict[str, Tensor],
    class_names: Sequence[str],
    display_threshold: float,
) -> tuple[dict[str, Any], dict[str, Tensor] | None]:
    """One evaluation as plain data (what ``metrics.json`` holds), and its precision-recall curves.

    ``map_result``: :func:`make_map_metric`'s ``compute()``; ``pr`` and ``confusion``: those metrics'.
    Returns ``(evaluation, pr_curve)``: ``evaluation`` holds mAP, mAP@0.5/0.75, mAR@100, AP and
    AP@0.5 per class by name (``None`` where undefined: no object of the class and no
    detection), precision and recall at ``display_threshold``, image and object counts and the
    confusion matrix; ``pr_curve`` maps :data:`ALL_CLASSES` (the mean over classes) and, with several
    classes, each class name to its precision at 101 recall levels ``(101,)`` (IoU 0.5), ``None``
    when no class has one.
    """
    names = list(class_names)
    ap50: dict[str, float | None] = dict.fromkeys(names)
    pr_curve = None
    classes = map_result["classes"].reshape(-1).tolist() if "classes" in map_result else []
    if "precision" in map_result and map_result["precision"].ndim == 5:
        # (iou, recall, class, area, max_dets): IoU 0.5, every class, all areas, 100 dets.
        precision = map_result["precision"][0, :, :, 0, -1].float()
        defined = (precision >= 0).all(dim=0)  # -1: a class with no object and no detection
        # The mean over classes first, then (with several classes) each class's own curve, by name.
        pr_curve = {ALL_CLASSES: precision[:, defined].mean(dim=1).cpu()} if defined.any() else None
        # AP@0.5 of each class: the mean precision over the 101 recall levels (COCO's way).
        for column, cls in enumerate(classes):
            if 0 <= cls < len(names) and column < precision.shape[1] and defined[column]:
                ap50[names[cls]] = float(precision[:, column].mean())
                if pr_curve is not None and len(names) > 1:
                    pr_curve[names[cls]] = precision[:, column].cpu()
    per_class: dict[str, float | None] = dict.fromkeys(names)
    if "map_per_class" in map_result:
        for value, cls in zip(map_result["map_per_class"].reshape(-1).tolist(), classes, strict=True):
            if 0 <= cls < len(names) and value >= 0:
                per_class[names[cls]] = float(value)
    evaluation = {
        "split": split,
        **{k: float(map_result[k]) for k in MAP_KEYS},
        "map_per_class": per_class,
        "map_50_per_class": ap50,
        "display_threshold": float(display_threshold),
        "precision": float(pr["precision"]),
        "recall": float(pr["recall"]),
        "images": int(confusion["images"]),
        "objects": int(confusion["objects"]),
        "confusion_matrix": confusion["matrix"].tolist(),
        "class_names": names,
    }
    return evaluation, pr_curve
