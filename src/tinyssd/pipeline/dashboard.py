"""Lightning callbacks that leave files a user can open without a server, and feed the loggers' pictures.

* :class:`MetricsCSV` - ``metrics.csv``, one row per epoch;
* :class:`TrainingCurves` - ``curves.png`` (losses and metrics over epochs) at the end of fit;
* :class:`PredictionImages` - every N epochs an image grid of fixed val images, ground truth
  in one colour and predictions (with scores) in another, plus the precision-recall curve, to
  every logger that takes pictures (:mod:`tinyssd.pipeline.loggers`); ``val_predictions.png`` and
  ``pr_curve.png`` at the end of fit;
* :class:`ConfusionMatrixPlot` - the detection confusion matrix, to the loggers and
  ``confusion_matrix.png``.

Pictures are made in ``on_validation_end``: Lightning calls the callbacks' epoch-end hooks
before the module's, which is where the epoch's metrics are computed. The drawing itself is
:mod:`tinyssd.plots`'s.
"""

from __future__ import annotations

import csv
import os
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_only
from torch import Tensor
from torchvision.io import write_png
from torchvision.utils import make_grid

from tinyssd.boxes import CHAPTER_DISPLAY_THRESHOLD, to_pixels, valid_rows
from tinyssd.pipeline.loggers import log_figure, log_image
from tinyssd.plots import (
    add_caption,
    close_figure,
    confusion_matrix_figure,
    draw_detections,
    plot_curves,
    pr_curve_figure,
    read_metrics_csv,
)

__all__ = ["ConfusionMatrixPlot", "MetricsCSV", "PredictionImages", "TrainingCurves"]


def _run_dir(trainer: pl.Trainer, output_dir: str | None) -> Path:
    return Path(output_dir or trainer.default_root_dir)


class MetricsCSV(pl.Callback):
    """Append the epoch's scalar metrics (learning rate included) to ``<run>/metrics.csv``.

    ``time_s`` is the wall-clock seconds of training so far (validation included, from the start
    of fit; a resumed run goes on from the last kept row's): mAP against time is how detectors
    are compared at an equal budget (``benchmarks/peer_yolo.py``).
    """

    def __init__(self, output_dir: str | None = None, filename: str = "metrics.csv") -> None:
        self.output_dir, self.filename = output_dir, filename
        self._fit_start, self._offset = time.monotonic(), None

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._fit_start, self._offset = time.monotonic(), None

    def path(self, trainer: pl.Trainer) -> Path:
        return _run_dir(trainer, self.output_dir) / self.filename

    @rank_zero_only
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or trainer.fast_dev_run:
            return
        row: dict[str, Any] = {"epoch": trainer.current_epoch, "step": trainer.global_step}
        for key, value in sorted(trainer.callback_metrics.items()):
            if torch.is_tensor(value) and value.numel() == 1 and not key.endswith("_step"):
                row[key.removesuffix("_epoch")] = float(value)
        path = self.path(trainer)
        rows = read_metrics_csv(path) if path.exists() else []
        rows = [r for r in rows if int(float(r["epoch"])) < trainer.current_epoch]  # resumed runs rewrite
        if self._offset is None:  # the first epoch of this fit: a resume goes on from the kept rows
            self._offset = float(rows[-1].get("time_s") or 0) if rows else 0.0
        row["time_s"] = round(self._offset + time.monotonic() - self._fit_start, 2)
        rows.append(row)
        columns = list(dict.fromkeys(k for r in rows for k in r))
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, path)


class TrainingCurves(pl.Callback):
    """At the end of fit, plot ``metrics.csv`` into ``<run>/curves.png``."""

    # One panel per question: is it learning (loss and its parts), what the chapter measures (class
    # error, bbox MAE), how well it detects (mAP at three IoUs; recall), and per class (a prefix).
    PANELS = (
        ("loss", ("train/loss", "val/loss")),
        ("loss parts", ("train/loss_cls", "val/loss_cls", "train/loss_bbox", "val/loss_bbox")),
        ("class error", ("train/class_error", "val/class_error")),
        ("bbox MAE", ("train/bbox_mae", "val/bbox_mae")),
        ("mAP", ("val/map", "val/map_50", "val/map_75")),
        ("recall", ("val/mar_100", "val/recall")),
        ("AP per class", "val/map_class/"),
    )

    def __init__(self, output_dir: str | None = None, filename: str = "curves.png") -> None:
        self.output_dir, self.filename = output_dir, filename

    @rank_zero_only
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        run = _run_dir(trainer, self.output_dir)
        if (run / "metrics.csv").exists():
            plot_curves(run / "metrics.csv", run / self.filename, self.PANELS)


class PredictionImages(pl.Callback):
    """Log a grid of fixed val images with ground truth (green) and predictions (red).

    Args:
        every_n_epochs: log the grid and the PR curve every this many epochs (and at the last).
        num_images: how many val images (the first ones, so every grid shows the same).
        threshold: minimum score of the predictions drawn (the chapter's 0.9).
    """

    def __init__(
        self,
        every_n_epochs: int = 5,
        num_images: int = 8,
        threshold: float = CHAPTER_DISPLAY_THRESHOLD,
        output_dir: str | None = None,
    ) -> None:
        self.every_n_epochs, self.num_images, self.threshold = every_n_epochs, num_images, threshold
        self.output_dir = output_dir
        self.last_grid: Tensor | None = None

    def _due(self, trainer: pl.Trainer) -> bool:
        epoch = trainer.current_epoch + 1
        return epoch % max(self.every_n_epochs, 1) == 0 or epoch == trainer.max_epochs or trainer.should_stop

    @torch.no_grad()
    def make_grid(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> Tensor | None:
        datasets = getattr(trainer.datamodule, "datasets", None) or {}
        dataset = datasets.get("val")
        if dataset is None or len(dataset) == 0:
            return None
        n = min(self.num_images, len(dataset))
        images = torch.stack([dataset[i][0] for i in range(n)])
        labels = torch.stack([dataset[i][1] for i in range(n)])
        was_training = pl_module.training
        pl_module.eval()
        detections = pl_module.detect(images.to(pl_module.device))
        pl_module.train(was_training)
        height, width = images.shape[-2:]
        names = getattr(pl_module, "class_names", None) or []

        def named(classes: list[int]) -> list[str]:
            return [names[c] if 0 <= c < len(names) else str(c) for c in classes]

        tiles, shown, objects = [], 0, 0
        for img, lab, det in zip(images, labels, detections, strict=True):
            truth = lab[valid_rows(lab)]
            keep = det["scores"].cpu() >= self.threshold
            boxes, scores = to_pixels(det["boxes"].cpu()[keep], width, height), det["scores"].cpu()[keep]
            gt_boxes = to_pixels(truth[:, 1:], width, height)
            gt_names = named(truth[:, 0].long().tolist())
            pred_names = named(det["labels"].cpu()[keep].tolist())
            tiles.append(draw_detections(img.to(torch.uint8), gt_boxes, boxes, scores, pred_names, gt_names))
            shown, objects = shown + len(boxes), objects + len(truth)
        grid = make_grid(torch.stack(tiles), nrow=min(4, n), padding=4, pad_value=255)
        caption = [
            f"epoch {trainer.current_epoch}: the first {n} val pictures; green: ground truth ({objects} objects), red: "
            f"predictions scoring >= {self.threshold:g} ({shown})",
        ]
        if shown == 0:
            caption.append(f"no prediction reaches {self.threshold:g} yet: the model finds nothing at this threshold")
        return add_caption(grid, caption)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero or not self._due(trainer):
            return
        grid = self.make_grid(trainer, pl_module)
        if grid is not None:
            self.last_grid = grid
            log_image(trainer.loggers, "val/predictions", grid, trainer.current_epoch)
        figure = pr_curve_figure(getattr(pl_module, "last_pr_curve", None))
        if figure is not None:
            log_figure(trainer.loggers, "val/pr_curve", figure, trainer.current_epoch)
            close_figure(figure)

    @rank_zero_only
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        run = _run_dir(trainer, self.output_dir)
        if self.last_grid is not None:
            write_png(self.last_grid, str(run / "val_predictions.png"))
        figure = pr_curve_figure(getattr(pl_module, "last_pr_curve", None))
        if figure is not None:
            figure.savefig(run / "pr_curve.png", dpi=110)
            close_figure(figure)


class ConfusionMatrixPlot(pl.Callback):
    """The detection confusion matrix of each validation: TensorBoard figure, ``confusion_matrix.png``.

    The file in the run folder is the last validation's (written when fitting ends).
    """

    def __init__(self, output_dir: str | None = None, filename: str = "confusion_matrix.png") -> None:
        self.output_dir, self.filename = output_dir, filename
        self.last: dict | None = None

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        evaluation = getattr(pl_module, "last_evaluation", None)
        if trainer.sanity_checking or not trainer.is_global_zero or not evaluation:
            return
        self.last = evaluation
        if trainer.loggers:
            figure = confusion_matrix_figure(
                evaluation["confusion_matrix"], evaluation["class_names"], evaluation.get("display_threshold")
            )
            log_figure(trainer.loggers, "val/confusion_matrix", figure, trainer.current_epoch)
            close_figure(figure)

    @rank_zero_only
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.last is not None:
            figure = confusion_matrix_figure(
                self.last["confusion_matrix"], self.last["class_names"], self.last.get("display_threshold")
            )
            figure.savefig(_run_dir(trainer, self.output_dir) / self.filename, dpi=110)
            close_figure(figure)
