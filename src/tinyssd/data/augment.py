"""Training-time augmentation with ``torchvision.transforms.v2``: boxes move with the pixels.

``augment=ssd`` is the SSD paper's set: photometric distortion, zoom-out, IoU crop and
horizontal flip; ``light`` is brightness, contrast and saturation distortion (no channel
swaps or hue shifts, so a banana stays yellow) and flip; ``flip`` is flip alone.
Augmentation runs per training item (the validation split is never augmented) on the
decoded uint8 image and returns the same shapes the dataset serves without it.

``mosaic`` (``data.mosaic`` > 0) builds one training image out of four: a window of each
image fills one quadrant, so objects appear at new positions, next to other backgrounds and
several to a picture.

``zoom_out`` (``data.zoom_out`` > 1) shrinks half of the training images by up to that factor
onto a canvas of the mean colour (the SSD paper's zoom-out without its crop), so the model
also sees objects smaller than the data set's.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision import tv_tensors
from torchvision.transforms import v2

from tinyssd.boxes import PAD_CLASS, to_pixels, valid_rows
from tinyssd.errors import ConfigError

__all__ = [
    "AUGMENTATIONS",
    "MOSAIC_CENTER",
    "DetectionAugment",
    "build_augment",
    "check_mosaic_share",
    "check_zoom_out",
    "color_distort",
    "mosaic",
    "zoom_out_transform",
]

AUGMENTATIONS = ("none", "flip", "light", "ssd")
# Range of the mosaic's split point, as fractions of the side: every quadrant is at least
# 30% of the side, room for a whole object of the banana set's sizes (up to 29%).
MOSAIC_CENTER = (0.3, 0.7)
# Zoom-out canvas colour: the ImageNet mean, as in the SSD paper's implementation.
MEAN_FILL = (124, 116, 104)


class DetectionAugment:
    """``(image (3, S, S) uint8, labels (G, 5) normalised, padded with -1) -> same shapes``.

    Boxes that the crop removes (or shrinks below a pixel) are dropped: their rows become
    padding, exactly as if the object were not in the picture.
    """

    def __init__(self, transform: v2.Transform, image_size: int) -> None:
        self.transform = transform
        self.image_size = image_size
        self.resize = v2.Resize((image_size, image_size), antialias=True)

    def __call__(self, image: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        height, width = image.shape[-2:]
        valid = valid_rows(labels)
        sample = {
            "image": tv_tensors.Image(image),
            "boxes": tv_tensors.BoundingBoxes(
                to_pixels(labels[valid, 1:], width, height), format="XYXY", canvas_size=(height, width)
            ),
            "labels": labels[valid, 0].long(),
        }
        out = self.resize(self.transform(sample))
        boxes = out["boxes"].as_subclass(Tensor) / self.image_size
        result = torch.full_like(labels, PAD_CLASS)
        result[: len(boxes), 0] = out["labels"].float()
        result[: len(boxes), 1:] = boxes
        return out["image"].as_subclass(Tensor), result


def check_mosaic_share(share: object) -> None:
    """Refuse a ``data.mosaic`` share outside ``[0, 1]``."""
    if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 <= share <= 1:
        raise ConfigError(f"data.mosaic is the share of mosaic training images, in [0, 1]; got {share!r}.")


def check_zoom_out(factor: object) -> None:
    """Refuse a ``data.zoom_out`` factor outside ``[1, 4]``."""
    if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not 1 <= factor <= 4:
        raise ConfigError(
            "data.zoom_out is the largest shrink factor of the zoom-out augmentation, in [1, 4] "
            f"(1 = off); got {factor!r}."
        )


def color_distort(p: float = 0.5) -> v2.Transform:
    """The SSD paper's brightness, contrast and saturation ranges, each applied with
    probability ``p``. Without its channel swaps and hue shifts: colour is much of what tells
    a banana from its background, and a hue shift costs 20x the other three together."""
    return v2.Compose(
        [
            v2.RandomApply([v2.ColorJitter(brightness=(0.875, 1.125))], p=p),
            v2.RandomApply([v2.ColorJitter(contrast=(0.5, 1.5))], p=p),
            v2.RandomApply([v2.ColorJitter(saturation=(0.5, 1.5))], p=p),
        ]
    )


def mosaic(
    images: Tensor,
    labels: Tensor,
    center: tuple[int, int],
    min_visible: float = 0.4,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Four images -> one, split into quadrants at ``center = (cx, cy)`` pixels.

    Quadrant ``q`` (top-left, top-right, bottom-left, bottom-right) is a window of image
    ``q`` of the quadrant's size, placed at random but so that one randomly chosen object of
    that image stays whole when it fits. Boxes move with their window and are clipped to
    their quadrant; an object keeping less than ``min_visible`` of its area is dropped.

    ``images (4, C, S, S)``, ``labels (4, G, 5)`` normalised xyxy padded with class -1
    -> ``image (C, S, S)``, ``labels (4G, 5)`` (padded with class -1).
    """
    size = images.shape[-1]
    cx, cy = center
    canvas = torch.empty_like(images[0])
    out = torch.full((4 * labels.shape[1], 5), PAD_CLASS)
    quadrants = ((0, 0, cx, cy), (cx, 0, size, cy), (0, cy, cx, size), (cx, cy, size, size))
    count = 0
    for q, (x0, y0, x1, y1) in enumerate(quadrants):
        width, height = x1 - x0, y1 - y0
        valid = labels[q][valid_rows(labels[q])]
        boxes = valid[:, 1:] * size
        if len(boxes):
            k = int(torch.randint(len(boxes), (1,), generator=generator))
            sx = _window_start(boxes[k, 0], boxes[k, 2], width, size, generator)
            sy = _window_start(boxes[k, 1], boxes[k, 3], height, size, generator)
        else:
            sx = int(torch.randint(size - width + 1, (1,), generator=generator))
            sy = int(torch.randint(size - height + 1, (1,), generator=generator))
        canvas[:, y0:y1, x0:x1] = images[q][:, sy : sy + height, sx : sx + width]
        if not len(boxes):
            continue
        shifted = boxes + torch.tensor([x0 - sx, y0 - sy, x0 - sx, y0 - sy], dtype=boxes.dtype)
        low = torch.tensor([x0, y0, x0, y0], dtype=boxes.dtype)
        high = torch.tensor([x1, y1, x1, y1], dtype=boxes.dtype)
        clipped = torch.minimum(torch.maximum(shifted, low), high)
        area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        cw, ch = clipped[:, 2] - clipped[:, 0], clipped[:, 3] - clipped[:, 1]
        keep = (cw >= 1) & (ch >= 1) & (cw * ch >= min_visible * area)
        kept = int(keep.sum())
        out[count : count + kept, 0] = valid[keep, 0]
        out[count : count + kept, 1:] = clipped[keep] / size
        count += kept
    return canvas, out


def _window_start(lo: Tensor, hi: Tensor, window: int, size: int, generator: torch.Generator | None) -> int:
    """Start of a ``window``-pixel span in ``[0, size)`` holding ``[lo, hi]`` when it fits."""
    first = max(0, int(torch.ceil(hi)) - window)
    last = min(int(lo), size - window)
    if first > last:  # the object is larger than the window: centre it
        return int(min(max(int((lo + hi - window) / 2), 0), size - window))
    return first + int(torch.randint(last - first + 1, (1,), generator=generator))


def zoom_out_transform(max_factor: float) -> v2.Transform:
    """Half of the images shrunk by up to ``max_factor`` onto a canvas of the mean colour (the
    SSD paper's implementation), boxes following."""
    return v2.RandomZoomOut(fill={tv_tensors.Image: MEAN_FILL, "others": 0}, side_range=(1.0, max_factor), p=0.5)


def build_augment(kind: str | None, image_size: int, zoom_out: float = 1.0) -> DetectionAugment | None:
    """The augmentation named by ``data.augment`` (``none`` -> ``None``), plus zoom-out when
    ``zoom_out`` > 1 (before the flip)."""
    check_zoom_out(zoom_out)
    zoom = [zoom_out_transform(zoom_out)] if zoom_out > 1 else []
    if kind in (None, "none"):
        steps = zoom
    elif kind == "flip":
        steps = [*zoom, v2.RandomHorizontalFlip(0.5)]
    elif kind == "light":
        # Appearance changes and mirroring; objects keep their sizes unless zoom-out is on.
        steps = [color_distort(), *zoom, v2.RandomHorizontalFlip(0.5)]
    elif kind == "ssd":  # its own zoom-out (up to 2x) comes before the IoU crop
        steps = [
            v2.RandomPhotometricDistort(p=0.5),
            zoom_out_transform(max(2.0, zoom_out)),
            v2.RandomIoUCrop(),
            v2.RandomHorizontalFlip(0.5),
        ]
    else:
        raise ConfigError(f"data.augment must be one of {', '.join(AUGMENTATIONS)}; got {kind!r}.")
    if not steps:
        return None
    return DetectionAugment(v2.Compose([*steps, v2.SanitizeBoundingBoxes(min_size=1)]), image_size)
