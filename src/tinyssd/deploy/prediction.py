"""The pipeline behind ``predict.py``: options, input files, output folder, detections to JSON and pictures.

The detecting itself is :class:`tinyssd.deploy.detector.Detector`'s; this module turns a command line
into its calls and its results into files (``detections.json`` and one drawing per picture).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig
from torch import Tensor

from tinyssd.deploy.detector import Detector, iter_batches, resolve_device
from tinyssd.errors import ConfigError, DataError, renamed_key_value
from tinyssd.files import atomic_write_bytes, make_writable_folder
from tinyssd.images import read_image

__all__ = [
    "DETECTIONS_FILE",
    "check_outputs_free",
    "check_predict_options",
    "expand_inputs",
    "output_names",
    "predict_files",
    "prepare_output_dir",
    "source_argument",
    "write_report",
]

DETECTIONS_FILE = "detections.json"


def source_argument(cfg: DictConfig) -> str:
    """What predict reads: ``source=`` (an image, a folder or a glob), or ``input=``, its old name (with a note)."""
    given = renamed_key_value(cfg, "source", "input", "predict", "the pictures", ConfigError)
    if given is None:
        raise ConfigError("source is required: give source=PATH (an image, a folder or a glob).")
    key, value = given
    if not isinstance(value, str):
        raise ConfigError(f"{key} must be a path (an image, a folder or a glob), got {value!r}.")
    return value


def expand_inputs(spec: str | os.PathLike) -> list[Path]:
    """An image path, a folder (its files, sorted) or a glob -> the files to process."""
    import glob

    text = str(spec)
    path = Path(text).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
        if not files:
            raise DataError(f"folder {path} holds no files; put images in it or point source at another folder.")
        return files
    if path.is_file():
        return [path]
    if any(ch in text for ch in "*?["):
        files = sorted(Path(p) for p in glob.glob(os.path.expanduser(text), recursive=True) if Path(p).is_file())
        if not files:
            raise DataError(f"the pattern {text!r} matches no files; check the pattern and the folder it names.")
        return files
    if path.exists():
        raise DataError(f"source {text} is not a regular file or folder; give an image file, a folder or a glob.")
    raise DataError(f"source {text} does not exist; give an image file, a folder of images or a glob pattern.")


def _number(cfg: DictConfig, key: str, low: float, high: float, integer: bool = False, optional: bool = False) -> None:
    value = cfg.get(key)
    if optional and value is None:
        return
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind) or not (low <= value <= high):
        what = "a whole number" if integer else "a number"
        bounds = f">= {low:g}" if high == math.inf else f"in [{low:g}, {high:g}]"
        raise ConfigError(f"{key} must be {what} {bounds}{' or null' if optional else ''}, got {value!r}.")


def check_predict_options(cfg: DictConfig) -> str:
    """predict's options, before any file is read: one paragraph naming the first bad one. Returns the source."""
    _number(cfg, "threshold", 0, 1)
    _number(cfg, "nms_threshold", 0, 1, optional=True)
    _number(cfg, "batch_size", 1, math.inf, integer=True)
    _number(cfg, "num_classes", 1, math.inf, integer=True, optional=True)
    _number(cfg, "image_size", 1, math.inf, integer=True, optional=True)
    source = source_argument(cfg)
    if not isinstance(cfg.get("overwrite", False), bool):
        raise ConfigError(f"overwrite must be true or false, got {cfg.overwrite!r}.")
    if cfg.get("output_dir") is not None and not isinstance(cfg.output_dir, str):
        raise ConfigError(f"output_dir must be a folder path, got {cfg.output_dir!r}.")
    resolve_device(cfg.get("device", "auto"))
    return source


def prepare_output_dir(path: str | os.PathLike) -> Path:
    """Create the output folder (and check it can be written) before any work is done."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output_dir={out} is a file; give a folder (it is created if missing).")
    try:
        make_writable_folder(out)
    except OSError as err:
        raise ConfigError(
            f"output_dir={out} cannot be created or written ({err.strerror or err}); give a folder you can write to."
        ) from err
    return out


def _output_name(path: Path, used: set[str]) -> str:
    stem = os.fsdecode(os.fsencode(path.stem)[:200])  # file names are limited to 255 bytes
    name, k = f"{stem}_pred.png", 1
    while name in used:
        name, k = f"{stem}_{k}_pred.png", k + 1
    used.add(name)
    return name


def output_names(inputs: Sequence[Path]) -> list[str]:
    """The drawing's file name for each input, in order (``<stem>_pred.png``, numbered when stems repeat)."""
    used: set[str] = set()
    return [_output_name(path, used) for path in inputs]


def check_outputs_free(inputs: Sequence[Path], output_dir: Path, overwrite: bool) -> list[str]:
    """Refuse, before any work, to write over an input picture, or over existing files unless ``overwrite``.

    Returns the drawings' names. A fresh run folder (the default) is always free; a folder the
    user names may hold an earlier run's outputs, or pictures of their own with the same names.
    """
    names = output_names(inputs)
    inputs_resolved = {p.resolve() for p in inputs}
    clash = [output_dir / n for n in names if (output_dir / n).resolve() in inputs_resolved]
    if clash:
        raise ConfigError(
            f"output_dir={output_dir} would replace the input picture {clash[0]} with its drawing; give another "
            "output_dir (the default is a new run folder)."
        )
    existing = [n for n in [DETECTIONS_FILE, *names] if (output_dir / n).exists()]
    if existing and not overwrite:
        listed = ", ".join(existing[:3]) + (f" and {len(existing) - 3} more" if len(existing) > 3 else "")
        raise ConfigError(
            f"output_dir={output_dir} already holds {listed}, which this run would write; nothing was replaced. Give "
            "a new or empty output_dir (the default is a new run folder), or overwrite=true to replace them."
        )
    return names


def predict_files(
    detector: Detector,
    inputs: Sequence[Path],
    output_dir: Path,
    batch_size: int = 16,
    entries: list[dict[str, Any]] | None = None,
    errors: list[dict[str, str]] | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """Detect in every file, write ``<stem>_pred.png`` per image; returns (entries, errors).

    Files are decoded a batch at a time (memory stays flat for any number of files). A file
    that cannot be decoded or whose drawing cannot be written is reported in ``errors`` by
    name and skipped; the others are processed. ``entries`` and ``errors``, when given, are
    filled as the work goes on (an interrupted run reports what it finished).
    """
    from torchvision.io import encode_png

    output_dir.mkdir(parents=True, exist_ok=True)
    entries = [] if entries is None else entries
    errors = [] if errors is None else errors
    names = iter(output_names(inputs))
    for paths in iter_batches(list(inputs), batch_size):
        decoded: list[tuple[Path, Tensor, str]] = []
        for path in paths:
            name = next(names)
            try:
                decoded.append((path, read_image(path), name))
            except DataError as err:
                errors.append({"path": str(path), "error": str(err)})
        if not decoded:
            continue
        results = detector.predict([img for _, img, _ in decoded], batch_size=batch_size)
        for (path, img, name), dets in zip(decoded, results, strict=True):
            target = output_dir / name
            try:  # encoded here, written by Python: any file name works; a full disk stops the run
                atomic_write_bytes(target, encode_png(detector.draw(img, dets)).numpy().tobytes(), "the drawing")
            except (OSError, RuntimeError) as err:
                errors.append({"path": str(path), "error": f"{path}: the drawing {target} cannot be written ({err})."})
                continue
            entries.append(
                {
                    "path": str(path),
                    "width": dets.width,
                    "height": dets.height,
                    "detections": dets.to_list(),
                    "annotated": str(target),
                }
            )
    return entries, errors


def write_report(output_dir: Path, report: dict[str, Any]) -> Path:
    """``detections.json``, atomically; numbers are finite (a NaN would not be valid JSON)."""
    import json

    path = output_dir / DETECTIONS_FILE
    try:
        text = json.dumps(report, indent=2, allow_nan=False)
    except ValueError as err:  # pragma: no cover - detectors refuse non-finite outputs before this
        raise DataError(f"the detections hold a number that is not finite ({err}); nothing was written.") from err
    atomic_write_bytes(path, text.encode(), "the report")
    return path
