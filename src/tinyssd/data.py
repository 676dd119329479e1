"""The banana detection dataset: download, verification, safe extraction, parsing, loading.

A dataset folder in the banana format is ``<root>/<split>/label.csv`` with columns
``img_name,label,xmin,ymin,xmax,ymax`` (pixels; several rows per image = several objects)
and ``<root>/<split>/images/<img_name>``. Any such folder is a dataset, with any number of
classes. Images are decoded once, resized to ``image_size`` and kept as uint8 tensors;
boxes are normalised by each image's own size, so they are independent of the resize.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import math
import os
import urllib.error
import urllib.request
import warnings
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import lightning.pytorch as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms.v2 import functional as TF

from tinyssd.augment import MOSAIC_CENTER, build_augment, check_mosaic_share, mosaic
from tinyssd.boxes import pad_labels, pad_rows
from tinyssd.errors import ConfigError, DataError
from tinyssd.images import read_image

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

BANANA_URL = "http://d2l-data.s3-accelerate.amazonaws.com/banana-detection.zip"
BANANA_SHA1 = "5de26c8fce5ccdea9f91267273464dc968d20d72"
DATASET_DIRNAME = "banana-detection"
LABEL_COLUMNS = ("img_name", "label", "xmin", "ymin", "xmax", "ymax")


# --------------------------------------------------------------------------- download


def sha1_of(path: Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-1 of a file."""
    digest = hashlib.sha1()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def download_file(url: str, dest: Path, progress: bool = True, timeout: float = 60.0) -> Path:
    """Download ``url`` to ``dest`` (through ``dest.part``, so a failed download leaves nothing)."""
    from tqdm.auto import tqdm

    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    with urllib.request.urlopen(url, timeout=timeout) as response, open(part, "wb") as out:
        total = int(response.headers.get("Content-Length") or 0) or None
        with tqdm(total=total, unit="B", unit_scale=True, desc=dest.name, disable=not progress) as bar:
            while block := response.read(1 << 20):
                out.write(block)
                bar.update(len(block))
    part.replace(dest)
    return dest


def extract_zip_safely(archive: Path, target_dir: Path) -> None:
    """Extract ``archive`` into ``target_dir``, refusing any member that would land outside it.

    Every member is checked before anything is written, so a bad archive extracts nothing.
    """
    target = target_dir.resolve()
    try:
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                name = info.filename
                dest = (target / name).resolve()
                is_link = (info.external_attr >> 16) & 0o170000 == 0o120000
                if name.startswith(("/", "\\")) or Path(name).is_absolute() or ".." in Path(name).parts:
                    raise DataError(
                        f"archive {archive} has a member with an unsafe path ({name!r}); nothing was extracted. "
                        "Use the original banana-detection.zip or an archive whose paths stay inside its folder."
                    )
                if (dest != target and target not in dest.parents) or is_link:
                    raise DataError(
                        f"archive {archive} member {name!r} would be written outside {target} (or is a link); "
                        "nothing was extracted. Use an archive whose members are plain files inside its folder."
                    )
            zf.extractall(target)
    except zipfile.BadZipFile as err:
        raise DataError(f"{archive} is not a readable zip archive ({err}); delete it and download it again.") from err


def _dataset_present(root: Path) -> bool:
    return (root / "bananas_train" / "label.csv").is_file() or (root / "bananas_val" / "label.csv").is_file()


def ensure_dataset(
    data_dir: str | os.PathLike,
    url: str = BANANA_URL,
    sha1: str | None = BANANA_SHA1,
    download: bool = True,
    progress: bool = True,
) -> Path:
    """Make ``<data_dir>/banana-detection`` exist and return it.

    Uses the unpacked tree if present; else ``<data_dir>/banana-detection.zip``; else
    downloads the archive. The archive's SHA-1 is checked before it is opened.
    """
    data_dir = Path(data_dir).expanduser().resolve()
    root = data_dir / DATASET_DIRNAME
    if _dataset_present(root):
        return root
    archive = data_dir / (Path(url).name or f"{DATASET_DIRNAME}.zip")
    if not archive.is_file():
        if not download:
            raise DataError(
                f"no dataset at {root} and no archive at {archive}. Put a copy of {archive.name} "
                f"(from {url}) in {data_dir}, or point data.data_dir at the folder that holds {DATASET_DIRNAME}/."
            )
        try:
            download_file(url, archive, progress=progress)
        except (urllib.error.URLError, OSError, ValueError) as err:
            raise DataError(
                f"the banana dataset is not in {data_dir} and could not be downloaded from {url} ({err}). "
                f"Download {archive.name} (SHA-1 {sha1}) on a machine with network access and put it in "
                f"{data_dir}, or point data.data_dir at a folder that already holds {DATASET_DIRNAME}/ "
                f"(for example data.data_dir=../shared/data)."
            ) from err
    if sha1:
        actual = sha1_of(archive)
        if actual != sha1:
            raise DataError(
                f"{archive} has SHA-1 {actual} but {sha1} was expected; it is corrupt or not the banana "
                f"dataset, so nothing was extracted. Delete it and download it again from {url}."
            )
    extract_zip_safely(archive, data_dir)
    if not _dataset_present(root):
        raise DataError(
            f"{archive} was extracted but {root} still has no bananas_train/label.csv or bananas_val/label.csv; "
            "the archive does not hold a banana-format dataset."
        )
    return root


# --------------------------------------------------------------------------- parsing


@dataclass
class LabelRow:
    line: int
    img_name: str
    label: int
    box: tuple[float, float, float, float]


@dataclass
class DetectionSplit:
    """A decoded split: ``images (N, 3, S, S)`` uint8, ``labels (N, G, 5)`` float (padding: class -1)."""

    images: Tensor
    labels: Tensor
    names: list[str]
    dropped: list[str] = field(default_factory=list)


def _single_thread_worker(_: int) -> None:
    # Each loader worker augments on one thread, so workers and the training step share the
    # cores instead of oversubscribing them.
    torch.set_num_threads(1)


def _bad(csv_path: Path, line: int, problem: str, on_bad_row: str, dropped: list[str]) -> None:
    message = f"{csv_path}, line {line}: {problem}"
    if on_bad_row == "skip":
        dropped.append(message)
        return
    raise DataError(f"{message}. Fix or remove that row, or set data.on_bad_row=skip to drop bad rows with a warning.")


def _read_lines(csv_path: Path) -> list[str]:
    """The file's physical lines as UTF-8 text (a UTF-8 byte-order mark, as Excel writes, is accepted)."""
    try:
        raw = csv_path.read_bytes()
    except OSError as err:
        raise DataError(f"{csv_path} cannot be read ({err.strerror or err}).") from err
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE, codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE)):
        raise DataError(
            f"{csv_path} is UTF-16/UTF-32 text (it starts with that byte-order mark); label.csv must be UTF-8. "
            "Save it again as 'CSV UTF-8'."
        )
    raw = raw.removeprefix(codecs.BOM_UTF8)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise DataError(
            f"{csv_path}, line {line}: byte 0x{raw[err.start]:02x} is not UTF-8 text; label.csv must be UTF-8. "
            "Save it again as UTF-8 (for example `iconv -f latin1 -t utf-8 label.csv`)."
        ) from err
    # Universal newlines: \r\n (Windows) and a lone \r (old Mac) end a line as \n does.
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return lines


def _parse_line(line: str) -> list[str]:
    """One physical line as CSV fields; a record never spans lines (an open quote is an error)."""
    try:
        return next(csv.reader([line], strict=True))
    except csv.Error as err:
        reason = str(err)
        if "unexpected end of data" in reason:
            reason = "a quote opened on this line is not closed on it"
        elif "field larger than field limit" in reason:
            reason = f"a field is longer than {csv.field_size_limit()} characters"
        raise ValueError(f"not a valid CSV row ({reason})") from err


def _name_problem(name: str) -> str | None:
    """Why ``img_name`` cannot name a file in the split's ``images/`` folder, or None."""
    if not name:
        return "img_name is empty"
    if "\0" in name:
        return "img_name contains a NUL character"
    parts = Path(name.replace("\\", "/")).parts
    if Path(name).is_absolute() or name.startswith(("/", "\\")) or ".." in parts or (parts and ":" in parts[0]):
        return f"img_name {name!r} leaves the split's images/ folder (absolute path or '..'); give a name inside it"
    if any(len(part.encode()) > 255 for part in parts):
        return "img_name has a file name longer than 255 bytes (the file system's limit)"
    return None


def read_label_csv(
    csv_path: Path, num_classes: int, on_bad_row: str = "error", classes_from: str | None = None
) -> tuple[list[LabelRow], list[str]]:
    """Parse a banana-format ``label.csv``; returns the good rows and the dropped-row messages.

    Every physical line is accounted for: the header, a blank line, a row, or a bad row
    reported with its line number (an error, or with ``on_bad_row=skip`` a dropped row).
    ``classes_from`` names where ``num_classes`` came from (e.g. a checkpoint) for the message
    about a class id out of range.
    """
    if on_bad_row not in ("error", "skip"):
        raise ConfigError(f"data.on_bad_row must be 'error' or 'skip', got {on_bad_row!r}.")
    if not csv_path.is_file():
        raise DataError(f"{csv_path} does not exist; a banana-format split needs label.csv beside images/.")
    lines = _read_lines(csv_path)
    try:
        header = _parse_line(lines[0]) if lines else None
    except ValueError:
        header = [lines[0]]
    if header is None or [h.strip() for h in header[:6]] != list(LABEL_COLUMNS):
        shown = repr(header)[:200] + ("..." if len(repr(header)) > 200 else "")
        raise DataError(f"{csv_path}, line 1: the header is {shown} but must start with {','.join(LABEL_COLUMNS)}.")
    rows: list[LabelRow] = []
    dropped: list[str] = []
    for line_no, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        try:
            record = _parse_line(line)
        except ValueError as err:
            _bad(csv_path, line_no, str(err), on_bad_row, dropped)
            continue
        if all(not v.strip() for v in record):  # ",,,,,": a blank row as spreadsheets write it
            continue
        if len(record) < len(LABEL_COLUMNS):
            _bad(csv_path, line_no, f"expected 6 columns, found {len(record)} ({record})", on_bad_row, dropped)
            continue
        name = record[0].strip()
        problem = _name_problem(name)
        if problem:
            _bad(csv_path, line_no, problem, on_bad_row, dropped)
            continue
        try:
            label = int(record[1])
            x1, y1, x2, y2 = (float(v) for v in record[2:6])
        except ValueError:
            _bad(csv_path, line_no, f"non-numeric label or coordinate in {record[:6]}", on_bad_row, dropped)
            continue
        if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
            _bad(csv_path, line_no, f"non-finite coordinate in {record[2:6]}", on_bad_row, dropped)
            continue
        if not 0 <= label < num_classes:
            if classes_from:
                raise DataError(
                    f"{csv_path}, line {line_no}: class id {label}, but {classes_from} detects {num_classes} "
                    f"class(es) (ids 0..{num_classes - 1}). Evaluate it on data with its classes, or use a "
                    "checkpoint trained on this data's classes."
                )
            _bad(
                csv_path,
                line_no,
                f"class id {label} is outside 0..{num_classes - 1} (data.num_classes={num_classes}; "
                "set data.num_classes and data.class_names if the data has more classes)",
                on_bad_row,
                dropped,
            )
            continue
        if not (x1 < x2 and y1 < y2):
            _bad(
                csv_path,
                line_no,
                f"empty box: need xmin < xmax and ymin < ymax, got {record[2:6]}",
                on_bad_row,
                dropped,
            )
            continue
        rows.append(LabelRow(line_no, name, label, (x1, y1, x2, y2)))
    if not rows and not dropped:
        raise DataError(f"{csv_path} has no label rows; add one row per object (img_name,label,xmin,ymin,xmax,ymax).")
    return rows, dropped


def _duplicates(rows: list[LabelRow]) -> list[tuple[int, int]]:
    """(line, line of its first copy) for rows repeating an earlier row's image, class and box."""
    first: dict[tuple, int] = {}
    repeats = []
    for r in rows:
        key = (r.img_name, r.label, r.box)
        if key in first:
            repeats.append((r.line, first[key]))
        else:
            first[key] = r.line
    return repeats


def _warn_list(title: str, items: list[str], limit: int = 10) -> None:
    shown = "\n  ".join(items[:limit]) + (f"\n  ... and {len(items) - limit} more" if len(items) > limit else "")
    warnings.warn(f"{title}:\n  {shown}", stacklevel=3)


def load_split(
    split_dir: str | os.PathLike,
    num_classes: int = 1,
    image_size: int = 256,
    on_bad_row: str = "error",
    classes_from: str | None = None,
) -> DetectionSplit:
    """Decode one banana-format split folder into memory (see :class:`DetectionSplit`).

    Warns (with counts) about rows that repeat another row exactly (they are kept: each is an
    object to the metrics) and about pictures in ``images/`` that ``label.csv`` never names
    (they are not used).
    """
    split_dir = Path(split_dir)
    csv_path = split_dir / "label.csv"
    rows, dropped = read_label_csv(csv_path, num_classes, on_bad_row, classes_from)

    repeats = _duplicates(rows)
    if repeats:
        _warn_list(
            f"{csv_path}: {len(repeats)} row(s) repeat an earlier row exactly (kept; remove them if they are "
            "copies, since each counts as an object to find)",
            [f"line {line} repeats line {orig}" for line, orig in repeats],
        )

    by_image: dict[str, list[LabelRow]] = {}
    for row in rows:
        by_image.setdefault(row.img_name, []).append(row)

    images_dir = split_dir / "images"
    if images_dir.is_dir():
        listed = set(by_image)
        unlisted = sorted(p.name for p in images_dir.iterdir() if p.is_file() and p.name not in listed)
        if unlisted:
            _warn_list(
                f"{images_dir}: {len(unlisted)} file(s) are not named in {csv_path.name} and are not used",
                unlisted,
            )

    images, boxes, names = [], [], []
    for name, objs in by_image.items():
        path = images_dir / name
        if not path.is_file():
            for r in objs:
                _bad(csv_path, r.line, f"image {path} does not exist", on_bad_row, dropped)
            continue
        img = read_image(path, context=f"named on {csv_path}, line {objs[0].line}")
        height, width = img.shape[-2:]
        good = []
        for r in objs:
            x1, y1, x2, y2 = r.box
            if x1 < 0 or y1 < 0 or x2 > width or y2 > height:
                _bad(
                    csv_path,
                    r.line,
                    f"box {list(r.box)} lies outside the {width}x{height} image {name}",
                    on_bad_row,
                    dropped,
                )
                continue
            good.append([r.label, x1 / width, y1 / height, x2 / width, y2 / height])
        if not good:
            continue
        if (height, width) != (image_size, image_size):
            img = TF.resize(img, [image_size, image_size], antialias=True)
        images.append(img)
        boxes.append(torch.tensor(good, dtype=torch.float32))
        names.append(name)

    if dropped:
        _warn_list(f"{csv_path}: dropped {len(dropped)} bad row(s) (data.on_bad_row=skip)", dropped, limit=20)
    if not images:
        raise DataError(f"{split_dir} has no usable images; check {csv_path} and the images/ folder.")

    return DetectionSplit(torch.stack(images), pad_labels(boxes), names, dropped)


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
