"""The COCO format: a folder of pictures and an ``instances.json`` per split.

The layout of ``torchvision.datasets.CocoDetection``: ``data.train.images=DIR
data.train.annotations=FILE.json`` (the same for ``val`` and, optionally, ``test``). The JSON
holds ``images`` (``id``, ``file_name``, ``width``, ``height``), ``annotations`` (``id``,
``image_id``, ``category_id``, ``bbox`` = ``[x, y, w, h]`` in pixels, ``iscrowd``) and
``categories`` (``id``, ``name``). Category ids may be any integers: they map to class ids
``0..C-1`` in id order, with their names. ``iscrowd`` objects are not trained on and are
ignore regions in evaluation, as in COCO's own evaluation. Every listed picture is used, those
without annotations as pictures with no objects.

torchvision's ``CocoDetection`` (via pycocotools) decodes with PIL and checks nothing; this
reader checks every record and names the annotation id in its messages, and leaves decoding
to :func:`tinyssd.images.read_image`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tinyssd.data.datamodule import DetectionDataModule
from tinyssd.data.index import (
    DetectionIndex,
    IndexBuilder,
    check_relative_name,
    unused_pictures,
    warn_list,
)
from tinyssd.errors import ConfigError, DataError, shown

__all__ = ["CocoDataModule", "coco_categories", "read_coco_split"]

_FIX = "Fix that record in the JSON file (or export the annotations again)."


def _load_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise DataError(f"{path} does not exist; point data.<split>.annotations at a COCO instances JSON file.")
    try:
        data = json.loads(path.read_bytes())
    except json.JSONDecodeError as err:
        raise DataError(
            f"{path}, line {err.lineno}, column {err.colno}: not valid JSON ({err.msg}). "
            "Fix the file or export it again."
        ) from err
    except RecursionError as err:
        raise DataError(f"{path}: its JSON is nested absurdly deep; a COCO file is a few levels deep. {_FIX}") from err
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"{path} cannot be read as UTF-8 JSON ({err}).") from err
    if not isinstance(data, dict):
        raise DataError(
            f"{path} holds a JSON {type(data).__name__}; a COCO file is an object with images, annotations, categories."
        )
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise DataError(
                f"{path} has no {key!r} list; a COCO instances file has images, annotations and categories."
            )
    return data


def _integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _record_id(value: Any) -> bool:
    """COCO ids are integers; some tools write strings. Lists, objects, floats and booleans are not ids."""
    return _integer(value) or (isinstance(value, str) and bool(value))


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def coco_categories(path: Path) -> tuple[list[int], list[str]]:
    """The category ids (sorted) and their names, from a COCO JSON file."""
    data = _load_json(path)
    by_id: dict[int, str] = {}
    for i, cat in enumerate(data["categories"]):
        where = f"{path}, categories[{i}]"
        if not isinstance(cat, Mapping) or not _integer(cat.get("id")):
            raise DataError(f"{where}: a category needs an integer 'id'. {_FIX}")
        name = cat.get("name")
        if not isinstance(name, str) or not name:
            raise DataError(f"{where} (id {cat['id']}): a category needs a non-empty 'name'. {_FIX}")
        if cat["id"] in by_id:
            raise DataError(f"{where}: category id {cat['id']} is declared twice. {_FIX}")
        if name in by_id.values():
            raise DataError(
                f"{where}: category name {name!r} is declared twice (ids must name distinct classes). {_FIX}"
            )
        by_id[cat["id"]] = name
    if not by_id:
        raise DataError(f"{path} declares no categories; a detection data set needs at least one class.")
    ids = sorted(by_id)
    return ids, [by_id[i] for i in ids]


def read_coco_split(images_dir: Path, annotations: Path, class_names: Sequence[str]) -> DetectionIndex:
    """Index one COCO split; its categories must be ``class_names`` in id order."""
    data = _load_json(annotations)
    ids, names = coco_categories(annotations)
    if list(names) != list(class_names):
        raise DataError(
            f"{annotations} declares the categories {names} (in id order) but the classes are {list(class_names)} "
            "(from the train split or the checkpoint); every split must declare the same categories."
        )
    class_of = {cat_id: i for i, cat_id in enumerate(ids)}
    builder = IndexBuilder(class_names, _FIX)
    picture_of: dict[Any, int] = {}
    for i, image in enumerate(data["images"]):
        where = f"{annotations}, images[{i}]"
        if not isinstance(image, Mapping) or "id" not in image or not isinstance(image.get("file_name"), str):
            raise DataError(f"{where}: an image needs an 'id' and a 'file_name'. {_FIX}")
        if not _record_id(image["id"]):
            raise DataError(f"{where}: the image id must be an integer, got {shown(image['id'])}. {_FIX}")
        where = f"{annotations}, image id {image['id']}"
        if image["id"] in picture_of:
            raise DataError(f"{where}: the image id is listed twice. {_FIX}")
        problem = check_relative_name(image["file_name"], "file_name", str(images_dir))
        if problem:
            raise DataError(f"{where}: {problem}. {_FIX}")
        declared = None
        if "width" in image or "height" in image:
            if not (_integer(image.get("width")) and _integer(image.get("height"))):
                raise DataError(
                    f"{where}: width and height must be whole numbers, got {image.get('width')!r}, "
                    f"{image.get('height')!r}. {_FIX}"
                )
            declared = (image["width"], image["height"])
        picture_of[image["id"]] = builder.add_picture(images_dir / image["file_name"], where, declared)
    for i, ann in enumerate(data["annotations"]):
        if not isinstance(ann, Mapping):
            raise DataError(f"{annotations}, annotations[{i}]: an annotation is a JSON object. {_FIX}")
        ann_id = ann.get("id", f"at index {i}")
        where = f"{annotations}, annotation id {ann_id if _record_id(ann_id) else f'{shown(ann_id)} at index {i}'}"
        for key in ("image_id", "category_id"):
            if not _record_id(ann.get(key)):
                raise DataError(f"{where}: {key} must be an integer, got {shown(ann.get(key))}. {_FIX}")
        if ann.get("image_id") not in picture_of:
            raise DataError(
                f"{where}: image_id {shown(ann.get('image_id'))} is not in the images list (no picture to put it on). "
                f"{_FIX}"
            )
        if ann.get("category_id") not in class_of:
            raise DataError(
                f"{where}: category_id {shown(ann.get('category_id'))} is not a declared category (ids {ids}). {_FIX}"
            )
        bbox = ann.get("bbox")
        if not isinstance(bbox, list) or len(bbox) != 4 or not all(_number(v) for v in bbox):
            raise DataError(
                f"{where}: bbox must be four finite numbers [x, y, width, height], got {shown(bbox)}. {_FIX}"
            )
        crowd = ann.get("iscrowd", 0)
        if crowd not in (0, 1, False, True):
            raise DataError(f"{where}: iscrowd must be 0 or 1, got {shown(crowd)}. {_FIX}")
        x, y, w, h = bbox
        builder.add_object(
            picture_of[ann["image_id"]], where, class_of[ann["category_id"]], (x, y, x + w, y + h), ignored=bool(crowd)
        )
    if not builder.files:
        raise DataError(f"{annotations} lists no images; a split needs at least one picture.")
    unused = unused_pictures(images_dir, set(builder.files))
    if unused:
        warn_list(
            f"{images_dir}: {len(unused)} picture(s) are not listed in {annotations.name} and are not used", unused
        )
    return builder.build()


class CocoDataModule(DetectionDataModule):
    """A COCO-format data set (see the module docstring).

    Args:
        train, val, test: ``{images: DIR, annotations: FILE.json}`` per split (``test``: optional).
        class_names: if given, must equal the categories' names in id order (a check).
        **kwargs: the options every format shares (:class:`~tinyssd.data.datamodule.DetectionDataModule`).
    """

    split_key = "data.{split}.images and data.{split}.annotations"

    def __init__(
        self,
        train: Mapping[str, str] | None = None,
        val: Mapping[str, str] | None = None,
        test: Mapping[str, str] | None = None,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.splits: dict[str, tuple[Path, Path]] = {}
        for split, entry in (("train", train), ("val", val), ("test", test)):
            if entry is None or (not entry.get("images") and not entry.get("annotations")):
                continue
            if not entry.get("images") or not entry.get("annotations"):
                raise ConfigError(f"data.{split} needs both images=DIR and annotations=FILE.json, got {dict(entry)}.")
            unknown = sorted(set(entry) - {"images", "annotations"})
            if unknown:
                raise ConfigError(f"data.{split}.{unknown[0]} is not a COCO split setting; use images and annotations.")
            self.splits[split] = (Path(entry["images"]).expanduser(), Path(entry["annotations"]).expanduser())
        if "val" not in self.splits and "train" not in self.splits:
            raise ConfigError(
                "data=coco needs its splits: data.train.images=DIR data.train.annotations=FILE.json "
                "and the same for val."
            )
        self._categories: list[str] | None = None

    def has_split(self, split: str) -> bool:
        return split in self.splits

    def declared_class_names(self) -> list[str]:
        if self._categories is None:
            first = next(s for s in ("train", "val", "test") if s in self.splits)
            self._categories = coco_categories(self.splits[first][1])[1]
        return self._categories

    def read_split(self, split: str) -> DetectionIndex:
        images_dir, annotations = self.splits[split]
        if not images_dir.is_dir():
            raise DataError(f"data.{split}.images={images_dir} is not a folder; point it at the split's pictures.")
        return read_coco_split(images_dir, annotations, self.class_names)
