"""Inference from a checkpoint or an exported model: ``Detector.load(path).predict(images)``."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from tinyssd.boxes import CHAPTER_DISPLAY_THRESHOLD, pixel_scale, to_pixels
from tinyssd.deploy.backends import CheckpointBackend, InferenceBackend, load_backend, resolve_device
from tinyssd.errors import CheckpointError, ConfigError, DataError
from tinyssd.images import as_image_tensor, read_image
from tinyssd.model.module import TinySSDModule
from tinyssd.plots import PREDICTION_COLOR, draw_detections
from tinyssd.resize import from_canvas, placement, to_canvas_image

__all__ = [
    "BOX_DECIMALS",
    "Detections",
    "Detector",
    "iter_batches",
    "read_image",
    "resolve_device",
]

# Decimals of the pixel boxes written to JSON (detections.json, COCO results).
BOX_DECIMALS = 4

# A path, a (C, H, W) tensor, a PIL image or a NumPy (H, W, C) RGB array (tinyssd.images.as_image_tensor).
ImageInput = Any


@dataclass
class Detections:
    """One image's detections: ``boxes (N, 4)`` xyxy in the image's own pixels, by descending score."""

    boxes: Tensor
    scores: Tensor
    labels: Tensor
    class_names: list[str]
    width: int
    height: int

    def to_list(self) -> list[dict[str, Any]]:
        """JSON-ready rows: ``box`` (pixels xyxy), ``score``, ``label``, ``class_name``."""
        return [
            {
                # 1e-4 px, about float32's precision at these sizes: rounding to 0.01 px moved boxes across
                # IoU thresholds and the banana val mAP of predict's COCO results by 6e-4.
                "box": [round(float(v), BOX_DECIMALS) for v in box],
                "score": round(float(score), 7),  # float32 precision: ties would reorder COCO matching
                "label": int(label),
                "class_name": self.class_names[label] if 0 <= label < len(self.class_names) else str(label),
            }
            for box, score, label in zip(
                self.boxes.tolist(), self.scores.tolist(), [int(v) for v in self.labels.tolist()], strict=True
            )
        ]


class Detector:
    """Detects objects in pictures of any size with a trained TinySSD.

    The model is an inference backend (:mod:`tinyssd.deploy.backends`): a checkpoint run in
    PyTorch, or an exported ``.onnx`` file run by ONNX Runtime or OpenVINO; all give the same
    detections. A :class:`~tinyssd.model.module.TinySSDModule` is taken too. Images are placed
    on the model's square input as in training; boxes are mapped back to each image's own pixels.
    """

    def __init__(
        self,
        model: TinySSDModule | InferenceBackend,
        device: str | torch.device = "cpu",
        threshold: float = CHAPTER_DISPLAY_THRESHOLD,
        nms_threshold: float | None = None,
    ) -> None:
        self.threshold = check_fraction(threshold, "threshold")
        if nms_threshold is not None:
            check_fraction(nms_threshold, "nms_threshold")
        self.backend = CheckpointBackend(model, device) if isinstance(model, TinySSDModule) else model
        self.backend.check_nms_threshold(nms_threshold)
        self.contract = self.backend.contract
        self.device = self.backend.device
        self.nms_threshold = self.contract.nms_threshold if nms_threshold is None else nms_threshold

    @property
    def image_size(self) -> int:
        return self.contract.image_size

    @property
    def resize(self) -> str:
        return self.contract.resize

    @property
    def class_names(self) -> list[str]:
        return list(self.contract.class_names)

    @classmethod
    def load(
        cls,
        path: str | os.PathLike,
        device: str | torch.device = "cpu",
        threshold: float = CHAPTER_DISPLAY_THRESHOLD,
        nms_threshold: float | None = None,
        num_classes: int | None = None,
        image_size: int | None = None,
        runtime: str = "auto",
    ) -> Detector:
        """A checkpoint (``.ckpt``) or an exported ``.onnx`` model (``runtime``: ``auto``, ``onnxruntime`` or
        ``openvino`` for an export, ``torch`` for a checkpoint).

        ``num_classes`` and ``image_size``, if given, must match the model's (a guard against
        deploying the wrong file).
        """
        detector = cls(load_backend(path, runtime, device), threshold=threshold, nms_threshold=nms_threshold)
        n = len(detector.class_names)
        if num_classes is not None and n != num_classes:
            raise CheckpointError(
                f"{path} detects {n} class(es) ({detector.class_names}) but num_classes={num_classes} "
                "was asked for; use a model trained on your classes or drop the num_classes setting."
            )
        if image_size is not None and detector.image_size != image_size:
            raise CheckpointError(
                f"{path} takes {detector.image_size}x{detector.image_size} pictures but image_size={image_size} was "
                "asked for; use a model trained (or exported) at that size, or drop the image_size setting."
            )
        return detector

    # The name of the first releases: a checkpoint (or, now, an .onnx export); see load.
    from_checkpoint = load

    def detect_canvas(self, batch: Tensor) -> list[dict[str, Tensor]]:
        """Detections of pictures already on the model's input: ``(B, 3, S, S)`` uint8, boxes normalised."""
        return self.backend.detect(batch, nms_threshold=self.nms_threshold)

    def _prepare(self, image: ImageInput) -> Tensor:
        img = as_image_tensor(image)
        if img.ndim != 3 or img.shape[0] not in (1, 3, 4) or img.shape[1] < 1 or img.shape[2] < 1:
            raise DataError(
                f"expected an image tensor (C, H, W) with 1, 3 or 4 channels, got shape {tuple(img.shape)}."
            )
        if img.is_floating_point():
            # Checked, never clamped: a NaN picture is not black, and 0..255 floats are not white.
            if not bool(torch.isfinite(img).all()):
                raise DataError("the image tensor holds NaN or infinite values; give real pixel values.")
            low, high = float(img.min()), float(img.max())
            if low < 0 or high > 1:
                raise DataError(
                    f"a float image tensor must hold values in [0, 1] (found {low:g} .. {high:g}); divide 0..255 "
                    "pixels by 255, or give a uint8 tensor."
                )
        elif img.dtype != torch.uint8:
            raise DataError(f"an image tensor must be uint8 (0..255) or float (0..1), got {img.dtype}.")
        if img.shape[0] == 1:
            img = img.expand(3, -1, -1)
        elif img.shape[0] == 4:
            img = img[:3]
        if img.dtype != torch.uint8:
            img = (img.clamp(0, 1) * 255).round().to(torch.uint8)
        return img

    @torch.no_grad()
    def predict(
        self, images: ImageInput | Sequence[ImageInput], batch_size: int = 16, threshold: float | None = None
    ) -> list[Detections]:
        """Detections for each image: a path, a ``(C, H, W)`` uint8 (0..255) or float (0..1) tensor, a PIL
        image, or a NumPy array ``(H, W, C)`` RGB, uint8 or float; one of them or a sequence."""
        if isinstance(images, (str, os.PathLike, Tensor)) or hasattr(images, "__array_interface__"):
            images = [images]  # one picture (PIL images and NumPy arrays have the array interface)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size must be a whole number >= 1, got {batch_size!r}.")
        threshold = self.threshold if threshold is None else check_fraction(threshold, "threshold")
        results: list[Detections] = []
        for chunk in iter_batches(list(images), batch_size):
            raw = [self._prepare(im) for im in chunk]
            sizes = [(int(im.shape[-1]), int(im.shape[-2])) for im in raw]
            # Placed on the canvas as in training; boxes mapped back from it.
            batch = torch.stack([to_canvas_image(im, self.image_size, self.resize) for im in raw])
            for dets, (width, height) in zip(self.detect_canvas(batch), sizes, strict=True):
                keep = dets["scores"] >= threshold
                place = placement(width, height, self.image_size, self.resize)
                boxes = from_canvas(dets["boxes"][keep].cpu().double(), place).float()
                # Pixels of the picture as given, clipped to it.
                boxes = to_pixels(boxes, width, height).clamp(min=0)
                boxes = boxes.minimum(pixel_scale(width, height, boxes.device))
                results.append(
                    Detections(
                        boxes.cpu(),
                        dets["scores"][keep].cpu(),
                        dets["labels"][keep].cpu(),
                        self.class_names,
                        width,
                        height,
                    )
                )
        return results

    def draw(
        self,
        image: ImageInput,
        detections: Detections,
        colors: str | tuple[int, int, int] = PREDICTION_COLOR,
        width: int | None = None,
    ) -> Tensor:
        """The image with its detections drawn: boxes, and class name and score on a filled band inside the picture."""
        names = [d["class_name"] for d in detections.to_list()]
        return draw_detections(
            self._prepare(image), None, detections.boxes, detections.scores, names, pred_color=colors, width=width
        )


def check_fraction(value: Any, name: str) -> float:
    """A score or IoU threshold: a number in [0, 1]."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ConfigError(f"{name} must be a number in [0, 1], got {value!r}.")
    return float(value)


def iter_batches(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    """Consecutive slices of at most ``size`` items."""
    for start in range(0, len(items), size):
        yield items[start : start + size]
