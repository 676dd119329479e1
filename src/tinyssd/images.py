"""The one image decoder of training, evaluation and prediction.

Every picture, whatever its file, becomes ``(3, H, W)`` uint8 RGB the same way:

* EXIF orientation is applied (the picture as a viewer shows it, which is what annotation
  tools draw boxes on), in training and prediction alike;
* gray, gray + alpha, palette, RGBA and CMYK become RGB (alpha is dropped);
* 16-bit PNGs are scaled to 8 bits (``v >> 8``: 65535 -> 255), never fed at 0..65535;
* a multi-frame file (an animated GIF, WebP or PNG) is refused by name: which frame holds the
  objects is not ours to guess;
* a header claiming more than :data:`MAX_PIXELS` pixels is refused before anything is decoded.

Formats are those of ``torchvision.io.decode_image`` (JPEG, PNG, GIF, WebP; AVIF/HEIC where
torchvision was built with them).
"""

from __future__ import annotations

import io
import os
import re
import warnings
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms.v2 import functional as TF

from tinyssd.errors import DataError

__all__ = ["IMAGE_SUFFIXES", "MAX_PIXELS", "VIDEO_SUFFIXES", "as_image_tensor", "probe_size", "read_image"]

# Refuse absurd canvases before they take the machine's memory (a 1 KB PNG can claim 60k x 60k):
# PIL's decompression-bomb limit (twice its warning threshold), about 13k x 13k.
MAX_PIXELS = 2 * Image.MAX_IMAGE_PIXELS
# File suffixes read as pictures when a data set names a folder rather than files.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".gif")
# Videos predict decodes frame by frame (PyAV, the video extra).
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv")
# EXIF orientations that turn the picture a quarter (width and height swap places).
_QUARTER_TURNS = {5, 6, 7, 8}


def _header(source: str | os.PathLike | io.BytesIO, where: str) -> tuple[int, int, int | None] | None:
    """``(width, height, EXIF orientation)`` from a picture's header, or None where PIL cannot read it.

    Oversized and multi-frame files are refused here, before a pixel is decoded.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(source) as probe:
                width, height = probe.size
                frames = int(getattr(probe, "n_frames", 1))
                orientation = probe.getexif().get(0x0112)
    except Image.DecompressionBombError as err:
        raise DataError(f"{where} claims more pixels than {MAX_PIXELS}; resize it first ({err}).") from err
    except (FileNotFoundError, PermissionError, IsADirectoryError):
        raise
    except Exception:  # a format (or a header) PIL does not know: torchvision's decoder decides
        return None
    if width * height > MAX_PIXELS:
        raise DataError(f"{where} claims {width}x{height} pixels, more than {MAX_PIXELS}; resize it first.")
    if frames > 1:
        raise DataError(
            f"{where} has {frames} frames (an animation); tinyssd reads single pictures. "
            "Save the frame you mean as a PNG or JPEG."
        )
    return width, height, orientation


def read_image(path: str | os.PathLike, context: str = "") -> Tensor:
    """Decode an image file to ``(3, H, W)`` uint8 RGB (see the module docstring).

    ``context`` (e.g. ``"named on label.csv, line 7"``) is added to the error message.
    """
    where = f"{path}{f' ({context})' if context else ''}"
    try:
        # Python reads the bytes: any file name works (torchvision's read_file needs valid UTF-8).
        data = torch.frombuffer(bytearray(Path(path).read_bytes()), dtype=torch.uint8)
    except OSError as err:
        raise DataError(f"{where} cannot be read ({err.strerror or err}).") from err
    except ValueError as err:  # an empty file
        raise DataError(f"{where} is empty; it is not an image.") from err
    _header(io.BytesIO(data.numpy().tobytes()), where)
    try:
        image = decode_image(data, mode=ImageReadMode.RGB, apply_exif_orientation=True)
    except (RuntimeError, ValueError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        reason = re.sub(r"^\w+, \S+:\d+, ", "", reason)  # torchvision's "func, file.cpp:171, " prefix
        raise DataError(
            f"{where} is not a readable image ({reason[:200]}); use a JPEG, PNG, GIF or WebP file."
        ) from err
    if image.ndim == 4:
        if image.shape[0] != 1:
            raise DataError(
                f"{where} has {image.shape[0]} frames (an animation); tinyssd reads single pictures. "
                "Save the frame you mean as a PNG or JPEG."
            )
        image = image[0]
    if image.dtype != torch.uint8:
        # 16-bit PNGs decode to uint16: scale to 8 bits as a viewer shows them.
        image = TF.to_dtype(image, torch.uint8, scale=True)
    if image.shape[-1] * image.shape[-2] == 0:
        raise DataError(f"{where} has no pixels.")
    return image


def probe_size(path: str | os.PathLike, context: str = "") -> tuple[int, int]:
    """``(width, height)`` of a picture as :func:`read_image` will return it, from its header.

    Only the header is read (EXIF orientation applied), so a data set of any size is indexed
    without decoding it; oversized and multi-frame files are refused here already. A format
    PIL cannot read is decoded once instead.
    """
    where = f"{path}{f' ({context})' if context else ''}"
    try:
        header = _header(path, where)
    except FileNotFoundError as err:
        raise DataError(f"{where} does not exist.") from err
    except OSError as err:
        raise DataError(f"{where} cannot be read ({err.strerror or err}).") from err
    if header is None:
        image = read_image(path, context)
        return int(image.shape[-1]), int(image.shape[-2])
    width, height, orientation = header
    if width * height == 0:
        raise DataError(f"{where} has no pixels.")
    return (height, width) if orientation in _QUARTER_TURNS else (width, height)


def as_image_tensor(image: object) -> Tensor:
    """A picture in memory as ``(C, H, W)``: a tensor as given, a PIL image (EXIF orientation
    applied, converted to RGB as :func:`read_image` does) or a NumPy array ``(H, W, C)`` or
    ``(H, W)``, RGB order (as PIL and imageio give; OpenCV's BGR must be reversed first), uint8
    0..255 or float 0..1. A path is decoded by :func:`read_image`."""
    if isinstance(image, Tensor):
        return image
    if isinstance(image, (str, os.PathLike)):
        return read_image(image)
    if isinstance(image, Image.Image):
        from PIL import ImageOps

        picture = ImageOps.exif_transpose(image)
        if picture.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit gray: to 8 bits, as read_image does
            picture = picture.point(lambda v: v / 256).convert("L")
        return TF.pil_to_tensor(picture.convert("RGB"))
    try:
        import numpy as np
    except ImportError:  # pragma: no cover - numpy comes with torch
        np = None
    if np is not None and isinstance(image, np.ndarray):
        if image.ndim == 2:
            image = image[:, :, None]
        if image.ndim != 3 or image.shape[2] not in (1, 3, 4):
            raise DataError(
                f"expected a NumPy picture (H, W, C) with 1, 3 or 4 channels, or (H, W), got shape {image.shape}."
            )
        if image.dtype == np.uint8 or image.dtype.kind == "f":
            # A copy when the array is read-only (np.asarray of a PIL image is): torch would warn, then share it.
            image = np.ascontiguousarray(image) if image.flags.writeable else np.array(image, order="C")
            return torch.from_numpy(image).permute(2, 0, 1)
        raise DataError(f"a NumPy picture must be uint8 (0..255) or float (0..1), got {image.dtype}.")
    raise DataError(
        f"cannot read a picture from {type(image).__name__}; give a path, a (C, H, W) tensor, a PIL image or a "
        "NumPy array (H, W, C)."
    )
