"""Anchor boxes: generation, labeling (training targets) and the offsets between boxes.

The semantics follow the d2l anchor-box section used by the SSD chapter:

* boxes are ``(x1, y1, x2, y2)`` corners normalised to ``[0, 1]`` by the image size;
* an anchor's offsets to its ground truth are centre offsets scaled by 10 and log size
  ratios scaled by 5 (with ``eps = 1e-6`` inside the log);
* background is class 0, object class ``k`` is labelled ``k + 1``.

Every function is batched and device-agnostic: no Python loop runs over images or anchors
(``multibox_target`` loops over ground-truth *slots*, which are few).

Two assigners label the anchors: the chapter's (``max_iou``: IoU >= 0.5, and every object its
best anchor) and ATSS (``atss``, Zhang et al. 2020, "Bridging the Gap Between Anchor-based and
Anchor-free Detection"): per object the ``k`` anchors nearest its centre on each level are
candidates, and those whose IoU reaches the candidates' mean + standard deviation, with their
centre inside the object, are positive. The threshold adapts to each object's size and shape.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor
from torchvision.ops import box_convert, box_iou

from tinyssd.boxes import valid_rows

__all__ = [
    "ASSIGNERS",
    "ATSS_TOPK",
    "decode_offsets",
    "encode_offsets",
    "multibox_prior",
    "multibox_target",
    "num_anchors_per_location",
]

OFFSET_CENTER_SCALE = 10.0
OFFSET_SIZE_SCALE = 5.0
OFFSET_EPS = 1e-6
POS_IOU_THRESHOLD = 0.5
# The anchor-labelling rules multibox_target knows; "max_iou" is the chapter's.
# ATSS candidates per object and level: the anchors of the 9 cells nearest its centre (the paper's
# k = 9, with one anchor per cell; TinySSD centres several anchors on each cell).
ATSS_TOPK = 9


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


def _atss_assign(
    anchors: Tensor, gt_boxes: Tensor, gt_valid: Tensor, level_counts: Sequence[int], level_topk: Sequence[int]
) -> Tensor:
    """ATSS: index of the ground truth each anchor is assigned to, or -1.

    Args:
        anchors: ``(A, 4)``; gt_boxes: ``(B, G, 4)``; gt_valid: ``(B, G)`` bool;
        level_counts: anchors per pyramid level, in the order of ``anchors`` (sum ``A``);
        level_topk: candidates per object on each level (fewer where a level has fewer anchors).

    Returns:
        ``(B, A)`` long.
    """
    batch, num_gt = gt_valid.shape
    num_anchors = anchors.shape[0]
    if sum(level_counts) != num_anchors:
        raise ValueError(f"level_counts {list(level_counts)} add up to {sum(level_counts)}, not {num_anchors} anchors")
    iou = box_iou(anchors, gt_boxes.reshape(-1, 4)).reshape(num_anchors, batch, num_gt).permute(1, 0, 2)  # (B, A, G)
    anchor_centres = (anchors[:, :2] + anchors[:, 2:]) / 2  # (A, 2)
    gt_centres = (gt_boxes[..., :2] + gt_boxes[..., 2:]) / 2  # (B, G, 2)
    distance = torch.cdist(anchor_centres.expand(batch, -1, -1), gt_centres)  # (B, A, G)

    # Candidates: per level, the topk anchors nearest each object's centre.
    candidate = torch.zeros_like(iou, dtype=torch.bool)
    start = 0
    for count, topk in zip(level_counts, level_topk, strict=True):  # a few levels, not anchors
        k = min(topk, count)
        nearest = distance[:, start : start + count].topk(k, dim=1, largest=False).indices + start  # (B, k, G)
        candidate.scatter_(1, nearest, True)
        start += count

    # Threshold per object: mean + std (unbiased, as the paper's code) of its candidates' IoU.
    num_candidates = candidate.sum(dim=1).clamp(min=2)  # (B, G)
    candidate_iou = torch.where(candidate, iou, torch.zeros_like(iou))
    mean = candidate_iou.sum(dim=1) / num_candidates
    var = (torch.where(candidate, iou - mean[:, None], torch.zeros_like(iou)) ** 2).sum(dim=1) / (num_candidates - 1)
    threshold = mean + var.sqrt()  # (B, G)

    # Positive: a candidate at or above the threshold whose centre lies inside the object.
    lt = anchor_centres[None, :, None, :] - gt_boxes[:, None, :, :2]  # (B, A, G, 2)
    rb = gt_boxes[:, None, :, 2:] - anchor_centres[None, :, None, :]
    inside = torch.cat((lt, rb), dim=-1).amin(dim=-1) > 0
    positive = candidate & inside & (iou >= threshold[:, None, :]) & gt_valid[:, None, :]

    # An anchor positive for several objects takes the one it overlaps most.
    best_iou, best_gt = torch.where(positive, iou, torch.full_like(iou, -1.0)).max(dim=2)
    return torch.where(best_iou >= 0, best_gt, torch.full_like(best_gt, -1))


def _max_iou_assigner(anchors: Tensor, gt_boxes: Tensor, gt_valid: Tensor, *, iou_threshold: float, **_: Any) -> Tensor:
    return _assign_anchors(anchors, gt_boxes, gt_valid, iou_threshold)


def _atss_assigner(
    anchors: Tensor,
    gt_boxes: Tensor,
    gt_valid: Tensor,
    *,
    level_counts: Sequence[int] | None,
    level_topk: Sequence[int] | None,
    **_: Any,
) -> Tensor:
    if level_counts is None:
        raise ValueError("assigner='atss' needs level_counts (anchors per level)")
    topk = [ATSS_TOPK] * len(level_counts) if level_topk is None else level_topk
    return _atss_assign(anchors, gt_boxes, gt_valid, level_counts, topk)


# How training labels anchors, by name: ``(anchors (A, 4), gt_boxes (B, G, 4), gt_valid (B, G),
# **options) -> (B, A)`` the ground truth each anchor takes, or -1. A new assigner is one
# function and one row.
ASSIGNERS: dict[str, Callable[..., Tensor]] = {"max_iou": _max_iou_assigner, "atss": _atss_assigner}


def multibox_target(
    anchors: Tensor,
    labels: Tensor,
    iou_threshold: float = POS_IOU_THRESHOLD,
    assigner: str = "max_iou",
    level_counts: Sequence[int] | None = None,
    level_topk: Sequence[int] | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Label anchors with classes and box offsets from ground truth.

    Args:
        anchors: ``(1, A, 4)`` or ``(A, 4)`` normalised corners.
        labels: ``(B, G, 5)`` rows ``[class, x1, y1, x2, y2]`` normalised; rows with
            ``class < 0`` are padding and ignored.
        iou_threshold: ``max_iou``: minimum IoU for an anchor to take its best ground truth.
        assigner: ``max_iou`` (the chapter's) or ``atss`` (see the module docstring).
        level_counts: ``atss``: anchors per level, in order (``TinySSD.anchor_level_counts``).
        level_topk: ``atss``: candidates per object on each level (default :data:`ATSS_TOPK`);
            with ``a`` anchors per cell, ``ATSS_TOPK * a`` takes the nearest cells' anchors.

    Returns:
        ``bbox_offsets (B, 4A)`` float, ``bbox_mask (B, 4A)`` float (1 for positive anchors),
        ``class_labels (B, A)`` long (0 = background, ``k + 1`` for class ``k``).
    """
    anchors = anchors.reshape(-1, 4).float()
    labels = labels.float()
    batch, num_anchors = labels.shape[0], anchors.shape[0]
    gt_valid = valid_rows(labels)
    gt_boxes = labels[..., 1:]

    if assigner not in ASSIGNERS:
        raise ValueError(f"unknown assigner {assigner!r}; one of {list(ASSIGNERS)}")
    assigned = ASSIGNERS[assigner](  # (B, A)
        anchors, gt_boxes, gt_valid, iou_threshold=iou_threshold, level_counts=level_counts, level_topk=level_topk
    )
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
