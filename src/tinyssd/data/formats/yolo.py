"""The YOLO format: an ultralytics dataset YAML, ``images/...`` and ``labels/...`` beside them.

``data.yaml=PATH`` names the YAML: ``train``, ``val`` and optionally ``test`` (each a folder of
pictures, a ``.txt`` file listing pictures, or a list of those), ``names`` (a list, or a dict
``id: name``), optionally ``path`` (the data set's root; relative to the YAML's folder, which is
also the root without it). A picture ``.../images/.../x.jpg`` has its labels in
``.../labels/.../x.txt``: one ``class cx cy w h`` row per object, normalised to the picture;
an empty or missing label file is a picture with no objects. YAML is read with
``yaml.safe_load`` (data only; no tags that build objects).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from tinyssd.data.datamodule import DetectionDataModule
from tinyssd.data.index import DetectionIndex, IndexBuilder, check_relative_name
from tinyssd.errors import ConfigError, DataError, shown
from tinyssd.images import IMAGE_SUFFIXES
from tinyssd.limits import MAX_CLASSES

__all__ = ["YoloDataModule", "label_path", "read_yolo_split", "read_yolo_yaml"]

_FIX = "Fix that row of the label file (one 'class cx cy w h' row per object, normalised to [0, 1])."
# Files a labelling tool leaves in a labels folder that are not labels of a picture.
_NOT_LABELS = {"classes.txt"}


def read_yolo_yaml(path: Path) -> dict[str, Any]:
    """The dataset YAML, checked: ``names`` as a list, ``root`` resolved, split entries present."""
    if not path.is_file():
        raise DataError(
            f"data.yaml={path} does not exist; point it at the ultralytics dataset YAML (train, val, names)."
        )
    try:
        spec = yaml.safe_load(path.read_text(encoding="utf-8-sig"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        reason = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise DataError(f"{path}{at}: not valid YAML ({reason}). Fix the file.") from err
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"{path} cannot be read as UTF-8 text ({err}).") from err
    except RecursionError as err:
        raise DataError(f"{path}: its YAML is nested absurdly deep; a dataset YAML is a flat mapping.") from err
    if not isinstance(spec, dict):
        raise DataError(f"{path} must be a YAML mapping with train, val and names keys.")
    names = spec.get("names")
    if isinstance(names, dict):
        if not all(isinstance(k, int) and not isinstance(k, bool) for k in names) or sorted(names) != list(
            range(len(names))
        ):
            raise DataError(
                f"{path}: the keys of names must be the class ids 0..{len(names) - 1}, got {sorted(names, key=str)}."
            )
        names = [names[i] for i in range(len(names))]
    nc = spec.get("nc")
    if nc is not None and (isinstance(nc, bool) or not isinstance(nc, int) or not 1 <= nc <= MAX_CLASSES):
        raise DataError(f"{path}: nc must be a class count from 1 to {MAX_CLASSES}, got {shown(nc)}. Fix the file.")
    if names is None and nc is not None:
        names = [str(i) for i in range(nc)]
    if isinstance(names, list) and len(names) > MAX_CLASSES:
        raise DataError(f"{path}: names lists {len(names)} classes; tinyssd trains at most {MAX_CLASSES}.")
    if isinstance(names, list):
        for i, name in enumerate(names):
            if isinstance(name, bool):  # YAML 1.1 reads no/yes/off/on/true/false unquoted as booleans
                raise DataError(
                    f"{path}: names[{i}] is read by YAML as the boolean {str(name).lower()}, not a name; put the "
                    "name in quotes (e.g. 'no', 'off') so it stays text."
                )
    if not isinstance(names, list) or not names or not all(isinstance(n, (str, int)) and str(n) for n in names):
        raise DataError(
            f"{path}: names must be a non-empty list (or an id: name mapping) of class names, got {shown(names)}."
        )
    names = [str(n) for n in names]
    if len(set(names)) != len(names):
        raise DataError(f"{path}: names lists a class twice ({names}); give each class once.")
    if "nc" in spec and spec["nc"] != len(names):
        raise DataError(f"{path}: nc={spec['nc']} but names has {len(names)} entries; make them agree.")
    root = path.parent
    if spec.get("path"):
        root = (path.parent / str(spec["path"])).expanduser()
    for split in ("train", "val"):
        if not spec.get(split):
            raise DataError(f"{path} has no {split!r} entry; give the folder (or list file) of the {split} pictures.")
    return {"names": names, "root": root, **{s: spec.get(s) for s in ("train", "val", "test")}}


def label_path(picture: Path) -> Path:
    """``.../images/.../x.jpg`` -> ``.../labels/.../x.txt`` (the last ``images`` folder of the path)."""
    parts = list(picture.parts)
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            return Path(*parts).with_suffix(".txt")
    return picture.with_suffix(".txt")


def _pictures(root: Path, entry: Any, where: str) -> list[Path]:
    """The pictures a split entry names: folders (searched recursively), list files, or a list of those."""
    entries = entry if isinstance(entry, list) else [entry]
    pictures: list[Path] = []
    for item in entries:
        if not isinstance(item, str):
            raise DataError(f"{where}: a split entry is a folder or a .txt list of pictures, got {shown(item)}.")
        target = root / item
        if target.is_dir():
            found = sorted(p for p in target.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise DataError(f"{where}: the folder {target} holds no pictures ({', '.join(IMAGE_SUFFIXES)}).")
            pictures += found
        elif target.is_file() and target.suffix == ".txt":
            try:
                lines = target.read_text(encoding="utf-8-sig").splitlines()
            except (OSError, UnicodeDecodeError) as err:
                raise DataError(
                    f"{target} (the {where.rsplit(', ', 1)[-1]} list) cannot be read as UTF-8 text ({err}); save it "
                    "as UTF-8."
                ) from err
            for line_no, line in enumerate(lines, start=1):
                if line.strip():
                    name = line.strip()
                    # As every other format: a list names pictures inside the data set, never elsewhere.
                    problem = check_relative_name(name, "the picture", str(root))
                    if problem:
                        raise DataError(
                            f"{target}, line {line_no}: {problem} (relative to the list's folder with './', else "
                            "to the data set's root)."
                        )
                    # ultralytics: './x' is relative to the list file's folder, else to the root.
                    pictures.append((target.parent / name) if name.startswith("./") else (root / name))
        else:
            raise DataError(f"{where}: {target} is neither a folder of pictures nor a .txt list of them.")
    return pictures


def _read_labels(path: Path) -> list[tuple[int, list[str]]]:
    """``(line, fields)`` of each non-blank row of a label file (missing = no rows)."""
    if not path.is_file():
        return []
    try:
        text = path.read_text(encoding="utf-8-sig")  # a byte-order mark, as Windows editors write, is fine
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"{path} cannot be read as UTF-8 text ({err}).") from err
    return [(n, line.split()) for n, line in enumerate(text.splitlines(), start=1) if line.strip()]


def read_yolo_split(spec: dict[str, Any], split: str, yaml_path: Path, class_names: Sequence[str]) -> DetectionIndex:
    """Index one split of a YOLO data set (``spec`` from :func:`read_yolo_yaml`)."""
    builder = IndexBuilder(class_names, _FIX)
    pictures = _pictures(spec["root"], spec[split], f"{yaml_path}, {split}")
    for picture in pictures:
        labels = label_path(picture)
        index = builder.add_picture(picture, f"{picture} (listed by {yaml_path.name}, {split})")
        for line, fields in _read_labels(labels):
            where = f"{labels}, line {line}"
            if len(fields) != 5:
                kind = " (a segment polygon? tinyssd reads boxes)" if len(fields) > 5 and len(fields) % 2 == 1 else ""
                raise DataError(f"{where}: expected 5 values 'class cx cy w h', found {len(fields)}{kind}. {_FIX}")
            try:
                cls = int(fields[0])
                cx, cy, w, h = (float(v) for v in fields[1:])
            except ValueError:
                raise DataError(f"{where}: {' '.join(fields)!r} is not a class id and four numbers. {_FIX}") from None
            if not all(math.isfinite(v) for v in (cx, cy, w, h)):
                raise DataError(f"{where}: a coordinate is not a finite number ({' '.join(fields[1:])}). {_FIX}")
            builder.add_object(index, where, cls, (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), normalised=True)
    # Labels with no picture: an annotation for a missing picture is an error, never dropped.
    label_dirs = {label_path(p).parent for p in pictures}
    wanted = {label_path(p) for p in pictures}
    for folder in sorted(label_dirs):
        if not folder.is_dir():
            continue
        for txt in sorted(folder.glob("*.txt")):
            if txt not in wanted and txt.name not in _NOT_LABELS and txt.stat().st_size > 0:
                raise DataError(
                    f"{txt} labels a picture that {split} does not have (no {txt.stem}.* among its pictures); "
                    "add the picture or remove the label file."
                )
    return builder.build()


class YoloDataModule(DetectionDataModule):
    """A YOLO-format data set described by an ultralytics dataset YAML (see the module docstring).

    Args:
        yaml: path of the dataset YAML.
        class_names: if given, must equal the YAML's ``names`` (a check).
        **kwargs: the options every format shares (:class:`~tinyssd.data.datamodule.DetectionDataModule`).
    """

    split_key = "the {split} key of the dataset YAML"

    def __init__(self, yaml: str | os.PathLike | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        if not yaml:
            raise ConfigError("data=yolo needs data.yaml=PATH (the ultralytics dataset YAML).")
        self.yaml_path = Path(yaml).expanduser()
        self._spec: dict[str, Any] | None = None

    @property
    def spec(self) -> dict[str, Any]:
        if self._spec is None:
            self._spec = read_yolo_yaml(self.yaml_path)
        return self._spec

    def has_split(self, split: str) -> bool:
        return bool(self.spec.get(split))

    def declared_class_names(self) -> list[str]:
        return self.spec["names"]

    def read_split(self, split: str) -> DetectionIndex:
        return read_yolo_split(self.spec, split, self.yaml_path, self.class_names)
