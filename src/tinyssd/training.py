"""The training pipeline behind ``train.py``: config checks, object construction, fit, report."""

from __future__ import annotations

import inspect
import logging
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf, open_dict

from tinyssd.callbacks import BestMetric, EarlyStopping, FiniteGuard
from tinyssd.checkpoints import (
    AtomicCheckpointIO,
    check_compatible,
    last_checkpoint,
    load_checkpoint,
    module_from_checkpoint,
)
from tinyssd.errors import CheckpointError, ConfigError, RunInterrupted, TinySSDError
from tinyssd.evaluation import evaluation_table, module_and_data_for_evaluation, run_evaluation, write_evaluation
from tinyssd.finetune import init_from_checkpoint
from tinyssd.loggers import finish as finish_loggers
from tinyssd.loggers import log_hyperparams
from tinyssd.module import TinySSDModule
from tinyssd.plots import read_metrics_csv
from tinyssd.preflight import check_config
from tinyssd.resume import ResumePlan, resolve_resume
from tinyssd.sweep import write_job_summary

__all__ = ["build", "build_module", "check_config", "fast_bf16_available", "resolve_precision", "train"]

log = logging.getLogger("tinyssd")


@rank_zero_only
def say(message: str) -> None:
    """The run's report, once (rank 0), through ``logging``: Hydra writes it to the console and ``<run>/train.log``."""
    log.info(message)


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def fast_bf16_available(accelerator: str) -> bool:
    """Whether bf16 autocast runs fast here: CUDA with bf16, or a CPU with AMX or AVX-512 BF16."""
    if accelerator in ("gpu", "cuda"):
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if accelerator == "cpu":
        return bool({"amx_bf16", "avx512_bf16"} & _cpu_flags())
    return False


def resolve_precision(precision: Any, accelerator: str) -> Any:
    """``auto`` -> ``bf16-mixed`` where the hardware runs it fast, else ``32-true``."""
    if precision != "auto":
        return precision
    if accelerator == "auto":
        accelerator = "cuda" if torch.cuda.is_available() else "cpu"
    return "bf16-mixed" if fast_bf16_available(accelerator) else "32-true"


def _container(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


def _build_all(group: DictConfig | None, where: str) -> list[Any]:
    if not group:
        return []
    return [build(c, f"{where}.{k}") for k, c in group.items() if isinstance(c, DictConfig) and "_target_" in c]


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


def build_module(cfg: DictConfig, class_names: list[str] | None = None) -> TinySSDModule:
    """The LightningModule described by a composed config, with a class head for ``class_names``.

    ``class_names`` come from the data module (the data set's classes); without them, from
    ``data.class_names``.
    """
    net = dict(_container(cfg.model))
    if class_names is None and cfg.data.get("class_names"):
        class_names = list(cfg.data.class_names)
    if net.get("num_classes") is None:
        net["num_classes"] = len(class_names) if class_names else cfg.data.get("num_classes", 1)
    elif class_names and net["num_classes"] != len(class_names):
        raise ConfigError(
            f"model.num_classes={net['num_classes']} but the data set has {len(class_names)} classes {class_names}; "
            "leave model.num_classes at null (the data set decides)."
        )
    compile_net = net.pop("compile", False)
    if not isinstance(compile_net, bool):
        raise ConfigError(f"model.compile must be true or false, got {compile_net!r}.")
    freeze_backbone = net.pop("freeze_backbone", False)
    if not isinstance(freeze_backbone, bool):
        raise ConfigError(f"model.freeze_backbone must be true or false, got {freeze_backbone!r}.")
    options = _container(cfg.module)
    accepted = set(inspect.signature(TinySSDModule.__init__).parameters)
    unknown = sorted(k for k in options if k not in accepted)
    if unknown:
        raise ConfigError(f"module.{unknown[0]} is not an option of TinySSDModule; see conf/train.yaml's module block.")
    return TinySSDModule(
        net=net,
        compile=compile_net,
        freeze_backbone=freeze_backbone,
        loss=_container(cfg.loss),
        optimizer=_container(cfg.optimizer),
        scheduler=_container(cfg.get("scheduler")),
        class_names=class_names,
        image_size=cfg.data.image_size,
        resize=cfg.data.get("resize", "stretch"),
        **options,
    )


def _module_for_evaluation(cfg: DictConfig, plan: ResumePlan | None) -> tuple[TinySSDModule, pl.LightningDataModule]:
    """The checkpoint's own model (not the config's) and a data module at its input size."""
    if plan is None:
        raise ConfigError("train=false evaluates a checkpoint: give ckpt_path=PATH (a .ckpt from a run folder).")
    return module_and_data_for_evaluation(cfg, module_from_checkpoint(plan.ckpt, plan.path), plan.path)


def build(node: DictConfig, where: str, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate`` of a trusted config node; a user error inside comes out unwrapped.

    Hydra wraps whatever a constructor raises in "Error in call to target ..."; a
    :class:`TinySSDError` (or Lightning's misconfiguration error, or a wrong keyword) is the
    user's and is reported as one paragraph naming ``where``.
    """
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as err:
        cause = err.__cause__
        if isinstance(cause, TinySSDError):
            raise cause from None
        # Lightning checks its arguments with TypeError/ValueError: those are the user's too.
        # tinyssd's own classes raise ConfigError, so anything else from them is a bug.
        third_party = not str(node.get("_target_", "")).startswith("tinyssd.")
        if isinstance(cause, ModuleNotFoundError):  # logger=wandb without wandb, say
            raise ConfigError(f"{where} needs a package that is not installed here: {cause}") from None
        if isinstance(cause, MisconfigurationException) or (
            isinstance(cause, (TypeError, ValueError)) and (third_party or "keyword argument" in str(cause))
        ):
            raise ConfigError(f"{where}: {cause}") from None
        raise


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
    """Train (and/or validate) as the config says; returns the final metrics."""
    with open_dict(cfg):
        accelerator = cfg.trainer.get("accelerator", "auto")
        cfg.trainer.precision = resolve_precision(cfg.trainer.get("precision", "auto"), accelerator)
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
            cfg.ckpt_path = str(plan.path)
    if cfg.get("seed") is not None:
        pl.seed_everything(cfg.seed, workers=True, verbose=False)

    if evaluate_only:
        module, datamodule = _module_for_evaluation(cfg, plan)
    else:
        datamodule = build(cfg.data, "data")
        module = build_module(cfg, datamodule.class_names)
        with open_dict(cfg):  # the run's config.yaml records the classes it was trained on
            cfg.data.class_names = list(module.class_names)
            cfg.model.num_classes = module.num_classes
        if cfg.get("test") and not datamodule.has_split("test"):
            raise ConfigError(
                f"test=true evaluates the best checkpoint on the test split, but the data set has none; "
                f"set {datamodule.split_key.format(split='test')} or drop test=true."
            )
        if cfg.get("init_from") and plan is None:
            say(init_from_checkpoint(module, cfg.init_from).summary())
        if plan is not None:
            check_compatible(module, plan.ckpt, plan.path)
            say(plan.note + ("; init_from is not applied (the run's own weights are)" if cfg.get("init_from") else ""))
            if plan.run is not None:
                # Continue in the interrupted run's folder: same checkpoints, same TensorBoard run.
                with open_dict(cfg):
                    cfg.paths.output_dir = str(plan.run)
                output_dir = plan.run
    output_dir.mkdir(parents=True, exist_ok=True)
    with open_dict(cfg):
        on_cpu = accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available())
        if cfg.trainer.get("sync_batchnorm") and on_cpu:
            # torch's SyncBatchNorm runs on GPUs only; CPU processes keep per-process statistics.
            cfg.trainer.sync_batchnorm = False
    if not (output_dir / "config.yaml").exists() or plan is None or plan.run is None:
        OmegaConf.save(cfg, output_dir / "config.yaml", resolve=True)

    best_metric = BestMetric(cfg.get("optimized_metric") or "val/map", "max")
    callbacks = [FiniteGuard(), best_metric, *_build_all(cfg.get("callbacks"), "callbacks")]
    loggers = _build_all(cfg.get("logger"), "logger")
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
    wall = time.perf_counter() - start

    metrics["wall_time_s"] = wall
    if best_metric.best is not None:
        metrics[f"best/{best_metric.monitor}"] = best_metric.best
    if trainer.is_global_zero:
        _write_job_summary(output_dir, trainer, metrics, best_metric)
    final = {f"hp/{k.replace('/', '_')}": v for k, v in metrics.items() if k.startswith(("val/", "best/"))}
    log_hyperparams(trainer.loggers, _flat_hparams(cfg), final, trainer.global_step)
    finish_loggers(trainer.loggers)
    _report(trainer, output_dir, metrics)
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


def _report(trainer: pl.Trainer, output_dir: Path, metrics: dict[str, float]) -> None:
    if not trainer.is_global_zero:
        return
    lines = [f"finished in {metrics['wall_time_s']:.1f} s; run folder {output_dir}"]
    for callback in trainer.callbacks:
        if isinstance(callback, EarlyStopping) and callback.stopped_epoch:
            lines.append(
                f"  stopped early after epoch {callback.stopped_epoch}: no {callback.monitor} gain in "
                f"{callback.patience} validation(s) (callbacks.early_stopping.patience)"
            )
    for ckpt in trainer.checkpoint_callbacks:
        if getattr(ckpt, "best_model_path", ""):
            kind = "best" if getattr(ckpt, "monitor", None) else "last"
            lines.append(f"  {kind} checkpoint: {ckpt.best_model_path}")
    shown = (
        "val/map",
        "val/map_50",
        "val/map_75",
        "val/mar_100",
        "val/class_error",
        "val/bbox_mae",
        "val/precision",
        "val/recall",
    )
    rows = [(k, metrics[k]) for k in shown if k in metrics]
    if rows:
        lines.append("  " + "metric".ljust(16) + "value")
        lines += [f"  {k:<16}{v:.6g}" for k, v in rows]
    lines.append(f"  dashboard: tensorboard --logdir {output_dir}")
    say("\n".join(lines))
