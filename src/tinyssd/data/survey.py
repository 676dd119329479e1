"""What a data set holds, read from its index before any training: the numbers ``tinyssd check`` reports.

Per split: pictures, objects and pictures per class, pictures with no object, picture sizes,
objects whose box touches the picture's border (cut off by the frame, or boxed to the edge),
and the boxes as the model sees them (on its square canvas, after ``data.resize``). Across
the splits: pictures whose files are byte-for-byte the same (a SHA-256 of the file), within
one split (the same picture trained twice) or across splits (a validation picture the model
was trained on, which inflates val mAP).
"""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from pathlib import Path

import torch
from torch import Tensor

from tinyssd.boxes import valid_rows
from tinyssd.data.index import DetectionIndex
from tinyssd.resize import placement, to_canvas

__all__ = ["BORDER_PIXELS", "border_objects", "canvas_boxes", "duplicate_pictures", "file_digest", "split_summary"]

# A box edge within this many pixels of the picture's edge touches the border (a hair more than
# one pixel, so that formats storing normalised numbers, YOLO's, agree with those storing pixels).
BORDER_PIXELS = 1.001
_CHUNK = 1 << 20


def canvas_boxes(index: DetectionIndex, image_size: int, resize: str) -> tuple[Tensor, Tensor]:
    """The split's objects on the model's canvas: ``boxes (N, 4)`` normalised corners and ``classes (N,)`` long.

    Ignored objects (crowd, difficult) are left out: no anchor is labelled with them.
    """
    labels = [x[valid_rows(x)] for x in index.labels]
    if not labels or not sum(len(x) for x in labels):
        return torch.zeros(0, 4), torch.zeros(0, dtype=torch.long)
    rows = torch.cat(labels)
    counts = torch.tensor([len(x) for x in labels])
    places = torch.stack([placement(int(w), int(h), image_size, resize) for w, h in index.sizes.tolist()])
    boxes = to_canvas(rows[:, None, 1:].double(), places.repeat_interleave(counts, dim=0))[:, 0].float()
    return boxes, rows[:, 0].long()


def border_objects(index: DetectionIndex, pixels: float = BORDER_PIXELS) -> list[str]:
    """``file (where): class box`` of each object whose box comes within ``pixels`` of the picture's edge."""
    found = []
    for file, labels, size, source in zip(index.files, index.labels, index.sizes, index.sources, strict=True):
        rows = labels[valid_rows(labels)]
        if not len(rows):
            continue
        scale = size.repeat(2).float()  # (w, h, w, h)
        corners = rows[:, 1:] * scale
        touches = (corners[:, :2] <= pixels).any(dim=1) | (corners[:, 2:] >= scale[:2] - pixels).any(dim=1)
        for row, corner in zip(rows[touches], corners[touches], strict=True):
            name = index.class_names[int(row[0])]
            found.append(f"{file.name} ({source}): {name} at {[round(v) for v in corner.tolist()]}")
    return found


def file_digest(path: Path) -> str:
    """SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def duplicate_pictures(indices: dict[str, DetectionIndex]) -> dict[str, list[list[str]]]:
    """Groups of identical picture files: ``within`` one split and ``across`` splits, each ``split: file``.

    The same file listed twice is refused when the index is read; these are distinct files
    (or distinct names) with the same bytes.
    """
    groups: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for split, index in indices.items():
        for file in index.files:
            groups[file_digest(file)].append((split, str(file)))
    within, across = [], []
    for members in groups.values():
        if len(members) < 2:
            continue
        named = [f"{split}: {file}" for split, file in members]
        (across if len({split for split, _ in members}) > 1 else within).append(named)
    return {"within": within, "across": across}


def split_summary(index: DetectionIndex, image_size: int, resize: str) -> dict:
    """Counts of one split: pictures, objects (per class), empty pictures, sizes, border objects, box sides."""
    names = index.class_names
    objects: Counter[str] = Counter()
    pictures: Counter[str] = Counter()
    ignored = 0
    for labels in index.labels:
        valid = valid_rows(labels)
        ignored += int((~valid).sum())
        classes = [names[int(c)] for c in labels[valid, 0]]
        objects.update(classes)
        pictures.update(set(classes))
    boxes, _ = canvas_boxes(index, image_size, resize)
    sides = ((boxes[:, 2:] - boxes[:, :2]).prod(dim=1).sqrt() * image_size) if len(boxes) else torch.zeros(0)
    border = border_objects(index)
    return {
        "pictures": len(index),
        "objects": int(sum(objects.values())),
        "ignored_objects": ignored,
        "objects_per_class": {name: objects[name] for name in names},
        "pictures_per_class": {name: pictures[name] for name in names},
        "empty_pictures": sum(1 for labels in index.labels if not bool(valid_rows(labels).any())),
        "picture_sizes": dict(Counter(f"{w}x{h}" for w, h in index.sizes.tolist()).most_common()),
        "border_objects": len(border),
        "border_examples": border[:20],
        "box_side_px": _quantiles(sides),
    }


def _quantiles(values: Tensor) -> dict[str, float]:
    if not len(values):
        return {}
    points = {"min": 0.0, "p10": 0.1, "median": 0.5, "p90": 0.9, "max": 1.0}
    return {key: round(float(values.float().quantile(q)), 1) for key, q in points.items()}
