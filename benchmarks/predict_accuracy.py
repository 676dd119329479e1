"""How well a checkpoint's detections match a banana-format split, image by image.

    python benchmarks/predict_accuracy.py CKPT ../shared/data/banana-detection/bananas_val [--threshold 0.5]

Counts the images that have a detection (score >= threshold) overlapping a ground-truth box
of its class by IoU >= 0.5, and the detections that overlap no ground truth, through the
same ``Detector`` that ``predict.py`` uses.
"""

from __future__ import annotations

import argparse
import csv
from collections import defaultdict
from pathlib import Path

import torch
from torchvision.ops import box_iou

from tinyssd.detector import Detector


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("ckpt")
    parser.add_argument("split_dir", type=Path)
    parser.add_argument("--threshold", type=float, default=0.5)
    parser.add_argument("--iou", type=float, default=0.5)
    args = parser.parse_args()

    truth: dict[str, list[list[float]]] = defaultdict(list)
    labels: dict[str, list[int]] = defaultdict(list)
    with open(args.split_dir / "label.csv", newline="") as f:
        for row in csv.DictReader(f):
            truth[row["img_name"]].append([float(row[k]) for k in ("xmin", "ymin", "xmax", "ymax")])
            labels[row["img_name"]].append(int(row["label"]))
    detector = Detector.from_checkpoint(args.ckpt, threshold=args.threshold)
    names = sorted(truth)
    results = detector.predict([args.split_dir / "images" / n for n in names])
    found = stray = total = 0
    for name, dets in zip(names, results, strict=True):
        gt = torch.tensor(truth[name])
        gt_labels = torch.tensor(labels[name])
        total += len(dets.boxes)
        if len(dets.boxes) == 0:
            continue
        iou = box_iou(dets.boxes, gt) * (dets.labels[:, None] == gt_labels[None, :])
        found += int((iou.max(dim=0).values >= args.iou).any())
        stray += int((iou.max(dim=1).values < args.iou).sum())
    print(
        f"{len(names)} images; {found} with a detection at IoU >= {args.iou} (score >= {args.threshold}); "
        f"{total} detections, {stray} overlapping no ground truth"
    )


if __name__ == "__main__":
    main()
