"""The one image decoder of training, evaluation and prediction.

Every picture, whatever its file, becomes ``(3, H, W)`` uint8 RGB the same way:

* EXIF orientation is applied (the picture as a viewer shows it, which is what annotation
  tools draw boxes on), in training and prediction alike;
* gray, gray + alpha, palette, RGBA and CMYK become RGB (alpha is dropped);
* 16-bit PNGs are scaled to 8 bits (``v >> 8``: 65535 -> 255), never fed at 0..65535;
* a multi-frame file (an animated GIF) is refused by name: which frame holds the objects is
  not ours to guess.

Formats are those of ``torchvision.io.decode_image`` (JPEG, PNG, GIF, WebP; AVIF/HEIC where
torchvision was built with them).
"""

from __future__ import annotations

import os

import torch
from torch import Tensor
from torchvision.io import ImageReadMode, decode_image, read_file
from torchvision.transforms.v2 import functional as TF

from tinyssd.errors import DataError

__all__ = ["MAX_PIXELS", "read_image"]

# Refuse absurd canvases before they take the machine's memory (a 1 KB PNG can claim 60k x 60k).
MAX_PIXELS = 178_956_970  # PIL's decompression-bomb limit (2x its warning threshold)


def _header_size(data: Tensor) -> tuple[int, int] | None:
    """(width, height) from a PNG header, without decoding; None for other formats."""
    raw = bytes(data[:24].tolist())
    if raw[:8] == b"\x89PNG\r\n\x1a\n" and raw[12:16] == b"IHDR":
        return int.from_bytes(raw[16:20], "big"), int.from_bytes(raw[20:24], "big")
    return None


def read_image(path: str | os.PathLike, context: str = "") -> Tensor:
    """Decode an image file to ``(3, H, W)`` uint8 RGB (see the module docstring).

    ``context`` (e.g. ``"named on label.csv, line 7"``) is added to the error message.
    """
    where = f"{path}{f' ({context})' if context else ''}"
    try:
        data = read_file(str(path))
    except (RuntimeError, OSError) as err:
        raise DataError(f"{where} cannot be read ({str(err).splitlines()[0]}).") from err
    size = _header_size(data)
    if size is not None and size[0] * size[1] > MAX_PIXELS:
        raise DataError(f"{where} claims {size[0]}x{size[1]} pixels, more than {MAX_PIXELS}; resize it first.")
    try:
        image = decode_image(data, mode=ImageReadMode.RGB, apply_exif_orientation=True)
    except (RuntimeError, ValueError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
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
