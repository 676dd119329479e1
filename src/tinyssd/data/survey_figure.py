"""``check.png``: a data set's boxes against the anchors (``tinyssd check``).

Three panels: the boxes' sides on the model's canvas with the anchor sizes marked, their aspect
ratios with the anchor ratios marked, and the recall each anchor layout can reach per size bucket.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from tinyssd.plots import _pyplot, close_figure

__all__ = ["check_figure"]

# Layouts whose anchors are marked on the histograms (the others are in the recall panel only).
_MARKED = {"chapter": "tab:gray", "configured": "tab:purple", "auto": "tab:red"}


def check_figure(report: dict[str, Any], boxes: dict[str, Tensor], path: Path) -> Path:
    """Draw the report's figure for ``boxes`` (per split, ``(N, 4)`` canvas-normalised) to ``path``."""
    plt = _pyplot()
    size = report["image_size"]
    figure, (sides_ax, ratio_ax, recall_ax) = plt.subplots(1, 3, figsize=(16, 4.5))
    top = max(
        [1.0] + [float(((b[:, 2:] - b[:, :2]).prod(dim=1).sqrt() * size).max()) for b in boxes.values() if len(b)]
    )
    bins = torch.linspace(0, max(top, size) * 1.05, 41).tolist()
    for split, split_boxes in boxes.items():
        if not len(split_boxes):
            continue
        wh = (split_boxes[:, 2:] - split_boxes[:, :2]).clamp(min=1e-9)
        sides_ax.hist((wh.prod(dim=1).sqrt() * size).tolist(), bins=bins, alpha=0.5, label=f"{split} boxes")
        ratio_ax.hist(torch.log2(wh[:, 0] / wh[:, 1]).tolist(), bins=40, alpha=0.5, label=f"{split} boxes")
    for name, color in _MARKED.items():
        row = report["anchors"].get(name)
        if row is None:
            continue
        for i, value in enumerate(v * size for scale in row["sizes"] for v in scale):
            sides_ax.axvline(value, color=color, linestyle="--", linewidth=1, label=f"{name} sizes" if i == 0 else None)
        for i, value in enumerate(sorted({r for scale in row["ratios"] for r in scale})):
            ratio_ax.axvline(
                math.log2(value), color=color, linestyle="--", linewidth=1, label=f"{name} ratios" if i == 0 else None
            )
    sides_ax.set(title=f"box side sqrt(w*h) on the {size} px canvas", xlabel="pixels", ylabel="objects")
    ratio_ax.set(title="aspect ratio w/h", xlabel="log2(w/h)", ylabel="objects")
    sides_ax.legend(fontsize=7)
    ratio_ax.legend(fontsize=7)

    split = "train" if "train" in report["splits"] else next(iter(report["splits"]))
    names = list(report["anchors"])
    buckets = list(report["anchors"][names[0]][split]) if names else []  # size buckets, then "all"
    width = 0.8 / max(1, len(names))
    for i, name in enumerate(names):
        values = [report["anchors"][name][split][b]["recall"] or 0.0 for b in buckets]
        bars = recall_ax.bar([j + i * width for j in range(len(buckets))], values, width=width, label=name)
        recall_ax.bar_label(bars, fmt="%.2f", fontsize=6, rotation=90, padding=2)
    counts = [report["anchors"][names[0]][split][b]["objects"] for b in buckets] if names else [0] * len(buckets)
    recall_ax.set_xticks([j + 0.4 - width / 2 for j in range(len(buckets))])
    recall_ax.set_xticklabels([f"{b}\n({n})" for b, n in zip(buckets, counts, strict=True)])
    recall_ax.set(
        title=f"reachable recall on {split} (best anchor IoU >= 0.5)", ylim=(0, 1.18), ylabel="share of objects"
    )
    recall_ax.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    close_figure(figure)
    return path
