"""The training pipeline behind ``train.py``: config checks, object construction, fit, report."""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf, open_dict

from tinyssd.data.close_mosaic import CloseMosaic
from tinyssd.errors import CheckpointError, ConfigError, RunInterrupted, escape_interpolation
from tinyssd.files import rank_zero_process, run_folder_lock
from tinyssd.model.checkpoints import AtomicCheckpointIO, check_compatible, load_checkpoint, module_from_checkpoint
from tinyssd.model.module import TinySSDModule
from tinyssd.model.run_files import (
    CHECKPOINT_DIR,
    checkpoints_in,
    last_checkpoint,
    resolve_model_path,
)
from tinyssd.pipeline.budget import prepare_budget
from tinyssd.pipeline.builders import apply_precision, build, build_all, build_module, quiet_lightning, save_config
from tinyssd.pipeline.callbacks import BestMetric, FiniteGuard
from tinyssd.pipeline.checking import fit_run_anchors
from tinyssd.pipeline.evaluation import (
    evaluation_table,
    module_and_data_for_evaluation,
    run_evaluation,
    write_evaluation,
)
from tinyssd.pipeline.finetune import init_from_checkpoint
from tinyssd.pipeline.loggers import finish as finish_loggers
from tinyssd.pipeline.loggers import log_hyperparams
from tinyssd.pipeline.preflight import check_config
from tinyssd.pipeline.reporting import report_run, say
from tinyssd.pipeline.resume import ResumePlan, resolve_resume
from tinyssd.pipeline.sweep import write_job_summary
from tinyssd.plots import read_metrics_csv

__all__ = ["train"]

log = logging.getLogger("tinyssd")


def _flat_hparams(cfg: DictConfig) -> dict[str, Any]:
    """Config as one flat dict of scalars, for TensorBoard's HPARAMS tab."""
    flat: dict[str, Any] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                if not str(k).startswith("_"):
                    walk(f"{prefix}.{k}" if prefix else str(k), v)
        elif isinstance(node, (list, tuple)):
            flat[prefix] = str(node)
        else:
            flat[prefix] = node if isinstance(node, (int, float, str, bool)) else str(node)

    walk("", OmegaConf.to_container(cfg, resolve=True))
    return {k: v for k, v in flat.items() if not k.startswith(("hydra", "paths", "callbacks", "logger"))}


def _module_for_evaluation(cfg: DictConfig, plan: ResumePlan | None) -> tuple[TinySSDModule, pl.LightningDataModule]:
    """The checkpoint's own model (not the config's) and a data module at its input size."""
    if plan is None:
        raise ConfigError("train=false evaluates a checkpoint: give ckpt_path=PATH (a .ckpt from a run folder).")
    return module_and_data_for_evaluation(cfg, module_from_checkpoint(plan.ckpt, plan.path), plan.path)


def _scalars(logged: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in logged.items() if torch.is_tensor(v) and v.numel() == 1}


def _interrupted(trainer: pl.Trainer, output_dir: Path) -> RunInterrupted:
    last = last_checkpoint(output_dir)
    try:
        epoch = load_checkpoint(last).get("epoch", "?")
    except CheckpointError:
        epoch = None
    resume = (
        f"resume it with: python train.py ckpt_path={output_dir} (same overrides); it continues from {last} "
        f"(the end of epoch {epoch})"
        if epoch is not None
        else "no checkpoint was written yet, so it starts over when run again"
    )
    return RunInterrupted(
        f"the run in {output_dir} was stopped by SIGTERM at epoch {trainer.current_epoch}, step "
        f"{trainer.global_step}; {resume}."
    )


def train(cfg: DictConfig) -> dict[str, float]:
    """Train (and/or validate) as the config says; returns the final metrics.

    The run folder is locked while the run writes it (:func:`~tinyssd.files.run_folder_lock`).
    """
    with contextlib.ExitStack() as held:
        return _train(cfg, held)


def _check_fresh_folder(output_dir: Path, plan: ResumePlan | None) -> None:
    """A new run never goes into a folder that holds another run's checkpoints (it would replace them)."""
    if plan is not None and plan.run is not None and plan.run.resolve() == output_dir.resolve():
        return
    found = checkpoints_in(output_dir / CHECKPOINT_DIR) if (output_dir / CHECKPOINT_DIR).is_dir() else []
    if found:
        raise ConfigError(
            f"the run folder {output_dir} already holds a run's checkpoints ({found[0].name}, ...); a new run there "
            f"would replace them. Resume that run with ckpt_path={output_dir}, or give this run another folder "
            "(hydra.run.dir=... or leave it at its default)."
        )


def _train(cfg: DictConfig, held: contextlib.ExitStack) -> dict[str, float]:
    accelerator = apply_precision(cfg)
    time_budget = prepare_budget(cfg) if cfg.get("train", True) else None  # before the checks: it sets epochs
    check_config(cfg)
    output_dir = Path(cfg.paths.output_dir)
    evaluate_only = not cfg.get("train", True)
    plan = None
    with open_dict(cfg):
        cfg.ckpt_path = cfg.get("ckpt_path") or None  # ckpt_path= (empty) means none
    if cfg.ckpt_path:
        # Loaded once, checked (allowlist, weights_only) before anything is built from it.
        plan = resolve_resume(cfg.ckpt_path, output_dir.parent, output_dir)
        with open_dict(cfg):
            cfg.ckpt_path = escape_interpolation(str(plan.path))
    if cfg.get("seed") is not None:
        pl.seed_everything(cfg.seed, workers=True, verbose=False)

    if evaluate_only:
        module, datamodule = _module_for_evaluation(cfg, plan)
    else:
        datamodule = build(cfg.data, "data")
        # anchors=auto: numbers from the training boxes (or the resumed run's) before the network is built.
        fit_run_anchors(cfg, datamodule, plan.ckpt["hyper_parameters"]["net"] if plan is not None else None)
        module = build_module(cfg, datamodule.class_names)
        with open_dict(cfg):  # the run's config.yaml records the classes it was trained on (as text, never resolved)
            cfg.data.class_names = [escape_interpolation(name) for name in module.class_names]
            cfg.model.net.num_classes = module.num_classes
        if cfg.get("test") and not datamodule.has_split("test"):
            raise ConfigError(
                f"test=true evaluates the best checkpoint on the test split, but the data set has none; "
                f"set {datamodule.split_key.format(split='test')} or drop test=true."
            )
        if cfg.get("init_from") and plan is None:
            source = resolve_model_path(cfg.init_from, output_dir.parent, "init_from", exclude=output_dir)
            say(init_from_checkpoint(module, source).summary())
        if plan is not None:
            check_compatible(module, plan.ckpt, plan.path)
            say(plan.note + ("; init_from is not applied (the run's own weights are)" if cfg.get("init_from") else ""))
            if plan.run is not None:
                # Continue in the interrupted run's folder: same checkpoints, same TensorBoard run.
                with open_dict(cfg):
                    cfg.paths.output_dir = escape_interpolation(str(plan.run))
                output_dir = plan.run
    output_dir.mkdir(parents=True, exist_ok=True)
    held.enter_context(run_folder_lock(output_dir))
    if not evaluate_only and rank_zero_process():
        _check_fresh_folder(output_dir, plan)
    with open_dict(cfg):
        on_cpu = accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available())
        if cfg.trainer.get("sync_batchnorm") and on_cpu:
            # torch's SyncBatchNorm runs on GPUs only; CPU processes keep per-process statistics.
            cfg.trainer.sync_batchnorm = False
    if not (output_dir / "config.yaml").exists() or plan is None or plan.run is None:
        save_config(cfg, output_dir / "config.yaml")

    best_metric = BestMetric(cfg.get("optimized_metric") or "val/map", "max")
    callbacks = [FiniteGuard(), best_metric, CloseMosaic(), *build_all(cfg.get("callbacks"), "callbacks")]
    if time_budget is not None:
        callbacks.append(time_budget)
    loggers = build_all(cfg.get("logger"), "logger")
    if not loggers:  # logger=none: the learning-rate monitor has nowhere to write (Lightning refuses it)
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    quiet_lightning()
    trainer: pl.Trainer = build(
        cfg.trainer, "trainer", callbacks=callbacks, logger=loggers or False, plugins=[AtomicCheckpointIO()]
    )

    say(f"run folder {output_dir} (precision {cfg.trainer.precision})")
    start = time.perf_counter()
    evaluations: dict[Path, dict[str, Any]] = {}
    try:
        if not evaluate_only:
            trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"), weights_only=True)
        best = (
            "best"
            if trainer.checkpoint_callback and getattr(trainer.checkpoint_callback, "best_model_path", "")
            else None
        )
        if evaluate_only:
            # The module already holds the checkpoint's weights (loaded with weights_only=True).
            evaluations[output_dir] = run_evaluation(trainer, module, datamodule, "val")
        elif cfg.get("validate", False):
            trainer.validate(module, datamodule=datamodule, ckpt_path=best, weights_only=True)
        # The training (or validation) metrics, before a test run replaces Lightning's.
        metrics = _scalars(trainer.callback_metrics)
        if cfg.get("test") and not evaluate_only:
            evaluations[output_dir / "test"] = run_evaluation(trainer, module, datamodule, "test", ckpt_path=best)
            metrics.update(_scalars(trainer.callback_metrics))
    except SIGTERMException:
        raise _interrupted(trainer, output_dir) from None
    except MisconfigurationException as err:  # Lightning's word on a combination of settings
        raise ConfigError(f"Lightning refused the settings: {err}") from None
    wall = time.perf_counter() - start

    metrics["wall_time_s"] = wall
    if best_metric.best is not None:
        metrics[f"best/{best_metric.monitor}"] = best_metric.best
    if trainer.is_global_zero:
        _write_job_summary(output_dir, trainer, metrics, best_metric)
    final = {f"hp/{k.replace('/', '_')}": v for k, v in metrics.items() if k.startswith(("val/", "best/"))}
    log_hyperparams(trainer.loggers, _flat_hparams(cfg), final, trainer.global_step)
    finish_loggers(trainer.loggers)
    report_run(trainer, output_dir, metrics, best_metric)
    if trainer.is_global_zero:
        for folder, evaluation in evaluations.items():
            path = write_evaluation(evaluation, folder, {"checkpoint": str(cfg.get("ckpt_path") or "best")})
            say(f"evaluation\n{evaluation_table(evaluation)}\n  written: {path}")
    return metrics


def _write_job_summary(output_dir: Path, trainer: pl.Trainer, metrics: dict[str, float], best: BestMetric) -> None:
    """``summary.json`` in the run folder: what the sweep summary reads."""
    best_of = {"val/map": None, "val/map_50": None}
    csv_path = output_dir / "metrics.csv"
    if csv_path.exists():
        rows = read_metrics_csv(csv_path)
        for key in best_of:
            values = [float(r[key]) for r in rows if r.get(key)]
            best_of[key] = max(values) if values else None
    write_job_summary(
        output_dir,
        {
            "optimized_metric": best.monitor,
            "best": best.best,
            "best_epoch": best.best_epoch,
            "best_val_map": best_of["val/map"],
            "best_val_map_50": best_of["val/map_50"],
            "val_map": metrics.get("val/map"),
            "val_map_50": metrics.get("val/map_50"),
            "val_class_error": metrics.get("val/class_error"),
            "val_bbox_mae": metrics.get("val/bbox_mae"),
            "epochs": trainer.current_epoch,  # after fit: the number of epochs trained
            "wall_time_s": metrics.get("wall_time_s"),
        },
    )
