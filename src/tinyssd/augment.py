"""Training-time augmentation with ``torchvision.transforms.v2``: boxes move with the pixels.

``augment=ssd`` is the SSD paper's set: photometric distortion, zoom-out, IoU crop and
horizontal flip; ``light`` is photometric distortion and flip; ``flip`` is flip alone.
Augmentation runs per training item (the validation split is never augmented) on the
decoded uint8 image and returns the same shapes the dataset serves without it.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision import tv_tensors
from torchvision.transforms import v2

from tinyssd.errors import ConfigError

__all__ = ["AUGMENTATIONS", "DetectionAugment", "build_augment"]

AUGMENTATIONS = ("none", "flip", "light", "ssd")
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
        valid = labels[:, 0] >= 0
        scale = torch.tensor([width, height, width, height], dtype=torch.float32)
        sample = {
            "image": tv_tensors.Image(image),
            "boxes": tv_tensors.BoundingBoxes(labels[valid, 1:] * scale, format="XYXY", canvas_size=(height, width)),
            "labels": labels[valid, 0].long(),
        }
        out = self.resize(self.transform(sample))
        boxes = out["boxes"].as_subclass(Tensor) / self.image_size
        result = torch.full_like(labels, -1.0)
        result[: len(boxes), 0] = out["labels"].float()
        result[: len(boxes), 1:] = boxes
        return out["image"].as_subclass(Tensor), result


def build_augment(kind: str | None, image_size: int) -> DetectionAugment | None:
    """The augmentation named by ``data.augment`` (``none`` -> ``None``)."""
    if kind in (None, "none"):
        return None
    if kind == "flip":
        transform = v2.Compose([v2.RandomHorizontalFlip(0.5), v2.SanitizeBoundingBoxes(min_size=1)])
    elif kind == "light":
        # Appearance changes and mirroring only: objects keep their sizes, so every anchor
        # match of the un-augmented data survives.
        transform = v2.Compose([v2.RandomPhotometricDistort(p=0.5), v2.RandomHorizontalFlip(0.5)])
    elif kind == "ssd":
        transform = v2.Compose(
            [
                v2.RandomPhotometricDistort(p=0.5),
                v2.RandomZoomOut(fill={tv_tensors.Image: MEAN_FILL, "others": 0}, side_range=(1.0, 2.0), p=0.5),
                v2.RandomIoUCrop(),
                v2.RandomHorizontalFlip(0.5),
                v2.SanitizeBoundingBoxes(min_size=1),
            ]
        )
    else:
        raise ConfigError(f"data.augment must be one of {', '.join(AUGMENTATIONS)}; got {kind!r}.")
    return DetectionAugment(transform, image_size)
