"""What an exported model carries beside its graph: the tinyssd metadata, and the names it uses.

An exported file is data: its metadata is plain JSON, checked field by field and against the
bounds of :mod:`tinyssd.limits` before use (:meth:`ExportMetadata.from_json`). It states the
model's :class:`~tinyssd.model.contract.InferenceContract` and the graph's input and outputs.
"""

from __future__ import annotations

import json
import math
import os
import zipfile
from dataclasses import asdict, dataclass, field
from typing import Any

from tinyssd.errors import CheckpointError, shown
from tinyssd.limits import MAX_CLASSES, MAX_EXPORT_BATCH, MAX_IMAGE_SIZE
from tinyssd.model.contract import InferenceContract
from tinyssd.resize import RESIZE_MODES

__all__ = [
    "ARCHIVE_METADATA_FILE",
    "INPUT_DTYPES",
    "INPUT_NAME",
    "METADATA_KEY",
    "NMS_OUTPUTS",
    "ONNX_SUFFIX",
    "PROGRAM_SUFFIX",
    "RAW_OUTPUTS",
    "TORCHSCRIPT_SUFFIX",
    "ExportMetadata",
    "read_archive_metadata",
]

# Where the metadata lives: the ONNX ``metadata_props`` key, and the TorchScript and torch.export
# extra file ``tinyssd.json``.
METADATA_KEY = "tinyssd"
METADATA_FORMAT = "tinyssd-detector"
METADATA_VERSION = 1
INPUT_NAME = "images"
# nms=true: per image, the top ``max_detections`` rows by descending score, padded (score 0,
# label -1) after the first ``num_detections``. nms=false: the network's decoded outputs.
NMS_OUTPUTS = ("boxes", "scores", "labels", "num_detections")
RAW_OUTPUTS = ("anchors", "class_probs", "boxes")
# uint8 pictures in [0, 255] or float32 in [0, 1], (B, 3, S, S) at the model's input size.
INPUT_DTYPES = ("uint8", "float32")
TORCHSCRIPT_SUFFIX = ".torchscript"
PROGRAM_SUFFIX = ".pt2"  # torch.export's archive
ONNX_SUFFIX = ".onnx"


@dataclass(frozen=True)
class ExportMetadata:
    """What an exported graph needs beside it: classes, input, decoding settings, outputs."""

    class_names: list[str]
    image_size: int
    resize: str
    input_dtype: str
    nms: bool
    nms_threshold: float
    pos_threshold: float
    max_detections: int | None
    display_threshold: float
    batch: int | None  # None: any batch size
    format: str = METADATA_FORMAT
    version: int = METADATA_VERSION
    outputs: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.outputs:
            object.__setattr__(self, "outputs", list(NMS_OUTPUTS if self.nms else RAW_OUTPUTS))

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_contract(
        cls, contract: InferenceContract, input_dtype: str, nms: bool, batch: int | None
    ) -> ExportMetadata:
        """The metadata of a graph exported from a model with ``contract``."""
        return cls(
            class_names=list(contract.class_names),
            image_size=contract.image_size,
            resize=contract.resize,
            input_dtype=input_dtype,
            nms=nms,
            nms_threshold=contract.nms_threshold,
            pos_threshold=contract.pos_threshold,
            max_detections=contract.max_detections,
            display_threshold=contract.display_threshold,
            batch=batch,
        )

    @property
    def contract(self) -> InferenceContract:
        """The exported model's classes, input and decoding (the pixel scaling is inside the graph)."""
        return InferenceContract(
            class_names=tuple(self.class_names),
            image_size=self.image_size,
            resize=self.resize,
            nms_threshold=self.nms_threshold,
            pos_threshold=self.pos_threshold,
            display_threshold=self.display_threshold,
            max_detections=self.max_detections,
        )

    @classmethod
    def from_json(cls, text: Any, where: str) -> ExportMetadata:
        """Parse and check the metadata JSON of ``where``; anything off is a :class:`CheckpointError`."""

        def refuse(detail: str) -> CheckpointError:
            return CheckpointError(
                f"{where}: its tinyssd metadata {detail}; it was not written by this tinyssd's export.py. "
                "Export the checkpoint again: python export.py ckpt_path=CKPT."
            )

        try:
            data = json.loads(text) if isinstance(text, (str, bytes)) else None
        except (ValueError, RecursionError) as err:
            raise refuse("is not valid JSON") from err
        if not isinstance(data, dict) or data.get("format") != METADATA_FORMAT:
            raise refuse("is not a tinyssd detector description")
        if data.get("version") != METADATA_VERSION:
            raise refuse(f"has version {data.get('version')!r} (this tinyssd reads {METADATA_VERSION})")

        def number(key: str, low: float, high: float, integer: bool = False, optional: bool = False) -> Any:
            value = data.get(key)
            if optional and value is None:
                return None
            ok = not isinstance(value, bool) and isinstance(value, int if integer else (int, float))
            if not ok or not math.isfinite(value) or not low <= value <= high:
                raise refuse(
                    f"has {key}={shown(value)} (not {'a whole' if integer else 'a'} number from {low:g} to {high:g})"
                )
            return value

        names = data.get("class_names")
        if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
            raise refuse("has no list of class names")
        if len(names) > MAX_CLASSES:
            raise refuse(f"lists {len(names)} classes (at most {MAX_CLASSES})")
        for key, allowed in (("resize", RESIZE_MODES), ("input_dtype", INPUT_DTYPES)):
            if data.get(key) not in allowed:
                raise refuse(f"has {key}={data.get(key)!r} (not one of {', '.join(allowed)})")
        if not isinstance(data.get("nms"), bool):
            raise refuse("does not say whether NMS is in the graph")
        meta = cls(
            class_names=list(names),
            image_size=number("image_size", 64, MAX_IMAGE_SIZE, integer=True),
            resize=data["resize"],
            input_dtype=data["input_dtype"],
            nms=data["nms"],
            nms_threshold=float(number("nms_threshold", 0, 1)),
            pos_threshold=float(number("pos_threshold", 0, 1)),
            max_detections=number("max_detections", 1, 100_000, integer=True, optional=True),
            display_threshold=float(number("display_threshold", 0, 1)),
            batch=number("batch", 1, MAX_EXPORT_BATCH, integer=True, optional=True),
        )
        if data.get("outputs") != meta.outputs:
            raise refuse(f"lists outputs {data.get('outputs')!r} (expected {meta.outputs})")
        return meta


# The extra file a TorchScript or torch.export archive carries the metadata in.
ARCHIVE_METADATA_FILE = f"{METADATA_KEY}.json"


def read_archive_metadata(path: str | os.PathLike, kind: str) -> ExportMetadata:
    """The metadata of a zip archive tinyssd exported (``kind``: "TorchScript file", "torch.export
    program"), read from its ``extra/tinyssd.json`` without loading or running the archive."""
    try:
        with zipfile.ZipFile(path) as archive:
            name = next(n for n in archive.namelist() if n.endswith(f"/extra/{ARCHIVE_METADATA_FILE}"))
            return ExportMetadata.from_json(archive.read(name).decode(), str(path))
    except (OSError, zipfile.BadZipFile, StopIteration, UnicodeDecodeError) as err:
        reason = str(err) or f"no {ARCHIVE_METADATA_FILE} inside"
        raise CheckpointError(f"{path} is not a {kind} exported by tinyssd ({reason}).") from err
