"""The multibox loss: anchor classification + positive-anchor box regression.

With the defaults it is the chapter's loss: per image, cross-entropy averaged over all
anchors plus L1 on masked offsets averaged over all ``4A`` offsets, then averaged over the
batch. The options are the chapter's exercises: focal loss and smooth-L1 (A), hard negative
mining (C) and loss weights (D), and the IoU family of box losses (GIoU, DIoU, CIoU from
``torchvision.ops``) on the boxes the offsets decode to, alone or beside the offset loss. Beyond
the chapter, ``quality=iou`` makes the classification quality-aware (after the quality focal
loss of GFL, in softmax form): a positive anchor's target is the IoU its predicted box reaches
on the object's class and the rest on background, so scores rank well-placed boxes first.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import complete_box_iou_loss, distance_box_iou_loss, generalized_box_iou_loss

from tinyssd.errors import ConfigError
from tinyssd.model.anchors import OFFSET_SIZE_SCALE, decode_offsets

__all__ = [
    "CLS_LOSSES",
    "IOU_LOSSES",
    "OFFSET_LOSSES",
    "MultiBoxLoss",
    "focal_loss",
    "hard_negative_mask",
    "iou_loss",
    "paired_iou",
    "quality_cross_entropy",
    "smooth_l1",
]

# The box losses on decoded boxes (torchvision.ops): ``(boxes, boxes, reduction) -> (N,)``.
IOU_LOSSES = {"giou": generalized_box_iou_loss, "diou": distance_box_iou_loss, "ciou": complete_box_iou_loss}
# Decoded sizes are capped at exp(log(1000 / 16)) = 62.5 anchor sizes (torchvision's
# bbox_xform_clip), so an early wild offset cannot overflow exp() into inf and NaN.
MAX_SIZE_OFFSET = OFFSET_SIZE_SCALE * math.log(1000.0 / 16)


def smooth_l1(x: Tensor, sigma: float = 1.0) -> Tensor:
    """Elementwise ``(sigma x)^2 / 2`` if ``|x| < 1/sigma^2``, else ``|x| - 0.5/sigma^2``."""
    beta = 1.0 / sigma**2
    ax = x.abs()
    return torch.where(ax < beta, 0.5 * (sigma * x) ** 2, ax - 0.5 * beta)


def focal_loss(logits: Tensor, target: Tensor, gamma: float = 2.0, alpha: float = 1.0) -> Tensor:
    """``-alpha (1 - p_j)^gamma log p_j`` per row; ``logits (N, K)``, ``target (N,)`` -> ``(N,)``."""
    log_p = F.log_softmax(logits, dim=-1).gather(-1, target[..., None]).squeeze(-1)
    if gamma == 0:
        return -alpha * log_p
    return -alpha * (1 - log_p.exp()).clamp(min=0) ** gamma * log_p


def cross_entropy(logits: Tensor, target: Tensor, gamma: float = 2.0, alpha: float = 1.0) -> Tensor:
    """Cross-entropy per row (``gamma`` and ``alpha`` belong to the focal loss and are not used)."""
    return F.cross_entropy(logits, target, reduction="none")


def quality_cross_entropy(logits: Tensor, target: Tensor, quality: Tensor) -> Tensor:
    """Cross-entropy against a soft target, per row: ``logits (N, K)``, ``target (N,)``,
    ``quality (N,)`` in ``[0, 1]`` -> ``(N,)``.

    A row of an object class (``target > 0``) wants probability ``quality`` on that class and
    ``1 - quality`` on background (class 0): ``-(q log p_target + (1 - q) log p_0)``; a background
    row is plain cross-entropy.
    """
    log_p = F.log_softmax(logits, dim=-1)
    on_target = log_p.gather(-1, target[..., None]).squeeze(-1)
    q = torch.where(target > 0, quality.to(log_p.dtype), torch.ones_like(on_target))
    return -(q * on_target + (1 - q) * log_p[..., 0])


# Each table row is one choice of its config key: a new loss is one function and one row.
# loss.cls_loss: ``(logits (N, K), target (N,), gamma, alpha) -> (N,)``.
CLS_LOSSES: dict[str, Callable[..., Tensor]] = {"ce": cross_entropy, "focal": focal_loss}
# loss.bbox_loss on the offsets: ``(masked differences (B, 4A), sigma) -> (B, 4A)``.
OFFSET_LOSSES: dict[str, Callable[[Tensor, float], Tensor]] = {
    "l1": lambda diff, sigma: diff.abs(),
    "smooth_l1": smooth_l1,
}


def hard_negative_mask(cls_loss: Tensor, cls_target: Tensor, ratio: float) -> Tensor:
    """Anchors that enter the classification loss under hard negative mining.

    Per image, all positive anchors and the ``min(ratio * positives, negatives)`` background
    anchors with the highest classification loss. A picture with no objects keeps
    ``ratio`` negatives (as if it had one positive): its hardest false alarms are what it has
    to teach, and without them it would not train at all. ``cls_loss``, ``cls_target``:
    ``(B, A)`` -> ``(B, A)`` bool.
    """
    positive = cls_target > 0
    num_neg = (ratio * positive.sum(dim=1).clamp(min=1)).floor().long()
    num_neg = torch.minimum(num_neg, (~positive).sum(dim=1))
    neg_loss = torch.where(positive, torch.full_like(cls_loss, -float("inf")), cls_loss.detach())
    # One sort, hardest first; image i keeps the first num_neg[i] (no host sync: shapes are fixed).
    order = neg_loss.argsort(dim=1, descending=True, stable=True)
    wanted = torch.arange(cls_loss.shape[1], device=cls_loss.device)[None, :] < num_neg[:, None]
    return positive | torch.zeros_like(positive).scatter(1, order, wanted)


def paired_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """IoU of each box with its partner (corner format): ``(..., 4)``, ``(..., 4)`` -> ``(...)``."""
    top_left = torch.maximum(boxes1[..., :2], boxes2[..., :2])
    bottom_right = torch.minimum(boxes1[..., 2:], boxes2[..., 2:])
    inter = (bottom_right - top_left).clamp(min=0).prod(dim=-1)
    area1 = (boxes1[..., 2:] - boxes1[..., :2]).clamp(min=0).prod(dim=-1)
    area2 = (boxes2[..., 2:] - boxes2[..., :2]).clamp(min=0).prod(dim=-1)
    return inter / (area1 + area2 - inter).clamp(min=torch.finfo(inter.dtype).eps)


def decoded_pairs(anchors: Tensor, bbox_preds: Tensor, bbox_targets: Tensor) -> tuple[Tensor, Tensor]:
    """The predicted and labelled boxes of every anchor: ``bbox_* (B, 4A)`` -> two ``(B, A, 4)``."""
    batch = bbox_preds.shape[0]
    anchors = anchors.reshape(1, -1, 4).float()
    preds = bbox_preds.float().reshape(batch, -1, 4)
    preds = torch.cat((preds[..., :2], preds[..., 2:].clamp(max=MAX_SIZE_OFFSET)), dim=-1)
    return decode_offsets(anchors, preds), decode_offsets(anchors, bbox_targets.float().reshape(batch, -1, 4))


def iou_loss(kind: str, anchors: Tensor, bbox_preds: Tensor, bbox_targets: Tensor) -> Tensor:
    """An IoU-family loss between the boxes predicted and labelled offsets decode to.

    ``kind``: ``giou``, ``diou`` or ``ciou``; ``anchors (1, A, 4)`` or ``(A, 4)``, ``bbox_* (B, 4A)``
    -> ``(B, A)``, the loss of every anchor (``1 - IoU`` plus the kind's penalty; only positive
    anchors' values mean anything).
    """
    predicted, labelled = decoded_pairs(anchors, bbox_preds, bbox_targets)
    return IOU_LOSSES[kind](predicted, labelled, reduction="none")


class MultiBoxLoss(nn.Module):
    """Classification + box loss over labelled anchors.

    Args:
        cls_loss: ``ce`` (cross-entropy) or ``focal``.
        bbox_loss: ``l1`` or ``smooth_l1`` on the offsets (the chapter: ``l1``), or ``giou``,
            ``diou``, ``ciou`` on the decoded boxes (then the box term is that loss alone).
        iou_loss: ``None``, or ``giou``/``diou``/``ciou`` added beside an offset ``bbox_loss``
            with weight ``iou_weight`` (logged as ``iou``).
        quality: ``None`` (hard class targets) or ``iou``: positive anchors' class targets are the
            IoU of their predicted box with the object (:func:`quality_cross_entropy`; with
            ``cls_loss=ce``).
        gamma, alpha: focal-loss parameters (``gamma=0, alpha=1`` is cross-entropy).
        sigma: smooth-L1 parameter (large: L1; small: smoother).
        cls_weight, bbox_weight: weights of the two terms.
        negative_mining_ratio: ``None`` uses every anchor (the chapter); a number keeps all
            positives and that many times as many of the hardest negatives per image.
        normalize: ``mean`` (the chapter: per image, classification averaged over the anchors
            used and box loss over all ``4A`` offsets) or ``positives`` (both summed and
            divided by the image's positive anchors, as in the SSD paper). IoU losses are
            always averaged over the image's positive anchors.

    ``forward`` returns ``{"loss", "cls", "bbox"}`` (and ``"iou"`` with ``iou_loss``), each a
    scalar averaged over the batch (``loss = cls_weight * cls + bbox_weight * bbox
    [+ iou_weight * iou]``). IoU losses need the anchors: ``forward(..., anchors=...)``.
    """

    def __init__(
        self,
        cls_loss: str = "ce",
        bbox_loss: str = "l1",
        gamma: float = 2.0,
        alpha: float = 1.0,
        sigma: float = 1.0,
        cls_weight: float = 1.0,
        bbox_weight: float = 1.0,
        negative_mining_ratio: float | None = None,
        normalize: str = "mean",
        iou_loss: str | None = None,
        iou_weight: float = 1.0,
        quality: str | None = None,
    ) -> None:
        super().__init__()
        if cls_loss not in CLS_LOSSES:
            raise ConfigError(f"loss.cls_loss must be one of {tuple(CLS_LOSSES)}, got {cls_loss!r}.")
        if bbox_loss not in (*OFFSET_LOSSES, *IOU_LOSSES):
            raise ConfigError(f"loss.bbox_loss must be one of {(*OFFSET_LOSSES, *IOU_LOSSES)}, got {bbox_loss!r}.")
        if iou_loss is not None and (iou_loss not in IOU_LOSSES or bbox_loss in IOU_LOSSES):
            raise ConfigError(
                f"loss.iou_loss adds one of {tuple(IOU_LOSSES)} beside an offset loss (loss.bbox_loss=l1|smooth_l1); "
                f"got iou_loss={iou_loss!r} with bbox_loss={bbox_loss!r}. Use loss.bbox_loss=giou|diou|ciou for an "
                "IoU loss alone."
            )
        if isinstance(iou_weight, bool) or not isinstance(iou_weight, (int, float)) or iou_weight < 0:
            raise ConfigError(f"loss.iou_weight must be a number >= 0, got {iou_weight!r}.")
        if quality not in (None, "iou") or (quality is not None and cls_loss != "ce"):
            raise ConfigError(
                f"loss.quality is null or 'iou' (with loss.cls_loss=ce); got quality={quality!r} with "
                f"cls_loss={cls_loss!r}."
            )
        if normalize not in ("mean", "positives"):
            raise ConfigError(f"loss.normalize must be 'mean' or 'positives', got {normalize!r}.")
        if negative_mining_ratio is not None and negative_mining_ratio < 0:
            raise ConfigError(f"loss.negative_mining_ratio must be >= 0 or null, got {negative_mining_ratio}.")
        if sigma <= 0 or gamma < 0 or alpha <= 0 or cls_weight < 0 or bbox_weight < 0:
            raise ConfigError(
                "loss.sigma and loss.alpha must be positive and loss.gamma, loss.cls_weight, loss.bbox_weight "
                f"non-negative; got sigma={sigma}, alpha={alpha}, gamma={gamma}, cls_weight={cls_weight}, "
                f"bbox_weight={bbox_weight}."
            )
        self.cls_loss, self.bbox_loss = cls_loss, bbox_loss
        self.gamma, self.alpha, self.sigma = gamma, alpha, sigma
        self.cls_weight, self.bbox_weight = cls_weight, bbox_weight
        self.negative_mining_ratio = negative_mining_ratio
        self.normalize = normalize
        self.iou_loss, self.iou_weight = iou_loss, float(iou_weight)
        self.quality = quality

    def forward(
        self,
        cls_preds: Tensor,
        cls_targets: Tensor,
        bbox_preds: Tensor,
        bbox_targets: Tensor,
        bbox_mask: Tensor,
        anchors: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """``cls_preds (B, A, C+1)``, ``cls_targets (B, A)``, ``bbox_* (B, 4A)``, ``anchors (1, A, 4)``."""
        batch, num_anchors, num_cls = cls_preds.shape
        # Losses in float32 whatever the autocast dtype of the predictions.
        logits = cls_preds.float().reshape(-1, num_cls)
        target = cls_targets.reshape(-1)
        if self.quality is None:
            per_anchor = CLS_LOSSES[self.cls_loss](logits, target, self.gamma, self.alpha)
        else:
            if anchors is None:
                raise ConfigError("loss.quality=iou needs the anchors: call the loss with anchors=.")
            # The target follows the box, not the other way round: no gradient through the IoU.
            quality = paired_iou(*decoded_pairs(anchors, bbox_preds.detach(), bbox_targets))
            per_anchor = quality_cross_entropy(logits, target, quality.reshape(-1))
        per_anchor = per_anchor.reshape(batch, num_anchors)

        num_pos = (cls_targets > 0).sum(dim=1).clamp(min=1).to(per_anchor.dtype)
        if self.negative_mining_ratio is None:
            cls_sum = per_anchor.sum(dim=1)
            cls_count = torch.full_like(cls_sum, num_anchors)
        else:
            used = hard_negative_mask(per_anchor, cls_targets, self.negative_mining_ratio)
            cls_sum = (per_anchor * used).sum(dim=1)
            cls_count = used.sum(dim=1).clamp(min=1).to(per_anchor.dtype)

        cls_term = cls_sum / (cls_count if self.normalize == "mean" else num_pos)
        if self.bbox_loss in IOU_LOSSES:
            bbox_term = self._iou_term(self.bbox_loss, anchors, bbox_preds, bbox_targets, bbox_mask, num_pos)
        else:
            diff = (bbox_preds.float() - bbox_targets) * bbox_mask
            per_offset = OFFSET_LOSSES[self.bbox_loss](diff, self.sigma)
            bbox_term = per_offset.mean(dim=1) if self.normalize == "mean" else per_offset.sum(dim=1) / num_pos

        cls_term, bbox_term = cls_term.mean(), bbox_term.mean()
        out = {"loss": self.cls_weight * cls_term + self.bbox_weight * bbox_term, "cls": cls_term, "bbox": bbox_term}
        if self.iou_loss is not None:
            out["iou"] = self._iou_term(self.iou_loss, anchors, bbox_preds, bbox_targets, bbox_mask, num_pos).mean()
            out["loss"] = out["loss"] + self.iou_weight * out["iou"]
        return out

    @staticmethod
    def _iou_term(
        kind: str, anchors: Tensor | None, bbox_preds: Tensor, bbox_targets: Tensor, bbox_mask: Tensor, num_pos: Tensor
    ) -> Tensor:
        """Per image ``(B,)``: the ``kind`` IoU loss averaged over its positive anchors."""
        if anchors is None:
            raise ConfigError(f"loss {kind} needs the anchors: call the loss with anchors=.")
        per_box = iou_loss(kind, anchors, bbox_preds, bbox_targets)
        positive = bbox_mask.reshape(per_box.shape[0], -1, 4)[..., 0] > 0
        return torch.where(positive, per_box, torch.zeros_like(per_box)).sum(dim=1) / num_pos
