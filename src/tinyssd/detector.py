"""Inference from a checkpoint: ``Detector.from_checkpoint(path).predict(images)``."""

from __future__ import annotations

import os
import pickle
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torchvision.io import ImageReadMode, decode_image, read_file
from torchvision.transforms.v2 import functional as TF
from torchvision.utils import draw_bounding_boxes

from tinyssd.errors import CheckpointError, DataError
from tinyssd.module import TinySSDModule

__all__ = ["Detections", "Detector", "load_checkpoint", "read_image"]

ImageInput = str | os.PathLike | Tensor


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
                "box": [round(float(v), 2) for v in box],
                "score": round(float(score), 5),
                "label": int(label),
                "class_name": self.class_names[int(label)] if int(label) < len(self.class_names) else str(int(label)),
            }
            for box, score, label in zip(self.boxes.tolist(), self.scores.tolist(), self.labels.tolist(), strict=True)
        ]


def read_image(path: str | os.PathLike) -> Tensor:
    """Decode a PNG/JPEG/... of any mode (gray, RGBA, ...) to ``(3, H, W)`` uint8 RGB."""
    try:
        return decode_image(read_file(str(path)), mode=ImageReadMode.RGB, apply_exif_orientation=True)
    except (RuntimeError, ValueError) as err:
        raise DataError(f"{path} is not a readable image ({str(err).splitlines()[0]}).") from err


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a tinyssd checkpoint without unpickling arbitrary objects (``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; give ckpt_path the path of a .ckpt file.")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, zipfile.BadZipFile, EOFError, ValueError) as err:
        raise CheckpointError(
            f"{path} is not a loadable tinyssd checkpoint ({str(err).splitlines()[0][:200]}). Checkpoints are "
            "loaded with weights_only=True, so files holding arbitrary Python objects are refused; use a .ckpt "
            "written by train.py (runs/<run>/checkpoints/)."
        ) from err
    hparams = ckpt.get("hyper_parameters") if isinstance(ckpt, dict) else None
    if not isinstance(hparams, dict) or "state_dict" not in ckpt or not isinstance(hparams.get("net"), dict):
        raise CheckpointError(
            f"{path} is not a tinyssd checkpoint (it lacks the network spec and weights train.py saves); "
            "use a .ckpt from a tinyssd run's checkpoints/ folder."
        )
    return ckpt


def module_from_checkpoint(ckpt: dict[str, Any], path: str | os.PathLike = "checkpoint") -> TinySSDModule:
    """Rebuild the :class:`TinySSDModule` a checkpoint describes and load its weights."""
    try:
        module = TinySSDModule(**ckpt["hyper_parameters"])
    except Exception as err:  # a spec this version cannot build
        raise CheckpointError(f"{path} describes a model this tinyssd cannot build ({err}).") from err
    try:
        module.load_state_dict(ckpt["state_dict"], strict=True)
    except RuntimeError as err:
        raise CheckpointError(
            f"{path}: its weights do not fit the model its own config describes (class count or anchors "
            f"differ: {str(err).splitlines()[1].strip() if len(str(err).splitlines()) > 1 else err}). "
            "The file was edited or mixed from two runs; use a checkpoint written by train.py."
        ) from err
    return module


class Detector:
    """Detects objects in pictures of any size with a trained TinySSD.

    Images are resized to the model's input size; boxes are mapped back to each image's
    own pixels.
    """

    def __init__(
        self,
        module: TinySSDModule,
        device: str | torch.device = "cpu",
        threshold: float = 0.9,
        nms_threshold: float | None = None,
    ) -> None:
        self.device = torch.device(resolve_device(device))
        self.module = module.to(self.device).eval()
        self.image_size: int = int(module.hparams.get("image_size", 256))
        self.class_names: list[str] = list(module.class_names)
        self.threshold = threshold
        self.nms_threshold = module.hparams.nms_threshold if nms_threshold is None else nms_threshold

    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike,
        device: str | torch.device = "cpu",
        threshold: float = 0.9,
        nms_threshold: float | None = None,
        num_classes: int | None = None,
    ) -> Detector:
        """Load a checkpoint written by ``train.py``; ``num_classes``, if given, must match it."""
        ckpt = load_checkpoint(path)
        module = module_from_checkpoint(ckpt, path)
        if num_classes is not None and module.num_classes != num_classes:
            raise CheckpointError(
                f"{path} detects {module.num_classes} class(es) ({module.class_names}) but num_classes={num_classes} "
                "was asked for; use a checkpoint trained on your classes or drop the num_classes setting."
            )
        return cls(module, device=device, threshold=threshold, nms_threshold=nms_threshold)

    def _prepare(self, image: ImageInput) -> Tensor:
        img = read_image(image) if not isinstance(image, Tensor) else image
        if img.ndim != 3 or img.shape[0] not in (1, 3, 4):
            raise DataError(
                f"expected an image tensor (C, H, W) with 1, 3 or 4 channels, got shape {tuple(img.shape)}."
            )
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
        """Detections for each image (a path or a ``(C, H, W)`` uint8 / float tensor)."""
        if isinstance(images, (str, os.PathLike, Tensor)):
            images = [images]
        threshold = self.threshold if threshold is None else threshold
        results: list[Detections] = []
        for chunk in iter_batches(list(images), batch_size):
            raw = [self._prepare(im) for im in chunk]
            sizes = [(int(im.shape[-1]), int(im.shape[-2])) for im in raw]
            batch = torch.stack([TF.resize(im, [self.image_size] * 2, antialias=True) for im in raw]).to(self.device)
            for dets, (width, height) in zip(
                self.module.detect(batch, nms_threshold=self.nms_threshold), sizes, strict=True
            ):
                keep = dets["scores"] >= threshold
                scale = torch.tensor([width, height, width, height], dtype=torch.float32, device=self.device)
                boxes = (dets["boxes"][keep] * scale).clamp(min=0)
                boxes[:, 0::2] = boxes[:, 0::2].clamp(max=width)
                boxes[:, 1::2] = boxes[:, 1::2].clamp(max=height)
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

    def draw(self, image: ImageInput, detections: Detections, colors: str = "red", width: int = 3) -> Tensor:
        """The image with its detections drawn (class name and score on each box)."""
        img = self._prepare(image)
        labels = [f"{d['class_name']} {d['score']:.2f}" for d in detections.to_list()]
        if len(labels) == 0:
            return img
        return draw_bounding_boxes(img, detections.boxes, labels=labels, colors=colors, width=width)


def resolve_device(device: str | torch.device) -> str | torch.device:
    """``auto`` -> ``cuda`` when available, else ``cpu``."""
    if str(device) == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def expand_inputs(spec: str | os.PathLike) -> list[Path]:
    """An image path, a folder (its files, sorted) or a glob -> the files to process."""
    import glob

    text = str(spec)
    path = Path(text).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
        if not files:
            raise DataError(f"folder {path} holds no files; put images in it or point input at another folder.")
        return files
    if path.is_file():
        return [path]
    if any(ch in text for ch in "*?["):
        files = sorted(Path(p) for p in glob.glob(os.path.expanduser(text), recursive=True) if Path(p).is_file())
        if not files:
            raise DataError(f"the pattern {text!r} matches no files; check the pattern and the folder it names.")
        return files
    raise DataError(f"input {text} does not exist; give an image file, a folder of images or a glob pattern.")


def iter_batches(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    """Consecutive slices of at most ``size`` items."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


def predict_files(
    detector: Detector, inputs: Sequence[Path], output_dir: Path, batch_size: int = 16
) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """Detect in every file, write ``<stem>_pred.png`` per image; returns (entries, errors).

    A file that cannot be decoded is reported in ``errors`` and skipped.
    """
    from torchvision.io import write_png

    output_dir.mkdir(parents=True, exist_ok=True)
    entries: list[dict[str, Any]] = []
    errors: list[dict[str, str]] = []
    used_names: set[str] = set()
    decoded: list[tuple[Path, Tensor]] = []
    for path in inputs:
        try:
            decoded.append((path, read_image(path)))
        except DataError as err:
            errors.append({"path": str(path), "error": str(err)})
    for chunk in iter_batches(decoded, batch_size):
        results = detector.predict([img for _, img in chunk], batch_size=batch_size)
        for (path, img), dets in zip(chunk, results, strict=True):
            name = f"{path.stem}_pred.png"
            k = 1
            while name in used_names:
                name, k = f"{path.stem}_{k}_pred.png", k + 1
            used_names.add(name)
            write_png(detector.draw(img, dets), str(output_dir / name))
            entries.append(
                {
                    "path": str(path),
                    "width": dets.width,
                    "height": dets.height,
                    "detections": dets.to_list(),
                    "annotated": str(output_dir / name),
                }
            )
    return entries, errors
