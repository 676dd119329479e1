"""The end of a training run in the console: where it went, best and last checkpoints and their metrics."""

from __future__ import annotations

import logging
from pathlib import Path

import lightning.pytorch as pl
from lightning.pytorch.utilities import rank_zero_only

from tinyssd.model.run_files import BEST_CHECKPOINT
from tinyssd.pipeline.callbacks import BestMetric, EarlyStopping
from tinyssd.plots import read_metrics_csv

__all__ = ["REPORTED_METRICS", "report_run", "report_table", "say"]

log = logging.getLogger("tinyssd")


@rank_zero_only
def say(message: str) -> None:
    """The run's report, once (rank 0), through ``logging``: Hydra writes it to the console and ``<run>/train.log``."""
    log.info(message)


# The metrics of the end-of-run table, in order; AP per class follows when there are several classes.
REPORTED_METRICS = (
    "val/map",
    "val/map_50",
    "val/map_75",
    "val/mar_100",
    "val/class_error",
    "val/bbox_mae",
    "val/precision",
    "val/recall",
)


def _epoch_rows(output_dir: Path) -> dict[int, dict[str, float]]:
    """``metrics.csv`` by epoch (what each epoch's validation gave)."""
    path = output_dir / "metrics.csv"
    rows = read_metrics_csv(path) if path.exists() else []
    return {int(float(r["epoch"])): {k: float(v) for k, v in r.items() if v not in ("", None)} for r in rows}


def report_table(
    metrics: dict[str, float], best: dict[str, float] | None, best_epoch: int | None, last_epoch: int
) -> list[str]:
    """The metrics of the last epoch beside those of the best epoch (the one ``best.ckpt`` keeps), and AP per class."""
    per_class = sorted(k for k in metrics if k.startswith("val/map_class/"))
    keys = [k for k in REPORTED_METRICS if k in metrics] + (per_class if len(per_class) > 1 else [])
    if not keys:
        return []
    width = max(len(k) for k in keys) + 2
    show_best = best is not None and best_epoch is not None and best_epoch != last_epoch
    head = f"  {'metric':<{width}}{f'last (epoch {last_epoch})':<18}"
    lines = [head + (f"best (epoch {best_epoch}, best.ckpt)" if show_best else "(also the best epoch)" if best else "")]
    for key in keys:
        row = f"  {key:<{width}}{metrics[key]:<18.6g}"
        lines.append(row + (f"{best[key]:.6g}" if show_best and key in best else ""))
    return lines


def report_run(trainer: pl.Trainer, output_dir: Path, metrics: dict[str, float], best_metric: BestMetric) -> None:
    """The end of a run in the console: time, folder, checkpoints (best and last, with epochs), metrics."""
    if not trainer.is_global_zero:
        return
    lines = [f"finished in {metrics['wall_time_s']:.1f} s; run folder {output_dir}"]
    for callback in trainer.callbacks:
        if isinstance(callback, EarlyStopping) and callback.stopped_epoch:
            lines.append(
                f"  stopped early after epoch {callback.stopped_epoch}: no {callback.monitor} gain in "
                f"{callback.patience} validation(s) (callbacks.early_stopping.patience)"
            )
    last_epoch = max(trainer.current_epoch - 1, 0)
    for ckpt in trainer.checkpoint_callbacks:
        if getattr(ckpt, "best_model_path", ""):
            if getattr(ckpt, "monitor", None):
                epoch = f" (epoch {best_metric.best_epoch})" if best_metric.best_epoch is not None else ""
                lines.append(f"  best checkpoint{epoch}: {Path(ckpt.best_model_path).with_name(BEST_CHECKPOINT)}")
            else:
                lines.append(f"  last checkpoint (epoch {last_epoch}): {ckpt.best_model_path}")
    by_epoch = _epoch_rows(output_dir)
    best = by_epoch.get(best_metric.best_epoch) if best_metric.best_epoch is not None else None
    lines += report_table(metrics, best, best_metric.best_epoch, last_epoch)
    lines.append(f"  dashboard: tensorboard --logdir {output_dir}")
    say("\n".join(lines))
