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

from tinyssd.deploy.detector import Detections, Detector, iter_batches, resolve_device
from tinyssd.deploy.outputs import OutputOptions, write_extras
from tinyssd.errors import ConfigError, DataError, renamed_key_value
from tinyssd.files import atomic_write_bytes, make_writable_folder
from tinyssd.images import read_image

__all__ = [
    "DETECTIONS_FILE",
    "check_outputs_free",
    "check_predict_options",
    "output_names",
    "predict_files",
    "predict_videos",
    "prepare_output_dir",
    "source_argument",
    "write_report",
]

DETECTIONS_FILE = "detections.json"
# A source= file with this suffix lists the pictures and videos to read, one path per line.
LIST_SUFFIX = ".txt"


def source_argument(cfg: DictConfig) -> str:
    """What predict reads: ``source=`` (an image, a folder or a glob), or ``input=``, its old name (with a note)."""
    given = renamed_key_value(cfg, "source", "input", "predict", "the pictures", ConfigError)
    if given is None:
        raise ConfigError("source is required: give source=PATH (a picture, a video, a folder, a glob or a .txt list).")
    key, value = given
    if not isinstance(value, str):
        raise ConfigError(f"{key} must be a path (an image, a folder or a glob), got {value!r}.")
    return value


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
    _number(cfg, "vid_stride", 1, math.inf, integer=True, optional=True)
    source = source_argument(cfg)
    for key in ("overwrite", "save_txt", "save_conf", "save_crops", "save_coco"):
        if not isinstance(cfg.get(key, False), bool):
            raise ConfigError(f"{key} must be true or false, got {cfg.get(key)!r}.")
    annotations = cfg.get("coco_annotations")
    if annotations is not None and (not isinstance(annotations, str) or not Path(annotations).is_file()):
        raise ConfigError(f"coco_annotations={annotations!r} is not a file; give a COCO annotation file (.json).")
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


def _output_name(path: Path, used: set[str], suffix: str = "_pred.png") -> str:
    stem = os.fsdecode(os.fsencode(path.stem)[:200])  # file names are limited to 255 bytes
    name, k = f"{stem}{suffix}", 1
    while name in used:
        name, k = f"{stem}_{k}{suffix}", k + 1
    used.add(name)
    return name


def output_names(inputs: Sequence[Path], suffix: str = "_pred.png") -> list[str]:
    """The drawing's file name for each input, in order (``<stem>_pred.png``, numbered when stems repeat)."""
    used: set[str] = set()
    return [_output_name(path, used, suffix) for path in inputs]


def _stem(drawing: str) -> str:
    """``a_2_pred.png`` -> ``a_2``: the unique stem every other output of that picture is named by."""
    return drawing.rsplit("_pred.", 1)[0]


def check_outputs_free(
    inputs: Sequence[Path],
    output_dir: Path,
    overwrite: bool,
    options: OutputOptions | None = None,
    videos: Sequence[Path] = (),
) -> list[str]:
    """Refuse, before any work, to write over an input picture, or over existing files unless ``overwrite``.

    Returns the drawings' names. A fresh run folder (the default) is always free; a folder the
    user names may hold an earlier run's outputs, or pictures of their own with the same names.
    """
    names = output_names(inputs)
    video_names = output_names(videos, "_pred.mp4")
    inputs_resolved = {p.resolve() for p in [*inputs, *videos]}
    clash = [output_dir / n for n in [*names, *video_names] if (output_dir / n).resolve() in inputs_resolved]
    if clash:
        raise ConfigError(
            f"output_dir={output_dir} would replace the input {'video' if clash[0].suffix == '.mp4' else 'picture'} "
            f"{clash[0]} with its drawing; give another "
            "output_dir (the default is a new run folder)."
        )
    planned = (options or OutputOptions()).planned([_stem(n) for n in names])
    existing = [n for n in [DETECTIONS_FILE, *names, *video_names, *planned] if (output_dir / n).exists()]
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
    options: OutputOptions | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """Detect in every file, write ``<stem>_pred.png`` per image (and what ``options`` ask); returns (entries, errors).

    Files are decoded a batch at a time (memory stays flat for any number of files). A file
    that cannot be decoded or whose drawing cannot be written is reported in ``errors`` by
    name and skipped; the others are processed. ``entries`` and ``errors``, when given, are
    filled as the work goes on (an interrupted run reports what it finished).
    """
    from torchvision.io import encode_png

    options = options or OutputOptions()
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
                write_extras(output_dir, _stem(name), img, dets, options)
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


def predict_videos(
    detector: Detector,
    videos: Sequence[Path],
    output_dir: Path,
    batch_size: int = 16,
    entries: list[dict[str, Any]] | None = None,
    errors: list[dict[str, str]] | None = None,
    options: OutputOptions | None = None,
) -> list[dict[str, Any]]:
    """Each video: per-frame detections and ``<stem>_pred.mp4`` (and labels or crops per frame, as ``options`` ask).

    A video that cannot be decoded is reported in ``errors`` and skipped.
    """
    from tinyssd.deploy.video import predict_video

    options = options or OutputOptions()
    entries = [] if entries is None else entries
    errors = [] if errors is None else errors
    for path, name in zip(videos, output_names(videos, "_pred.mp4"), strict=True):
        stem = _stem(name)

        def extras(index: int, image: Tensor, dets: Detections, stem: str = stem) -> None:
            write_extras(output_dir, f"{stem}_{index:06d}", image, dets, options)

        entry: dict[str, Any] = {}
        entries.append(entry)  # filled frame by frame: an interrupted run reports the frames it finished
        try:
            predict_video(detector, path, output_dir / name, batch_size, options.vid_stride, extras, entry)
        except DataError as err:
            entries.remove(entry)
            errors.append({"path": str(path), "error": str(err)})
    return entries


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
