"""Exported models at prediction time: their metadata, and running an ``.onnx`` file with ONNX Runtime.

An exported file is data: ONNX Runtime runs its graph of standard operators (no custom-op
library is ever registered), the file is handed over as bytes, and a file whose tensors keep
their data in other files ("external data", which the runtime would read from the working
folder) is refused before the runtime sees it, so it reads no other file. Its metadata is
plain JSON, checked field by field and against bounds (:mod:`tinyssd.limits`) before use, and
its outputs are checked against the metadata on every run. Nothing in the file chooses what
Python imports or calls.

Needs ``onnxruntime`` and ``onnx`` (``pip install tinyssd[onnx]``); the export side is
:mod:`tinyssd.deploy.export`.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from tinyssd.errors import CheckpointError, ConfigError, shown
from tinyssd.limits import MAX_CLASSES, MAX_EXPORT_BATCH, MAX_IMAGE_SIZE
from tinyssd.model.postprocess import detections_from_probs
from tinyssd.resize import RESIZE_MODES

__all__ = [
    "INPUT_DTYPES",
    "INPUT_NAME",
    "METADATA_KEY",
    "NMS_OUTPUTS",
    "RAW_OUTPUTS",
    "TORCHSCRIPT_SUFFIX",
    "ExportMetadata",
    "OnnxModel",
    "is_onnx_path",
]

# Where the metadata lives: the ONNX ``metadata_props`` key, and the TorchScript extra file
# ``tinyssd.json``.
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
_ORT_INPUT_TYPES = {"uint8": "tensor(uint8)", "float32": "tensor(float)"}
TORCHSCRIPT_SUFFIX = ".torchscript"
# Protobuf's own limit: a single-file ONNX model is smaller (TinySSD's is about 1 MB).
MAX_MODEL_BYTES = 2**31 - 1


def is_onnx_path(path: str | os.PathLike) -> bool:
    """Whether ``path`` names an exported ONNX model (by its suffix)."""
    return Path(path).suffix.lower() == ".onnx"


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


def _import_onnxruntime():
    try:
        import onnxruntime
    except ImportError as err:
        raise ConfigError(
            "running an .onnx model needs ONNX Runtime, which is not installed here: pip install 'tinyssd[onnx]' "
            "(or pip install onnxruntime)."
        ) from err
    return onnxruntime


def _import_onnx():
    try:
        import onnx
    except ImportError as err:
        raise ConfigError(
            "running an .onnx model needs the onnx package beside ONNX Runtime (tinyssd checks the file with it "
            "before the runtime reads it): pip install 'tinyssd[onnx]' (or pip install onnx)."
        ) from err
    return onnx


def _tensors_of(model: Any) -> Any:
    """Every tensor an ONNX model holds: initializers and constant attributes, in every (sub)graph and function."""
    nodes: list[Any] = [*(node for function in model.functions for node in function.node)]
    graphs = [model.graph]
    while graphs or nodes:
        if graphs:
            graph = graphs.pop()
            yield from graph.initializer
            for sparse in graph.sparse_initializer:
                yield from (sparse.values, sparse.indices)
            nodes.extend(graph.node)
            continue
        for attribute in nodes.pop().attribute:
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors
            for sparse in (
                *attribute.sparse_tensors,
                *([attribute.sparse_tensor] if attribute.HasField("sparse_tensor") else []),
            ):
                yield from (sparse.values, sparse.indices)
            if attribute.HasField("g"):
                graphs.append(attribute.g)
            graphs.extend(attribute.graphs)


def check_self_contained(data: bytes, where: str) -> None:
    """Refuse an ONNX model any of whose tensors keeps its data in another file.

    ONNX Runtime resolves such "external data" against the working folder when it is given
    bytes, so a file could make it read weights (or anything) from wherever it is run.
    """
    onnx = _import_onnx()
    try:
        model = onnx.load_model_from_string(data)
    except Exception as err:  # protobuf's DecodeError and friends
        reason = str(err).splitlines()[0][:160] if str(err) else type(err).__name__
        raise CheckpointError(
            f"{where} could not be loaded by ONNX Runtime: it is not an ONNX model (it does not parse: {reason}); "
            "export the checkpoint again with python export.py ckpt_path=CKPT."
        ) from err
    except RecursionError as err:
        raise CheckpointError(f"{where}: its graph is nested absurdly deep; it is not a tinyssd export.") from err
    external = [t.name or "(unnamed)" for t in _tensors_of(model) if t.data_location == 1 or len(t.external_data)]
    if external:
        raise CheckpointError(
            f"{where} keeps the data of {len(external)} tensor(s) ({shown(external)}) in other files; tinyssd runs "
            "only self-contained exports, which read no file but their own. Export the checkpoint again with "
            "python export.py (it writes one file)."
        )


def _providers(ort: Any, device: torch.device | str) -> list[str]:
    available = ort.get_available_providers()
    kind = torch.device(device).type if str(device) != "auto" else "auto"
    if kind in ("cuda", "auto") and "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if kind == "cuda":
        raise ConfigError(
            "device=cuda but this ONNX Runtime has no CUDA provider (pip install onnxruntime-gpu); "
            "use device=cpu or device=auto."
        )
    if kind not in ("cpu", "auto"):
        raise ConfigError(f"device={device} is not available to ONNX Runtime; use device=cpu or device=auto.")
    return ["CPUExecutionProvider"]


class OnnxModel:
    """An exported ``.onnx`` TinySSD, run with ONNX Runtime.

    ``detect(canvas (B, 3, S, S) uint8)`` gives what ``TinySSDModule.detect`` gives for the
    same pictures: per image, ``boxes`` (normalised xyxy), ``scores`` and ``labels``.
    """

    def __init__(self, path: str | os.PathLike, device: torch.device | str = "cpu", threads: int = 0) -> None:
        ort = _import_onnxruntime()
        self.path = Path(path)
        data = self._read(self.path)
        check_self_contained(data, str(self.path))
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.log_severity_level = 3  # ONNX Runtime's own warnings are not the user's business
        try:
            self.session = ort.InferenceSession(data, options, providers=_providers(ort, device))
        except ConfigError:
            raise
        except Exception as err:  # onnxruntime raises its own Fail/InvalidGraph/... types
            first = str(err).strip().splitlines()[0][:300] if str(err).strip() else type(err).__name__
            raise CheckpointError(
                f"{self.path} could not be loaded by ONNX Runtime ({first}). It is not an ONNX model, it is "
                "damaged, or it needs operators or external files this runtime does not have; export the checkpoint "
                "again with python export.py ckpt_path=CKPT."
            ) from err
        raw = self.session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
        if raw is None:
            raise CheckpointError(
                f"{self.path} is an ONNX model but not one exported by tinyssd (it has no '{METADATA_KEY}' "
                "metadata with its classes and input size); export a checkpoint with python export.py ckpt_path=CKPT."
            )
        self.metadata = ExportMetadata.from_json(raw, str(self.path))
        self._check_signature()

    def __deepcopy__(self, memo: dict) -> OnnxModel:
        # A session is read-only once made: copies (Lightning copies modules) share it.
        return self

    @staticmethod
    def _read(path: Path) -> bytes:
        if path.is_dir():
            raise CheckpointError(f"{path} is a folder; give the path of an .onnx file written by export.py.")
        if not path.exists():
            raise CheckpointError(f"model {path} does not exist; give the path of an .onnx file written by export.py.")
        if not path.is_file():
            raise CheckpointError(f"{path} is not a regular file; give the path of an .onnx file written by export.py.")
        if path.stat().st_size > MAX_MODEL_BYTES:
            raise CheckpointError(
                f"{path} is larger than any single-file ONNX model can be; it is not a tinyssd export."
            )
        try:
            return path.read_bytes()
        except OSError as err:
            raise CheckpointError(f"{path} cannot be read ({err.strerror or err}).") from err

    def _check_signature(self) -> None:
        meta, where = self.metadata, self.path
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or inputs[0].name != INPUT_NAME:
            raise CheckpointError(
                f"{where}: its graph takes inputs {[i.name for i in inputs]}, not one '{INPUT_NAME}' tensor; it is "
                "not a tinyssd export. Export the checkpoint again with python export.py."
            )
        if [o.name for o in outputs] != meta.outputs:
            raise CheckpointError(
                f"{where}: its graph returns {[o.name for o in outputs]} but its metadata promises {meta.outputs}; "
                "the file was edited. Export the checkpoint again with python export.py."
            )
        ranks = (
            {"boxes": 3, "scores": 2, "labels": 2, "num_detections": 1}
            if meta.nms
            else {"anchors": 2, "class_probs": 3, "boxes": 3}
        )
        wrong = [f"{o.name} has rank {len(o.shape)}" for o in outputs if len(o.shape) != ranks[o.name]]
        if wrong:
            raise CheckpointError(
                f"{where}: its graph's outputs do not have the shapes a tinyssd export has ({', '.join(wrong)}; "
                f"expected ranks {ranks}); the file was edited. Export the checkpoint again with python export.py."
            )
        shape, dtype = list(inputs[0].shape), inputs[0].type
        batch = shape[0] if isinstance(shape[0], int) else None
        if (
            dtype != _ORT_INPUT_TYPES[meta.input_dtype]
            or shape[1:] != [3, meta.image_size, meta.image_size]
            or (batch != meta.batch)
        ):
            raise CheckpointError(
                f"{where}: its graph takes {dtype} {shape} but its metadata says {meta.input_dtype} "
                f"[{meta.batch or 'batch'}, 3, {meta.image_size}, {meta.image_size}]; the file was edited or mixed "
                "from two exports. Export the checkpoint again with python export.py."
            )

    def check_nms_threshold(self, nms_threshold: float | None) -> None:
        """Refuse an NMS threshold other than the one fixed in the graph (when NMS is in it)."""
        meta = self.metadata
        if nms_threshold is not None and meta.nms and nms_threshold != meta.nms_threshold:
            raise ConfigError(
                f"{self.path} has NMS in its graph with threshold {meta.nms_threshold}; nms_threshold={nms_threshold} "
                "cannot change it. Drop nms_threshold, or export with nms=false to choose it when predicting."
            )

    def run(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """The graph's outputs by name for ``images (B, 3, S, S)`` of the input dtype."""
        return dict(zip(self.metadata.outputs, self.session.run(None, {INPUT_NAME: images}), strict=True))

    def detect(self, canvas: Tensor, nms_threshold: float | None = None) -> list[dict[str, Tensor]]:
        """Per-image detections for ``canvas (B, 3, S, S)`` uint8 pictures on the model's input."""
        meta = self.metadata
        self.check_nms_threshold(nms_threshold)
        images = canvas.cpu()
        images = images.numpy() if meta.input_dtype == "uint8" else (images.float() / 255).numpy()
        step = meta.batch or len(images)
        results: list[dict[str, Tensor]] = []
        for start in range(0, len(images), max(step, 1)):
            chunk = images[start : start + step]
            real = len(chunk)
            if meta.batch is not None and real < meta.batch:  # a fixed-batch graph: pad, then drop the padding
                chunk = np.concatenate([chunk, np.zeros((meta.batch - real, *chunk.shape[1:]), chunk.dtype)])
            results += self._decode(self.run(np.ascontiguousarray(chunk)), nms_threshold, len(chunk))[:real]
        return results

    def _check_outputs(self, out: dict[str, np.ndarray], batch: int) -> None:
        """The arrays a run returned, against the metadata: shapes, finite values, labels among the classes."""
        meta, classes = self.metadata, len(self.metadata.class_names)

        def refuse(detail: str) -> CheckpointError:
            return CheckpointError(
                f"{self.path}: its graph returned {detail}; a tinyssd export never does. The file was edited or is "
                "damaged: export the checkpoint again with python export.py."
            )

        if meta.nms:
            boxes, scores, labels, count = (out[k] for k in NMS_OUTPUTS)
            k = boxes.shape[1] if boxes.ndim == 3 else -1
            if (
                boxes.shape != (batch, k, 4)
                or scores.shape != (batch, k)
                or labels.shape != (batch, k)
                or count.shape != (batch,)
            ):
                raise refuse(f"arrays of shapes {[tuple(out[k].shape) for k in NMS_OUTPUTS]} for {batch} picture(s)")
            if count.size and (count.min() < 0 or count.max() > k):
                raise refuse(f"num_detections outside 0..{k}")
            valid = np.arange(k)[None, :] < count[:, None]
            if not (np.isfinite(boxes[valid]).all() and np.isfinite(scores[valid]).all()):
                raise refuse("boxes or scores that are not finite numbers (NaN or infinity)")
            if labels[valid].size and (labels[valid].min() < 0 or labels[valid].max() >= classes):
                raise refuse(f"class labels outside 0..{classes - 1} (its metadata names {classes} class(es))")
            return
        probs, boxes = out["class_probs"], out["boxes"]
        if (
            probs.ndim != 3
            or probs.shape[0] != batch
            or probs.shape[2] != classes + 1
            or boxes.shape != (batch, probs.shape[1], 4)
        ):
            raise refuse(
                f"class_probs {tuple(probs.shape)} and boxes {tuple(boxes.shape)} for {batch} picture(s) of "
                f"{classes} class(es)"
            )
        if not (np.isfinite(probs).all() and np.isfinite(boxes).all()):
            raise refuse("class probabilities or boxes that are not finite numbers (NaN or infinity)")

    def _decode(self, out: dict[str, np.ndarray], nms_threshold: float | None, batch: int) -> list[dict[str, Tensor]]:
        meta = self.metadata
        self._check_outputs(out, batch)
        if not meta.nms:
            return detections_from_probs(
                torch.from_numpy(out["class_probs"]),
                torch.from_numpy(out["boxes"]),
                nms_threshold=meta.nms_threshold if nms_threshold is None else nms_threshold,
                pos_threshold=meta.pos_threshold,
                max_detections=meta.max_detections,
            )
        return [
            {
                "boxes": torch.from_numpy(out["boxes"][i, :n].copy()),
                "scores": torch.from_numpy(out["scores"][i, :n].copy()),
                "labels": torch.from_numpy(out["labels"][i, :n].astype(np.int64)),
            }
            for i, n in enumerate(out["num_detections"].astype(np.int64).tolist())
        ]
