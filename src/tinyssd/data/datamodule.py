"""What a split's index becomes at training time: the dataset of tensors and the Lightning data module.

:class:`DetectionDataset` serves items ``(image (3, S, S) uint8, labels (G, 5))``: the picture
placed on the model's square canvas (:mod:`tinyssd.resize`) and its objects normalised to that
canvas, padded to the split's largest object count ``G`` (:mod:`tinyssd.boxes`), so batches
stack. ``cache=ram`` decodes every picture once at set-up (the chapter's way); ``cache=none``
decodes per item in the data-loader workers, so memory does not grow with the number of
pictures. :class:`DetectionDataModule` is the Lightning side: splits, class names, loaders;
each format (:mod:`tinyssd.data.formats`) subclasses it to read its files into a
:class:`~tinyssd.data.index.DetectionIndex`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from tinyssd.data.augment import build_augment, check_mosaic_share
from tinyssd.data.batch_augment import BATCH_AUGMENTATIONS, BatchAugment, Pool, check_placement
from tinyssd.data.dataset import CACHE_MODES, DetectionDataset
from tinyssd.data.index import DetectionIndex, duplicate_objects, warn_list
from tinyssd.errors import ConfigError, DataError
from tinyssd.limits import MAX_CLASSES, MAX_IMAGE_SIZE
from tinyssd.resize import STRETCH, check_resize_mode

__all__ = ["CACHE_MODES", "DetectionDataModule", "DetectionDataset", "default_workers"]


def default_workers(cache: str, num_workers: int | None) -> int:
    """``None``: no worker when pictures are in memory; else one per core but one, up to 8."""
    if num_workers is not None:
        return num_workers
    if cache == "ram":
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(8, cores - 1))


def _single_thread_worker(_: int) -> None:
    # Each loader worker decodes and augments on one thread, so workers and the training step
    # share the cores instead of oversubscribing them.
    torch.set_num_threads(1)


class DetectionDataModule(pl.LightningDataModule):
    """The Lightning data module of every format; a format implements :meth:`read_split`.

    Args:
        batch_size: pictures per batch (per process under DDP).
        num_workers: data-loader workers (``None``: 0 with ``cache=ram``, else one per core but one).
        pin_memory: pin host memory for faster GPU transfer (``None``: when CUDA is present).
        image_size: side of the square model input.
        resize: ``stretch`` (the chapter's) or ``letterbox`` (aspect ratio kept, gray bars).
        cache: ``ram`` (decode once at set-up) or ``none`` (decode per step in the workers).
        augment, mosaic, zoom_out: training-split augmentation (:mod:`tinyssd.data.augment`).
        close_mosaic: the last epochs trained without mosaics (:mod:`tinyssd.data.close_mosaic`).
        augment_on: where it runs: ``loader`` (per picture, :mod:`tinyssd.data.augment`),
            ``device`` (per batch on the training device, :mod:`tinyssd.data.batch_augment`) or
            ``auto`` (the device when it is not the CPU and the augmentation exists there).
        cache_on_device: keep the decoded images on the training device (``None``: on a GPU,
            with ``cache=ram``, no augmentation in the loader and no worker), so nothing crosses the bus per step.
        class_names: the classes, when the format cannot tell them (or to check the data's).
        classes_from: where ``class_names`` came from when it is not the user's setting (the
            checkpoint being evaluated), for the messages.
        data_dir: the data folder (``data.data_dir``, the one data-folder key): the banana format reads its
            set from it; configs write other formats' paths against it, so they take and ignore it.
    """

    #: the ``data.*`` key a split's location is set with, for messages (``data.{split}...``).
    split_key = "data.{split}"
    #: whether the format's reader already warns about objects listed twice (banana: by line).
    warns_duplicates = False

    def __init__(
        self,
        batch_size: int = 32,
        num_workers: int | None = None,
        pin_memory: bool | None = None,
        image_size: int = 256,
        resize: str = STRETCH,
        cache: str = "ram",
        augment: str = "none",
        mosaic: float = 0.0,
        zoom_out: float = 1.0,
        augment_on: str = "auto",
        close_mosaic: int = 0,
        cache_on_device: bool | None = None,
        class_names: Sequence[str] | None = None,
        classes_from: str | None = None,
        data_dir: str | None = None,
    ) -> None:
        super().__init__()
        check_mosaic_share(mosaic)
        self.resize = check_resize_mode(resize)
        if cache not in CACHE_MODES:
            raise ConfigError(f"data.cache must be one of {', '.join(CACHE_MODES)}, got {cache!r}.")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"data.batch_size must be a positive integer, got {batch_size}.")
        if isinstance(image_size, bool) or not isinstance(image_size, int):
            raise ConfigError(f"data.image_size must be a whole number of pixels, got {image_size!r}.")
        if image_size < 64:
            # TinySSD halves the input six times before its global pooling.
            raise ConfigError(f"data.image_size must be at least 64 pixels, got {image_size}.")
        if image_size > MAX_IMAGE_SIZE:
            raise ConfigError(f"data.image_size must be at most {MAX_IMAGE_SIZE} pixels, got {image_size}.")
        if isinstance(close_mosaic, bool) or not isinstance(close_mosaic, int) or close_mosaic < 0:
            raise ConfigError(f"data.close_mosaic counts the last epochs without mosaics (>= 0); got {close_mosaic!r}.")
        if num_workers is not None and num_workers < 0:
            raise ConfigError(f"data.num_workers must be >= 0 (or null for the default), got {num_workers}.")
        if class_names is not None and (
            isinstance(class_names, str) or not class_names or not all(isinstance(n, str) and n for n in class_names)
        ):
            raise ConfigError(f"data.class_names must be a non-empty list of names, got {class_names!r}.")
        if class_names is not None and len(set(class_names)) != len(class_names):
            raise ConfigError(f"data.class_names lists a name twice: {list(class_names)}; give each class once.")
        self.batch_size, self.image_size, self.cache = batch_size, image_size, cache
        self.num_workers = default_workers(cache, num_workers)
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.augment, self.mosaic, self.zoom_out, self.close_mosaic = augment, mosaic, zoom_out, close_mosaic
        self.train_transform = build_augment(augment, image_size, zoom_out)  # validates both now
        self.augment_on = check_placement(augment_on)
        # Built once, now (augment_on=device refuses what runs in the loader only); used when the device is chosen.
        device_ready = augment_on == "device" or augment in BATCH_AUGMENTATIONS
        self._device_augment = BatchAugment(augment, zoom_out, mosaic) if device_ready else None
        self.batch_augment: BatchAugment | None = None
        self.cache_on_device = cache_on_device
        self.given_class_names = list(class_names) if class_names is not None else None
        self.classes_from = classes_from
        self.datasets: dict[str, DetectionDataset] = {}

    # ----------------------------------------------------------------- what a format provides

    def has_split(self, split: str) -> bool:
        """Whether the data set has this split (``train``, ``val`` or ``test``)."""
        return split in ("train", "val")

    def declared_class_names(self) -> list[str] | None:
        """The classes the data set declares (COCO categories, YOLO names), or None."""
        return None

    def read_split(self, split: str) -> DetectionIndex:
        """The index of one split (see :class:`IndexBuilder`)."""
        raise NotImplementedError

    # ----------------------------------------------------------------- shared

    @property
    def class_names(self) -> list[str]:
        """The classes, in class-id order: the data set's, checked against any given."""
        declared = self.declared_class_names()
        given = self.given_class_names
        if declared is None:
            if given is None:
                raise ConfigError("this data set does not name its classes; set data.class_names=[...].")
            return given
        if len(declared) > MAX_CLASSES:
            raise DataError(f"the data set declares {len(declared)} classes; tinyssd trains at most {MAX_CLASSES}.")
        if given is not None and given != declared:
            source = self.classes_from or "data.class_names"
            raise DataError(
                f"{source} has the classes {given} but the data set declares {declared} (in id order). "
                + (
                    "Evaluate the checkpoint on data with its classes, or train one on these."
                    if self.classes_from
                    else "Drop data.class_names (the data set's names are used) or make them match."
                )
            )
        return declared

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def prepare_data(self) -> None:
        """Nothing to fetch by default (the banana set downloads here)."""

    def _dataset(self, split: str) -> DetectionDataset:
        if split not in self.datasets:
            if not self.has_split(split):
                raise ConfigError(
                    f"the data set has no {split} split; set {self.split_key.format(split=split)} to evaluate on it."
                )
            index = self.read_split(split)
            dups = [] if self.warns_duplicates else duplicate_objects(index)
            if dups:
                warn_list(
                    f"{len(dups)} picture(s) list the same object twice (kept: each counts as an object to find; "
                    "remove the copies)",
                    dups,
                )
            in_loader = split == "train" and self.augment_placement() == "loader"
            if split == "train" and not in_loader:
                self.batch_augment = self._device_augment
            self.datasets[split] = DetectionDataset(
                index,
                self.image_size,
                self.resize,
                self.cache,
                transform=self.train_transform if in_loader else None,
                mosaic=self.mosaic if in_loader else 0.0,
            )
        return self.datasets[split]

    def augment_placement(self) -> str:
        """``loader`` or ``device``: where training augmentation runs (``data.augment_on`` resolved)."""
        if self.augment_on != "auto":
            return self.augment_on
        trainer = getattr(self, "trainer", None)
        on_cpu = trainer is None or trainer.strategy.root_device.type == "cpu"
        return "loader" if on_cpu or self._device_augment is None else "device"

    def use_mosaic(self, on: bool) -> None:
        """Mosaics at ``data.mosaic``'s share or none, from the next training batch made."""
        share = self.mosaic if on else 0.0
        if self.batch_augment is not None:
            self.batch_augment.mosaic = share
        elif "train" in self.datasets and self.augment_placement() == "loader":
            self.datasets["train"].mosaic = share

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Training batches augmented on the device when ``augment_on`` resolves to ``device``."""
        trainer = getattr(self, "trainer", None)
        if self.batch_augment is None or not self.batch_augment.active or trainer is None or not trainer.training:
            return batch
        if not isinstance(batch, (list, tuple)) or len(batch) != 2:  # the model summary's example pictures
            return batch
        images, labels = batch
        return self.batch_augment(images, labels, pool=self._picture_pool(images.device))

    def _picture_pool(self, device: torch.device) -> Pool | None:
        """Random pictures of the training split for the mosaics (``None`` when they are not in memory)."""
        dataset = self.datasets.get("train")
        if dataset is None or dataset.images is None or dataset.labels is None:
            return None
        images, labels = dataset.images, dataset.labels

        def draw(count: int) -> tuple[Tensor, Tensor]:
            picks = torch.randint(len(images), (count,), device=images.device)
            return images[picks].to(device, non_blocking=True), labels[picks].to(device, non_blocking=True)

        return draw

    def setup(self, stage: str | None = None) -> None:
        wanted = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("val",)}
        for split in wanted.get(stage or "fit", ("train", "val")):
            self._dataset(split)
        device = self._cache_device()
        if device is not None:
            for dataset in self.datasets.values():
                if dataset.images is not None and dataset.transform is None and not dataset.mosaic:
                    dataset.images = dataset.images.to(device)
                    dataset.labels = dataset.labels.to(device)

    def _cache_device(self) -> torch.device | None:
        trainer = getattr(self, "trainer", None)
        device = trainer.strategy.root_device if trainer is not None else None
        if device is None or device.type == "cpu" or self.cache_on_device is False or self.cache != "ram":
            return None
        in_loader = self.augment_placement() == "loader" and (self.train_transform is not None or self.mosaic)
        if self.cache_on_device is None and (self.num_workers > 0 or in_loader):
            return None
        return device

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        dataset = self._dataset(split)
        on_device = dataset.images is not None and dataset.images.device.type != "cpu"
        workers = 0 if on_device else self.num_workers
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=workers,
            pin_memory=self.pin_memory and not on_device,
            persistent_workers=workers > 0,
            worker_init_fn=_single_thread_worker if workers > 0 else None,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        """``trainer.predict(module, datamodule=...)`` runs over the val split (``predict.py`` reads any pictures)."""
        return self._loader("val", shuffle=False)
