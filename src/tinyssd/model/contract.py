"""The inference contract: what running a trained TinySSD needs besides its weights.

One value, built once from a checkpoint's hyperparameters (:meth:`InferenceContract.from_hparams`)
or from an export's metadata (:meth:`tinyssd.deploy.metadata.ExportMetadata.contract`), and read
by everything that runs a model: the detector, evaluation and export.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from tinyssd.boxes import CHAPTER_DISPLAY_THRESHOLD, CHAPTER_NMS_THRESHOLD, CHAPTER_POS_THRESHOLD
from tinyssd.resize import STRETCH

__all__ = ["DEFAULT_IMAGE_SIZE", "DEFAULT_INPUT_SCALE", "DEFAULT_MAX_DETECTIONS", "InferenceContract"]

# The chapter's input: 256x256 pictures, pixel values 0..255 as the network's input.
DEFAULT_IMAGE_SIZE = 256
DEFAULT_INPUT_SCALE = 255.0
DEFAULT_MAX_DETECTIONS = 100


@dataclass(frozen=True)
class InferenceContract:
    """Classes, input and decoding of a trained model.

    ``class_names`` in class-id order; pictures go onto an ``image_size`` square canvas by
    ``resize`` (stretch or letterbox) and reach the network in ``[0, input_scale]``; detections
    keep NMS at ``nms_threshold`` over scores from ``pos_threshold``, at most ``max_detections``
    per picture (``None``: all), and are shown from ``display_threshold``.
    """

    class_names: tuple[str, ...]
    image_size: int = DEFAULT_IMAGE_SIZE
    resize: str = STRETCH
    input_scale: float = DEFAULT_INPUT_SCALE
    nms_threshold: float = CHAPTER_NMS_THRESHOLD
    pos_threshold: float = CHAPTER_POS_THRESHOLD
    display_threshold: float = CHAPTER_DISPLAY_THRESHOLD
    max_detections: int | None = DEFAULT_MAX_DETECTIONS

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @classmethod
    def from_hparams(cls, hparams: Mapping[str, Any], class_names: list[str] | tuple[str, ...]) -> InferenceContract:
        """A checkpoint's (checked) hyperparameters; ``class_names`` as the module resolved them."""
        defaults = cls(class_names=())

        def get(key: str) -> Any:
            value = hparams.get(key)
            return getattr(defaults, key) if value is None else value

        return cls(
            class_names=tuple(class_names),
            image_size=int(get("image_size")),
            resize=str(get("resize")),
            input_scale=float(get("input_scale")),
            nms_threshold=float(get("nms_threshold")),
            pos_threshold=float(get("pos_threshold")),
            display_threshold=float(get("display_threshold")),
            max_detections=hparams.get("max_detections", DEFAULT_MAX_DETECTIONS),
        )

    def with_display_threshold(self, threshold: float) -> InferenceContract:
        return replace(self, display_threshold=float(threshold))
