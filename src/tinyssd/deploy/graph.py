"""The exported detection graph: a checkpoint's inference as one traceable module, NMS inside.

``images (B, 3, S, S)`` -> padded ``boxes, scores, labels, count``: pixel scaling, the network,
softmax, box decoding against the anchors of the input size (stored in the graph), NMS and
the top ``max_detections`` per image, with the checkpoint's thresholds. Its functions are the
training code's (:func:`tinyssd.model.postprocess.top_detections`), so it computes what
``TinySSDModule.detect`` computes. NMS is one operator, :func:`nms_keep`, which ONNX export
maps onto ``NonMaxSuppression`` (:mod:`tinyssd.deploy.export` writes the files).
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

from tinyssd.deploy.metadata import INPUT_DTYPES
from tinyssd.errors import ConfigError
from tinyssd.model.anchors import decode_offsets
from tinyssd.model.postprocess import top_detections

__all__ = ["DetectionGraph", "detection_difference", "graph_detections", "nms_keep", "nms_keep_onnx", "per_image_nms"]


def per_image_nms(boxes: Tensor, scores: Tensor, iou_threshold: float, score_threshold: float) -> Tensor:
    """NMS of each image on its own: ``boxes (B, N, 4)``, ``scores (B, N)`` -> keep ``(B, N)`` bool.

    Only boxes scoring above ``score_threshold`` take part (ONNX ``NonMaxSuppression``'s
    semantics). One image at a time, so an image's result never depends on the batch it is in
    (no shifted coordinates): the reference for the exported graphs. TorchScript-compatible.
    """
    keep = torch.zeros_like(scores, dtype=torch.bool)
    for i in range(scores.shape[0]):
        candidates = (scores[i] > score_threshold).nonzero().squeeze(1)
        kept = torchvision.ops.nms(boxes[i][candidates], scores[i][candidates], iou_threshold)
        keep[i, candidates[kept]] = True
    return keep


@torch.library.custom_op("tinyssd::nms_keep", mutates_args=())
def nms_keep(boxes: Tensor, scores: Tensor, iou_threshold: float, score_threshold: float) -> Tensor:
    """:func:`per_image_nms` as one operator with a fixed-shape output, which ONNX export maps onto
    ``NonMaxSuppression`` (batched, per image) instead of tracing a loop."""
    return per_image_nms(boxes, scores, iou_threshold, score_threshold)


@nms_keep.register_fake
def _nms_keep_shape(boxes: Tensor, scores: Tensor, iou_threshold: float, score_threshold: float) -> Tensor:
    return torch.empty_like(scores, dtype=torch.bool)


def nms_keep_onnx(boxes, scores, iou_threshold: float, score_threshold: float):
    """ONNX for :func:`nms_keep`: ``NonMaxSuppression``, then its picks scattered into ``(B, N)``."""
    from onnxscript import opset18 as op

    selected = op.NonMaxSuppression(  # (K, 3) rows: image, class (always 0), box
        boxes,
        op.Unsqueeze(scores, op.Constant(value_ints=[1])),
        op.Shape(scores, start=1, end=2),  # keep up to every box
        op.Constant(value_float=iou_threshold),
        op.Constant(value_float=score_threshold),
    )
    where = op.Gather(selected, op.Constant(value_ints=[0, 2]), axis=1)
    ones = op.Expand(op.CastLike(op.Constant(value_float=1.0), scores), op.Shape(selected, start=0, end=1))
    zeros = op.Expand(op.CastLike(op.Constant(value_float=0.0), scores), op.Shape(scores))
    return op.Cast(op.ScatterND(zeros, where, ones), to=9)  # 9: BOOL


def _score_floor(pos_threshold: float) -> float:
    """One float32 step below ``pos_threshold``: the score a box must exceed to enter NMS.

    ONNX compares with ``>``, the training code with ``>=``; the graph then masks with
    ``>= pos_threshold``, so both select the same boxes.
    """
    return float(torch.nextafter(torch.tensor(pos_threshold), torch.tensor(-1.0)))


class DetectionGraph(nn.Module):
    """A checkpoint's inference as one module: ``images (B, 3, S, S)`` -> detections.

    Args:
        module: the trained :class:`~tinyssd.model.module.TinySSDModule` (copied; left untouched).
        input_dtype: ``uint8`` (pixels in ``[0, 255]``) or ``float32`` (in ``[0, 1]``).
        nms: NMS and top-k in the graph; else the raw outputs.

    ``forward`` returns, with ``nms``, ``boxes (B, K, 4)`` normalised xyxy, ``scores (B, K)``,
    ``labels (B, K)`` int64 and ``num_detections (B,)`` int64: each image's first
    ``num_detections`` rows are its detections by descending score, the rest padding (box 0,
    score 0, label -1). Without ``nms``: ``anchors (A, 4)``, ``class_probs (B, A, C+1)``
    (softmax; class 0 = background) and decoded ``boxes (B, A, 4)``.
    """

    def __init__(self, module: nn.Module, input_dtype: str = "uint8", nms: bool = True) -> None:
        super().__init__()
        if input_dtype not in INPUT_DTYPES:
            raise ConfigError(f"dtype={input_dtype!r} is not an input type; use one of {', '.join(INPUT_DTYPES)}.")
        contract = module.contract
        self.net = copy.deepcopy(module.net).float().eval().to(memory_format=torch.contiguous_format)
        self.net._anchor_cache = {}
        self.image_size = contract.image_size
        self.input_dtype = input_dtype
        self.nms = nms
        scale = contract.input_scale
        self.pixel_scale = scale / 255 if input_dtype == "uint8" else scale
        self.nms_threshold = contract.nms_threshold
        self.pos_threshold = contract.pos_threshold
        self.max_detections = contract.max_detections
        with torch.no_grad():
            probe = torch.zeros(1, 3, self.image_size, self.image_size)
            feature_maps, _, _ = self.net.predict_heads(probe)
            anchors = self.net.anchors_for(feature_maps).reshape(-1, 4).clone()
        self.net._anchor_cache = {}
        self.register_buffer("anchors", anchors)
        # TorchScript keeps a scripted per-image loop (its file then needs only torch and
        # torchvision); ONNX export maps the nms_keep operator onto NonMaxSuppression.
        self.scripted_nms: Any = None
        self.onnx_topk = False  # set while exporting to ONNX (see top_detections)

    def for_torchscript(self) -> DetectionGraph:
        """This graph with NMS as a scripted function, ready for ``torch.jit.trace``."""
        self.scripted_nms = torch.jit.script(per_image_nms)
        return self

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        x = images.to(torch.float32)
        if self.pixel_scale != 1.0:
            x = x * self.pixel_scale
        _, cls_preds, bbox_preds = self.net.predict_heads(x)
        probs = F.softmax(cls_preds, dim=-1)
        boxes = decode_offsets(self.anchors[None], bbox_preds.reshape(bbox_preds.shape[0], -1, 4))
        if not self.nms:
            return self.anchors, probs, boxes
        scores, classes = probs[..., 1:].max(dim=-1)
        nms = self.scripted_nms if self.scripted_nms is not None else nms_keep
        keep = nms(boxes, scores, self.nms_threshold, _score_floor(self.pos_threshold))
        keep = keep & (scores >= self.pos_threshold)
        top_boxes, top_scores, top_labels, valid = top_detections(
            scores, classes, boxes, keep, self.max_detections, onnx_topk=self.onnx_topk
        )
        return (
            torch.where(valid[..., None], top_boxes, torch.zeros_like(top_boxes)),
            torch.where(valid, top_scores, torch.zeros_like(top_scores)),
            torch.where(valid, top_labels, torch.full_like(top_labels, -1)).to(torch.int64),
            valid.sum(dim=1).to(torch.int64),
        )

    def example_input(self, batch: int) -> Tensor:
        """A ``(batch, 3, S, S)`` picture batch of the input dtype (a smooth gradient, not noise)."""
        ramp = torch.linspace(0, 1, self.image_size)
        picture = torch.stack(
            [
                ramp[None, :].expand(self.image_size, -1),
                ramp[:, None].expand(-1, self.image_size),
                ramp.flip(0)[None, :].expand(self.image_size, -1),
            ]
        )
        pictures = picture[None].repeat(batch, 1, 1, 1)
        return (pictures * 255).round().to(torch.uint8) if self.input_dtype == "uint8" else pictures


def graph_detections(outputs: tuple[Tensor, ...]) -> list[dict[str, Tensor]]:
    """An NMS graph's padded outputs -> per-image ``{"boxes", "scores", "labels"}``."""
    boxes, scores, labels, count = (torch.as_tensor(v).detach() for v in outputs)
    return [
        {"boxes": boxes[i, :n], "scores": scores[i, :n], "labels": labels[i, :n].long()}
        for i, n in enumerate(count.tolist())
    ]


def detection_difference(
    expected: list[dict[str, Tensor]], actual: list[dict[str, Tensor]], score_tolerance: float = 1e-5
) -> float:
    """Largest score or box difference between two runs' per-image detections (inf: they differ).

    Detections are matched, not compared row by row: two boxes whose scores differ by less
    than float32 kernels do (``score_tolerance``) may come in either order, so rows are paired greedily by
    label and nearest box among those of near-equal score.
    """
    worst = 0.0
    for exp, act in zip(expected, actual, strict=True):
        if len(exp["scores"]) != len(act["scores"]):
            return math.inf
        free = torch.ones(len(act["scores"]), dtype=torch.bool)
        for box, score, label in zip(exp["boxes"].double(), exp["scores"].double(), exp["labels"], strict=True):
            score_gap = (act["scores"].double() - score).abs()
            box_gap = (act["boxes"].double() - box).abs().amax(dim=-1)
            fits = free & (act["labels"] == label) & (score_gap <= score_tolerance)
            if not bool(fits.any()):
                return math.inf
            pick = int(torch.where(fits, box_gap, torch.full_like(box_gap, math.inf)).argmin())
            free[pick] = False
            worst = max(worst, float(score_gap[pick]), float(box_gap[pick]))
    return worst
