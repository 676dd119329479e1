"""One evaluator for every model that detects: COCO mAP, precision/recall and the confusion matrix.

The LightningModule feeds it during validation and test epochs; an exported model run by a
runtime (:mod:`tinyssd.pipeline.evaluation`) feeds it the same way, so both give the same
``metrics.json`` for the same detections.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from tinyssd.boxes import to_pixels
from tinyssd.model.metrics import (
    DetectionConfusionMatrix,
    DetectionPrecisionRecall,
    evaluation_summary,
    make_map_metric,
    to_pixel_targets,
)

__all__ = ["DetectionEvaluator"]


class DetectionEvaluator(nn.Module):
    """Accumulates detections against ground truth over a split; :meth:`compute` summarises and resets.

    Args:
        class_names: the classes, in class-id order.
        display_threshold: the score from which a detection counts in precision, recall and
            the confusion matrix (mAP takes every detection).
        map_backend: torchmetrics' mAP backend.
    """

    def __init__(self, class_names: Sequence[str], display_threshold: float, map_backend: str = "faster_coco_eval"):
        super().__init__()
        self.class_names = list(class_names)
        self.map = make_map_metric(len(self.class_names), map_backend)
        self.pr = DetectionPrecisionRecall(threshold=display_threshold)
        self.confusion = DetectionConfusionMatrix(len(self.class_names), threshold=display_threshold)
        # eval turns it on: the error breakdown (tinyssd.model.error_analysis) keeps every detection.
        self.error_analysis = False
        self._kept: list[tuple[list[dict[str, Tensor]], list[dict[str, Tensor]]]] = []

    @property
    def display_threshold(self) -> float:
        return float(self.confusion.threshold)

    @display_threshold.setter
    def display_threshold(self, threshold: float) -> None:
        self.pr.threshold = self.confusion.threshold = threshold

    def update(self, detections: list[dict[str, Tensor]], labels: Tensor, image_hw: tuple[int, int]) -> None:
        """``detections`` per picture with normalised boxes; ``labels (B, G, 5)`` padded, normalised."""
        height, width = image_hw
        # Clipped to the input, as predict and the Detector report them (and torchvision's detectors
        # clip): the score is that of the boxes a user gets.
        preds = [
            {"boxes": to_pixels(d["boxes"].clamp(0, 1), width, height), "scores": d["scores"], "labels": d["labels"]}
            for d in detections
        ]
        targets = to_pixel_targets(labels, width, height)
        self.map.update(preds, targets)
        self.pr.update(preds, targets)
        self.confusion.update(preds, targets)
        if self.error_analysis:
            kept_preds = [{k: v.detach().cpu() for k, v in p.items()} for p in preds]
            self._kept.append((kept_preds, [{k: v.cpu() for k, v in t.items()} for t in targets]))

    def compute(self, split: str) -> tuple[dict[str, Any], dict[str, Tensor], Tensor | None]:
        """``(evaluation, scalars, pr_curve)``, then reset: the summary ``metrics.json`` holds, the
        scalars to log (``map``, ``map_50``, ``map_75``, ``mar_100``, ``precision``, ``recall``) and
        the precision-recall curve."""
        result, pr = self.map.compute(), self.pr.compute()
        confusion = {k: v.cpu() for k, v in self.confusion.compute().items()}
        for metric in (self.map, self.pr, self.confusion):
            metric.reset()
        scalars = {k: result[k].float() for k in ("map", "map_50", "map_75", "mar_100")}
        scalars.update(precision=pr["precision"].float(), recall=pr["recall"].float())
        evaluation, curve = evaluation_summary(split, result, pr, confusion, self.class_names, self.display_threshold)
        if self.error_analysis:
            from tinyssd.model.error_analysis import error_breakdown

            detections = [p for preds, _ in self._kept for p in preds]
            truth = [t for _, targets in self._kept for t in targets]
            evaluation["errors"] = error_breakdown(detections, truth, self.class_names)
            self._kept = []
        return evaluation, scalars, curve
