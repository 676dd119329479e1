"""The data module: a banana-format dataset served to Lightning.

A dataset folder in the banana format is ``<root>/<split>/label.csv`` plus
``<root>/<split>/images/`` (:mod:`tinyssd.label_csv`); the banana set itself is downloaded and
checked by :mod:`tinyssd.download`. Any such folder is a dataset, with any number of classes.
Images are decoded once, resized to ``image_size`` and kept as uint8 tensors; boxes are
normalised by each image's own size, so they are independent of the resize.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import lightning.pytorch as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from tinyssd.augment import MOSAIC_CENTER, build_augment, check_mosaic_share, mosaic
from tinyssd.boxes import pad_rows
from tinyssd.download import (
    BANANA_SHA1,
    BANANA_URL,
    DATASET_DIRNAME,
    download_file,
    ensure_dataset,
    extract_zip_safely,
    sha1_of,
)
from tinyssd.errors import ConfigError, DataError
from tinyssd.label_csv import DetectionSplit, load_split, read_label_csv

__all__ = [
    "BANANA_SHA1",
    "BANANA_URL",
    "BananaDataModule",
    "BananaDataset",
    "DetectionSplit",
    "download_file",
    "ensure_dataset",
    "extract_zip_safely",
    "load_split",
    "read_label_csv",
    "sha1_of",
]


def _single_thread_worker(_: int) -> None:
    # Each loader worker augments on one thread, so workers and the training step share the
    # cores instead of oversubscribing them.
    torch.set_num_threads(1)


# --------------------------------------------------------------------------- dataset


class BananaDataset(Dataset):
    """In-memory detection dataset: ``(image (3, S, S) uint8, labels (G, 5) float)`` items.

    ``transform(image, labels) -> (image, labels)`` (for augmentation) runs per item. With
    ``mosaic`` > 0, that share of the items is a mosaic of the item and three random others
    (each transformed first; ``tinyssd.augment.mosaic``), and every item's labels are padded
    to ``4G`` rows so that batches stack.
    """

    def __init__(
        self,
        split: DetectionSplit,
        transform: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]] | None = None,
        mosaic: float = 0.0,
    ):
        check_mosaic_share(mosaic)
        self.split = split
        self.transform = transform
        self.mosaic = mosaic

    def __len__(self) -> int:
        return len(self.split.images)

    def _item(self, idx: int) -> tuple[Tensor, Tensor]:
        image, labels = self.split.images[idx], self.split.labels[idx]
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


class BananaDataModule(pl.LightningDataModule):
    """Serves a banana-format dataset: ``<data_dir>/banana-detection/{bananas_train,bananas_val}``.

    Args:
        data_dir: folder holding ``banana-detection/`` (or where it is downloaded to).
        batch_size: images per batch (per process under DDP).
        num_workers: data-loader workers; the data is in memory, so 0 is usually fastest.
        pin_memory: pin host memory for faster GPU transfer (``None``: when CUDA is present).
        image_size: side of the square model input; images are resized on load.
        num_classes: object classes (class ids in ``label.csv`` are ``0..num_classes-1``).
        class_names: names of the classes, for display.
        on_bad_row: ``error`` stops at the first bad CSV row; ``skip`` drops it with a warning.
        url, sha1: where the archive comes from and its checksum.
        download: allow downloading when neither the tree nor the archive is present.
        train_split, val_split: split folder names.
        augment: ``none`` (the chapter), ``flip``, ``light`` (colour distortion + flip) or ``ssd``
            (photometric distortion, zoom-out, IoU crop, horizontal flip); training split only.
        mosaic: share of training images made from four (``tinyssd.augment.mosaic``); 0 = off.
        zoom_out: largest shrink factor of the zoom-out augmentation (half of the training
            images, objects smaller on a mean-colour canvas); 1 = off.
        cache_on_device: keep the decoded uint8 images on the training device (``None``: on a
            GPU, when there is no augmentation and no worker), so batches are assembled in
            device memory and nothing crosses the bus per step.
        classes_from: where ``num_classes`` comes from when it is not the user's setting (the
            checkpoint being evaluated), for the error about a class id out of range.
    """

    def __init__(
        self,
        data_dir: str = "data",
        batch_size: int = 32,
        num_workers: int = 0,
        pin_memory: bool | None = None,
        image_size: int = 256,
        num_classes: int = 1,
        class_names: Sequence[str] | None = ("banana",),
        on_bad_row: str = "error",
        url: str = BANANA_URL,
        sha1: str | None = BANANA_SHA1,
        download: bool = True,
        train_split: str = "bananas_train",
        val_split: str = "bananas_val",
        augment: str = "none",
        cache_on_device: bool | None = None,
        mosaic: float = 0.0,
        zoom_out: float = 1.0,
        classes_from: str | None = None,
    ) -> None:
        super().__init__()
        self.classes_from = classes_from
        self.augment = augment
        self.cache_on_device = cache_on_device
        check_mosaic_share(mosaic)
        self.mosaic = mosaic
        self.zoom_out = zoom_out
        self.train_transform = build_augment(augment, image_size, zoom_out)  # validates both now
        if batch_size < 1:
            raise ConfigError(f"data.batch_size must be a positive integer, got {batch_size}.")
        if image_size < 64:
            # TinySSD halves the input six times before its global pooling.
            raise ConfigError(f"data.image_size must be at least 64 pixels, got {image_size}.")
        if num_workers < 0:
            raise ConfigError(f"data.num_workers must be >= 0, got {num_workers}.")
        if class_names is not None and len(class_names) != num_classes:
            raise ConfigError(
                f"data.class_names has {len(class_names)} names but data.num_classes={num_classes}; "
                "give one name per class."
            )
        self.data_dir = Path(data_dir).expanduser().resolve()
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.image_size = image_size
        self.num_classes = num_classes
        self.class_names = list(class_names) if class_names is not None else [str(i) for i in range(num_classes)]
        self.on_bad_row = on_bad_row
        self.url, self.sha1, self.download = url, sha1, download
        self.train_split, self.val_split = train_split, val_split
        self.train_set: BananaDataset | None = None
        self.val_set: BananaDataset | None = None

    @property
    def root(self) -> Path:
        return self.data_dir / DATASET_DIRNAME

    def prepare_data(self) -> None:
        ensure_dataset(self.data_dir, self.url, self.sha1, self.download)

    def _load(self, split: str) -> DetectionSplit:
        split_dir = self.root / split
        if not (split_dir / "label.csv").is_file():
            raise DataError(
                f"{split_dir / 'label.csv'} does not exist. data.data_dir={self.data_dir} must hold "
                f"{DATASET_DIRNAME}/{split}/label.csv and {DATASET_DIRNAME}/{split}/images/."
            )
        return load_split(split_dir, self.num_classes, self.image_size, self.on_bad_row, self.classes_from)

    def setup(self, stage: str | None = None) -> None:
        if not self.root.is_dir():
            # prepare_data runs on one process per node; elsewhere (or when skipped), do it here.
            self.prepare_data()
        if stage in (None, "fit") and self.train_set is None:
            self.train_set = BananaDataset(
                self._load(self.train_split), transform=self.train_transform, mosaic=self.mosaic
            )
        if stage in (None, "fit", "validate") and self.val_set is None:
            self.val_set = BananaDataset(self._load(self.val_split))
        device = self._cache_device()
        for dataset in (self.train_set, self.val_set):
            if device is not None and dataset is not None and dataset.transform is None and not dataset.mosaic:
                dataset.split.images = dataset.split.images.to(device)
                dataset.split.labels = dataset.split.labels.to(device)

    def _cache_device(self) -> torch.device | None:
        trainer = getattr(self, "trainer", None)
        device = trainer.strategy.root_device if trainer is not None else None
        if device is None or device.type == "cpu" or self.cache_on_device is False:
            return None
        if self.cache_on_device is None and (self.num_workers > 0 or self.train_transform is not None or self.mosaic):
            return None
        return device

    def _loader(self, dataset: BananaDataset | None, shuffle: bool) -> DataLoader:
        if dataset is None:
            raise RuntimeError("call setup() before asking for a data loader")
        on_device = dataset.split.images.device.type != "cpu"
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=0 if on_device else self.num_workers,
            pin_memory=self.pin_memory and not on_device,
            persistent_workers=self.num_workers > 0 and not on_device,
            worker_init_fn=_single_thread_worker if self.num_workers > 0 and not on_device else None,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False)
