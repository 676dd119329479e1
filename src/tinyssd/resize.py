"""Pictures of any size onto the model's square canvas, and boxes there and back.

The model sees ``S x S`` pixels. ``stretch`` (the chapter's) resizes the picture to the canvas,
changing its aspect ratio; ``letterbox`` scales it by one factor to fit and centres it on a
canvas filled with :data:`LETTERBOX_FILL` (the convention of YOLO's loaders), so objects keep
their shape. Either way the mapping from picture to canvas is, per axis, ``canvas = picture *
scale + offset`` in normalised units: a *placement* ``(..., 4)`` = ``[scale_x, scale_y,
offset_x, offset_y]``. Boxes map with it exactly (no rounding: the scales are the resized
picture's own sides over the canvas's) and back with its inverse.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.transforms.v2 import functional as TF

from tinyssd.errors import ConfigError

__all__ = [
    "LETTERBOX",
    "LETTERBOX_FILL",
    "RESIZE_MODES",
    "STRETCH",
    "check_resize_mode",
    "from_canvas",
    "placement",
    "to_canvas",
    "to_canvas_image",
]

STRETCH, LETTERBOX = "stretch", "letterbox"
RESIZE_MODES = (STRETCH, LETTERBOX)
# The gray of the letterbox bars (YOLO's loaders use the same).
LETTERBOX_FILL = 114


def check_resize_mode(mode: object, key: str = "data.resize") -> str:
    if mode not in RESIZE_MODES:
        raise ConfigError(f"{key} must be one of {', '.join(RESIZE_MODES)}, got {mode!r}.")
    return str(mode)


def _letterbox_sides(width: int, height: int, size: int) -> tuple[int, int]:
    """Sides of the picture scaled by one factor to fit ``size`` (at least a pixel each)."""
    scale = size / max(width, height)
    return max(1, min(size, round(width * scale))), max(1, min(size, round(height * scale)))


def placement(width: int, height: int, size: int, mode: str) -> Tensor:
    """``(4,)`` float64 ``[scale_x, scale_y, offset_x, offset_y]`` of a ``width x height`` picture."""
    if mode == STRETCH:
        return torch.tensor([1.0, 1.0, 0.0, 0.0], dtype=torch.float64)
    new_w, new_h = _letterbox_sides(width, height, size)
    return torch.tensor(
        [new_w / size, new_h / size, ((size - new_w) // 2) / size, ((size - new_h) // 2) / size], dtype=torch.float64
    )


def _scale_offset(place: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    # (..., 4) placement -> (..., 1, 4) multipliers and offsets of xyxy rows.
    place = place.to(dtype).unsqueeze(-2)
    return place[..., [0, 1, 0, 1]], place[..., [2, 3, 2, 3]]


def to_canvas(boxes: Tensor, place: Tensor) -> Tensor:
    """Normalised xyxy ``boxes (..., G, 4)`` of pictures -> normalised on their canvas; ``place (..., 4)``."""
    scale, offset = _scale_offset(place, boxes.dtype)
    return boxes * scale + offset


def from_canvas(boxes: Tensor, place: Tensor) -> Tensor:
    """The inverse of :func:`to_canvas`: canvas-normalised xyxy -> picture-normalised."""
    scale, offset = _scale_offset(place, boxes.dtype)
    return (boxes - offset) / scale


def to_canvas_image(image: Tensor, size: int, mode: str) -> Tensor:
    """``image (3, H, W)`` uint8 -> ``(3, size, size)`` uint8 placed as :func:`placement` says."""
    height, width = image.shape[-2:]
    if mode == STRETCH:
        if (height, width) == (size, size):
            return image
        return TF.resize(image, [size, size], antialias=True)
    new_w, new_h = _letterbox_sides(width, height, size)
    resized = image if (new_h, new_w) == (height, width) else TF.resize(image, [new_h, new_w], antialias=True)
    canvas = torch.full((image.shape[0], size, size), LETTERBOX_FILL, dtype=image.dtype)
    top, left = (size - new_h) // 2, (size - new_w) // 2
    canvas[:, top : top + new_h, left : left + new_w] = resized
    return canvas
