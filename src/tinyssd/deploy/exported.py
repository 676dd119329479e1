"""An exported ``.onnx`` model, whatever runtime runs it: its file checked, its outputs checked and decoded.

The file is read once as bytes and parsed with ``onnx`` before any runtime sees it: a file
whose tensors keep their data in other files ("external data", which runtimes resolve against
the working folder) is refused, so an export reads no file but its own, and the metadata comes
from the parsed file. Each runtime (:mod:`tinyssd.deploy.onnx_runtime`,
:mod:`tinyssd.deploy.openvino_runtime`) makes a session from the same bytes, states its graph's
signature, and runs pictures; this class checks the signature against the metadata and every
run's arrays against it (shapes, finite values, labels among the classes) before decoding.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from tinyssd.deploy.metadata import INPUT_NAME, METADATA_KEY, NMS_OUTPUTS, ExportMetadata
from tinyssd.errors import CheckpointError, ConfigError, shown
from tinyssd.model.contract import InferenceContract
from tinyssd.model.postprocess import detections_from_probs

__all__ = ["EXPORT_AGAIN", "MAX_MODEL_BYTES", "ExportedModel", "check_self_contained", "read_export"]

# Protobuf's own limit: a single-file ONNX model is smaller (TinySSD's is about 1 MB).
MAX_MODEL_BYTES = 2**31 - 1
# The rank of each output a tinyssd export has.
OUTPUT_RANKS = {"boxes": 3, "scores": 2, "labels": 2, "num_detections": 1, "anchors": 2, "class_probs": 3}
# The fix for a file that is not what export.py writes.
EXPORT_AGAIN = "Export the checkpoint again with python export.py ckpt_path=CKPT."


def _import_onnx():
    try:
        import onnx
    except ImportError as err:
        raise ConfigError(
            "running an .onnx model needs the onnx package (tinyssd checks the file with it before a runtime "
            "reads it): pip install 'tinyssd[onnx]' (or pip install onnx)."
        ) from err
    return onnx


def _tensors_of(model: Any) -> Any:
    """Every tensor an ONNX model holds: initializers and constant attributes, in every (sub)graph and function."""
    nodes: list[Any] = [node for function in model.functions for node in function.node]
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
            sparse_tensors = [*attribute.sparse_tensors]
            if attribute.HasField("sparse_tensor"):
                sparse_tensors.append(attribute.sparse_tensor)
            for sparse in sparse_tensors:
                yield from (sparse.values, sparse.indices)
            if attribute.HasField("g"):
                graphs.append(attribute.g)
            graphs.extend(attribute.graphs)


def check_self_contained(data: bytes, where: str) -> Any:
    """Parse an ONNX model's bytes and refuse it if any tensor keeps its data in another file; the parsed model."""
    onnx = _import_onnx()
    try:
        model = onnx.load_model_from_string(data)
    except Exception as err:  # protobuf's DecodeError and friends, RecursionError on absurd nesting
        reason = str(err).splitlines()[0][:160] if str(err) else type(err).__name__
        raise CheckpointError(
            f"{where} could not be loaded by ONNX Runtime: it is not an ONNX model (it does not parse: {reason}). "
            + EXPORT_AGAIN
        ) from err
    external = [t.name or "(unnamed)" for t in _tensors_of(model) if t.data_location == 1 or len(t.external_data)]
    if external:
        raise CheckpointError(
            f"{where} keeps the data of {len(external)} tensor(s) ({shown(external)}) in other files; tinyssd runs "
            "only self-contained exports, which read no file but their own. Export the checkpoint again with "
            "python export.py (it writes one file)."
        )
    return model


def read_export(path: Path) -> tuple[bytes, ExportMetadata]:
    """The bytes of an exported file, checked self-contained, and its tinyssd metadata."""
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder; give the path of an .onnx file written by export.py.")
    if not path.exists():
        raise CheckpointError(f"model {path} does not exist; give the path of an .onnx file written by export.py.")
    if not path.is_file():
        raise CheckpointError(f"{path} is not a regular file; give the path of an .onnx file written by export.py.")
    if path.stat().st_size > MAX_MODEL_BYTES:
        raise CheckpointError(f"{path} is larger than any single-file ONNX model can be; it is not a tinyssd export.")
    try:
        data = path.read_bytes()
    except OSError as err:
        raise CheckpointError(f"{path} cannot be read ({err.strerror or err}).") from err
    model = check_self_contained(data, str(path))
    raw = {p.key: p.value for p in model.metadata_props}.get(METADATA_KEY)
    if raw is None:
        raise CheckpointError(
            f"{path} is an ONNX model but not one exported by tinyssd (it has no '{METADATA_KEY}' metadata with "
            "its classes and input size); export a checkpoint with python export.py ckpt_path=CKPT."
        )
    return data, ExportMetadata.from_json(raw, str(path))


class ExportedModel:
    """An exported model run by some runtime; ``detect`` gives what ``TinySSDModule.detect`` gives.

    Subclasses make their session from ``self.data`` and implement :meth:`signature` and
    :meth:`run`; they call :meth:`check_signature` once the session exists.
    """

    runtime = "exported"
    # How this runtime names the two input types (it is shown in messages as the runtime says it).
    INPUT_TYPES: ClassVar[dict[str, str]] = {"uint8": "uint8", "float32": "float32"}

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.data, self.metadata = read_export(self.path)
        self.device = torch.device("cpu")  # runtimes take host arrays, whatever runs them

    @property
    def contract(self) -> InferenceContract:
        return self.metadata.contract

    def __deepcopy__(self, memo: dict) -> ExportedModel:
        # A session is read-only once made: copies (Lightning copies modules) share it.
        return self

    # ----------------------------------------------------------------- what a runtime provides

    def signature(self) -> tuple[list[str], str, list[int | None], list[tuple[str, int]]]:
        """``(input names, input type as the runtime names it, input shape (None: dynamic), [(output, rank)])``."""
        raise NotImplementedError

    def run(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """The graph's outputs by name for ``images (B, 3, S, S)`` of the input dtype."""
        raise NotImplementedError

    # ----------------------------------------------------------------- shared

    def check_signature(self) -> None:
        meta, where = self.metadata, self.path
        inputs, dtype, shape, outputs = self.signature()
        if inputs != [INPUT_NAME]:
            raise CheckpointError(
                f"{where}: its graph takes inputs {inputs}, not one '{INPUT_NAME}' tensor; it is not a tinyssd "
                f"export. {EXPORT_AGAIN}"
            )
        if [name for name, _ in outputs] != meta.outputs:
            raise CheckpointError(
                f"{where}: its graph returns {[n for n, _ in outputs]} but its metadata promises {meta.outputs}; the "
                f"file was edited. {EXPORT_AGAIN}"
            )
        wrong = [f"{name} has rank {rank}" for name, rank in outputs if rank != OUTPUT_RANKS[name]]
        if wrong:
            raise CheckpointError(
                f"{where}: its graph's outputs do not have the shapes a tinyssd export has ({', '.join(wrong)}); "
                f"the file was edited. {EXPORT_AGAIN}"
            )
        if (
            dtype != self.INPUT_TYPES[meta.input_dtype]
            or shape[1:] != [3, meta.image_size, meta.image_size]
            or shape[0] != meta.batch
        ):
            raise CheckpointError(
                f"{where}: its graph takes {dtype} {shape} but its metadata says {meta.input_dtype} "
                f"[{meta.batch or 'batch'}, 3, {meta.image_size}, {meta.image_size}]; the file was edited or mixed "
                f"from two exports. {EXPORT_AGAIN}"
            )

    def load_failure(self, runtime: str, err: Exception, hint: str) -> CheckpointError:
        """The paragraph for a file this runtime could not load (its own error's first line, and the fix)."""
        first = str(err).strip().splitlines()[0][:300] if str(err).strip() else type(err).__name__
        return CheckpointError(f"{self.path} could not be loaded by {runtime} ({first}); {hint}")

    def check_nms_threshold(self, nms_threshold: float | None) -> None:
        """Refuse an NMS threshold other than the one fixed in the graph (when NMS is in it)."""
        meta = self.metadata
        if nms_threshold is not None and meta.nms and nms_threshold != meta.nms_threshold:
            raise ConfigError(
                f"{self.path} has NMS in its graph with threshold {meta.nms_threshold}; nms_threshold={nms_threshold} "
                "cannot change it. Drop nms_threshold, or export with nms=false to choose it when predicting."
            )

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
            out = self.run(np.ascontiguousarray(chunk))
            self._check_outputs(out, len(chunk))
            results += self._decode(out, nms_threshold)[:real]
        return results

    def _check_outputs(self, out: dict[str, np.ndarray], batch: int) -> None:
        """The arrays a run returned, against the metadata: shapes, finite values, labels among the classes."""
        meta, classes = self.metadata, len(self.metadata.class_names)

        def refuse(detail: str) -> CheckpointError:
            return CheckpointError(
                f"{self.path}: its graph returned {detail}; a tinyssd export never does. The file was edited or is "
                f"damaged. {EXPORT_AGAIN}"
            )

        if meta.nms:
            boxes, scores, labels, count = (out[k] for k in NMS_OUTPUTS)
            k = boxes.shape[1] if boxes.ndim == 3 else -1
            shapes = (boxes.shape, scores.shape, labels.shape, count.shape)
            if shapes != ((batch, k, 4), (batch, k), (batch, k), (batch,)):
                raise refuse(f"arrays of shapes {[tuple(s) for s in shapes]} for {batch} picture(s)")
            if count.size and (count.min() < 0 or count.max() > k):
                raise refuse(f"num_detections outside 0..{k}")
            valid = np.arange(k)[None, :] < count[:, None]
            if not (np.isfinite(boxes[valid]).all() and np.isfinite(scores[valid]).all()):
                raise refuse("boxes or scores that are not finite numbers (NaN or infinity)")
            if labels[valid].size and (labels[valid].min() < 0 or labels[valid].max() >= classes):
                raise refuse(f"class labels outside 0..{classes - 1} (its metadata names {classes} class(es))")
            return
        probs, boxes = out["class_probs"], out["boxes"]
        wanted = probs.ndim == 3 and probs.shape[0] == batch and probs.shape[2] == classes + 1
        if not wanted or boxes.shape != (batch, probs.shape[1], 4):
            raise refuse(
                f"class_probs {tuple(probs.shape)} and boxes {tuple(boxes.shape)} for {batch} picture(s) of "
                f"{classes} class(es)"
            )
        if not (np.isfinite(probs).all() and np.isfinite(boxes).all()):
            raise refuse("class probabilities or boxes that are not finite numbers (NaN or infinity)")

    def _decode(self, out: dict[str, np.ndarray], nms_threshold: float | None) -> list[dict[str, Tensor]]:
        meta = self.metadata
        if not meta.nms:
            return detections_from_probs(
                torch.from_numpy(np.ascontiguousarray(out["class_probs"])),
                torch.from_numpy(np.ascontiguousarray(out["boxes"])),
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
