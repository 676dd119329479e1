"""What the detector gets wrong, and what fixing it is worth: the error breakdown of TIDE (Bolya et al.,
ECCV 2020), on tinyssd's own matching.

Detections are matched to objects per class and picture, best score first, at IoU >= ``FG_IOU``
(COCO's AP@0.5). Each detection left unmatched is given one cause, in TIDE's order:

* ``classification``: IoU >= ``FG_IOU`` with an object of another class;
* ``duplicate``: IoU >= ``FG_IOU`` with an object of its class already matched by a better score;
* ``localisation``: ``BG_IOU`` <= IoU < ``FG_IOU`` with an object of its class;
* ``both``: ``BG_IOU`` <= IoU < ``FG_IOU`` with an object of another class;
* ``background``: IoU < ``BG_IOU`` with every object;

and each object no detection found (nor a classification or localisation error points at) is
``missed``. The weight of a cause is its dAP: the AP@0.5 gained when an oracle fixes every error of
that cause and nothing else (a classification or localisation error becomes the detection of its
object, when no better one has it, else it goes; duplicates, background and ``both`` errors go;
missed objects leave the count). With every cause fixed, every class with objects reaches AP 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from torchvision.ops import box_iou

__all__ = ["BG_IOU", "ERROR_TYPES", "FG_IOU", "average_precision", "error_breakdown", "worst_errors"]

FG_IOU = 0.5  # a detection at this IoU with its object is correct (COCO's AP@0.5)
BG_IOU = 0.1  # below this IoU with every object, a detection is on background
FALSE_POSITIVE_TYPES = ("classification", "duplicate", "localisation", "both", "background")
ERROR_TYPES = (*FALSE_POSITIVE_TYPES, "missed")
_RECALL_POINTS = torch.linspace(0, 1, 101, dtype=torch.float64)  # COCO's 101-point interpolation
_NO_OBJECT = -1


def average_precision(scores: Tensor, correct: Tensor, objects: int) -> float:
    """COCO's 101-point interpolated AP of detections ``scores (N,)`` whose ``correct (N,)`` flags say which
    found an object, over ``objects`` objects (NaN when there are none)."""
    if objects == 0:
        return float("nan")
    if scores.numel() == 0:
        return 0.0
    order = torch.argsort(scores, descending=True, stable=True)
    hits = correct[order].to(torch.float64)
    true_positives, false_positives = hits.cumsum(0), (1 - hits).cumsum(0)
    recall = true_positives / objects
    precision = true_positives / (true_positives + false_positives)
    # The precision envelope: the best precision at this recall or any higher one.
    envelope = precision.flip(0).cummax(0).values.flip(0)
    index = torch.searchsorted(recall, _RECALL_POINTS, side="left")
    sampled = torch.where(index < len(envelope), envelope[index.clamp(max=len(envelope) - 1)], 0.0)
    return float(sampled.mean())


@dataclass
class _Outcome:
    """Per detection: the object it found or points at (-1: none), and its cause (-1: correct)."""

    target: Tensor  # (N,) long, index into the picture's objects
    cause: Tensor  # (N,) long, index into FALSE_POSITIVE_TYPES, -1 for a correct detection


def _match_picture(boxes: Tensor, scores: Tensor, labels: Tensor, gt_boxes: Tensor, gt_labels: Tensor) -> _Outcome:
    """Greedy matching of one picture's detections, best score first, and the cause of each miss."""
    count = len(scores)
    target = torch.full((count,), _NO_OBJECT, dtype=torch.long)
    cause = torch.full((count,), _NO_OBJECT, dtype=torch.long)
    if count == 0:
        return _Outcome(target, cause)
    if len(gt_labels) == 0:
        cause[:] = FALSE_POSITIVE_TYPES.index("background")
        return _Outcome(target, cause)
    iou = box_iou(boxes.double(), gt_boxes.double())  # (N, G)
    same_class = labels[:, None] == gt_labels[None, :]
    taken = torch.zeros(len(gt_labels), dtype=torch.bool)
    for d in torch.argsort(scores, descending=True, stable=True).tolist():
        own = torch.where(same_class[d], iou[d], -1.0)
        free = torch.where(taken, -1.0, own)
        best_free, g = free.max(0)
        if best_free >= FG_IOU:
            target[d], taken[g] = g, True
            continue
        other = torch.where(same_class[d], -1.0, iou[d])
        best_own, g_own = own.max(0)
        best_other, g_other = other.max(0)
        if best_other >= FG_IOU:
            kind, target[d] = "classification", g_other
        elif best_own >= FG_IOU:
            kind = "duplicate"
        elif best_own >= BG_IOU:
            kind, target[d] = "localisation", g_own
        elif best_other >= BG_IOU:
            kind = "both"
        else:
            kind = "background"
        cause[d] = FALSE_POSITIVE_TYPES.index(kind)
    return _Outcome(target, cause)


def _accounted(outcome: _Outcome, objects: int) -> Tensor:
    """``(G,)`` bool: the objects a detection found or a classification or localisation error points at
    (TIDE's: the others are missed)."""
    accounted = torch.zeros(objects, dtype=torch.bool)
    accounted[outcome.target[outcome.target >= 0]] = True
    return accounted


def _class_aps(
    pictures: Sequence[tuple[Tensor, Tensor, Tensor, Tensor, Tensor]],
    outcomes: Sequence[_Outcome],
    num_classes: int,
    fix: str | None,
) -> list[float]:
    """AP@0.5 per class of ``pictures`` (boxes, scores, labels, object boxes, object labels) matched as
    ``outcomes`` say, with the errors of cause ``fix`` (or ``"all"``) fixed by the oracle."""
    scores_of: list[list[Tensor]] = [[] for _ in range(num_classes)]
    correct_of: list[list[Tensor]] = [[] for _ in range(num_classes)]
    objects = [0] * num_classes
    fixing = set(ERROR_TYPES) if fix == "all" else {fix}
    for (_, scores, labels, _, gt_labels), outcome in zip(pictures, outcomes, strict=True):
        found = torch.zeros(len(gt_labels), dtype=torch.bool)
        found[outcome.target[outcome.cause == _NO_OBJECT]] = True
        keep = torch.ones(len(scores), dtype=torch.bool)
        correct = outcome.cause == _NO_OBJECT
        new_labels = labels.clone()
        for d in torch.argsort(scores, descending=True, stable=True).tolist():
            kind = FALSE_POSITIVE_TYPES[int(outcome.cause[d])] if outcome.cause[d] >= 0 else None
            if kind is None or kind not in fixing:
                continue
            g = int(outcome.target[d])
            if kind in ("classification", "localisation") and not found[g]:
                found[g], correct[d] = True, True  # the oracle's box and class: it finds its object
                new_labels[d] = gt_labels[g]
            else:
                keep[d] = False
        if fix == "all":
            missed = ~found
        elif "missed" in fixing:
            missed = ~_accounted(outcome, len(gt_labels))
        else:
            missed = torch.zeros_like(found)
        for c in range(num_classes):
            objects[c] += int(((gt_labels == c) & ~missed).sum())
            mine = keep & (new_labels == c)
            scores_of[c].append(scores[mine])
            correct_of[c].append(correct[mine])
    return [
        average_precision(torch.cat(scores_of[c]), torch.cat(correct_of[c]), objects[c]) for c in range(num_classes)
    ]


def _mean(values: list[float]) -> float:
    present = [v for v in values if v == v]  # classes without objects have no AP (NaN)
    return sum(present) / len(present) if present else float("nan")


def error_breakdown(
    detections: Sequence[dict[str, Tensor]], targets: Sequence[dict[str, Tensor]], class_names: Sequence[str]
) -> dict:
    """The errors of ``detections`` against ``targets`` (per picture ``boxes (N, 4)`` xyxy in one coordinate
    system, ``labels (N,)``; detections ``scores (N,)`` too), counted and weighed by cause.

    Returns ``{"map_50", "counts": {cause: n}, "dap": {cause: dAP}, "map_50_all_fixed",
    "per_class": {name: {"ap_50", "counts", "dap"}}}``; dAP in AP@0.5 points (0-1); None for an AP
    that does not exist (no objects of the class).
    """
    num_classes = len(class_names)
    pictures = _as_pictures(detections, targets)
    outcomes = [_match_picture(*picture) for picture in pictures]  # matched once, for every pass below
    counts = torch.zeros(num_classes, len(ERROR_TYPES), dtype=torch.long)
    for (_, _, labels, _, gt_labels), outcome in zip(pictures, outcomes, strict=True):
        wrong = outcome.cause >= 0
        counts.index_put_((labels[wrong], outcome.cause[wrong]), torch.ones(int(wrong.sum()), dtype=torch.long), True)
        missed = gt_labels[~_accounted(outcome, len(gt_labels))]
        counts[:, ERROR_TYPES.index("missed")] += torch.bincount(missed, minlength=num_classes)[:num_classes]
    base = _class_aps(pictures, outcomes, num_classes, None)
    fixed = {kind: _class_aps(pictures, outcomes, num_classes, kind) for kind in ERROR_TYPES}
    all_fixed = _class_aps(pictures, outcomes, num_classes, "all")
    per_class = {
        name: {
            "ap_50": _number(base[c]),
            "counts": {kind: int(counts[c, k]) for k, kind in enumerate(ERROR_TYPES)},
            "dap": {kind: _number(fixed[kind][c] - base[c]) for kind in ERROR_TYPES},
        }
        for c, name in enumerate(class_names)
    }
    return {
        "map_50": _number(_mean(base)),
        "counts": {kind: int(counts[:, k].sum()) for k, kind in enumerate(ERROR_TYPES)},
        "dap": {kind: _number(_mean(fixed[kind]) - _mean(base)) for kind in ERROR_TYPES},
        "map_50_all_fixed": _number(_mean(all_fixed)),
        "per_class": per_class,
        "worst": [{**e, "label": class_names[e["label"]]} for e in _worst(pictures, outcomes)],
    }


def worst_errors(
    detections: Sequence[dict[str, Tensor]], targets: Sequence[dict[str, Tensor]], count: int = 8
) -> list[dict]:
    """The ``count`` highest-scoring false positives and the ``count`` largest missed objects, each
    ``{"picture", "cause", "box", "label"}`` (``score`` and the ``object_box`` it points at, for a false
    positive that has one): what a gallery of the worst errors shows first."""
    pictures = _as_pictures(detections, targets)
    return _worst(pictures, [_match_picture(*picture) for picture in pictures], count)


def _as_pictures(
    detections: Sequence[dict[str, Tensor]], targets: Sequence[dict[str, Tensor]]
) -> list[tuple[Tensor, Tensor, Tensor, Tensor, Tensor]]:
    """Per picture ``(boxes, scores, labels, object boxes, object labels)`` on the CPU."""
    return [
        (d["boxes"].cpu(), d["scores"].cpu(), d["labels"].cpu().long(), t["boxes"].cpu(), t["labels"].cpu().long())
        for d, t in zip(detections, targets, strict=True)
    ]


def _worst(
    pictures: Sequence[tuple[Tensor, Tensor, Tensor, Tensor, Tensor]], outcomes: Sequence[_Outcome], count: int = 8
) -> list[dict]:
    """:func:`worst_errors` of pictures already matched."""
    wrong, missed = [], []
    for picture, ((boxes, scores, labels, gt_boxes, gt_labels), outcome) in enumerate(
        zip(pictures, outcomes, strict=True)
    ):
        for i in torch.nonzero(outcome.cause >= 0).flatten().tolist():
            entry = {
                "picture": picture,
                "cause": FALSE_POSITIVE_TYPES[int(outcome.cause[i])],
                "box": boxes[i].tolist(),
                "label": int(labels[i]),
                "score": float(scores[i]),
            }
            if outcome.target[i] >= 0:
                entry["object_box"] = gt_boxes[outcome.target[i]].tolist()
            wrong.append(entry)
        for g in torch.nonzero(~_accounted(outcome, len(gt_labels))).flatten().tolist():
            box = gt_boxes[g]
            area = float((box[2] - box[0]) * (box[3] - box[1]))
            missed.append(
                {"picture": picture, "cause": "missed", "box": box.tolist(), "label": int(gt_labels[g]), "area": area}
            )
    wrong.sort(key=lambda e: -e["score"])
    missed.sort(key=lambda e: -e["area"])
    return wrong[:count] + [{k: v for k, v in e.items() if k != "area"} for e in missed[:count]]


def _number(value: float) -> float | None:
    """JSON's view of an AP: None where there is none (a class without objects), not NaN."""
    return None if value != value else value
