"""Small data sets written into a temporary folder: banana CSV, and the same pictures in all four formats."""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torchvision.io import write_png

from helpers.paths import ROOT

SHARED_DATA = ROOT.parent / "shared" / "data"

# Colours of the synthetic objects, one per class.
CLASS_COLOURS = [(255, 220, 0), (0, 120, 255), (220, 0, 60)]


def write_banana_split(
    split_dir: Path,
    num_images: int,
    objects_per_image: int | Sequence[int] = 1,
    image_size: tuple[int, int] = (64, 64),
    num_classes: int = 1,
    seed: int = 0,
) -> list[list[tuple[int, int, int, int, int]]]:
    """Write ``images/*.png`` and ``label.csv`` with coloured boxes on noise; return the boxes.

    Each object is a filled rectangle in its class colour; boxes do not overlap much.
    """
    gen = torch.Generator().manual_seed(seed)
    height, width = image_size
    (split_dir / "images").mkdir(parents=True, exist_ok=True)
    all_boxes = []
    with open(split_dir / "label.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["img_name", "label", "xmin", "ymin", "xmax", "ymax"])
        for i in range(num_images):
            count = objects_per_image if isinstance(objects_per_image, int) else objects_per_image[i]
            img = (torch.rand(3, height, width, generator=gen) * 80).to(torch.uint8)
            boxes = []
            for k in range(count):
                # Objects sit in separate vertical bands so they never overlap.
                band = width // max(count, 1)
                bw = int(band * 0.6)
                bh = int(height * (0.3 + 0.3 * torch.rand(1, generator=gen).item()))
                x1 = k * band + int((band - bw) * torch.rand(1, generator=gen).item())
                y1 = int((height - bh) * torch.rand(1, generator=gen).item())
                cls = int(torch.randint(num_classes, (1,), generator=gen))
                colour = torch.tensor(CLASS_COLOURS[cls], dtype=torch.uint8)[:, None, None]
                img[:, y1 : y1 + bh, x1 : x1 + bw] = colour
                boxes.append((cls, x1, y1, x1 + bw, y1 + bh))
                writer.writerow([f"{i}.png", cls, x1, y1, x1 + bw, y1 + bh])
            write_png(img, str(split_dir / "images" / f"{i}.png"))
            all_boxes.append(boxes)
    return all_boxes


def write_banana_dataset(
    data_dir: Path,
    num_train: int = 8,
    num_val: int = 4,
    objects_per_image: int = 1,
    image_size: tuple[int, int] = (64, 64),
    num_classes: int = 1,
) -> Path:
    """A data_dir holding ``banana-detection/{bananas_train,bananas_val}``."""
    root = data_dir / "banana-detection"
    write_banana_split(root / "bananas_train", num_train, objects_per_image, image_size, num_classes, seed=1)
    write_banana_split(root / "bananas_val", num_val, objects_per_image, image_size, num_classes, seed=2)
    return data_dir


def real_data_dir() -> Path | None:
    """The real banana data: $TINYSSD_REAL_DATA, else ../shared/data beside the project."""
    env = os.environ.get("TINYSSD_REAL_DATA")
    candidate = Path(env) if env else SHARED_DATA
    return candidate if (candidate / "banana-detection" / "bananas_val" / "label.csv").is_file() else None


# The entry points, run in this process by default (see :func:`run_in_process`).

# ----------------------------------------------------------------------------- four formats

# (width, height) and objects (class, x1, y1, x2, y2 in pixels) of a small three-class set:
# non-square pictures, several objects, pictures with none. Sides are powers of two and corners
# whole pixels, so every format's numbers are exact and all four give identical tensors.
FORMAT_CLASSES = ["banana", "blue", "red"]
FORMAT_PICTURES: list[tuple[tuple[int, int], list[tuple[int, int, int, int, int]]]] = [
    ((64, 64), [(0, 4, 6, 30, 40)]),
    ((128, 64), [(1, 10, 8, 50, 60), (2, 70, 4, 120, 30)]),
    ((64, 128), []),
    ((64, 32), [(2, 0, 0, 64, 32)]),
    ((128, 128), [(0, 8, 8, 40, 40), (1, 60, 60, 100, 120), (1, 100, 4, 124, 30)]),
    ((32, 64), []),
]


def _picture(size: tuple[int, int], objects, seed: int) -> torch.Tensor:
    width, height = size
    gen = torch.Generator().manual_seed(seed)
    img = (torch.rand(3, height, width, generator=gen) * 80).to(torch.uint8)
    for cls, x1, y1, x2, y2 in objects:
        img[:, y1:y2, x1:x2] = torch.tensor(CLASS_COLOURS[cls], dtype=torch.uint8)[:, None, None]
    return img


def write_all_formats(root: Path, pictures=FORMAT_PICTURES, class_names=FORMAT_CLASSES, coco_ids=None) -> dict:
    """The same pictures (identical PNG bytes) as banana CSV, COCO, VOC and YOLO data sets under ``root``.

    Every split (train, val, test) holds all ``pictures``. Returns the overrides that select
    each format: ``{"banana": [...], "coco": [...], "voc": [...], "yolo": [...]}``.
    ``coco_ids``: the COCO category id of each class (default 1..C).
    """
    import json

    coco_ids = coco_ids or list(range(1, len(class_names) + 1))
    for split in ("train", "val", "test"):
        banana = root / "banana" / "banana-detection" / f"bananas_{split}"
        (banana / "images").mkdir(parents=True)
        (root / "coco" / split).mkdir(parents=True)
        (root / "coco" / "annotations").mkdir(parents=True, exist_ok=True)
        for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
            (root / "voc" / sub).mkdir(parents=True, exist_ok=True)
        (root / "yolo" / "images" / split).mkdir(parents=True)
        (root / "yolo" / "labels" / split).mkdir(parents=True)
        rows = ["img_name,label,xmin,ymin,xmax,ymax"]
        coco = {
            "images": [],
            "annotations": [],
            "categories": [{"id": i, "name": n} for i, n in zip(coco_ids, class_names, strict=True)],
        }
        ids = []
        for k, ((width, height), objects) in enumerate(pictures):
            name = f"{split}_{k}"
            png = root / "coco" / split / f"{name}.png"
            write_png(_picture((width, height), objects, seed=k), str(png))
            data = png.read_bytes()
            for target in (
                root / "voc" / "JPEGImages" / f"{name}.jpg",
                root / "yolo" / "images" / split / f"{name}.png",
            ):
                target.write_bytes(data)  # PNG bytes; VOC's fixed .jpg name is only a name
            if objects:
                (banana / "images" / f"{name}.png").write_bytes(data)
            coco["images"].append({"id": 100 + k, "file_name": f"{name}.png", "width": width, "height": height})
            xml = [
                f"<annotation><filename>{name}.jpg</filename>",
                f"<size><width>{width}</width><height>{height}</height><depth>3</depth></size>",
            ]
            yolo = []
            for j, (cls, x1, y1, x2, y2) in enumerate(objects):
                rows.append(f"{name}.png,{cls},{x1},{y1},{x2},{y2}")
                coco["annotations"].append(
                    {
                        "id": 1000 * k + j,
                        "image_id": 100 + k,
                        "category_id": coco_ids[cls],
                        "bbox": [x1, y1, x2 - x1, y2 - y1],
                        "area": (x2 - x1) * (y2 - y1),
                        "iscrowd": 0,
                    }
                )
                xml.append(
                    f"<object><name>{class_names[cls]}</name><difficult>0</difficult><bndbox>"
                    f"<xmin>{x1 + 1}</xmin><ymin>{y1 + 1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>"
                )
                cx, cy = (x1 + x2) / 2 / width, (y1 + y2) / 2 / height
                yolo.append(f"{cls} {cx!r} {cy!r} {(x2 - x1) / width!r} {(y2 - y1) / height!r}")
            (root / "voc" / "Annotations" / f"{name}.xml").write_text("".join(xml) + "</annotation>")
            (root / "yolo" / "labels" / split / f"{name}.txt").write_text("\n".join(yolo) + ("\n" if yolo else ""))
            ids.append(name)
        (banana / "label.csv").write_text("\n".join(rows) + "\n")
        (root / "coco" / "annotations" / f"instances_{split}.json").write_text(json.dumps(coco))
        (root / "voc" / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(ids) + "\n")
    names = "\n".join(f"  {i}: {n}" for i, n in enumerate(class_names))
    (root / "yolo" / "data.yaml").write_text(
        f"train: images/train\nval: images/val\ntest: images/test\nnames:\n{names}\n"
    )
    coco_args = [
        f"data.{s}.{k}={root / 'coco' / (s if k == 'images' else f'annotations/instances_{s}.json')}"
        for s in ("train", "val", "test")
        for k in ("images", "annotations")
    ]
    return {
        "banana": [
            "data=banana",
            f"data.data_dir={root / 'banana'}",
            f"data.num_classes={len(class_names)}",
            f"data.class_names=[{','.join(class_names)}]",
            "data.test_split=bananas_test",
        ],
        "coco": ["data=coco", *coco_args],
        "voc": ["data=voc", f"data.root={root / 'voc'}", "data.test.split=test"],
        "yolo": ["data=yolo", f"data.yaml={root / 'yolo' / 'data.yaml'}"],
    }
