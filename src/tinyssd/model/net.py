"""TinySSD: the SSD chapter's five-block single-shot multibox detector."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tinyssd.errors import ConfigError
from tinyssd.limits import MAX_CLASSES
from tinyssd.model.anchors import multibox_prior, num_anchors_per_location

__all__ = [
    "CHAPTER_RATIOS",
    "CHAPTER_SIZES",
    "FPN",
    "NECKS",
    "TinySSD",
    "check_anchor_config",
    "down_sample_block",
    "feature_map_shapes",
    "prediction_head",
]

# The chapter: 0.2..1.05 split into five, the larger size of each scale the geometric mean
# of neighbouring small sizes.
CHAPTER_SIZES: list[list[float]] = [[0.2, 0.272], [0.37, 0.447], [0.54, 0.619], [0.71, 0.79], [0.88, 0.961]]
CHAPTER_RATIOS: list[list[float]] = [[1.0, 2.0, 0.5]] * 5
NUM_SCALES = 5
# What may sit between the feature blocks and the heads: nothing (the chapter) or an FPN.
NECKS = ("none", "fpn")
# Deeper heads than this are a different network, not a head option.
MAX_HEAD_DEPTH = 4


def down_sample_block(in_channels: int, out_channels: int) -> nn.Sequential:
    """Two 3x3 conv-BN-ReLU layers and a 2x2 max-pool: halves height and width."""
    layers: list[nn.Module] = []
    for _ in range(2):
        layers += [nn.Conv2d(in_channels, out_channels, 3, padding=1), nn.BatchNorm2d(out_channels), nn.ReLU()]
        in_channels = out_channels
    layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


def prediction_head(in_channels: int, out_channels: int, depth: int = 0) -> nn.Module:
    """A class or box head: ``depth`` 3x3 conv + ReLU layers of ``in_channels``, then the 3x3 output conv.

    ``depth=0`` is the chapter's single convolution (the same module and weight names as always).
    No batch norm, as in the FPN: the coarsest scale is a single cell.
    """
    output = nn.Conv2d(in_channels, out_channels, 3, padding=1)
    if depth == 0:
        return output
    layers: list[nn.Module] = []
    for _ in range(depth):
        layers += [nn.Conv2d(in_channels, in_channels, 3, padding=1), nn.ReLU()]
    return nn.Sequential(*layers, output)


def feature_map_shapes(height: int, width: int, base_blocks: int = 3) -> list[tuple[int, int]]:
    """``(H, W)`` of the five scales' feature maps for a ``height`` x ``width`` input.

    The base network halves the input ``base_blocks`` times and each later block once more
    (rounding down, as the max-pool does); the last scale is the global max-pool's single cell.
    """
    return [
        (1, 1) if i == NUM_SCALES - 1 else (height >> (base_blocks + i), width >> (base_blocks + i))
        for i in range(NUM_SCALES)
    ]


def check_anchor_config(sizes: Sequence[Sequence[float]], ratios: Sequence[Sequence[float]]) -> None:
    """Raise :class:`ConfigError` unless sizes and ratios describe five valid scales."""
    if isinstance(sizes, str) or isinstance(ratios, str):
        raise ConfigError(
            f"model.net.sizes={sizes!r} and model.net.ratios={ratios!r}: 'auto' (anchors=auto) is fitted to the "
            "training boxes when train.py starts; anywhere else give five lists of numbers (anchors=chapter)."
        )
    sizes, ratios = list(sizes), list(ratios)
    if len(sizes) != NUM_SCALES or len(ratios) != NUM_SCALES:
        raise ConfigError(
            f"model.net.sizes has {len(sizes)} scales and model.net.ratios has {len(ratios)}; TinySSD predicts "
            f"at {NUM_SCALES} scales, so both need {NUM_SCALES} lists (one per scale), e.g. "
            f"model.net.sizes={CHAPTER_SIZES} model.net.ratios={[list(r) for r in CHAPTER_RATIOS]}."
        )
    for i, (s, r) in enumerate(zip(sizes, ratios, strict=True)):
        if len(s) == 0 or len(r) == 0:
            raise ConfigError(f"model.net.sizes[{i}] and model.net.ratios[{i}] must each hold at least one value.")
        if any(float(v) <= 0 for v in [*s, *r]):
            raise ConfigError(f"model.net.sizes[{i}]={list(s)} and model.net.ratios[{i}]={list(r)} must be positive.")


class FPN(nn.Module):
    """Top-down feature pyramid (Lin et al. 2017) over the five feature maps.

    Each map goes through a 1x1 lateral conv to ``channels``; from the coarsest down, the
    coarser result is upsampled (nearest) to the next map's size and added; a 3x3 conv and a
    ReLU smooth each sum. Sizes are kept, so the anchors and the heads' outputs are unchanged;
    the fine maps (which carry the small objects) gain the context of the coarse ones. No batch
    norm, as in the paper: the coarsest map is a single cell, which batch norm cannot
    normalise over a batch of one picture.
    """

    def __init__(self, in_channels: Sequence[int], channels: int) -> None:
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(c, channels, 1) for c in in_channels)
        self.smooth = nn.ModuleList(
            nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU()) for _ in in_channels
        )

    def forward(self, feature_maps: Sequence[Tensor]) -> list[Tensor]:
        laterals = [conv(f) for conv, f in zip(self.lateral, feature_maps, strict=True)]
        fused = [laterals[-1]]
        for lateral in reversed(laterals[:-1]):
            fused.append(lateral + F.interpolate(fused[-1], size=lateral.shape[-2:], mode="nearest"))
        return [smooth(f) for smooth, f in zip(self.smooth, reversed(fused), strict=True)]


class TinySSD(nn.Module):
    """The chapter's TinySSD.

    A base network (three down-sample blocks, 16-32-64 channels), three more down-sample
    blocks (128 channels) and a global max-pool give five feature maps; each has a 3x3 conv
    head for class scores and one for box offsets.

    Args:
        num_classes: object classes, background excluded.
        sizes: per scale, anchor sizes (fractions of the image side).
        ratios: per scale, anchor aspect ratios.
        base_channels: channels of the base network's three blocks.
        feature_channels: channels of the multiscale feature blocks.
        neck: ``none`` (the chapter: each head reads its feature map) or ``fpn`` (:class:`FPN`
            fuses the five maps first, with ``feature_channels`` channels each).
        head_depth: 3x3 conv + ReLU layers in each class and box head before its output conv
            (0: the chapter's single conv; :func:`prediction_head`), per scale.

    ``forward(X (B, 3, H, W))`` returns ``anchors (1, A, 4)``, ``cls_preds (B, A, C+1)`` and
    ``bbox_preds (B, 4A)``; a 256x256 input gives A = 5444 with the chapter's anchors.
    Anchors are computed once per input size and device, then reused.
    """

    def __init__(
        self,
        num_classes: int = 1,
        sizes: Sequence[Sequence[float]] = CHAPTER_SIZES,
        ratios: Sequence[Sequence[float]] = CHAPTER_RATIOS,
        base_channels: Sequence[int] = (16, 32, 64),
        feature_channels: int = 128,
        neck: str = "none",
        head_depth: int = 0,
    ) -> None:
        super().__init__()
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or not 1 <= num_classes <= MAX_CLASSES:
            raise ConfigError(f"num_classes must be a whole number from 1 to {MAX_CLASSES}, got {num_classes!r}.")
        check_anchor_config(sizes, ratios)
        channels = [*base_channels, feature_channels]
        if not base_channels or any(isinstance(c, bool) or not isinstance(c, int) or c < 1 for c in channels):
            raise ConfigError(
                f"model.net.base_channels={list(base_channels)} and model.net.feature_channels={feature_channels} "
                "must be positive whole numbers (at least one base block)."
            )
        if neck not in NECKS:
            raise ConfigError(f"model.net.neck={neck!r} is not one of {list(NECKS)} (none = the chapter's network).")
        if isinstance(head_depth, bool) or not isinstance(head_depth, int) or not 0 <= head_depth <= MAX_HEAD_DEPTH:
            raise ConfigError(f"model.net.head_depth is a whole number from 0 to {MAX_HEAD_DEPTH}; got {head_depth!r}.")
        self.num_classes = num_classes
        self.sizes = [[float(v) for v in s] for s in sizes]
        self.ratios = [[float(v) for v in r] for r in ratios]
        self.anchors_per_location = [
            num_anchors_per_location(s, r) for s, r in zip(self.sizes, self.ratios, strict=True)
        ]

        channels = [3, *base_channels]
        base = nn.Sequential(*(down_sample_block(channels[i], channels[i + 1]) for i in range(len(base_channels))))
        self.blocks = nn.ModuleList(
            [
                base,
                down_sample_block(channels[-1], feature_channels),
                down_sample_block(feature_channels, feature_channels),
                down_sample_block(feature_channels, feature_channels),
                nn.AdaptiveMaxPool2d((1, 1)),
            ]
        )
        in_channels = [channels[-1]] + [feature_channels] * (NUM_SCALES - 1)
        # Created after the blocks and before the heads, and only for fpn, so that the chapter's
        # network draws the same initial weights from the same seed as before the option existed.
        self.neck = FPN(in_channels, feature_channels) if neck == "fpn" else None
        if self.neck is not None:
            in_channels = [feature_channels] * NUM_SCALES
        per_scale = list(zip(in_channels, self.anchors_per_location, strict=True))
        self.cls_heads = nn.ModuleList(prediction_head(c, a * (num_classes + 1), head_depth) for c, a in per_scale)
        self.bbox_heads = nn.ModuleList(prediction_head(c, a * 4, head_depth) for c, a in per_scale)
        self._anchor_cache: dict[tuple, Tensor] = {}

    def anchor_level_counts(self, height: int, width: int) -> list[int]:
        """Anchors per scale for a ``height`` x ``width`` input, in the order of the anchors."""
        shapes = feature_map_shapes(height, width, len(self.blocks[0]))
        return [h * w * a for (h, w), a in zip(shapes, self.anchors_per_location, strict=True)]

    def anchors_for(self, feature_maps: Sequence[Tensor]) -> Tensor:
        """``(1, A, 4)`` anchors of these feature maps, cached by their shapes and device."""
        key = (tuple(tuple(f.shape[-2:]) for f in feature_maps), feature_maps[0].device)
        anchors = self._anchor_cache.get(key)
        if anchors is None:
            anchors = torch.cat(
                [multibox_prior(f, s, r) for f, s, r in zip(feature_maps, self.sizes, self.ratios, strict=True)], dim=1
            )
            self._anchor_cache[key] = anchors
        return anchors

    @staticmethod
    def _flatten(pred: Tensor) -> Tensor:
        # (B, a*k, H, W) -> (B, H*W*a*k): cell-major, matching multibox_prior's order.
        return pred.permute(0, 2, 3, 1).flatten(start_dim=1)

    def predict_heads(self, x: Tensor) -> tuple[list[Tensor], Tensor, Tensor]:
        """The network without its anchors: ``feature_maps``, ``cls_preds (B, A, C+1)``, ``bbox_preds (B, 4A)``.

        Pure tensor code (no cache): what an exported graph traces, with the anchors of its
        fixed input size stored beside it.
        """
        feature_maps = []
        for block in self.blocks:
            x = block(x)
            feature_maps.append(x)
        head_inputs = feature_maps if self.neck is None else self.neck(feature_maps)
        cls_preds, bbox_preds = [], []
        for f, cls_head, bbox_head in zip(head_inputs, self.cls_heads, self.bbox_heads, strict=True):
            cls_preds.append(self._flatten(cls_head(f)))
            bbox_preds.append(self._flatten(bbox_head(f)))
        cls = torch.cat(cls_preds, dim=1).reshape(x.shape[0], -1, self.num_classes + 1)
        return feature_maps, cls, torch.cat(bbox_preds, dim=1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        feature_maps, cls, bbox = self.predict_heads(x)
        return self.anchors_for(feature_maps), cls, bbox
