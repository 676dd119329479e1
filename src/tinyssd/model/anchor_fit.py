"""Anchors against a data set's boxes: the best IoU any anchor reaches, and anchors fitted to the boxes.

An object the chapter's labelling learns well overlaps some anchor at IoU >= 0.5; below that it
is labelled on its single best anchor only. The share of objects that have such an anchor is the
*reachable recall* of an anchor layout: what ``tinyssd check`` reports per size bucket.

Anchors are not clipped, so an anchor shape overlaps a box most when it sits on the cell centre
nearest the box's centre (the overlap along each axis shrinks as the centres part). The best
anchor of every object is therefore found among the anchors of one cell per scale: ``N x a`` IoUs
per scale, never ``N x A``.

:func:`fit_anchors` chooses the five scales' sizes and ratios as YOLOv5's autoanchor does for
its grid: k-means on ``1 - IoU`` of the boxes' shapes for the sizes (and on the log aspect
ratio for the ratios), then an evolution (multiplicative mutations, kept when they help) of the
reachable recall on the real grid, with the mean best IoU breaking ties.

Boxes are ``(N, 4)`` corners normalised to the square model input (the canvas).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from tinyssd.model.anchors import POS_IOU_THRESHOLD, multibox_prior

__all__ = [
    "SIZE_BUCKETS",
    "AnchorFit",
    "best_anchor_iou",
    "fit_anchors",
    "kmeans_shapes",
    "reachable_recall",
    "shape_iou",
]

# COCO's size buckets, by the square root of the box's area in canvas pixels.
SIZE_BUCKETS: dict[str, tuple[float, float]] = {"small": (0.0, 32.0), "medium": (32.0, 96.0), "large": (96.0, math.inf)}
# Bounds a fitted anchor stays within: sizes as fractions of the canvas side, width/height ratios.
SIZE_RANGE = (0.01, 1.5)
RATIO_RANGE = (1 / 8, 8.0)
# Evolution (YOLOv5's autoanchor): the share of values mutated, the noise's scale, its clip.
MUTATION_PROBABILITY = 0.9
MUTATION_SIGMA = 0.1
# Boxes the fit looks at (a seeded sample of larger sets; the report counts every box).
MAX_FIT_BOXES = 4000


def _wh(boxes: Tensor) -> Tensor:
    return (boxes[:, 2:] - boxes[:, :2]).clamp(min=1e-9)


def best_anchor_iou(
    boxes: Tensor, sizes: Sequence[Sequence[float]], ratios: Sequence[Sequence[float]], grids: Sequence[tuple[int, int]]
) -> tuple[Tensor, Tensor]:
    """The IoU of each box's best anchor, and the scale that anchor belongs to.

    Args:
        boxes: ``(N, 4)`` canvas-normalised corners.
        sizes, ratios: per scale, as ``TinySSD`` takes them.
        grids: per scale, the feature map's ``(H, W)`` (:func:`tinyssd.model.net.feature_map_shapes`).

    Returns:
        ``iou (N,)`` float and ``scale (N,)`` long.
    """
    boxes = boxes.float()
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2  # (N, 2) x, y
    best = torch.zeros(len(boxes), device=boxes.device)
    best_scale = torch.zeros(len(boxes), dtype=torch.long, device=boxes.device)
    for scale, ((height, width), s, r) in enumerate(zip(grids, sizes, ratios, strict=True)):  # five scales
        per_cell = len(s) + len(r) - 1
        # The first cell's anchors are the scale's shapes (multibox_prior defines them once).
        cell = multibox_prior(boxes.new_empty(height, width), s, r)[0, :per_cell]  # (a, 4)
        half = (cell[:, 2:] - cell[:, :2]) / 2  # (a, 2)
        grid = torch.tensor([width, height], dtype=torch.float32, device=boxes.device)
        nearest = ((centre * grid).floor().clamp(min=0).minimum(grid - 1) + 0.5) / grid  # (N, 2)
        anchors = torch.cat((nearest[:, None] - half, nearest[:, None] + half), dim=-1)  # (N, a, 4)
        lt = torch.maximum(anchors[..., :2], boxes[:, None, :2])
        rb = torch.minimum(anchors[..., 2:], boxes[:, None, 2:])
        inter = (rb - lt).clamp(min=0).prod(dim=-1)
        union = (anchors[..., 2:] - anchors[..., :2]).prod(dim=-1) + _wh(boxes).prod(dim=-1)[:, None] - inter
        iou = (inter / union).amax(dim=1)
        better = iou > best
        best, best_scale = torch.where(better, iou, best), torch.where(better, scale, best_scale)
    return best, best_scale


def reachable_recall(
    boxes: Tensor, best_iou: Tensor, image_size: int, threshold: float = POS_IOU_THRESHOLD
) -> dict[str, dict[str, float | None]]:
    """Objects, reachable objects, their share and mean best IoU per :data:`SIZE_BUCKETS` bucket and ``all``
    (share and mean None for an empty bucket)."""
    side = _wh(boxes.float()).prod(dim=1).sqrt() * image_size
    rows = {}
    for name, (low, high) in {**SIZE_BUCKETS, "all": (0.0, math.inf)}.items():
        inside = (side >= low) & (side < high)
        count, reached = int(inside.sum()), int((inside & (best_iou >= threshold)).sum())
        rows[name] = {
            "objects": count,
            "reachable": reached,
            "recall": reached / count if count else None,
            "mean_best_iou": float(best_iou[inside].mean()) if count else None,
        }
    return rows


def shape_iou(wh: Tensor, centres: Tensor) -> Tensor:
    """IoU of shapes ``(N, 2)`` and ``(K, 2)`` (widths, heights) placed on one centre -> ``(N, K)``."""
    inter = torch.minimum(wh[:, None], centres[None]).prod(dim=-1)
    return inter / (wh.prod(dim=-1)[:, None] + centres.prod(dim=-1)[None] - inter)


def kmeans_shapes(wh: Tensor, k: int, iterations: int = 50) -> Tensor:
    """``k`` box shapes ``(k, 2)`` by k-means with the distance ``1 - IoU``, smallest area first.

    Starts from the shapes at the area quantiles (deterministic); a cluster's centre is the mean
    shape of its members (an empty cluster keeps its centre).
    """
    order = wh.prod(dim=1).argsort()
    picks = ((torch.arange(k, dtype=torch.float64) + 0.5) / k * len(wh)).long().clamp(max=len(wh) - 1)
    centres = wh[order[picks]].clone()
    for _ in range(iterations):
        member = shape_iou(wh, centres).argmax(dim=1)
        total = torch.zeros_like(centres).index_add_(0, member, wh)
        count = torch.zeros(k, dtype=wh.dtype).index_add_(0, member, torch.ones_like(wh[:, 0]))
        updated = torch.where(count[:, None] > 0, total / count.clamp(min=1)[:, None], centres)
        if torch.allclose(updated, centres):
            break
        centres = updated
    return centres[centres.prod(dim=1).argsort()]


def _kmeans_ratios(log_ratio: Tensor, k: int, iterations: int = 50) -> list[float]:
    """``k`` aspect ratios by 1-D k-means on the log ratio; the most common cluster first."""
    centres = log_ratio.quantile(((torch.arange(k, dtype=torch.float64) + 0.5) / k).to(log_ratio.dtype))
    for _ in range(iterations):
        member = (log_ratio[:, None] - centres[None]).abs().argmin(dim=1)
        total = torch.zeros_like(centres).index_add_(0, member, log_ratio)
        count = torch.zeros_like(centres).index_add_(0, member, torch.ones_like(log_ratio))
        centres = torch.where(count > 0, total / count.clamp(min=1), centres)
    count = torch.bincount((log_ratio[:, None] - centres[None]).abs().argmin(dim=1), minlength=k)
    return [math.exp(float(centres[i])) for i in count.argsort(descending=True, stable=True)]


@dataclass
class AnchorFit:
    """Fitted ``sizes`` and ``ratios`` (five scales) and the fit's reachable recall and mean best IoU."""

    sizes: list[list[float]]
    ratios: list[list[float]]
    recall: float
    mean_iou: float


def _fitness(boxes: Tensor, sizes: list, ratios: list, grids: Sequence[tuple[int, int]]) -> tuple[float, float, float]:
    iou, _ = best_anchor_iou(boxes, sizes, ratios, grids)
    recall, mean = float((iou >= POS_IOU_THRESHOLD).float().mean()), float(iou.mean())
    return recall + mean / 10, recall, mean


def _split(values: Tensor, counts: Sequence[int], digits: int) -> list[list[float]]:
    out, start = [], 0
    for count in counts:
        out.append([round(float(v), digits) for v in values[start : start + count]])
        start += count
    return out


def fit_anchors(
    boxes: Tensor,
    grids: Sequence[tuple[int, int]],
    sizes_per_scale: int = 2,
    ratios_per_scale: int = 3,
    generations: int = 300,
    seed: int = 0,
    starts: Sequence[tuple[Sequence[Sequence[float]], Sequence[Sequence[float]]]] = (),
) -> AnchorFit:
    """Sizes and ratios for the five scales fitted to ``boxes`` (``(N, 4)`` canvas-normalised, N >= 1).

    ``starts``: other layouts of the same shape (a preset) the evolution may begin from, when
    they score higher than the k-means layout. Deterministic for a ``seed``.
    """
    generator = torch.Generator().manual_seed(seed)
    boxes = boxes.float().cpu()
    if len(boxes) > MAX_FIT_BOXES:
        boxes = boxes[torch.randperm(len(boxes), generator=generator)[:MAX_FIT_BOXES]]
    scales = len(grids)
    wh = _wh(boxes)
    shapes = kmeans_shapes(wh, min(scales * sizes_per_scale, len(wh)))
    if len(shapes) < scales * sizes_per_scale:  # fewer boxes than sizes: repeat the largest
        shapes = torch.cat((shapes, shapes[-1:].expand(scales * sizes_per_scale - len(shapes), 2)))
    size_values = shapes.prod(dim=1).sqrt().clamp(*SIZE_RANGE)
    ratio_values = torch.tensor(_kmeans_ratios((wh[:, 0] / wh[:, 1]).log(), ratios_per_scale) * scales)
    size_counts, ratio_counts = [sizes_per_scale] * scales, [ratios_per_scale] * scales
    candidates = [(size_values, ratio_values.clamp(*RATIO_RANGE))]
    for start_sizes, start_ratios in starts:
        if [len(s) for s in start_sizes] == size_counts and [len(r) for r in start_ratios] == ratio_counts:
            candidates.append(
                (torch.tensor([v for s in start_sizes for v in s]), torch.tensor([v for r in start_ratios for v in r]))
            )

    def score(sizes_t: Tensor, ratios_t: Tensor) -> tuple[float, float, float]:
        return _fitness(boxes, _split(sizes_t, size_counts, 6), _split(ratios_t, ratio_counts, 6), grids)

    best_sizes, best_ratios = max(candidates, key=lambda c: score(*c)[0])
    best = score(best_sizes, best_ratios)
    params = torch.cat((best_sizes, best_ratios)).log()
    low = torch.cat((torch.full_like(best_sizes, SIZE_RANGE[0]), torch.full_like(best_ratios, RATIO_RANGE[0]))).log()
    high = torch.cat((torch.full_like(best_sizes, SIZE_RANGE[1]), torch.full_like(best_ratios, RATIO_RANGE[1]))).log()
    for _ in range(generations):
        mask = torch.rand(params.shape, generator=generator) < MUTATION_PROBABILITY
        strength = torch.rand((), generator=generator) * MUTATION_SIGMA
        noise = torch.randn(params.shape, generator=generator) * strength * mask
        trial = (params + noise.clamp(math.log(0.3), math.log(3.0))).clamp(low, high)
        trial_score = score(trial[: len(best_sizes)].exp(), trial[len(best_sizes) :].exp())
        if trial_score[0] > best[0]:
            params, best = trial, trial_score
    sizes = _split(params[: len(best_sizes)].exp(), size_counts, 4)
    ratios = _split(params[len(best_sizes) :].exp(), ratio_counts, 3)
    _, recall, mean = _fitness(boxes, sizes, ratios, grids)
    return AnchorFit(sizes, ratios, recall, mean)
