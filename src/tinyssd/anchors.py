"""Anchor boxes: generation, labeling (training targets) and decoding (detection output).

The semantics follow the d2l anchor-box section used by the SSD chapter:

* boxes are ``(x1, y1, x2, y2)`` corners normalised to ``[0, 1]`` by the image size;
* an anchor's offsets to its ground truth are centre offsets scaled by 10 and log size
  ratios scaled by 5 (with ``eps = 1e-6`` inside the log);
* background is class 0, object class ``k`` is labelled ``k + 1``.

Every function is batched and device-agnostic: no Python loop runs over images or anchors
(``multibox_target`` loops over ground-truth *slots*, which are few).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchvision.ops import batched_nms, box_convert, box_iou

from tinyssd.boxes import CHAPTER_NMS_THRESHOLD, CHAPTER_POS_THRESHOLD, valid_rows

__all__ = [
    "decode_offsets",
    "detections_from_probs",
    "encode_offsets",
    "multibox_detection",
    "multibox_detection_per_image",
    "multibox_prior",
    "multibox_target",
    "num_anchors_per_location",
    "padded_detections",
    "split_detections",
    "top_detections",
]

OFFSET_CENTER_SCALE = 10.0
OFFSET_SIZE_SCALE = 5.0
OFFSET_EPS = 1e-6
POS_IOU_THRESHOLD = 0.5


def num_anchors_per_location(sizes: Sequence[float], ratios: Sequence[float]) -> int:
    """Anchors centred on each feature-map cell: ``len(sizes) + len(ratios) - 1``."""
    return len(sizes) + len(ratios) - 1


def multibox_prior(feature_map: Tensor, sizes: Sequence[float], ratios: Sequence[float]) -> Tensor:
    """Anchor boxes centred on every cell of a feature map.

    Args:
        feature_map: ``(..., H, W)``; only its height, width and device are used.
        sizes: ``n`` anchor sizes (fractions of the image side).
        ratios: ``m`` width/height aspect ratios.

    Returns:
        ``(1, H * W * (n + m - 1), 4)`` float32 normalised corners. Cells run row-major,
        and each cell holds, in order, ``(s_i, r_0)`` for every size and then
        ``(s_0, r_j)`` for ``j >= 1``.
    """
    height, width = feature_map.shape[-2:]
    device = feature_map.device
    size_t = torch.as_tensor(sizes, dtype=torch.float32, device=device)
    ratio_t = torch.as_tensor(ratios, dtype=torch.float32, device=device)
    sqrt_r = ratio_t.sqrt()
    # Widths are scaled by H/W so that a ratio-1 anchor is square in pixels on a
    # rectangular input.
    w = torch.cat((size_t * sqrt_r[0], size_t[0] * sqrt_r[1:])) * height / width
    h = torch.cat((size_t / sqrt_r[0], size_t[0] / sqrt_r[1:]))
    half = torch.stack((-w, -h, w, h), dim=1) / 2  # (a, 4)

    cy = (torch.arange(height, device=device, dtype=torch.float32) + 0.5) / height
    cx = (torch.arange(width, device=device, dtype=torch.float32) + 0.5) / width
    yy, xx = torch.meshgrid(cy, cx, indexing="ij")
    centers = torch.stack((xx, yy, xx, yy), dim=-1).reshape(-1, 1, 4)  # (H*W, 1, 4)
    return (centers + half).reshape(1, -1, 4)


def encode_offsets(anchors: Tensor, boxes: Tensor, eps: float = OFFSET_EPS) -> Tensor:
    """Offsets that move ``anchors`` onto ``boxes`` (both ``(..., 4)`` corners) -> ``(..., 4)``."""
    anc = box_convert(anchors, "xyxy", "cxcywh")
    box = box_convert(boxes, "xyxy", "cxcywh")
    xy = OFFSET_CENTER_SCALE * (box[..., :2] - anc[..., :2]) / anc[..., 2:]
    wh = OFFSET_SIZE_SCALE * torch.log(eps + box[..., 2:] / anc[..., 2:])
    return torch.cat((xy, wh), dim=-1)


def decode_offsets(anchors: Tensor, offsets: Tensor) -> Tensor:
    """Inverse of :func:`encode_offsets`: boxes ``(..., 4)`` corners from anchors and offsets."""
    anc = box_convert(anchors, "xyxy", "cxcywh")
    xy = offsets[..., :2] * anc[..., 2:] / OFFSET_CENTER_SCALE + anc[..., :2]
    wh = torch.exp(offsets[..., 2:] / OFFSET_SIZE_SCALE) * anc[..., 2:]
    return box_convert(torch.cat((xy, wh), dim=-1), "cxcywh", "xyxy")


def _assign_anchors(anchors: Tensor, gt_boxes: Tensor, gt_valid: Tensor, iou_threshold: float) -> Tensor:
    """Index of the ground truth each anchor is assigned to, or -1.

    Args:
        anchors: ``(A, 4)``; gt_boxes: ``(B, G, 4)``; gt_valid: ``(B, G)`` bool.

    Returns:
        ``(B, A)`` long.
    """
    batch, num_gt = gt_valid.shape
    num_anchors = anchors.shape[0]
    iou = box_iou(anchors, gt_boxes.reshape(-1, 4)).reshape(num_anchors, batch, num_gt)
    iou = iou.permute(1, 0, 2)  # (B, A, G)
    # Padding slots never match; -1 is below any real IoU, so the greedy step skips them.
    iou = torch.where(gt_valid[:, None, :], iou, torch.full_like(iou, -1.0))

    # 1. Each anchor takes its best ground truth when the IoU clears the threshold.
    best_iou, best_gt = iou.max(dim=2)
    assigned = torch.where(best_iou >= iou_threshold, best_gt, torch.full_like(best_gt, -1))

    # 2. Each ground truth claims its best anchor greedily: global max of the IoU matrix,
    #    then that anchor's row and that ground truth's column are discarded. One pass per
    #    ground-truth slot, all images at once; images with fewer objects go idle (-1 max).
    rows = torch.arange(batch, device=anchors.device)
    work = iou.clone()
    for _ in range(num_gt):
        top, flat_idx = work.reshape(batch, -1).max(dim=1)
        anc, gt = flat_idx // num_gt, flat_idx % num_gt
        active = top >= 0
        assigned[rows, anc] = torch.where(active, gt, assigned[rows, anc])
        work[rows, anc, :] = torch.where(active[:, None], -1.0, work[rows, anc, :])
        work[rows, :, gt] = torch.where(active[:, None], -1.0, work[rows, :, gt])
    return assigned


def multibox_target(
    anchors: Tensor, labels: Tensor, iou_threshold: float = POS_IOU_THRESHOLD
) -> tuple[Tensor, Tensor, Tensor]:
    """Label anchors with classes and box offsets from ground truth.

    Args:
        anchors: ``(1, A, 4)`` or ``(A, 4)`` normalised corners.
        labels: ``(B, G, 5)`` rows ``[class, x1, y1, x2, y2]`` normalised; rows with
            ``class < 0`` are padding and ignored.
        iou_threshold: minimum IoU for an anchor to take its best ground truth.

    Returns:
        ``bbox_offsets (B, 4A)`` float, ``bbox_mask (B, 4A)`` float (1 for positive anchors),
        ``class_labels (B, A)`` long (0 = background, ``k + 1`` for class ``k``).
    """
    anchors = anchors.reshape(-1, 4).float()
    labels = labels.float()
    batch, num_anchors = labels.shape[0], anchors.shape[0]
    gt_valid = valid_rows(labels)
    gt_boxes = labels[..., 1:]

    assigned = _assign_anchors(anchors, gt_boxes, gt_valid, iou_threshold)  # (B, A)
    positive = assigned >= 0
    safe = assigned.clamp(min=0)
    gt_class = torch.gather(labels[..., 0], 1, safe).long() + 1
    class_labels = torch.where(positive, gt_class, torch.zeros_like(gt_class))

    matched = torch.gather(gt_boxes, 1, safe[..., None].expand(batch, num_anchors, 4))
    # Unmatched anchors encode against themselves, so no log(0) appears before masking.
    anchors_b = anchors.expand(batch, num_anchors, 4)
    matched = torch.where(positive[..., None], matched, anchors_b)
    mask = positive[..., None].expand(batch, num_anchors, 4).float()
    offsets = encode_offsets(anchors_b, matched) * mask
    return offsets.reshape(batch, -1), mask.reshape(batch, -1), class_labels


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
    scores: Tensor, classes: Tensor, boxes: Tensor, keep: Tensor, max_detections: int | None = 100
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The kept boxes of each image by descending score, padded to ``K = min(max_detections, A)``.

    ``scores``, ``classes``, ``keep`` ``(B, A)`` (``keep`` bool, e.g. the NMS survivors),
    ``boxes (B, A, 4)`` -> ``boxes (B, K, 4)``, ``scores (B, K)``, ``labels (B, K)``, ``valid (B, K)``.
    Fixed shapes and no data-dependent indexing: the form an exported graph can carry.
    """
    masked = torch.where(keep, scores, torch.full_like(scores, -1.0))
    k = scores.shape[1] if max_detections is None else min(max_detections, scores.shape[1])
    if torch.compiler.is_exporting():
        # ONNX TopK puts equal values in index order, as the stable sort below does (which
        # ONNX export lacks).
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
