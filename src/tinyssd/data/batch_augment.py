"""Training augmentation on whole batches, on the training device (``data.augment_on=device``).

The same transforms as :mod:`tinyssd.data.augment` draws per picture in the loader, with the
same distributions, as batch tensor operations after the batch reached the device
(``LightningDataModule.on_after_batch_transfer``), so a GPU is not fed by one CPU core
augmenting picture by picture:

* colour (``augment=light``): brightness x U(0.875, 1.125), contrast x U(0.5, 1.5) around the
  picture's mean grey, saturation x U(0.5, 1.5) around each pixel's grey, each with
  probability 1/2, in that order (``color_distort``);
* zoom-out (``zoom_out`` > 1): half of the pictures put at a random place on a canvas
  U(1, zoom_out) times their side, of the mean colour, and scaled back (``RandomZoomOut``);
  bilinear sampling, without the loader's antialiasing (a shrink of at most ``zoom_out``);
* flip (``flip``, ``light``): half of the pictures mirrored;
* mosaic (``mosaic`` > 0): that share of the pictures becomes four quadrants split at a
  random point, the picture itself top-left and three random pictures of the split in the
  others (each augmented as above first; drawn from the batch when the split is not in memory,
  ``cache=none``), each quadrant a window keeping one random object whole
  (:func:`tinyssd.data.augment.mosaic`).

Boxes follow the pixels. Ignored objects (class ``<= -2``) move with their pixels and stay
ignored; padding rows (class -1) stay padding. ``augment=ssd`` (its IoU crop changes the
number of objects picture by picture) runs in the loader only.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from tinyssd.boxes import PAD_CLASS, valid_rows
from tinyssd.data.augment import MEAN_FILL, MOSAIC_CENTER, check_mosaic_share, check_zoom_out
from tinyssd.errors import ConfigError

__all__ = [
    "BATCH_AUGMENTATIONS",
    "PLACEMENTS",
    "BatchAugment",
    "adjust_colours",
    "check_placement",
    "color_distort_batch",
    "flip_batch",
    "mosaic_batch",
    "zoom_out_batch",
]

# data.augment_on: where training augmentation runs (auto: on the device when it is a GPU).
PLACEMENTS = ("loader", "device", "auto")
BATCH_AUGMENTATIONS = ("none", "flip", "light")
# Luma weights of torchvision's rgb_to_grayscale, which ColorJitter's contrast and saturation use.
GREY_WEIGHTS = (0.2989, 0.587, 0.114)
BRIGHTNESS, CONTRAST, SATURATION = (0.875, 1.125), (0.5, 1.5), (0.5, 1.5)
COLOUR_P = FLIP_P = ZOOM_P = 0.5
MOSAIC_MIN_VISIBLE = 0.4
# n -> n random pictures of the split (uint8) and their labels, on the training device.
Pool = Callable[[int], tuple[Tensor, Tensor]]


def check_placement(where: object) -> str:
    """Refuse a ``data.augment_on`` other than loader, device or auto."""
    if where not in PLACEMENTS:
        raise ConfigError(f"data.augment_on must be one of {', '.join(PLACEMENTS)}; got {where!r}.")
    return str(where)


def _uniform(n: int, low: float, high: float, p: float, device: torch.device, gen: torch.Generator | None) -> Tensor:
    """``(n,)`` factors: U(low, high) with probability ``p``, else 1."""
    chosen = torch.rand(n, device=device, generator=gen) < p
    factor = low + (high - low) * torch.rand(n, device=device, generator=gen)
    return torch.where(chosen, factor, torch.ones_like(factor))


def _grey(images: Tensor) -> Tensor:
    """``(B, 3, H, W)`` -> ``(B, 1, H, W)`` whole-number luma, as ColorJitter takes it from uint8 pictures."""
    r, g, b = images.unbind(1)
    return r.mul(GREY_WEIGHTS[0]).add_(g, alpha=GREY_WEIGHTS[1]).add_(b, alpha=GREY_WEIGHTS[2]).floor_().unsqueeze(1)


def adjust_colours(images: Tensor, brightness: Tensor, contrast: Tensor, saturation: Tensor) -> Tensor:
    """``images (B, 3, H, W)`` float holding whole numbers in ``[0, 255]``, factors ``(B,)`` -> same, in place.

    torchvision's ``adjust_brightness``, ``adjust_contrast`` and ``adjust_saturation`` of uint8
    pictures, one after the other, each picture with its own factors (1 = unchanged); every
    step truncated to whole numbers as theirs is. In place: on a CPU, fresh picture-sized
    tensors at every step cost as much as the arithmetic.
    """

    def blend_(x: Tensor, other: Tensor, factor: Tensor) -> Tensor:
        factor = factor[:, None, None, None]
        return x.mul_(factor).add_(other * (1 - factor)).clamp_(0, 255).floor_()

    images.mul_(brightness[:, None, None, None]).clamp_(0, 255).floor_()
    blend_(images, _grey(images).mean(dim=(1, 2, 3), keepdim=True), contrast)
    return blend_(images, _grey(images), saturation)


def color_distort_batch(images: Tensor, gen: torch.Generator | None = None) -> Tensor:
    """``images (B, 3, H, W)`` float (whole numbers in ``[0, 255]``) -> same (in place), with brightness,
    contrast and saturation each changed with probability 1/2 (``augment.color_distort``)."""
    n, device = images.shape[0], images.device
    brightness = _uniform(n, *BRIGHTNESS, COLOUR_P, device, gen)
    contrast = _uniform(n, *CONTRAST, COLOUR_P, device, gen)
    saturation = _uniform(n, *SATURATION, COLOUR_P, device, gen)
    return adjust_colours(images, brightness, contrast, saturation)


def zoom_out_batch(
    images: Tensor, labels: Tensor, max_factor: float, gen: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """Half the pictures shrunk by U(1, ``max_factor``) onto a mean-colour canvas, boxes following.

    ``images (B, 3, S, S)`` float (changed in place), ``labels (B, G, 5)`` normalised -> same shapes.
    """
    n, size, device = images.shape[0], images.shape[-1], images.device
    chosen = (torch.rand(n, device=device, generator=gen) < ZOOM_P).nonzero().flatten()
    factor = 1 + (max_factor - 1) * torch.rand(len(chosen), device=device, generator=gen)
    canvas = (size * factor).floor()  # RandomZoomOut: int(side * r)
    offset = ((canvas - size)[:, None] * torch.rand(len(chosen), 2, device=device, generator=gen)).floor()
    if not len(chosen):
        return images, labels
    # Output pixel u samples canvas pixel (u + 1/2) C / S - 1/2, i.e. picture pixel that minus the offset
    # (align_corners=False): in normalised coordinates x_in = (C/S) x_out + C/S - 1 - 2 offset / S.
    scale = canvas / size
    theta = torch.zeros(len(chosen), 2, 3, device=device, dtype=images.dtype)
    theta[:, 0, 0] = theta[:, 1, 1] = scale
    theta[:, :, 2] = (scale - 1)[:, None] - 2 * offset / size
    grid = F.affine_grid(theta, [len(chosen), 3, size, size], align_corners=False)
    fill = torch.tensor(MEAN_FILL, dtype=images.dtype, device=device)[:, None, None]
    images[chosen] = F.grid_sample(images[chosen].sub_(fill), grid, align_corners=False).add_(fill)
    rows = labels[chosen]
    shift = offset.repeat(1, 2)[:, None, :]  # (left, top, left, top)
    moved = rows.clone()
    moved[..., 1:] = (rows[..., 1:] * size + shift) / canvas[:, None, None]
    # SanitizeBoundingBoxes(min_size=1) on the canvas: a box under a pixel there is dropped.
    sides = (moved[..., 3:] - moved[..., 1:3]) * canvas[:, None, None]
    moved[(rows[..., 0] == PAD_CLASS) | (sides < 1).any(-1)] = PAD_CLASS
    labels = labels.clone()
    labels[chosen] = moved
    return images, labels


def flip_batch(images: Tensor, labels: Tensor, gen: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Half the pictures mirrored left to right (in place), boxes following."""
    flip = torch.rand(images.shape[0], device=images.device, generator=gen) < FLIP_P
    mirror = flip.nonzero().flatten()
    images[mirror] = images[mirror].flip(-1)
    mirrored = labels.clone()
    mirrored[..., 1], mirrored[..., 3] = 1 - labels[..., 3], 1 - labels[..., 1]
    keep_pad = labels[..., :1] == PAD_CLASS
    labels = torch.where(flip[:, None, None] & ~keep_pad, mirrored, labels)
    return images, labels


def _window_starts(boxes: Tensor, has: Tensor, window: Tensor, size: int, gen: torch.Generator | None) -> Tensor:
    """Start of each quadrant's window along one axis, holding its chosen object when it fits.

    ``boxes (N, 2)`` the chosen object's ``lo, hi`` in pixels, ``has (N,)`` whether there is
    one, ``window (N,)`` the window's length -> ``(N,)`` whole-pixel starts.
    """
    lo, hi = boxes[:, 0], boxes[:, 1]
    first = (hi.ceil() - window).clamp(min=0)
    last = torch.minimum(lo.floor(), size - window)
    centred = ((lo + hi - window) / 2).trunc().clamp(min=0).minimum(size - window)
    u = torch.rand(len(window), device=window.device, generator=gen)
    inside = first + (u * (last - first + 1)).floor()
    free = (u * (size - window + 1)).floor()
    return torch.where(has, torch.where(first > last, centred, inside), free)


def mosaic_batch(
    images: Tensor, labels: Tensor, chosen: Tensor, others: Tensor, gen: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """The ``chosen`` pictures made mosaics: picture ``chosen[j]`` top-left, ``others[j]`` in the other quadrants.

    ``images (N, 3, S, S)``, ``labels (N, G, 5)``, ``chosen (M,)`` and ``others (M, 3)`` indices
    into them -> ``images (N, 3, S, S)`` (the same tensor, changed in place), ``labels (N, 4G, 5)``
    (the pictures not chosen unchanged).
    """
    n, rows, size, device = images.shape[0], labels.shape[1], images.shape[-1], images.device
    out_labels = torch.full((n, 4 * rows, 5), PAD_CLASS, dtype=labels.dtype, device=device)
    out_labels[:, :rows] = labels
    m = len(chosen)
    lo, hi = (int(f * size) for f in MOSAIC_CENTER)
    centre = torch.randint(lo, hi + 1, (m, 2), device=device, generator=gen).to(labels.dtype)
    if not m:
        return images, out_labels
    sources = torch.cat([chosen[:, None], others], dim=1)  # (m, 4): top-left is the picture itself
    cx, cy = centre[:, :1], centre[:, 1:]
    zero, full = torch.zeros_like(cx), torch.full_like(cx, size)
    x0, x1 = torch.cat([zero, cx, zero, cx], 1), torch.cat([cx, full, cx, full], 1)  # (m, 4) per quadrant
    y0, y1 = torch.cat([zero, zero, cy, cy], 1), torch.cat([cy, cy, full, full], 1)
    src = labels[sources]  # (m, 4, G, 5)
    boxes, objects = src[..., 1:] * size, valid_rows(src)
    has = objects.any(-1)
    weights = torch.where(has[..., None], objects.to(labels.dtype), torch.ones_like(objects, dtype=labels.dtype))
    pick = torch.multinomial(weights.reshape(4 * m, rows), 1, generator=gen).reshape(m, 4)
    chosen_box = boxes.gather(2, pick[..., None, None].expand(m, 4, 1, 4)).squeeze(2)  # (m, 4, 4)
    sx = _window_starts(chosen_box[..., 0::2].reshape(-1, 2), has.flatten(), (x1 - x0).flatten(), size, gen)
    sy = _window_starts(chosen_box[..., 1::2].reshape(-1, 2), has.flatten(), (y1 - y0).flatten(), size, gen)
    sx, sy = sx.reshape(m, 4), sy.reshape(m, 4)

    # Pixels: each output pixel reads its quadrant's source picture at its window's position.
    axis = torch.arange(size, device=device, dtype=labels.dtype)
    right = (axis[None, None, :] >= cx[:, :, None]).long()  # (m, 1, S)
    below = (axis[None, :, None] >= cy[:, :, None]).long()  # (m, S, 1)
    quadrant = right + 2 * below  # (m, S, S)

    def per_pixel(per_quadrant: Tensor) -> Tensor:  # (m, 4) -> (m, S, S): each pixel's quadrant's value
        return per_quadrant.gather(1, quadrant.flatten(1)).view_as(quadrant)

    src_y = axis[None, :, None] - per_pixel(y0) + per_pixel(sy)
    src_x = axis[None, None, :] - per_pixel(x0) + per_pixel(sx)
    channels = images.shape[1]
    # Flat positions in the (N, C, S, S) pictures, channel 0; each channel is S*S further on.
    index = ((per_pixel(sources) * channels * size + src_y.long()) * size + src_x.long())[:, None]
    index = index + size * size * torch.arange(channels, device=device)[None, :, None, None]
    images[chosen] = images.take(index)  # in place: take() reads every pixel before the write

    # Boxes: moved with their window, clipped to the quadrant, dropped under MOSAIC_MIN_VISIBLE of their area.
    shift = torch.stack([x0 - sx, y0 - sy, x0 - sx, y0 - sy], -1)[:, :, None, :]  # (m, 4, 1, 4)
    low = torch.stack([x0, y0, x0, y0], -1)[:, :, None, :]
    high = torch.stack([x1, y1, x1, y1], -1)[:, :, None, :]
    clipped = torch.minimum(torch.maximum(boxes + shift, low), high)
    area = (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])
    cw, ch = clipped[..., 2] - clipped[..., 0], clipped[..., 3] - clipped[..., 1]
    keep = (src[..., 0] != PAD_CLASS) & (cw >= 1) & (ch >= 1) & (cw * ch >= MOSAIC_MIN_VISIBLE * area)
    moved = torch.cat([src[..., :1], clipped / size], -1).reshape(m, 4 * rows, 5)
    keep = keep.reshape(m, 4 * rows)
    moved[~keep] = PAD_CLASS
    order = torch.argsort((~keep).to(torch.uint8), dim=1, stable=True)  # objects first, as the loader's
    out_labels[chosen] = moved.gather(1, order[..., None].expand(-1, -1, 5))
    return images, out_labels


class BatchAugment:
    """``(images (B, 3, S, S) uint8, labels (B, G, 5)) -> (images uint8, labels (B, G or 4G, 5))``.

    ``kind`` is ``none``, ``flip`` or ``light`` (``data.augment``); ``zoom_out`` and ``mosaic``
    as ``data.zoom_out`` and ``data.mosaic``. Order as in the loader: colour, zoom-out, flip,
    then mosaic.
    """

    def __init__(self, kind: str = "none", zoom_out: float = 1.0, mosaic: float = 0.0) -> None:
        if kind not in BATCH_AUGMENTATIONS:
            raise ConfigError(
                f"data.augment={kind} runs in the loader only (its IoU crop keeps a different number of objects in "
                f"every picture); on the device: {', '.join(BATCH_AUGMENTATIONS)}. Set data.augment_on=loader."
            )
        check_zoom_out(zoom_out)
        check_mosaic_share(mosaic)
        self.kind, self.zoom_out, self.mosaic = kind, float(zoom_out), float(mosaic)

    @property
    def active(self) -> bool:
        return self.kind != "none" or self.zoom_out > 1 or self.mosaic > 0

    def __call__(
        self, images: Tensor, labels: Tensor, generator: torch.Generator | None = None, pool: Pool | None = None
    ) -> tuple[Tensor, Tensor]:
        """``pool(n)``: ``n`` random pictures of the split with their labels, on the batch's device, for
        the mosaics' other three quadrants, as the loader draws them; without it they come from the batch."""
        if images.dtype != torch.uint8:
            raise TypeError(f"BatchAugment takes the uint8 pictures the dataset serves, got {images.dtype}.")
        n, device = images.shape[0], images.device
        if self.mosaic > 0:
            chosen = (torch.rand(n, device=device, generator=generator) < self.mosaic).nonzero().flatten()
            if pool is not None and len(chosen):
                # Each mosaic's other three pictures are augmented on their own first, as in the loader.
                extra_images, extra_labels = pool(3 * len(chosen))
                images, labels = torch.cat([images, extra_images]), torch.cat([labels, extra_labels])
                others = n + torch.arange(3 * len(chosen), device=device).view(-1, 3)
            else:
                others = torch.randint(n, (len(chosen), 3), device=device, generator=generator)
        x = images.float()
        if self.kind == "light":
            x = color_distort_batch(x, generator)
        if self.zoom_out > 1:
            x, labels = zoom_out_batch(x, labels, self.zoom_out, generator)
        if self.kind in ("flip", "light"):
            x, labels = flip_batch(x, labels, generator)
        if self.mosaic > 0:
            x, labels = mosaic_batch(x, labels, chosen, others, generator)
        return x[:n].round_().clamp_(0, 255).to(torch.uint8), labels[:n]
