"""Pictures of detections and training: boxes drawn on images, metric curves, PR curves.

Shared by the training callbacks, the :class:`~tinyssd.deploy.detector.Detector` and the dashboards.
matplotlib is imported (with the file-only Agg backend) when a figure is first drawn, never
at import time.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import Tensor
from torchvision.transforms.v2.functional import pil_to_tensor, to_pil_image
from torchvision.utils import draw_bounding_boxes

from tinyssd.boxes import pixel_scale
from tinyssd.errors import printable

__all__ = [
    "PREDICTION_COLOR",
    "TRUTH_COLOR",
    "add_caption",
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


# Colours of the drawings: ground truth and predictions (the legend of every picture names them).
TRUTH_COLOR, PREDICTION_COLOR = (0, 200, 0), (230, 20, 20)


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)  # Pillow's own scalable font (FreeType)
    except (TypeError, OSError):  # pragma: no cover - Pillow built without FreeType
        return ImageFont.load_default()


def _label_size(picture_height: int, picture_width: int) -> int:
    """Label text readable at any picture size: about 1/20 of the shorter side, 10 to 28 pixels."""
    return int(min(28, max(10, min(picture_height, picture_width) / 20)))


def _draw_labels(image: Tensor, boxes: Tensor, texts: list[str], color: tuple[int, int, int], above: bool) -> Tensor:
    """Each text on a filled band of ``color`` at its box, kept inside the picture (shifted, never cut)."""
    from PIL import ImageDraw

    if not texts:
        return image
    picture = to_pil_image(image)
    draw = ImageDraw.Draw(picture)
    width, height = picture.size
    font = _font(_label_size(height, width))
    for (x1, y1, _x2, y2), text in zip(boxes.tolist(), texts, strict=True):
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        w, h = right - left + 4, bottom - top + 4
        x = min(max(x1, 0), max(width - w, 0))  # inside on the right edge too
        # Truth above its box and predictions inside it, so that both stay readable when they coincide.
        y = y1 - h if above and y1 - h >= 0 else (y2 - h if above else y1)
        y = min(max(y, 0), max(height - h, 0))
        draw.rectangle((x, y, x + w, y + h), fill=color)
        draw.text((x + 2 - left, y + 2 - top), text, fill=(255, 255, 255), font=font)
    return pil_to_tensor(picture)


def draw_detections(
    image: Tensor,
    gt_boxes: Tensor | None,
    pred_boxes: Tensor,
    pred_scores: Tensor,
    pred_names: list[str],
    gt_names: list[str] | None = None,
    gt_color: tuple[int, int, int] | str = TRUTH_COLOR,
    pred_color: tuple[int, int, int] | str = PREDICTION_COLOR,
    width: int | None = None,
) -> Tensor:
    """``image (3, H, W)`` uint8 with ground truth (class names) and scored predictions (pixel xyxy) drawn.

    Labels sit on filled bands in the box's colour, white text, inside the picture. Boxes are
    clipped to the picture and non-finite ones skipped: a diverging model predicts boxes
    millions of pixels wide, which PIL would otherwise rasterise for minutes.
    """
    from PIL import ImageColor

    img_h, img_w = image.shape[-2:]
    width = width or max(2, round(min(img_h, img_w) / 150))
    gt_color = ImageColor.getrgb(gt_color) if isinstance(gt_color, str) else gt_color
    pred_color = ImageColor.getrgb(pred_color) if isinstance(pred_color, str) else pred_color

    def clip(boxes: Tensor) -> tuple[Tensor, Tensor]:
        keep = torch.isfinite(boxes).all(dim=-1)
        limit = pixel_scale(img_w, img_h, boxes.device).to(boxes.dtype)
        return boxes[keep].clamp(min=0).minimum(limit), keep

    out = image
    pred_boxes, keep = clip(pred_boxes)
    pred_scores = pred_scores[keep]
    pred_names = [n for n, k in zip(pred_names, keep.tolist(), strict=True) if k]
    if gt_boxes is not None and len(gt_boxes):
        gt_boxes, gt_keep = clip(gt_boxes)
        out = draw_bounding_boxes(out, gt_boxes, colors=gt_color, width=width)
        if gt_names is not None:
            names = [printable(n) for n, k in zip(gt_names, gt_keep.tolist(), strict=True) if k]
            out = _draw_labels(out, gt_boxes, names, gt_color, above=True)
    if len(pred_boxes):
        out = draw_bounding_boxes(out, pred_boxes, colors=pred_color, width=width)
        labels = [f"{printable(n)} {s:.2f}" for n, s in zip(pred_names, pred_scores.tolist(), strict=True)]
        out = _draw_labels(out, pred_boxes, labels, pred_color, above=False)
    return out


def add_caption(image: Tensor, lines: Sequence[str]) -> Tensor:
    """``image (3, H, W)`` with a white band above it holding ``lines`` of text (what the picture shows)."""
    from PIL import Image, ImageDraw

    size = max(12, min(20, image.shape[-1] // 45))
    font = _font(size)
    band = (size + 6) * len(lines) + 6
    picture = Image.new("RGB", (image.shape[-1], image.shape[-2] + band), (255, 255, 255))
    picture.paste(to_pil_image(image), (0, band))
    draw = ImageDraw.Draw(picture)
    for k, line in enumerate(lines):
        draw.text((6, 4 + k * (size + 6)), line, fill=(0, 0, 0), font=font)
    return pil_to_tensor(picture)


def plot_curves(csv_path: Path, out_path: Path, panels, best_key: str = "val/map") -> None:
    """Draw the columns of a metrics CSV over epochs (0-based, as the checkpoints are named), one panel
    per group; a panel ``("AP per class", "val/map_class/")`` takes every column with that prefix. The
    epoch where ``best_key`` peaked (the one ``best.ckpt`` keeps) is marked in every panel."""
    from matplotlib.ticker import MaxNLocator

    plt = _pyplot()
    rows = read_metrics_csv(csv_path)
    columns = list(dict.fromkeys(k for r in rows for k in r))
    panels = [(t, [c for c in columns if c.startswith(k)] if isinstance(k, str) else k) for t, k in panels]
    panels = [(t, keys) for t, keys in panels if any(r.get(k) not in (None, "") for r in rows for k in keys)]
    if not panels:
        return
    best = [(float(r[best_key]), int(float(r["epoch"]))) for r in rows if r.get(best_key) not in (None, "")]
    best_epoch = max(best, key=lambda v: (v[0], -v[1]))[1] if best else None
    cols = min(4, len(panels))
    rows_of_panels = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows_of_panels, cols, figsize=(4.2 * cols, 3.4 * rows_of_panels), squeeze=False)
    for ax in axes.flat[len(panels) :]:
        ax.set_visible(False)
    for ax, (title, keys) in zip(axes.flat, panels, strict=False):
        for key in keys:
            points = [(int(float(r["epoch"])), float(r[key])) for r in rows if r.get(key) not in (None, "")]
            if points:  # a class's AP by the class's name; other series by their full key (train/ or val/)
                label = printable(key.removeprefix("val/map_class/"))
                ax.plot(*zip(*points, strict=True), marker="o", markersize=3, label=label)
        if best_epoch is not None:
            ax.axvline(best_epoch, color="gray", linestyle="--", linewidth=1, label=f"best epoch ({best_epoch})")
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if title in ("class error", "bbox MAE", "loss", "loss parts"):
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_path, dpi=110)
    plt.close(fig)


def close_figure(figure) -> None:
    """Free a figure once saved or logged (pyplot keeps every open figure until closed)."""
    _pyplot().close(figure)


def pr_curve_figure(curves: dict[str, Tensor] | Tensor | None):
    """Precision over 101 recall levels (IoU 0.5): the mean over classes (black) and each class's own
    curve (``curves`` as :func:`~tinyssd.model.metrics.evaluation_summary` gives it), or None."""
    if curves is None:
        return None
    curves = {"all classes": curves} if isinstance(curves, Tensor) else curves
    curves = {k: v for k, v in curves.items() if torch.isfinite(v).all()}
    if not curves:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.6, 4.2))
    for k, (name, precision) in enumerate(curves.items()):
        recall = torch.linspace(0, 1, len(precision))
        style = {"color": "black", "linewidth": 2.2} if k == 0 else {"linewidth": 1.2}
        ax.plot(
            recall.numpy(), precision.numpy(), label=f"{printable(name)} (AP {float(precision.mean()):.3f})", **style
        )
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02), title="precision-recall at IoU 0.5")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    return fig


def confusion_matrix_figure(
    matrix: Sequence[Sequence[int]] | Tensor,
    class_names: Sequence[str],
    threshold: float | None = None,
    title: str = "",
):
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
    counted = f"detections scoring >= {threshold:g}" if threshold is not None else "detections at the display threshold"
    ax.set_title(title or f"confusion matrix: IoU 0.5, {counted}", fontsize=10)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the row")
    fig.tight_layout()
    return fig


def error_gallery(pictures: Mapping[int, Tensor] | Sequence[Tensor], errors: Sequence[dict], tile: int = 160) -> Tensor:
    """One tile per error of :func:`tinyssd.model.error_analysis.worst_errors` (boxes in pixels of its
    ``pictures[error["picture"]] (3, H, W)`` uint8): a square crop around the detection (prediction
    colour) and the object it points at or the missed object (truth colour), captioned with the
    cause, class and score; the tiles in a grid."""
    from torchvision.transforms.v2.functional import resize
    from torchvision.utils import make_grid

    tiles = []
    for error in errors:
        image = pictures[error["picture"]]
        missed = error["cause"] == "missed"
        detection = torch.tensor([[] if missed else error["box"]], dtype=torch.float32).reshape(-1, 4)
        truth = torch.tensor([error.get("object_box", error["box"] if missed else [])], dtype=torch.float32)
        truth = truth.reshape(-1, 4)
        corners = torch.cat([detection, truth])
        x0, y0 = corners[:, :2].min(0).values.tolist()
        x1, y1 = corners[:, 2:].max(0).values.tolist()
        half = max(x1 - x0, y1 - y0) * 0.75 + 8  # a square around both boxes, half as large again
        height, width = image.shape[-2:]
        left, top = max(0, int((x0 + x1) / 2 - half)), max(0, int((y0 + y1) / 2 - half))
        right, bottom = min(width, int((x0 + x1) / 2 + half) + 1), min(height, int((y0 + y1) / 2 + half) + 1)
        crop = resize(image[:, top:bottom, left:right], [tile, tile], antialias=True)
        scale = torch.tensor([tile / (right - left), tile / (bottom - top)] * 2)
        offset = torch.tensor([left, top] * 2, dtype=torch.float32)
        for boxes, color in ((truth, TRUTH_COLOR), (detection, PREDICTION_COLOR)):
            if len(boxes):
                placed = ((boxes - offset) * scale).clamp(0, tile - 1)
                crop = draw_bounding_boxes(crop, placed, colors=color, width=2)
        score = f" {error['score']:.2f}" if "score" in error else ""
        tiles.append(add_caption(crop, [f"{error['cause']}: {printable(error['label'])}{score}"]))
    return make_grid(tiles, nrow=min(4, len(tiles)), padding=4, pad_value=255)
