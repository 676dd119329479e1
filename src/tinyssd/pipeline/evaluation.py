"""Evaluate a checkpoint (or an exported ``.onnx``) on a split of any data format: ``eval.py``, ``train.py test=true``.

The result of an evaluation (:attr:`TinySSDModule.last_evaluation`) is written to the run folder
as ``metrics.json`` (``map``, ``map_50``, ``map_75``, ``mar_100``, ``map_per_class`` by class
name, ``precision``/``recall`` at the display threshold, ``images``, ``objects``, the confusion
matrix) and ``confusion_matrix.png``, and printed as a table.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from omegaconf import DictConfig, open_dict
from torch import Tensor

from tinyssd.deploy.backends import InferenceBackend, is_exported, load_backend
from tinyssd.errors import ConfigError, escape_interpolation
from tinyssd.files import atomic_write_bytes
from tinyssd.model.checkpoints import load_checkpoint, module_from_checkpoint
from tinyssd.model.evaluator import DetectionEvaluator
from tinyssd.model.module import TinySSDModule
from tinyssd.model.run_files import model_argument, resolve_model_path
from tinyssd.pipeline.builders import apply_precision, build, build_all, quiet_lightning, save_config

log = logging.getLogger("tinyssd")

__all__ = [
    "EVAL_SPLITS",
    "BackendEvaluation",
    "evaluate",
    "evaluation_table",
    "load_for_evaluation",
    "module_and_data_for_evaluation",
    "write_evaluation",
]

EVAL_SPLITS = ("val", "test")


class BackendEvaluation(pl.LightningModule):
    """Evaluates an exported model (run by its runtime) exactly as a checkpoint is evaluated: the
    same data, and the same :class:`~tinyssd.model.evaluator.DetectionEvaluator` for mAP,
    precision/recall and the confusion matrix. There are no logits to score, so no loss, class
    error or box MAE."""

    def __init__(self, backend: InferenceBackend) -> None:
        super().__init__()
        self.backend = backend
        self.contract = backend.contract
        self.class_names = list(self.contract.class_names)
        self.num_classes = len(self.class_names)
        self.evaluator = DetectionEvaluator(self.class_names, self.contract.display_threshold)
        self.last_evaluation: dict[str, Any] | None = None
        self.last_pr_curve: Tensor | None = None

    def set_display_threshold(self, threshold: float) -> None:
        self.contract = self.contract.with_display_threshold(threshold)
        self.evaluator.display_threshold = threshold

    def _step(self, batch: tuple[Tensor, Tensor]) -> None:
        images, labels = batch
        if images.dtype != torch.uint8:
            images = (images.clamp(0, 1) * 255).round().to(torch.uint8)
        self.evaluator.update(self.backend.detect(images.cpu()), labels.cpu(), images.shape[-2:])

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._step(batch)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._step(batch)

    def _epoch_end(self, split: str) -> None:
        self.last_evaluation, scalars, self.last_pr_curve = self.evaluator.compute(split)
        for key, value in scalars.items():
            self.log(f"{split}/{key}", value)

    def on_validation_epoch_end(self) -> None:
        self._epoch_end("val")

    def on_test_epoch_end(self) -> None:
        self._epoch_end("test")


def load_for_evaluation(path: Path, runtime: str = "auto") -> TinySSDModule | BackendEvaluation:
    """The model of a checkpoint (the LightningModule itself), or an exported file's backend to evaluate."""
    if is_exported(path):
        return BackendEvaluation(load_backend(path, runtime))
    if runtime not in (None, "auto", "torch"):
        load_backend(path, runtime)  # refuses a runtime that cannot run a checkpoint, naming its runtimes
    return module_from_checkpoint(load_checkpoint(path), path)


def module_and_data_for_evaluation(
    cfg: DictConfig, module: TinySSDModule | BackendEvaluation, path: Path
) -> tuple[TinySSDModule | BackendEvaluation, pl.LightningDataModule]:
    """The model's own settings (its contract, not the config's) and a data module at its input size and classes."""
    contract = module.contract
    overrides: dict[str, Any] = {
        "image_size": contract.image_size,
        "resize": contract.resize,
        "class_names": list(contract.class_names),
        "classes_from": f"the {'exported model' if is_exported(path) else 'checkpoint'} {path}",
    }
    if "num_classes" in cfg.data:  # formats that cannot name their classes (banana)
        overrides["num_classes"] = contract.num_classes
    return module, build(cfg.data, "data", **overrides)


def evaluation_table(evaluation: dict[str, Any]) -> str:
    """The evaluation as a plain-text table: metrics, per-class AP, confusion matrix."""
    lines = [
        f"  {evaluation['split']} split: {evaluation['images']} images, {evaluation['objects']} objects",
        "  " + "metric".ljust(16) + "value",
    ]
    for key in ("map", "map_50", "map_75", "mar_100", "precision", "recall"):
        lines.append(f"  {key:<16}{evaluation[key]:.4f}")
    names = evaluation["class_names"]
    width = max(12, *(len(n) + 2 for n in names))
    lines.append("  " + "class".ljust(width) + "AP".ljust(10) + "AP@0.5")
    for name in names:
        values = (evaluation["map_per_class"].get(name), evaluation.get("map_50_per_class", {}).get(name))
        lines.append(f"  {name:<{width}}" + "".join("n/a".ljust(10) if v is None else f"{v:<10.4f}" for v in values))
    labels = [*names, "background"]
    cell = max(8, *(len(n) + 1 for n in labels))
    lines.append(
        "  confusion matrix (rows: true class, columns: detected as; IoU 0.5, score >= "
        f"{evaluation.get('display_threshold', 0.9):g})"
    )
    lines.append("  " + " " * width + "".join(f"{n:>{cell}}" for n in labels))
    for name, row in zip(labels, evaluation["confusion_matrix"], strict=True):
        lines.append(f"  {name:<{width}}" + "".join(f"{v:>{cell}}" for v in row))
    errors = evaluation.get("errors")
    if errors:  # the TIDE breakdown: what each cause of error costs in AP@0.5
        lines.append("  errors by cause, over every detection as mAP takes them (dAP: the AP@0.5 gained if fixed)")
        for kind, count in errors["counts"].items():
            dap = errors["dap"][kind]
            lines.append(f"  {kind:<16}{count:>6}  " + ("n/a" if dap is None else f"dAP {dap:+.4f}"))
    return "\n".join(lines)


def write_evaluation(evaluation: dict[str, Any], folder: Path, extra: dict[str, Any] | None = None) -> Path:
    """``metrics.json`` and ``confusion_matrix.png`` in ``folder``; returns the JSON's path."""
    from tinyssd.plots import close_figure, confusion_matrix_figure

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "metrics.json"
    atomic_write_bytes(path, (json.dumps({**evaluation, **(extra or {})}, indent=2) + "\n").encode(), "the evaluation")
    threshold = evaluation.get("display_threshold", 0.9)
    figure = confusion_matrix_figure(
        evaluation["confusion_matrix"],
        evaluation["class_names"],
        title=f"{evaluation['split']} split: IoU 0.5, detections scoring >= {threshold:g}",
    )
    figure.savefig(folder / "confusion_matrix.png", dpi=110)
    close_figure(figure)
    return path


def run_evaluation(
    trainer: pl.Trainer,
    module: TinySSDModule,
    datamodule: pl.LightningDataModule,
    split: str,
    ckpt_path: str | None = None,
) -> dict[str, Any]:
    """Validate or test ``module`` on ``split``; returns :attr:`TinySSDModule.last_evaluation`."""
    module.last_evaluation = None
    if split == "val":
        trainer.validate(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True, verbose=False)
    else:
        trainer.test(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True, verbose=False)
    if module.last_evaluation is None:  # pragma: no cover - Lightning ran no epoch
        raise ConfigError(f"the {split} split produced no evaluation (is trainer.limit_{split}_batches 0?).")
    return module.last_evaluation


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """``eval``: evaluate ``model`` on ``split`` of the configured data; returns the evaluation."""
    from tinyssd.pipeline.preflight import check_required

    check_required(cfg)
    split = cfg.get("split")
    if split not in EVAL_SPLITS:
        raise ConfigError(f"split must be one of {', '.join(EVAL_SPLITS)}, got {split!r}.")
    key, given = model_argument(cfg, "eval")
    path = resolve_model_path(given, Path(cfg.paths.log_dir) / "train" / "runs", key)
    model = load_for_evaluation(path, cfg.get("runtime", "auto"))
    apply_precision(cfg)
    with open_dict(cfg):
        cfg.model, cfg.ckpt_path = escape_interpolation(str(path)), None
    module, datamodule = module_and_data_for_evaluation(cfg, model, path)
    if cfg.get("threshold") is not None:
        module.set_display_threshold(cfg.threshold)
    module.evaluator.error_analysis = True  # metrics.json: "errors", what each cause of error costs
    if not datamodule.has_split(split):
        raise ConfigError(
            f"the data set has no {split} split; set {datamodule.split_key.format(split=split)} or use split=val."
        )
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, output_dir / "config.yaml")
    loggers = build_all(cfg.get("logger"), "logger")
    quiet_lightning()
    trainer: pl.Trainer = build(cfg.trainer, "trainer", logger=loggers or False, callbacks=[])
    start = time.perf_counter()
    evaluation = run_evaluation(trainer, module, datamodule, split)
    extra = {"checkpoint": str(path), "wall_time_s": round(time.perf_counter() - start, 3)}
    if trainer.is_global_zero:
        json_path = write_evaluation(evaluation, output_dir, extra)
        write_error_gallery(evaluation, datamodule, split, output_dir)
        _log_confusion(trainer, evaluation)
        log.info(f"evaluated {path}\n{evaluation_table(evaluation)}\n  written: {json_path}")
    return evaluation


def write_error_gallery(evaluation: dict[str, Any], datamodule: Any, split: str, folder: Path) -> Path | None:
    """``errors_gallery.png``: the worst false positives and misses of ``evaluation`` on their pictures
    (the split's pictures in loader order, as the evaluator saw them); None when there are none."""
    from torchvision.io import write_png

    from tinyssd.plots import error_gallery

    worst = (evaluation.get("errors") or {}).get("worst")
    dataset = (getattr(datamodule, "datasets", None) or {}).get(split)
    if not worst or dataset is None:
        return None
    pictures = {}
    for index in {e["picture"] for e in worst}:
        image = dataset[index][0]
        pictures[index] = image if image.dtype == torch.uint8 else (image.clamp(0, 1) * 255).round().to(torch.uint8)
    path = folder / "errors_gallery.png"
    write_png(error_gallery(pictures, worst), str(path))
    return path


def _log_confusion(trainer: pl.Trainer, evaluation: dict[str, Any]) -> None:
    from tinyssd.pipeline.loggers import log_figure
    from tinyssd.plots import close_figure, confusion_matrix_figure

    if trainer.loggers:
        figure = confusion_matrix_figure(
            evaluation["confusion_matrix"], evaluation["class_names"], evaluation.get("display_threshold")
        )
        log_figure(trainer.loggers, f"{evaluation['split']}/confusion_matrix", figure, 0)
        close_figure(figure)
