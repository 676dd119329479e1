"""The pictures of ``tinyssd explain`` (uint8 ``(3, H, W)`` tensors), drawn from an :class:`Explanation`.

``anchors``: one panel per scale, the anchors of one cell as the chapter draws them;
``labelling``: each object's positive anchors, the chapter's rule beside ATSS; ``offsets``: one
positive anchor, its offset targets and the box they decode to; ``scores``: per scale, the best
class probability of each cell over the picture; ``nms``: the best boxes before NMS and the
detections after it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchvision.transforms.v2 import functional as TF
from torchvision.utils import draw_bounding_boxes

from tinyssd.model.explanation import Explanation
from tinyssd.plots import add_caption, draw_detections

__all__ = ["FIGURES", "anchors_figure", "figures", "labelling_figure", "nms_figure", "offsets_figure", "scores_figure"]

# Distinct colours for the anchors of one cell (as the chapter's show_bboxes cycles them).
PALETTE = ["blue", "orange", "magenta", "cyan", "red", "purple", "olive", "brown"]
# Pictures are drawn at least this many pixels wide, so that the labels stay readable.
MIN_SIDE = 384


def _picture(image: Tensor) -> tuple[Tensor, int]:
    side = max(MIN_SIDE, image.shape[-1])
    return TF.resize(image, [side, side], antialias=True), side


def _px(boxes: Tensor, side: int) -> Tensor:
    return boxes.reshape(-1, 4).float() * side


def _row(panels: Sequence[Tensor], gap: int = 8) -> Tensor:
    """Panels side by side on white, tops aligned."""
    height = max(p.shape[-2] for p in panels)
    padded = []
    for k, panel in enumerate(panels):
        out = torch.full((3, height, panel.shape[-1] + (gap if k < len(panels) - 1 else 0)), 255, dtype=torch.uint8)
        out[:, : panel.shape[-2], : panel.shape[-1]] = panel
        padded.append(out)
    return torch.cat(padded, dim=-1)


def _truth(image: Tensor, expl: Explanation, side: int, names: Sequence[str]) -> Tensor:
    if expl.labels is None or not len(expl.labels):
        return image
    gt_names = [f"{j}: {names[int(c)]}" for j, c in enumerate(expl.labels[:, 0].tolist())]
    return draw_detections(image, _px(expl.labels[:, 1:], side), torch.zeros(0, 4), torch.zeros(0), [], gt_names)


def anchors_figure(expl: Explanation, names: Sequence[str]) -> Tensor:
    """Per scale, the anchors of the cell holding ``expl.point``, with the scale's anchor count."""
    base, side = _picture(expl.image)
    panels = []
    for scale, (boxes, (h, w), a) in enumerate(zip(expl.cell_anchors, expl.grids, expl.per_cell, strict=True)):
        colours = [PALETTE[k % len(PALETTE)] for k in range(len(boxes))]
        panel = draw_bounding_boxes(base, _px(boxes, side).clamp(-side, 2 * side), colors=colours, width=2)
        wh = (boxes[:, 2:] - boxes[:, :2]) * torch.tensor([w / h, 1.0])  # back to the anchor's own size/ratio
        sizes = ", ".join(f"{float(x):.2f}x{float(y):.2f}" for x, y in wh)
        lines = [f"scale {scale}: {h}x{w} cells x {a} anchors = {h * w * a}", f"w x h: {sizes}"]
        panels.append(add_caption(panel, lines))
    total = sum(expl.level_counts)
    return add_caption(_row(panels), [f"{total} anchors in all; one cell's anchors per scale (multibox_prior)"])


def labelling_figure(expl: Explanation, names: Sequence[str]) -> Tensor:
    """The chapter's labelling beside ATSS: each object's positive anchors (white), poorly labelled objects
    (no positive anchor, or only the forced best one below IoU 0.5) in red, flags in the caption."""
    base, side = _picture(expl.image)
    panels = []
    for assigner, objects in expl.labelling.items():
        positives = [i for obj in objects for i in obj.anchors]
        panel = base
        if positives:
            panel = draw_bounding_boxes(panel, _px(expl.anchors[positives], side), colors="white", width=1)
        panel = _truth(panel, expl, side, names)
        # Objects no anchor learns well (none positive, or only the forced best one below 0.5): red.
        weak = [j for j, obj in enumerate(objects) if obj.unlabelled or obj.below_threshold]
        if weak:
            panel = draw_bounding_boxes(panel, _px(expl.labels[weak, 1:], side), colors="red", width=3)
        lines = [
            f"{assigner}: {len(positives)} positive anchors" + (f"; red: {len(weak)} poorly labelled" if weak else "")
        ]
        for j, obj in enumerate(objects):
            scales = sorted(set(obj.scale))
            state = (
                "UNLABELLED: no positive anchor"
                if obj.unlabelled
                else f"{len(obj.anchors)} anchors, IoU {min(obj.iou):.2f}-{max(obj.iou):.2f}, scales {scales}"
                + (" (forced, < 0.5)" if obj.below_threshold else "")
            )
            lines.append(f"{j}: {names[int(expl.labels[j, 0])]}, best {obj.best_iou:.2f}: {state}")
        panels.append(add_caption(panel, lines))
    return _row(panels)


def offsets_figure(expl: Explanation, names: Sequence[str]) -> Tensor:
    """One positive anchor (orange), its offset targets, and the box they decode to (red) on the truth."""
    base, side = _picture(expl.image)
    info = expl.offsets
    panel = _truth(base, expl, side, names)
    panel = draw_bounding_boxes(panel, _px(torch.tensor(info["anchor_box"]), side), colors="orange", width=3)
    panel = draw_bounding_boxes(panel, _px(torch.tensor(info["decoded"]), side), colors="red", width=1)
    dx, dy, dw, dh = info["offsets"]
    lines = [
        f"object {info['object']}: its best positive anchor (orange),",
        f"scale {info['scale']}, IoU {info['iou']:.2f}; offset targets:",
        f"dx {dx:+.2f}, dy {dy:+.2f} (centre shift / anchor side x 10)",
        f"dw {dw:+.2f}, dh {dh:+.2f} (log of the side ratio x 5)",
        "decoded back (red) onto the truth (green)",
    ]
    return add_caption(panel, lines)


def scores_figure(expl: Explanation, names: Sequence[str]) -> Tensor:
    """Per scale, each cell's best class probability (any class, any of its anchors) over the picture."""
    from matplotlib import colormaps

    base, side = _picture(expl.image)
    colour = colormaps["inferno"]
    panels = []
    for scale, heat in enumerate(expl.heatmaps):
        rgb = torch.from_numpy(colour(heat.clamp(0, 1).numpy())[..., :3]).permute(2, 0, 1).float()
        rgb = TF.resize(rgb, [side, side], interpolation=TF.InterpolationMode.NEAREST)
        blended = (0.45 * base.float() + 0.55 * rgb * 255).round().to(torch.uint8)
        panels.append(add_caption(blended, [f"scale {scale}: {tuple(heat.shape)} cells, max {float(heat.max()):.2f}"]))
    return add_caption(_row(panels), ["class score per cell and scale (black 0, yellow 1)"])


def nms_figure(expl: Explanation, names: Sequence[str]) -> Tensor:
    """The best boxes before NMS, and the detections after it from ``expl.threshold``."""
    threshold = expl.threshold
    base, side = _picture(expl.image)
    panels = []
    before = expl.before_nms
    panel = draw_bounding_boxes(base, _px(before["boxes"], side).clamp(-side, 2 * side), colors="red", width=1)
    low, high = float(before["scores"].min()), float(before["scores"].max())
    panels.append(
        add_caption(panel, [f"before NMS: the {len(before['scores'])} best boxes, scores {low:.2f}-{high:.2f}"])
    )
    after = expl.after_nms
    keep = after["scores"] >= threshold
    texts = [names[int(c)] for c in after["labels"][keep]]
    panel = draw_detections(base, None, _px(after["boxes"][keep], side), after["scores"][keep], texts)
    panels.append(
        add_caption(
            panel, [f"after NMS (IoU {expl.nms_threshold:g}): {int(keep.sum())} boxes from score {threshold:g}"]
        )
    )
    return _row(panels)


# file name -> figure, and what it needs: "labels" (objects with a positive anchor), "model" (predictions).
FIGURES = {
    "anchors.png": (anchors_figure, None),
    "labelling.png": (labelling_figure, "labelling"),
    "offsets.png": (offsets_figure, "offsets"),
    "scores.png": (scores_figure, "heatmaps"),
    "nms.png": (nms_figure, "after_nms"),
}


def figures(expl: Explanation, names: Sequence[str]) -> dict[str, Tensor]:
    """Every figure the explanation has the numbers for, by file name."""
    return {name: draw(expl, names) for name, (draw, needs) in FIGURES.items() if needs is None or getattr(expl, needs)}
