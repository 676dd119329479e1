"""How well a checkpoint's detections match a banana-format split, image by image.

    python benchmarks/predict_accuracy.py CKPT ../shared/data/banana-detection/bananas_val [--threshold 0.5]

Counts the objects found (a detection with score >= threshold overlapping the ground-truth box
of its class by IoU >= 0.5), overall and by object size (longest box side in pixels), and the
detections that overlap no ground truth, through the same ``Detector`` that ``predict.py``
uses. At the chapter's threshold 0.9 this is the share of objects a user would see boxed.
"""

from __future__ import annotations

import argparse
import csv
import itertools
from collections import defaultdict
from pathlib import Path

import torch
from torchvision.ops import box_iou

from tinyssd.deploy.detector import Detector


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("ckpt")
    parser.add_argument("split_dir", type=Path)
    parser.add_argument("--threshold", type=float, default=0.5)
    parser.add_argument("--iou", type=float, default=0.5)
    parser.add_argument("--size-bins", type=float, nargs="+", default=[40, 50, 60], help="bin edges in pixels")
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
    found_sizes: list[tuple[float, bool]] = []
    stray = total = 0
    for name, dets in zip(names, results, strict=True):
        gt = torch.tensor(truth[name])
        gt_labels = torch.tensor(labels[name])
        total += len(dets.boxes)
        sizes = (gt[:, 2:] - gt[:, :2]).max(dim=1).values.tolist()
        if len(dets.boxes) == 0:
            found_sizes += [(size, False) for size in sizes]
            continue
        iou = box_iou(dets.boxes, gt) * (dets.labels[:, None] == gt_labels[None, :])
        found_sizes += list(zip(sizes, (iou.max(dim=0).values >= args.iou).tolist(), strict=True))
        stray += int((iou.max(dim=1).values < args.iou).sum())
    found = sum(hit for _, hit in found_sizes)
    print(
        f"{len(names)} images, {len(found_sizes)} objects: {found} found ({found / len(found_sizes):.1%}) at "
        f"IoU >= {args.iou}, score >= {args.threshold}; {total} detections, {stray} overlapping no ground truth"
    )
    edges = [0.0, *sorted(args.size_bins), float("inf")]
    for lo, hi in itertools.pairwise(edges):
        hits = [hit for size, hit in found_sizes if lo <= size < hi]
        if hits:
            span = f"{lo:.0f}-{hi:.0f} px" if hi != float("inf") else f">= {lo:.0f} px"
            print(f"  objects {span:>10}: {sum(hits):4d} / {len(hits):4d} found ({sum(hits) / len(hits):.1%})")


if __name__ == "__main__":
    main()
