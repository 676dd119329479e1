"""From the network's outputs to detections: decode offsets, score, non-maximum suppression.

The chapter's ``multibox_detection`` and the forms the rest of the package needs: padded
fixed-size tensors (training metrics, the exported graph), the top ``k`` per image, and one
dict per picture. Boxes are normalised ``(x1, y1, x2, y2)`` as everywhere in the pipeline
(:mod:`tinyssd.boxes`). Every function is batched and device-agnostic.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import batched_nms

from tinyssd.boxes import CHAPTER_NMS_THRESHOLD, CHAPTER_POS_THRESHOLD
from tinyssd.model.anchors import decode_offsets

__all__ = [
    "detections_from_probs",
    "multibox_detection",
    "multibox_detection_per_image",
    "padded_detections",
    "split_detections",
    "top_detections",
]


def _decode_and_score(cls_probs: Tensor, offset_preds: Tensor, anchors: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Best foreground class, its probability and the decoded boxes.

    ``cls_probs (B, C+1, A)``, ``offset_preds (B, 4A)``, ``anchors (1, A, 4)`` ->
    ``scores (B, A)``, ``classes (B, A)`` (0-based object class), ``boxes (B, A, 4)``.
    """
    batch = cls_probs.shape[0]
    scores, classes = cls_probs[:, 1:, :].float().max(dim=1)
    anchors = anchors.reshape(1, -1, 4).float()
    boxes = decode_offsets(anchors, offset_preds.float().reshape(batch, -1, 4))
    return scores, classes, boxes


def _nms_keep_mask(boxes: Tensor, scores: Tensor, nms_threshold: float, candidates: Tensor | None = None) -> Tensor:
    """Class-agnostic NMS per image. ``boxes (B, A, 4)``, ``scores (B, A)`` -> keep ``(B, A)`` bool.

    ``candidates (B, A)`` bool restricts NMS to those boxes (the rest are not kept).
    """
    batch, num = scores.shape
    image_idx = torch.arange(batch, device=scores.device).repeat_interleave(num)
    flat_boxes, flat_scores = boxes.reshape(-1, 4), scores.reshape(-1)
    keep = torch.zeros(batch * num, dtype=torch.bool, device=scores.device)
    if candidates is None:
        kept = batched_nms(flat_boxes, flat_scores, image_idx, nms_threshold)
        keep[kept] = True
    else:
        cand = candidates.reshape(-1).nonzero().squeeze(1)
        kept = batched_nms(flat_boxes[cand], flat_scores[cand], image_idx[cand], nms_threshold)
        keep[cand[kept]] = True
    return keep.reshape(batch, num)


def multibox_detection(
    cls_probs: Tensor,
    offset_preds: Tensor,
    anchors: Tensor,
    nms_threshold: float = CHAPTER_NMS_THRESHOLD,
    pos_threshold: float = CHAPTER_POS_THRESHOLD,
) -> Tensor:
    """Predicted boxes with non-maximum suppression, in the chapter's format.

    Args:
        cls_probs: ``(B, C+1, A)`` class probabilities (class 0 = background).
        offset_preds: ``(B, 4A)`` predicted offsets.
        anchors: ``(1, A, 4)`` normalised corners.
        nms_threshold: boxes overlapping a higher-scoring kept box by more IoU are dropped.
        pos_threshold: foreground probability below which a box becomes background.

    Returns:
        ``(B, A, 6)`` rows ``[class, score, x1, y1, x2, y2]``. Boxes kept by NMS come first,
        by descending score, then the suppressed ones in anchor order with class -1; a box
        whose score is below ``pos_threshold`` gets class -1 and score ``1 - score``.
    """
    scores, classes, boxes = _decode_and_score(cls_probs, offset_preds, anchors)
    keep = _nms_keep_mask(boxes, scores, nms_threshold)
    # Stable sort: kept boxes by descending score, then suppressed ones in anchor order.
    key = torch.where(keep, -scores, torch.full_like(scores, float("inf")))
    order = torch.sort(key, dim=1, stable=True).indices
    scores = scores.gather(1, order)
    classes = torch.where(keep, classes, torch.full_like(classes, -1)).gather(1, order)
    boxes = boxes.gather(1, order[..., None].expand_as(boxes))
    below = scores < pos_threshold
    classes = torch.where(below, torch.full_like(classes, -1), classes)
    scores = torch.where(below, 1 - scores, scores)
    return torch.cat((classes[..., None].to(scores.dtype), scores[..., None], boxes), dim=-1)


def padded_detections(
    scores: Tensor,
    classes: Tensor,
    boxes: Tensor,
    nms_threshold: float = CHAPTER_NMS_THRESHOLD,
    pos_threshold: float = CHAPTER_POS_THRESHOLD,
    max_detections: int | None = 100,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """NMS and the top detections of each image, in fixed-size tensors (what an exported graph returns).

    Args:
        scores: ``(B, A)`` best foreground probability of each anchor.
        classes: ``(B, A)`` its 0-based object class.
        boxes: ``(B, A, 4)`` decoded normalised corners.

    Returns:
        ``boxes (B, K, 4)``, ``scores (B, K)``, ``labels (B, K)`` and ``valid (B, K)`` bool, with
        ``K = min(max_detections, A)``: the kept boxes by descending score (a stable sort, so
        equal scores keep anchor order), then padding (``valid`` false). Only boxes scoring at
        least ``pos_threshold`` take part in NMS: a lower-scoring box can only suppress boxes
        scoring lower still, so this equals the foreground rows of :func:`multibox_detection`.
    """
    keep = _nms_keep_mask(boxes, scores, nms_threshold, candidates=scores >= pos_threshold)
    return top_detections(scores, classes, boxes, keep, max_detections)


def top_detections(
    scores: Tensor,
    classes: Tensor,
    boxes: Tensor,
    keep: Tensor,
    max_detections: int | None = 100,
    onnx_topk: bool = False,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The kept boxes of each image by descending score, padded to ``K = min(max_detections, A)``.

    ``scores``, ``classes``, ``keep`` ``(B, A)`` (``keep`` bool, e.g. the NMS survivors),
    ``boxes (B, A, 4)`` -> ``boxes (B, K, 4)``, ``scores (B, K)``, ``labels (B, K)``, ``valid (B, K)``.
    Fixed shapes and no data-dependent indexing: the form an exported graph can carry. Equal
    scores keep their anchor order, so which of them make the top ``K`` is the same everywhere.
    """
    masked = torch.where(keep, scores, torch.full_like(scores, -1.0))
    k = scores.shape[1] if max_detections is None else min(max_detections, scores.shape[1])
    if onnx_topk:
        # For ONNX export, which lacks the stable sort: ONNX TopK puts equal values in index
        # order, as the stable sort does (PyTorch's own topk does not promise to).
        top_scores, top_idx = torch.topk(masked, k, dim=1, largest=True, sorted=True)
    else:
        top_scores, top_idx = torch.sort(masked, dim=1, descending=True, stable=True)
        top_scores, top_idx = top_scores[:, :k], top_idx[:, :k]
    top_boxes = boxes.gather(1, top_idx[..., None].expand(-1, -1, 4))
    return top_boxes, top_scores, classes.gather(1, top_idx), top_scores >= 0


def split_detections(boxes: Tensor, scores: Tensor, labels: Tensor, valid: Tensor) -> list[dict[str, Tensor]]:
    """:func:`padded_detections`' tensors -> one ``{"boxes", "scores", "labels"}`` dict per image."""
    return [{"boxes": boxes[i][m], "scores": scores[i][m], "labels": labels[i][m].long()} for i, m in enumerate(valid)]


def multibox_detection_per_image(
    cls_probs: Tensor,
    offset_preds: Tensor,
    anchors: Tensor,
    nms_threshold: float = CHAPTER_NMS_THRESHOLD,
    pos_threshold: float = CHAPTER_POS_THRESHOLD,
    max_detections: int | None = 100,
) -> list[dict[str, Tensor]]:
    """The detections of :func:`multibox_detection` as one dict per image.

    Same arguments; returns, per image, ``boxes (N, 4)`` normalised corners, ``scores (N,)``
    and ``labels (N,)`` (0-based object class), by descending score, at most
    ``max_detections`` (see :func:`padded_detections`).
    """
    scores, classes, boxes = _decode_and_score(cls_probs, offset_preds, anchors)
    return split_detections(*padded_detections(scores, classes, boxes, nms_threshold, pos_threshold, max_detections))


def detections_from_probs(
    class_probs: Tensor,
    boxes: Tensor,
    nms_threshold: float = CHAPTER_NMS_THRESHOLD,
    pos_threshold: float = CHAPTER_POS_THRESHOLD,
    max_detections: int | None = 100,
) -> list[dict[str, Tensor]]:
    """Per-image detections from ``class_probs (B, A, C+1)`` and decoded ``boxes (B, A, 4)``.

    The post-processing of an exported graph without NMS (``nms=false``): the same result as
    :func:`multibox_detection_per_image` on the raw network outputs.
    """
    scores, classes = class_probs[..., 1:].float().max(dim=-1)
    return split_detections(
        *padded_detections(scores, classes, boxes.float(), nms_threshold, pos_threshold, max_detections)
    )
