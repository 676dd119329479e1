"""Pictures of detections and training: boxes drawn on images, metric curves, PR curves.

Shared by the training callbacks, the :class:`~tinyssd.deploy.detector.Detector` and the dashboards.
matplotlib is imported (with the file-only Agg backend) when a figure is first drawn, never
at import time.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor
from torchvision.utils import draw_bounding_boxes

from tinyssd.boxes import pixel_scale
from tinyssd.errors import printable

__all__ = [
    "close_figure",
    "confusion_matrix_figure",
    "draw_detections",
    "plot_curves",
    "pr_curve_figure",
    "read_metrics_csv",
]


def read_metrics_csv(path: Path) -> list[dict[str, str]]:
    """The rows of a run's ``metrics.csv``."""
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _pyplot():
    """matplotlib's pyplot on the Agg backend (files only: no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def draw_detections(
    image: Tensor,
    gt_boxes: Tensor | None,
    pred_boxes: Tensor,
    pred_scores: Tensor,
    pred_names: list[str],
    gt_color: str = "lime",
    pred_color: str = "red",
    width: int = 2,
) -> Tensor:
    """``image (3, H, W)`` uint8 with ground truth and scored predictions (pixel xyxy) drawn.

    Boxes are clipped to the picture and non-finite ones skipped: a diverging model predicts
    boxes millions of pixels wide, which PIL would otherwise rasterise for minutes.
    """
    img_h, img_w = image.shape[-2:]

    def clip(boxes: Tensor) -> tuple[Tensor, Tensor]:
        keep = torch.isfinite(boxes).all(dim=-1)
        limit = pixel_scale(img_w, img_h, boxes.device).to(boxes.dtype)
        return boxes[keep].clamp(min=0).minimum(limit), keep

    out = image
    if gt_boxes is not None and len(gt_boxes):
        gt_boxes, _ = clip(gt_boxes)
    pred_boxes, keep = clip(pred_boxes)
    pred_scores = pred_scores[keep]
    pred_names = [n for n, k in zip(pred_names, keep.tolist(), strict=True) if k]
    if gt_boxes is not None and len(gt_boxes):
        out = draw_bounding_boxes(out, gt_boxes, colors=gt_color, width=width)
    if len(pred_boxes):
        labels = [f"{printable(n)} {s:.2f}" for n, s in zip(pred_names, pred_scores.tolist(), strict=True)]
        out = draw_bounding_boxes(out, pred_boxes, labels=labels, colors=pred_color, width=width)
    return out


def plot_curves(csv_path: Path, out_path: Path, panels) -> None:
    """Draw the columns of a metrics CSV over epochs, one panel per group."""
    plt = _pyplot()
    rows = read_metrics_csv(csv_path)
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.6))
    for ax, (title, keys) in zip(axes, panels, strict=True):
        for key in keys:
            points = [(int(float(r["epoch"])) + 1, float(r[key])) for r in rows if r.get(key) not in (None, "")]
            if points:
                ax.plot(*zip(*points, strict=True), marker="o", markersize=3, label=key)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        if title in ("class error", "bbox MAE") or title == "loss":
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_path, dpi=110)
    plt.close(fig)


def close_figure(figure) -> None:
    """Free a figure once saved or logged (pyplot keeps every open figure until closed)."""
    _pyplot().close(figure)


def pr_curve_figure(precision: Tensor | None):
    """Precision over 101 recall levels (IoU 0.5) as a matplotlib figure, or None."""
    if precision is None or not torch.isfinite(precision).all():
        return None
    plt = _pyplot()
    recall = torch.linspace(0, 1, len(precision))
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.plot(recall.numpy(), precision.numpy())
    ap = float(precision.mean())
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02), title=f"PR @ IoU 0.5 (AP {ap:.3f})")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    if not math.isfinite(ap):
        plt.close(fig)
        return None
    return fig


def confusion_matrix_figure(matrix: Sequence[Sequence[int]] | Tensor, class_names: Sequence[str], title: str = ""):
    """A detection confusion matrix (:class:`~tinyssd.model.metrics.DetectionConfusionMatrix`) as a figure.

    Rows are the true classes and background (detections of nothing), columns the detected
    classes and background (objects missed); each row is coloured by its share of the row.
    """
    plt = _pyplot()
    counts = torch.as_tensor(matrix, dtype=torch.float64)
    labels = [*(printable(n) for n in class_names), "background"]
    shares = counts / counts.sum(dim=1, keepdim=True).clamp(min=1)
    side = 2.2 + 0.6 * len(labels)
    fig, ax = plt.subplots(figsize=(side + 1, side))
    image = ax.imshow(shares.numpy(), cmap="Blues", vmin=0, vmax=1)
    for (row, col), value in zip(
        torch.cartesian_prod(torch.arange(len(labels)), torch.arange(len(labels))).tolist(),
        counts.reshape(-1).tolist(),
        strict=True,
    ):
        if row == col == len(labels) - 1:
            continue  # background detected as background is not counted
        color = "white" if shares[row, col] > 0.6 else "black"
        ax.text(col, row, f"{int(value)}", ha="center", va="center", color=color, fontsize=9)
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("detected as")
    ax.set_ylabel("true class")
    ax.set_title(title or "confusion matrix (IoU 0.5, display threshold)")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the row")
    fig.tight_layout()
    return fig
