"""The data interface every format shares: the index of a split and the checks that build it.

A format (:mod:`tinyssd.data.formats`) reads its annotation files into a :class:`DetectionIndex`:
for each picture its file, its size (from the file's header, EXIF orientation applied) and
its objects, validated by :class:`IndexBuilder` (one paragraph naming file, line or element
for each bad box or class). Nothing is decoded then; :mod:`tinyssd.data.datamodule` turns an index
into tensors and loaders.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from tinyssd.boxes import BOX_TOLERANCE, valid_rows
from tinyssd.errors import DataError, shown
from tinyssd.images import IMAGE_SUFFIXES, probe_size
from tinyssd.limits import MAX_OBJECTS_PER_PICTURE

__all__ = [
    "SPLITS",
    "DetectionIndex",
    "IndexBuilder",
    "check_relative_name",
    "warn_list",
]

SPLITS = ("train", "val", "test")


def warn_list(title: str, items: Sequence[str], limit: int = 10) -> None:
    """One warning: a title and up to ``limit`` of its items."""
    shown = "\n  ".join(items[:limit]) + (f"\n  ... and {len(items) - limit} more" if len(items) > limit else "")
    warnings.warn(f"{title}:\n  {shown}", stacklevel=3)


def check_relative_name(name: str, what: str, folder: str) -> str | None:
    """Why ``name`` cannot name a file inside ``folder`` (absolute, ``..``, NUL, too long), or None."""
    if not name:
        return f"{what} is empty"
    if "\0" in name:
        return f"{what} contains a NUL character"
    parts = Path(name.replace("\\", "/")).parts
    if Path(name).is_absolute() or name.startswith(("/", "\\")) or ".." in parts or (parts and ":" in parts[0]):
        return f"{what} {name!r} leaves {folder} (absolute path or '..'); give a name inside it"
    if any(len(part.encode()) > 255 for part in parts):
        return f"{what} has a file name longer than 255 bytes (the file system's limit)"
    return None


def unused_pictures(folder: Path, used: set[Path]) -> list[str]:
    """Picture files directly in ``folder`` that no annotation uses."""
    if not folder.is_dir():
        return []
    return sorted(
        p.name for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and p not in used
    )


# --------------------------------------------------------------------------- index


@dataclass
class DetectionIndex:
    """What a split's annotations say, before a pixel is decoded.

    ``files``: N picture paths; ``sizes (N, 2)`` int64 ``(width, height)`` as decoded;
    ``labels``: N tensors ``(G_i, 5)`` float32, boxes normalised to the picture (``G_i`` may be
    0: a picture with no objects); ``sources``: where each picture is named, for messages.
    """

    files: list[Path]
    sizes: Tensor
    labels: list[Tensor]
    sources: list[str]
    class_names: list[str]
    dropped: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.files)

    @property
    def max_objects(self) -> int:
        return max([len(x) for x in self.labels] + [1])

    @property
    def num_objects(self) -> int:
        """Objects that count in the metrics (ignored ones do not)."""
        return int(sum(int(valid_rows(x).sum()) for x in self.labels))


class IndexBuilder:
    """Collects a split's pictures and objects, checking each box against its picture.

    ``add_picture`` probes the file's header (it must exist and be a single picture) and checks
    a size the annotation declares; ``add_object`` checks a box in pixels (or normalised, for
    YOLO) and its class. ``where`` strings name the file and line, element or id in messages.
    """

    def __init__(self, class_names: Sequence[str], fix: str) -> None:
        self.class_names = list(class_names)
        self.fix = fix  # how to fix a bad annotation, appended to each message
        self.files: list[Path] = []
        self.sizes: list[tuple[int, int]] = []
        self.rows: list[list[list[float]]] = []
        self.sources: list[str] = []
        self._seen: dict[Path, str] = {}

    def fail(self, where: str, problem: str) -> DataError:
        return DataError(f"{where}: {problem}. {self.fix}")

    def add_picture(self, file: Path, where: str, declared: tuple[int, int] | None = None) -> int:
        """Index a picture; returns its position. ``declared``: ``(width, height)`` the file states."""
        if file in self._seen:
            raise self.fail(where, f"picture {file} is already listed ({self._seen[file]}); list each picture once")
        if not file.is_file():
            raise self.fail(where, f"the picture {file} does not exist")
        size = probe_size(file, context=f"named on {where}")
        if declared is not None and tuple(declared) != size:
            raise self.fail(
                where,
                f"the annotation says the picture is {declared[0]}x{declared[1]} pixels but {file} is "
                f"{size[0]}x{size[1]} (after its EXIF orientation); the boxes were drawn on another picture",
            )
        self._seen[file] = where
        self.files.append(file)
        self.sizes.append(size)
        self.rows.append([])
        self.sources.append(where)
        return len(self.files) - 1

    def check_class(self, where: str, label: int | str) -> int:
        """A class id (or, for VOC, a name) -> its index in ``class_names``."""
        names = self.class_names
        if isinstance(label, str):
            if label not in names:
                raise self.fail(where, f"class {shown(label)} is not one of the data set's classes {shown(names)}")
            return names.index(label)
        if not 0 <= label < len(names):
            raise self.fail(
                where, f"class id {label} is not one of the data set's ids 0..{len(names) - 1} ({shown(names)})"
            )
        return label

    def add_object(
        self,
        picture: int,
        where: str,
        label: int | str,
        box: Sequence[float],
        normalised: bool = False,
        ignored: bool = False,
    ) -> None:
        """Add an ``xyxy`` box (pixels, or normalised) of class ``label`` to picture ``picture``."""
        cls = self.check_class(where, label)
        if len(self.rows[picture]) >= MAX_OBJECTS_PER_PICTURE:
            raise self.fail(
                where,
                f"{self.files[picture].name} has more than {MAX_OBJECTS_PER_PICTURE} objects; tinyssd compares every "
                "anchor with every object of a picture and takes at most that many (split the picture into tiles)",
            )
        width, height = self.sizes[picture]
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in box):
            raise self.fail(where, f"the box {list(box)} has a coordinate that is not a finite number")
        x1, y1, x2, y2 = (float(v) for v in box)
        if not (x1 < x2 and y1 < y2):
            raise self.fail(where, f"the box {list(box)} is empty (it needs x1 < x2 and y1 < y2)")
        sx, sy = (1.0, 1.0) if normalised else (float(width), float(height))
        nx1, ny1, nx2, ny2 = x1 / sx, y1 / sy, x2 / sx, y2 / sy
        if min(nx1, ny1) < -BOX_TOLERANCE or nx2 > 1 + BOX_TOLERANCE or ny2 > 1 + BOX_TOLERANCE:
            shown = [round(v, 6) for v in box]
            unit = "normalised" if normalised else "pixels"
            raise self.fail(
                where, f"the box {shown} ({unit}) lies outside the {width}x{height} picture {self.files[picture].name}"
            )
        clip = [min(max(v, 0.0), 1.0) for v in (nx1, ny1, nx2, ny2)]  # rounding noise only (BOX_TOLERANCE)
        self.rows[picture].append([float(-2 - cls if ignored else cls), *clip])

    def drop_last_picture(self) -> None:
        self._seen.pop(self.files.pop())
        self.sizes.pop()
        self.rows.pop()
        self.sources.pop()

    def build(self, dropped: list[str] | None = None) -> DetectionIndex:
        labels = [torch.tensor(rows, dtype=torch.float32).reshape(-1, 5) for rows in self.rows]
        sizes = torch.tensor(self.sizes, dtype=torch.int64).reshape(-1, 2)
        return DetectionIndex(self.files, sizes, labels, self.sources, self.class_names, dropped or [])


def duplicate_objects(index: DetectionIndex) -> list[str]:
    """Pictures holding two identical objects (same class, same box), for a warning."""
    found = []
    for file, labels, source in zip(index.files, index.labels, index.sources, strict=True):
        if len(labels) > 1 and len(torch.unique(labels, dim=0)) < len(labels):
            found.append(f"{file.name} ({source})")
    return found


# --------------------------------------------------------------------------- dataset


# --------------------------------------------------------------------------- data module
