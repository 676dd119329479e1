"""What predict writes on request beside ``detections.json``: YOLO label files, crops, COCO results."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from tinyssd.deploy.detector import BOX_DECIMALS, Detections
from tinyssd.errors import DataError
from tinyssd.files import atomic_write_bytes

__all__ = [
    "COCO_RESULTS_FILE",
    "CROPS_DIR",
    "LABELS_DIR",
    "OutputOptions",
    "coco_results",
    "write_crops",
    "write_extras",
    "yolo_rows",
]


@dataclass(frozen=True)
class OutputOptions:
    """What predict writes beside ``detections.json`` (conf/predict/predict.yaml)."""

    save_txt: bool = False  # labels/<stem>.txt: YOLO rows, class cx cy w h (normalised)
    save_conf: bool = False  # ... and the score as a sixth column
    save_crops: bool = False  # crops/<class>/<stem>_<k>.png: each detection's pixels
    save_coco: bool = False  # coco_results.json: COCO results (image_id, category_id, bbox, score)
    vid_stride: int = 1  # videos: every vid_stride-th frame

    def planned(self, stems: Sequence[str]) -> list[str]:
        """The files (relative to the output folder) these options write for pictures of ``stems``."""
        names = [f"{LABELS_DIR}/{stem}.txt" for stem in stems] if self.save_txt else []
        return [*names, *([COCO_RESULTS_FILE] if self.save_coco else []), *([CROPS_DIR] if self.save_crops else [])]


LABELS_DIR, CROPS_DIR, COCO_RESULTS_FILE = "labels", "crops", "coco_results.json"


def yolo_rows(dets: Detections, with_score: bool = False) -> str:
    """``class cx cy w h`` per detection, normalised to the picture (as a YOLO label file), 6 decimals."""
    scale = torch.tensor([dets.width, dets.height, dets.width, dets.height], dtype=torch.float64)
    boxes = dets.boxes.double() / scale
    rows = []
    for (x1, y1, x2, y2), label, score in zip(boxes.tolist(), dets.labels.tolist(), dets.scores.tolist(), strict=True):
        row = f"{int(label)} {(x1 + x2) / 2:.6f} {(y1 + y2) / 2:.6f} {x2 - x1:.6f} {y2 - y1:.6f}"
        rows.append(row + (f" {score:.5f}" if with_score else ""))
    return "".join(f"{row}\n" for row in rows)


def _safe_name(text: str) -> str:
    """A class name as one folder name: anything but letters, digits, ``-`` and ``.`` becomes ``_``."""
    return re.sub(r"[^\w.-]", "_", text, flags=re.ASCII).strip(".")[:100] or "_"


def write_crops(output_dir: Path, stem: str, image: Tensor, dets: Detections) -> None:
    """``crops/<label>_<class>/<stem>_<k>.png``: the pixels of detection ``k`` (whole pixels around its box)."""
    from torchvision.io import encode_png

    for k, (box, label) in enumerate(zip(dets.boxes.tolist(), dets.labels.tolist(), strict=True)):
        x1, y1 = max(0, math.floor(box[0])), max(0, math.floor(box[1]))
        x2, y2 = min(dets.width, math.ceil(box[2])), min(dets.height, math.ceil(box[3]))
        if x2 <= x1 or y2 <= y1:
            continue
        name = dets.class_names[label] if 0 <= label < len(dets.class_names) else str(label)
        folder = output_dir / CROPS_DIR / f"{label}_{_safe_name(name)}"
        folder.mkdir(parents=True, exist_ok=True)
        crop = image[:3, y1:y2, x1:x2].contiguous()
        atomic_write_bytes(folder / f"{stem}_{k}.png", encode_png(crop).numpy().tobytes(), "a crop")


def coco_results(entries: Sequence[dict[str, Any]], class_names: Sequence[str], annotations: Path | None) -> list[dict]:
    """COCO detection results (``image_id, category_id, bbox [x, y, w, h], score``) for predict's pictures.

    With ``annotations`` (a COCO file, e.g. the ground truth to score against), pictures are
    matched to its images by file name and classes to its categories by name; without it,
    ``image_id`` is the picture's place in ``detections.json`` (from 1) and ``category_id`` the
    class index + 1, in ``detections.json``'s ``coco`` key.
    """
    import json

    if annotations is None:
        image_ids = {e["path"]: k for k, e in enumerate(entries, 1)}
        category_ids = {k: k + 1 for k in range(len(class_names))}
    else:
        try:
            gt = json.loads(annotations.read_text(encoding="utf-8-sig"))
            by_name = {Path(str(im["file_name"])).name: int(im["id"]) for im in gt["images"]}
            categories = {str(c["name"]): int(c["id"]) for c in gt["categories"]}
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise DataError(
                f"coco_annotations={annotations} is not a readable COCO file with images (id, file_name) and "
                f"categories (id, name) ({type(err).__name__}: {err})."
            ) from err
        missing = [n for n in class_names if n not in categories]
        if missing:
            raise DataError(
                f"the model's classes {missing} are not categories of {annotations} ({sorted(categories)}); give the "
                "annotations of a data set with the model's classes."
            )
        category_ids = {k: categories[n] for k, n in enumerate(class_names)}
        image_ids = {}
        for e in entries:
            name = Path(e["path"]).name
            if name not in by_name:
                raise DataError(f"{e['path']} is not an image of {annotations} (no file_name {name!r}).")
            image_ids[e["path"]] = by_name[name]
    results = []
    for e in entries:
        for d in e["detections"]:
            x1, y1, x2, y2 = d["box"]
            results.append(
                {
                    "image_id": image_ids[e["path"]],
                    "category_id": category_ids[d["label"]],
                    "bbox": [round(v, BOX_DECIMALS) for v in (x1, y1, x2 - x1, y2 - y1)],
                    "score": d["score"],
                }
            )
    return results


def write_extras(output_dir: Path, stem: str, image: Tensor, dets: Detections, options: OutputOptions) -> None:
    if options.save_txt:
        (output_dir / LABELS_DIR).mkdir(exist_ok=True)
        atomic_write_bytes(
            output_dir / LABELS_DIR / f"{stem}.txt", yolo_rows(dets, options.save_conf).encode(), "a label file"
        )
    if options.save_crops:
        write_crops(output_dir, stem, image, dets)
