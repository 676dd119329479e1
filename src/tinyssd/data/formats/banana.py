"""The banana format: ``<split>/label.csv`` read line by line, beside ``<split>/images/``.

``label.csv`` has the columns ``img_name,label,xmin,ymin,xmax,ymax`` (pixels; several rows per
image = several objects; more columns are allowed and ignored), and ``<split>/images/<img_name>``
holds the pictures. Every physical line is accounted for: the header, a blank line, a row, or
a bad row reported with its line number. The format lists objects, so a picture with no
objects cannot be in it, and it does not name its classes (``data.num_classes`` and
``data.class_names`` do). The banana set itself is downloaded by :mod:`tinyssd.data.download`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from torch import Tensor

from tinyssd.data.datamodule import DetectionDataModule
from tinyssd.data.dataset import DetectionDataset
from tinyssd.data.download import BANANA_SHA1, BANANA_URL, DATASET_DIRNAME, ensure_dataset
from tinyssd.data.formats.label_csv import LabelRow, bad_row, duplicate_rows, read_label_csv
from tinyssd.data.index import (
    DetectionIndex,
    IndexBuilder,
    warn_list,
)
from tinyssd.errors import ConfigError, DataError
from tinyssd.resize import STRETCH

__all__ = [
    "BananaDataModule",
    "DetectionSplit",
    "load_split",
    "read_banana_split",
]


def read_banana_split(
    split_dir: str | os.PathLike,
    class_names: Sequence[str],
    on_bad_row: str = "error",
    classes_from: str | None = None,
) -> DetectionIndex:
    """Index one banana-format split folder (pictures in the order ``label.csv`` first names them).

    Warns (with counts) about rows that repeat another row exactly (they are kept: each is an
    object to the metrics) and about pictures in ``images/`` that ``label.csv`` never names
    (they are not used). With ``on_bad_row=skip`` a picture whose rows are all bad is left out.
    """
    split_dir = Path(split_dir)
    csv_path = split_dir / "label.csv"
    rows, dropped = read_label_csv(csv_path, len(class_names), on_bad_row, classes_from)

    repeats = duplicate_rows(rows)
    if repeats:
        warn_list(
            f"{csv_path}: {len(repeats)} row(s) repeat an earlier row exactly (kept; remove them if they are "
            "copies, since each counts as an object to find)",
            [f"line {line} repeats line {orig}" for line, orig in repeats],
        )
    by_image: dict[str, list[LabelRow]] = {}
    for row in rows:
        by_image.setdefault(row.img_name, []).append(row)

    images_dir = split_dir / "images"
    if images_dir.is_dir():
        unlisted = sorted(p.name for p in images_dir.iterdir() if p.is_file() and p.name not in by_image)
        if unlisted:
            warn_list(
                f"{images_dir}: {len(unlisted)} file(s) are not named in {csv_path.name} and are not used "
                "(the banana format cannot list a picture with no objects; the COCO, VOC and YOLO formats can)",
                unlisted,
            )

    builder = IndexBuilder(
        class_names, "Fix or remove that row, or set data.on_bad_row=skip to drop bad rows with a warning."
    )
    for name, objs in by_image.items():
        where = f"{csv_path}, line {objs[0].line}"
        path = images_dir / name
        if not path.is_file():
            for r in objs:
                bad_row(csv_path, r.line, f"image {path} does not exist", on_bad_row, dropped)
            continue
        picture = builder.add_picture(path, where)
        for r in objs:
            try:
                builder.add_object(picture, f"{csv_path}, line {r.line}", r.label, r.box)
            except DataError as err:
                if on_bad_row != "skip":
                    raise
                dropped.append(str(err).split(". Fix or remove")[0])
        if not builder.rows[picture]:
            builder.drop_last_picture()
    if dropped:
        warn_list(f"{csv_path}: dropped {len(dropped)} bad row(s) (data.on_bad_row=skip)", dropped, limit=20)
    if not builder.files:
        raise DataError(f"{split_dir} has no usable images; check {csv_path} and the images/ folder.")
    return builder.build(dropped)


@dataclass
class DetectionSplit:
    """A decoded split: ``images (N, 3, S, S)`` uint8, ``labels (N, G, 5)`` float (padding: class -1)."""

    images: Tensor
    labels: Tensor
    names: list[str]
    dropped: list[str] = field(default_factory=list)


def load_split(
    split_dir: str | os.PathLike,
    num_classes: int = 1,
    image_size: int = 256,
    on_bad_row: str = "error",
    classes_from: str | None = None,
    resize: str = STRETCH,
) -> DetectionSplit:
    """Decode one banana-format split folder into memory (see :func:`read_banana_split`)."""
    index = read_banana_split(split_dir, [str(i) for i in range(num_classes)], on_bad_row, classes_from)
    dataset = DetectionDataset(index, image_size, resize, cache="ram")
    assert dataset.images is not None and dataset.labels is not None
    return DetectionSplit(dataset.images, dataset.labels, [f.name for f in index.files], index.dropped)


class BananaDataModule(DetectionDataModule):
    """A banana-format data set: ``<data_dir>/banana-detection/{bananas_train,bananas_val}``.

    Args:
        data_dir: folder holding ``banana-detection/`` (or where it is downloaded to).
        num_classes: object classes (class ids in ``label.csv`` are ``0..num_classes-1``).
        class_names: names of the classes (default: ``0``, ``1``, ...).
        on_bad_row: ``error`` stops at the first bad CSV row; ``skip`` drops it with a warning.
        url, sha1: where the archive comes from and its checksum.
        download: allow downloading when neither the tree nor the archive is present.
        train_split, val_split, test_split: split folder names (``test_split``: none by default).
        **kwargs: the options every format shares (:class:`~tinyssd.data.datamodule.DetectionDataModule`).
    """

    def __init__(
        self,
        data_dir: str = "data",
        num_classes: int = 1,
        class_names: Sequence[str] | None = ("banana",),
        on_bad_row: str = "error",
        url: str = BANANA_URL,
        sha1: str | None = BANANA_SHA1,
        download: bool = True,
        train_split: str = "bananas_train",
        val_split: str = "bananas_val",
        test_split: str | None = None,
        **kwargs,
    ) -> None:
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ConfigError(f"data.num_classes must be a positive integer, got {num_classes!r}.")
        if class_names is not None and len(class_names) != num_classes:
            raise ConfigError(
                f"data.class_names has {len(class_names)} names but data.num_classes={num_classes}; "
                "give one name per class."
            )
        if on_bad_row not in ("error", "skip"):
            raise ConfigError(f"data.on_bad_row must be 'error' or 'skip', got {on_bad_row!r}.")
        names = list(class_names) if class_names is not None else [str(i) for i in range(num_classes)]
        super().__init__(class_names=names, **kwargs)
        self.data_dir = Path(data_dir).expanduser().resolve()
        self.on_bad_row = on_bad_row
        self.url, self.sha1, self.download = url, sha1, download
        self.split_dirs = {"train": train_split, "val": val_split, "test": test_split}

    split_key = "data.{split}_split"
    warns_duplicates = True

    @property
    def root(self) -> Path:
        return self.data_dir / DATASET_DIRNAME

    def has_split(self, split: str) -> bool:
        return bool(self.split_dirs.get(split))

    def prepare_data(self) -> None:
        ensure_dataset(self.data_dir, self.url, self.sha1, self.download)

    def setup(self, stage: str | None = None) -> None:
        if not self.root.is_dir():
            # prepare_data runs on one process per node; elsewhere (or when skipped), do it here.
            self.prepare_data()
        super().setup(stage)

    def read_split(self, split: str) -> DetectionIndex:
        split_dir = self.root / str(self.split_dirs[split])
        if not (split_dir / "label.csv").is_file():
            raise DataError(
                f"{split_dir / 'label.csv'} does not exist. data.data_dir={self.data_dir} must hold "
                f"{DATASET_DIRNAME}/{self.split_dirs[split]}/label.csv and "
                f"{DATASET_DIRNAME}/{self.split_dirs[split]}/images/."
            )
        return read_banana_split(split_dir, self.class_names, self.on_bad_row, self.classes_from)
