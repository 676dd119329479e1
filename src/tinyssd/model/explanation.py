"""What TinySSD does with one picture, step by step, as the chapter tells it: ``tinyssd explain``'s numbers.

* the anchors of each of the five scales centred on one cell (``multibox_prior``), and their count;
* every object's positive anchors under the chapter's labelling (``max_iou``: IoU >= 0.5, and each
  object its best anchor) and under ATSS, with their IoU and scale; objects that no anchor
  labels, or only their forced best anchor below IoU 0.5, flagged;
* the offset targets of one positive anchor (``encode_offsets``) and the box they decode back to;
* with a model: each scale's class scores per cell, and the boxes before and after NMS.

:mod:`tinyssd.model.explain_figures` draws them. Everything is on the model's square canvas,
boxes normalised.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import box_iou

from tinyssd.model.anchors import (
    ASSIGNERS,
    ATSS_TOPK,
    POS_IOU_THRESHOLD,
    decode_offsets,
    encode_offsets,
    multibox_prior,
)
from tinyssd.model.net import TinySSD, feature_map_shapes

__all__ = ["EXPLAINED_ASSIGNERS", "Explanation", "ObjectLabelling", "cell_anchor_indices", "explain"]

# The labelling rules shown side by side.
EXPLAINED_ASSIGNERS = ("max_iou", "atss")
# Boxes shown before NMS: the best-scoring ones.
BEFORE_NMS_SHOWN = 50


@dataclass
class ObjectLabelling:
    """One object under one assigner: its positive anchors (indices), their IoU and scale, and flags."""

    anchors: list[int]
    iou: list[float]
    scale: list[int]
    best_iou: float  # the best IoU any anchor has with the object

    @property
    def unlabelled(self) -> bool:
        """No anchor learns this object."""
        return not self.anchors

    @property
    def below_threshold(self) -> bool:
        """Labelled, but no positive anchor reaches IoU 0.5 (the chapter's forced best match only)."""
        return bool(self.anchors) and max(self.iou) < POS_IOU_THRESHOLD


@dataclass
class Explanation:
    """The numbers behind the pictures (see the module docstring); ``labels (G, 5)`` canvas-normalised."""

    image: Tensor
    anchors: Tensor
    grids: list[tuple[int, int]]
    per_cell: list[int]
    point: tuple[float, float]
    cell_anchors: list[Tensor]
    labels: Tensor | None = None
    labelling: dict[str, list[ObjectLabelling]] = field(default_factory=dict)
    offsets: dict | None = None
    heatmaps: list[Tensor] | None = None
    before_nms: dict[str, Tensor] | None = None
    after_nms: dict[str, Tensor] | None = None
    threshold: float = 0.5  # the score from which detections are drawn after NMS
    nms_threshold: float = 0.5

    @property
    def level_counts(self) -> list[int]:
        return [h * w * a for (h, w), a in zip(self.grids, self.per_cell, strict=True)]

    def scale_of(self, index: Tensor) -> Tensor:
        """The scale each anchor index belongs to."""
        bounds = torch.tensor(self.level_counts).cumsum(0)
        return torch.searchsorted(bounds, index, right=True)


def cell_anchor_indices(
    grids: Sequence[tuple[int, int]], per_cell: Sequence[int], point: tuple[float, float]
) -> list[Tensor]:
    """Per scale, the indices of the anchors centred on the cell holding ``point`` (``x, y`` normalised)."""
    out, start = [], 0
    for (height, width), count in zip(grids, per_cell, strict=True):
        row = min(max(int(point[1] * height), 0), height - 1)
        col = min(max(int(point[0] * width), 0), width - 1)
        first = start + (row * width + col) * count
        out.append(torch.arange(first, first + count))
        start += height * width * count
    return out


def _labelling(
    anchors: Tensor, labels: Tensor, assigner: str, level_counts: list[int], level_topk: list[int]
) -> list[ObjectLabelling]:
    boxes = labels[:, 1:]
    assigned = ASSIGNERS[assigner](
        anchors, boxes[None], torch.ones(1, len(labels), dtype=torch.bool),
        iou_threshold=POS_IOU_THRESHOLD, level_counts=level_counts, level_topk=level_topk,
    )[0]  # fmt: skip
    iou = box_iou(anchors, boxes)  # (A, G)
    bounds = torch.tensor(level_counts).cumsum(0)
    found = []
    for j in range(len(labels)):  # objects of one picture, a handful
        index = (assigned == j).nonzero().squeeze(1)
        order = iou[index, j].argsort(descending=True)
        index = index[order]
        found.append(
            ObjectLabelling(
                anchors=index.tolist(),
                iou=iou[index, j].tolist(),
                scale=torch.searchsorted(bounds, index, right=True).tolist(),
                best_iou=float(iou[:, j].max()),
            )
        )
    return found


def explain(
    image: Tensor,
    net: TinySSD,
    labels: Tensor | None = None,
    point: tuple[float, float] | None = None,
    assigner: str = "max_iou",
    atss_topk: int = ATSS_TOPK,
    module: torch.nn.Module | None = None,
) -> Explanation:
    """Explain one canvas picture ``image (3, S, S)`` uint8 for ``net``'s anchors.

    ``labels (G, 5)``: the objects (class, normalised corners), if known. ``point``: the cell to
    show the anchors of (``x, y`` normalised; default the first object's centre, else the middle).
    ``assigner``: the one whose positive anchor's offsets are shown. ``module``: a trained
    :class:`~tinyssd.model.module.TinySSDModule` holding ``net``, for scores and detections.
    """
    size = image.shape[-2:]
    grids = feature_map_shapes(*size, len(net.blocks[0]))
    layers = zip(grids, net.sizes, net.ratios, strict=True)
    anchors = torch.cat([multibox_prior(image.new_empty(h, w), s, r) for (h, w), s, r in layers], dim=1)[0]
    if labels is not None:
        labels = labels[labels[:, 0] >= 0].float()
    if point is None:
        point = (
            (0.5, 0.5) if labels is None or not len(labels) else tuple(((labels[0, 1:3] + labels[0, 3:5]) / 2).tolist())
        )
    per_cell = list(net.anchors_per_location)
    cells = cell_anchor_indices(grids, per_cell, point)
    result = Explanation(image, anchors, grids, per_cell, point, [anchors[i] for i in cells], labels)
    level_counts = result.level_counts
    if labels is not None and len(labels):
        topk = [atss_topk * a for a in per_cell]
        result.labelling = {name: _labelling(anchors, labels, name, level_counts, topk) for name in EXPLAINED_ASSIGNERS}
        chosen = result.labelling[assigner if assigner in result.labelling else "max_iou"]
        for j, obj in enumerate(chosen):  # the first object with a positive anchor: its best one
            if obj.anchors:
                anchor = anchors[obj.anchors[0]]
                offsets = encode_offsets(anchor, labels[j, 1:])
                result.offsets = {
                    "object": j, "anchor": obj.anchors[0], "scale": obj.scale[0], "iou": obj.iou[0],
                    "anchor_box": anchor.tolist(), "offsets": offsets.tolist(),
                    "decoded": decode_offsets(anchor, offsets).tolist(), "truth": labels[j, 1:].tolist(),
                }  # fmt: skip
                break
    if module is not None:
        _explain_predictions(result, module, level_counts)
    return result


@torch.no_grad()
def _explain_predictions(result: Explanation, module: torch.nn.Module, level_counts: list[int]) -> None:
    module.eval()
    result.threshold = float(module.hparams.get("display_threshold", result.threshold))
    result.nms_threshold = float(module.hparams.get("nms_threshold", result.nms_threshold))
    anchors, cls_preds, bbox_preds = module(result.image[None].to(module.device))
    anchors, cls_preds, bbox_preds = anchors.cpu(), cls_preds.cpu(), bbox_preds.cpu()
    probs = F.softmax(cls_preds.float(), dim=-1)[0]  # (A, C+1)
    foreground = probs[:, 1:].max(dim=1).values  # (A,)
    maps, start = [], 0
    for (height, width), count, total in zip(result.grids, result.per_cell, level_counts, strict=True):
        maps.append(foreground[start : start + total].reshape(height, width, count).amax(dim=-1))
        start += total
    result.heatmaps = maps
    scores, classes = probs[:, 1:].max(dim=1)
    boxes = decode_offsets(anchors.reshape(-1, 4).float(), bbox_preds.float().reshape(-1, 4))
    top = scores.argsort(descending=True)[:BEFORE_NMS_SHOWN]
    result.before_nms = {"boxes": boxes[top], "scores": scores[top], "labels": classes[top]}
    (after,) = module._decode(anchors, cls_preds, bbox_preds)
    result.after_nms = after
