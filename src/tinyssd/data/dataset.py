"""The dataset of one split: pictures decoded (once, or per step) and placed on the model's square input.

Training augmentation and mosaic happen here, per picture; :mod:`tinyssd.data.datamodule`
builds one per split and serves them in loaders.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torch.utils.data import Dataset

from tinyssd.boxes import pad_rows
from tinyssd.data.augment import MOSAIC_CENTER, check_mosaic_share, mosaic
from tinyssd.data.index import DetectionIndex
from tinyssd.errors import ConfigError, DataError
from tinyssd.images import read_image
from tinyssd.resize import STRETCH, check_resize_mode, placement, to_canvas, to_canvas_image

__all__ = ["CACHE_MODES", "DetectionDataset"]

# data.cache: decode every picture once at set-up (ram), or per step in the loader workers (none).
CACHE_MODES = ("ram", "none")


class DetectionDataset(Dataset):
    """Items ``(image (3, S, S) uint8, labels (G, 5) float32)`` of one split (see the module docstring).

    ``transform(image, labels) -> (image, labels)`` (augmentation) runs per item on the canvas.
    With ``mosaic`` > 0, that share of the items is a mosaic of the item and three random
    others (each transformed first; ``tinyssd.data.augment.mosaic``), and every item's labels are
    padded to ``4G`` rows so that batches stack.
    """

    def __init__(
        self,
        index: DetectionIndex,
        image_size: int = 256,
        resize: str = STRETCH,
        cache: str = "ram",
        transform: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]] | None = None,
        mosaic: float = 0.0,
    ) -> None:
        check_mosaic_share(mosaic)
        check_resize_mode(resize)
        if cache not in CACHE_MODES:
            raise ConfigError(f"data.cache must be one of {', '.join(CACHE_MODES)}, got {cache!r}.")
        self.index, self.image_size, self.resize, self.cache = index, image_size, resize, cache
        self.transform = transform
        # In shared memory, so that a change between epochs (data.close_mosaic) reaches loader workers.
        self._mosaic = torch.tensor(float(mosaic)).share_memory_()
        self.rows = index.max_objects
        self.images: Tensor | None = None
        self.labels: Tensor | None = None
        if cache == "ram":
            # Decoded once; the labels of every picture in one padded tensor.
            self.images = torch.stack([self._decode(i) for i in range(len(index))])
            self.labels = torch.stack([self._labels(i) for i in range(len(index))])

    @property
    def mosaic(self) -> float:
        """The share of mosaic items (settable between epochs, also with worker processes)."""
        return float(self._mosaic)

    @mosaic.setter
    def mosaic(self, share: float) -> None:
        check_mosaic_share(share)
        self._mosaic.fill_(float(share))

    def __len__(self) -> int:
        return len(self.index)

    def _decode(self, idx: int) -> Tensor:
        file = self.index.files[idx]
        image = read_image(file, context=f"named on {self.index.sources[idx]}")
        width, height = (int(v) for v in self.index.sizes[idx])
        if tuple(image.shape[-2:]) != (height, width):
            raise DataError(
                f"{file} decodes to {image.shape[-1]}x{image.shape[-2]} pixels but its header said {width}x{height} "
                "(was it replaced while training?); re-save it as a plain JPEG or PNG."
            )
        return to_canvas_image(image, self.image_size, self.resize)

    def _labels(self, idx: int) -> Tensor:
        labels = self.index.labels[idx]
        width, height = (int(v) for v in self.index.sizes[idx])
        out = pad_rows(labels, self.rows)
        if self.resize != STRETCH and len(labels):
            place = placement(width, height, self.image_size, self.resize)
            out[: len(labels), 1:] = to_canvas(labels[:, 1:].double(), place).float()
        return out

    def _item(self, idx: int) -> tuple[Tensor, Tensor]:
        if self.images is not None and self.labels is not None:
            image, labels = self.images[idx], self.labels[idx]
        else:
            image, labels = self._decode(idx), self._labels(idx)
        if self.transform is not None:
            image, labels = self.transform(image, labels)
        return image, labels

    def __getitem__(self, idx: int) -> tuple[Tensor, Tensor]:
        if self.mosaic <= 0:
            return self._item(idx)
        if float(torch.rand(())) >= self.mosaic:
            image, labels = self._item(idx)
            return image, pad_rows(labels, 4 * labels.shape[0])
        others = torch.randint(len(self), (3,)).tolist()
        items = [self._item(i) for i in [idx, *others]]
        images = torch.stack([image for image, _ in items])
        size = images.shape[-1]
        lo, hi = (int(f * size) for f in MOSAIC_CENTER)
        center = (int(torch.randint(lo, hi + 1, ())), int(torch.randint(lo, hi + 1, ())))
        return mosaic(images, torch.stack([labels for _, labels in items]), center)
