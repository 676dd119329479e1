"""The Pascal VOC format: ``Annotations/*.xml``, ``JPEGImages/``, ``ImageSets/Main/{split}.txt``.

The layout of ``torchvision.datasets.VOCDetection`` below its year folder: ``data.root`` is the
``VOC2007``-style folder, ``data.train.split=train data.val.split=val`` name the id lists. Each
XML is parsed with torchvision's ``VOCDetection.parse_voc_xml``. VOC boxes are 1-based inclusive
pixel indices: ``xmin=1, xmax=W`` covers the whole width, i.e. the box ``[xmin - 1, xmax]`` in
continuous pixel coordinates. ``difficult`` objects follow the VOC convention: they are not
trained on, and in evaluation a detection on one is neither right nor wrong. An XML without
``<object>`` is a picture with no objects. Class names come from ``data.class_names`` when
given, else from the names in the train split's annotations, sorted.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torchvision.datasets import VOCDetection

from tinyssd.data.datamodule import DetectionDataModule
from tinyssd.data.index import DetectionIndex, IndexBuilder, check_relative_name
from tinyssd.errors import ConfigError, DataError

__all__ = ["VocDataModule", "read_voc_split", "voc_class_names"]

_FIX = "Fix that element of the XML file (or export the annotations again)."


def _ids(root: Path, split: str) -> list[tuple[str, str]]:
    """``(id, where)`` for each line of ``ImageSets/Main/{split}.txt``."""
    path = root / "ImageSets" / "Main" / f"{split}.txt"
    if not path.is_file():
        raise DataError(
            f"{path} does not exist; data.root must be a VOC year folder (ImageSets/Main/{split}.txt, Annotations/, "
            "JPEGImages/) and the split a file in ImageSets/Main."
        )
    ids = []
    for line_no, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        where = f"{path}, line {line_no}"
        if len(fields) > 1:
            raise DataError(
                f"{where}: expected one image id, found {line.strip()!r} (a class-specific list?); "
                "use a split file of ids."
            )
        problem = check_relative_name(fields[0], "the image id", "Annotations/")
        if problem:
            raise DataError(f"{where}: {problem}.")
        ids.append((fields[0], where))
    if not ids:
        raise DataError(f"{path} lists no image ids; a split needs at least one picture.")
    return ids


def _parse(xml_path: Path, where: str) -> dict[str, Any]:
    if not xml_path.is_file():
        raise DataError(
            f"{where}: the annotation {xml_path} does not exist; every listed id needs Annotations/<id>.xml."
        )
    try:
        tree = ET.parse(xml_path)
        # torchvision's reader recurses once per level; a VOC file is three levels deep.
        depth = _depth(tree.getroot())
        if depth > MAX_XML_DEPTH:
            raise DataError(
                f"{xml_path}: its elements are nested {depth} levels deep; a VOC annotation has at most "
                f"{MAX_XML_DEPTH}. {_FIX}"
            )
        parsed = VOCDetection.parse_voc_xml(tree.getroot())
    except ET.ParseError as err:
        line, column = err.position
        raise DataError(f"{xml_path}, line {line}, column {column}: not well-formed XML ({err}). {_FIX}") from err
    except RecursionError as err:  # expat itself recursing on a deep file
        raise DataError(f"{xml_path}: its elements are nested absurdly deep; it is not a VOC annotation.") from err
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"{xml_path} cannot be read ({err}).") from err
    annotation = parsed.get("annotation")
    if not isinstance(annotation, dict):
        raise DataError(f"{xml_path}: the root element must be <annotation>. {_FIX}")
    return annotation


# <annotation><object><bndbox><xmin> is four levels; room for tools that add a few more.
MAX_XML_DEPTH = 16


def _depth(root: ET.Element) -> int:
    """How many levels of elements ``root`` holds (without recursion)."""
    deepest, stack = 0, [(root, 1)]
    while stack:
        element, level = stack.pop()
        deepest = max(deepest, level)
        stack.extend((child, level + 1) for child in element)
    return deepest


def _objects(annotation: dict[str, Any]) -> list[Any]:
    objects = annotation.get("object", [])
    return objects if isinstance(objects, list) else [objects]


def voc_class_names(root: Path, split: str) -> list[str]:
    """The sorted object names found in a split's annotations."""
    names: set[str] = set()
    for image_id, where in _ids(root, split):
        for obj in _objects(_parse(root / "Annotations" / f"{image_id}.xml", where)):
            if isinstance(obj, dict) and isinstance(obj.get("name"), str) and obj["name"].strip():
                names.add(obj["name"].strip())
    if not names:
        raise DataError(f"the {split} split of {root} names no objects; set data.class_names=[...] to say the classes.")
    return sorted(names)


def _number(text: Any, where: str, key: str) -> float:
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise DataError(f"{where}: <{key}> must be a number, got {text!r}. {_FIX}") from None
    if not math.isfinite(value):
        raise DataError(f"{where}: <{key}> must be a finite number, got {text!r}. {_FIX}")
    return value


def read_voc_split(root: Path, split: str, class_names: Sequence[str]) -> DetectionIndex:
    """Index the pictures ``ImageSets/Main/{split}.txt`` lists."""
    builder = IndexBuilder(class_names, _FIX)
    for image_id, where in _ids(root, split):
        xml_path = root / "Annotations" / f"{image_id}.xml"
        annotation = _parse(xml_path, where)
        picture = root / "JPEGImages" / f"{image_id}.jpg"
        filename = annotation.get("filename")
        if not picture.is_file() and isinstance(filename, str) and not check_relative_name(filename, "", ""):
            picture = root / "JPEGImages" / filename
        declared = None
        size = annotation.get("size")
        if isinstance(size, dict) and size.get("width") and size.get("height"):
            width = _number(size["width"], f"{xml_path}, <size>", "width")
            height = _number(size["height"], f"{xml_path}, <size>", "height")
            if width > 0 and height > 0:  # some tools write 0 when they did not know
                declared = (int(width), int(height))
        index = builder.add_picture(picture, str(xml_path), declared)
        for k, obj in enumerate(_objects(annotation), start=1):
            obj_where = f"{xml_path}, <object> {k}"
            if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
                raise DataError(f"{obj_where}: an object needs a <name>. {_FIX}")
            obj_where += f" ({obj['name'].strip()})"
            box = obj.get("bndbox")
            if not isinstance(box, dict) or not all(key in box for key in ("xmin", "ymin", "xmax", "ymax")):
                raise DataError(f"{obj_where}: an object needs <bndbox> with xmin, ymin, xmax, ymax. {_FIX}")
            xmin, ymin, xmax, ymax = (_number(box[key], obj_where, key) for key in ("xmin", "ymin", "xmax", "ymax"))
            if xmin < 1 or ymin < 1:
                raise DataError(
                    f"{obj_where}: xmin={box['xmin']}, ymin={box['ymin']}, but VOC pixel indices start at 1 "
                    f"(the first column is xmin=1). {_FIX}"
                )
            difficult = str(obj.get("difficult", "0")).strip()
            if difficult not in ("0", "1"):
                raise DataError(f"{obj_where}: <difficult> must be 0 or 1, got {difficult!r}. {_FIX}")
            # 1-based inclusive indices -> continuous pixel corners.
            builder.add_object(
                index, obj_where, obj["name"].strip(), (xmin - 1, ymin - 1, xmax, ymax), ignored=difficult == "1"
            )
    return builder.build()


class VocDataModule(DetectionDataModule):
    """A Pascal VOC-format data set (see the module docstring).

    Args:
        root: the year folder (``.../VOCdevkit/VOC2007``) holding Annotations, JPEGImages, ImageSets.
        train, val, test: ``{split: NAME}``, a file ``ImageSets/Main/NAME.txt`` (``test``: optional).
        class_names: the classes in id order (default: the train split's names, sorted).
        **kwargs: the options every format shares (:class:`~tinyssd.data.datamodule.DetectionDataModule`).
    """

    split_key = "data.{split}.split"

    def __init__(
        self,
        root: str = "VOC2007",
        train: Mapping[str, str] | None = None,
        val: Mapping[str, str] | None = None,
        test: Mapping[str, str] | None = None,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.root = Path(root).expanduser()
        self.splits: dict[str, str] = {}
        for split, entry in (("train", train), ("val", val), ("test", test)):
            if not entry or not entry.get("split"):
                continue
            unknown = sorted(set(entry) - {"split"})
            if unknown:
                raise ConfigError(f"data.{split}.{unknown[0]} is not a VOC split setting; use data.{split}.split=NAME.")
            self.splits[split] = str(entry["split"])
        self._names: list[str] | None = None

    def has_split(self, split: str) -> bool:
        return split in self.splits

    @property
    def class_names(self) -> list[str]:
        if self.given_class_names is not None:
            return self.given_class_names
        if self._names is None:
            if not self.root.is_dir():
                raise DataError(
                    f"data.root={self.root} is not a folder; point it at a VOC year folder (e.g. VOCdevkit/VOC2007)."
                )
            if "train" not in self.splits:
                raise ConfigError(
                    "data=voc without data.class_names takes the classes from the train split; set one of them."
                )
            self._names = voc_class_names(self.root, self.splits["train"])
        return self._names

    def read_split(self, split: str) -> DetectionIndex:
        if not self.root.is_dir():
            raise DataError(
                f"data.root={self.root} is not a folder; point it at a VOC year folder (e.g. VOCdevkit/VOC2007)."
            )
        return read_voc_split(self.root, self.splits[split], self.class_names)
