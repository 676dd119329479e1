"""What every experiment logger gets: images, figures and the run's hyperparameters.

Lightning's loggers share ``log_metrics`` and ``log_hyperparams`` but not pictures, so the
callbacks hand pictures to :func:`log_image` / :func:`log_figure`, the one place that knows
how each logger takes one (TensorBoard: ``add_image``; MLflow: an image artifact per step;
W&B: ``log_image``). A logger that cannot hold pictures (CSV) gets its scalars only.

:class:`LocalMLFlowLogger` is Lightning's MLflow logger writing to a folder (no server).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from lightning.pytorch.loggers import Logger, MLFlowLogger, TensorBoardLogger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from matplotlib.figure import Figure
from torch import Tensor

__all__ = ["LocalMLFlowLogger", "figure_to_image", "finish", "log_figure", "log_hyperparams", "log_image"]


def figure_to_image(figure: Figure) -> Tensor:
    """A matplotlib figure rendered to a ``(3, H, W)`` uint8 image."""
    figure.canvas.draw()
    rgba = np.asarray(figure.canvas.buffer_rgba())
    return torch.from_numpy(rgba[..., :3].copy()).permute(2, 0, 1)


def _hwc(image: Tensor) -> np.ndarray:
    return image.detach().cpu().to(torch.uint8).permute(1, 2, 0).numpy()


@rank_zero_only
def log_image(loggers: Iterable[Logger], tag: str, image: Tensor, step: int) -> None:
    """Send a ``(3, H, W)`` uint8 image to every logger that can hold one."""
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.experiment.add_image(tag, image, step)
        elif isinstance(logger, MLFlowLogger):
            logger.experiment.log_image(logger.run_id, _hwc(image), key=tag, step=step)
        elif isinstance(logger, WandbLogger):
            logger.log_image(key=tag, images=[_hwc(image)], step=step)


@rank_zero_only
def log_figure(loggers: Iterable[Logger], tag: str, figure: Figure, step: int) -> None:
    """Send a matplotlib figure, as an image, to every logger that can hold one."""
    loggers = list(loggers)
    if any(isinstance(logger, (TensorBoardLogger, MLFlowLogger, WandbLogger)) for logger in loggers):
        log_image(loggers, tag, figure_to_image(figure), step)


@rank_zero_only
def log_hyperparams(loggers: Iterable[Logger], params: dict[str, Any], metrics: dict[str, float], step: int) -> None:
    """The run's settings, with its final metrics: TensorBoard's HPARAMS tab, MLflow params, W&B config."""
    final = {k: v for k, v in metrics.items() if math.isfinite(v)}
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.log_hyperparams(params, metrics=final or None)
        else:
            logger.log_hyperparams(params)
            if final:
                logger.log_metrics(final, step=step)
        logger.save()


def finish(loggers: Iterable[Logger]) -> None:
    """End what a logger keeps open past ``fit`` (a W&B run would be reused by the next run in this process)."""
    for logger in loggers:
        if isinstance(logger, WandbLogger) and getattr(logger, "_experiment", None) is not None:
            logger.experiment.finish()


class LocalMLFlowLogger(MLFlowLogger):
    """Lightning's :class:`~lightning.pytorch.loggers.MLFlowLogger` on a local file store.

    MLflow 3 asks for an explicit opt-in to its folder store (``MLFLOW_ALLOW_FILE_STORE``);
    a ``file:`` tracking URI given in the config is that opt-in. Browse the runs with
    ``mlflow ui --backend-store-uri <folder>`` (the full ``mlflow`` package).
    """

    def __init__(self, tracking_uri: str, **kwargs: Any) -> None:
        if tracking_uri.startswith("file:"):
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        super().__init__(tracking_uri=tracking_uri, **kwargs)
