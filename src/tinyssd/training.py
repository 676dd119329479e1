"""The training pipeline behind ``train.py``: config checks, object construction, fit, report."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from lightning.pytorch.loggers import TensorBoardLogger
from omegaconf import DictConfig, OmegaConf, open_dict

from tinyssd.augment import check_mosaic_share, check_zoom_out
from tinyssd.callbacks import FiniteLossGuard, read_metrics_csv
from tinyssd.detector import load_checkpoint, module_from_checkpoint
from tinyssd.errors import ConfigError
from tinyssd.model import check_anchor_config
from tinyssd.module import TinySSDModule

__all__ = ["check_config", "fast_bf16_available", "resolve_precision", "train"]


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


def _positive(value: Any, key: str) -> None:
    if value is not None and (not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0):
        raise ConfigError(f"{key} must be a positive number, got {value!r}.")


def check_config(cfg: DictConfig) -> None:
    """Fail before any training with one line per impossible setting."""
    check_anchor_config(cfg.model.sizes, cfg.model.ratios)
    _positive(cfg.data.batch_size, "data.batch_size")
    if not isinstance(cfg.data.batch_size, int):
        raise ConfigError(f"data.batch_size must be a whole number, got {cfg.data.batch_size!r}.")
    _positive(cfg.optimizer.get("lr"), "optimizer.lr")
    max_epochs = cfg.trainer.get("max_epochs")
    if max_epochs is not None and max_epochs != -1:
        _positive(max_epochs, "trainer.max_epochs")
    check_mosaic_share(cfg.data.get("mosaic", 0.0))
    check_zoom_out(cfg.data.get("zoom_out", 1.0))
    scale = cfg.get("module", {}).get("input_scale", 255)
    if not isinstance(scale, (int, float)) or scale <= 0:
        raise ConfigError(f"module.input_scale must be a positive number (255: the chapter), got {scale!r}.")
    ckpt = cfg.get("ckpt_path")
    if ckpt and ckpt != "last" and not Path(ckpt).exists():
        raise ConfigError(
            f"ckpt_path={ckpt} does not exist; give a .ckpt file, a run folder, or ckpt_path=last "
            "(the newest run's last.ckpt)."
        )
    if cfg.model.get("num_classes") != cfg.data.num_classes:
        raise ConfigError(
            f"model.num_classes={cfg.model.get('num_classes')} but data.num_classes={cfg.data.num_classes}; "
            "they must match (leave model.num_classes at its default ${data.num_classes})."
        )


def _container(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


def _build_all(group: DictConfig | None) -> list[Any]:
    if not group:
        return []
    return [instantiate(c) for c in group.values() if isinstance(c, DictConfig) and "_target_" in c]


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


def build_module(cfg: DictConfig) -> TinySSDModule:
    """The LightningModule described by a composed config."""
    net = dict(_container(cfg.model))
    compile_net = bool(net.pop("compile", False))
    return TinySSDModule(
        net=net,
        compile=compile_net,
        loss=_container(cfg.loss),
        optimizer=_container(cfg.optimizer),
        scheduler=_container(cfg.get("scheduler")),
        class_names=list(cfg.data.class_names) if cfg.data.get("class_names") else None,
        image_size=int(cfg.data.image_size),
        **_container(cfg.module),
    )


def _module_for_evaluation(
    cfg: DictConfig, ckpt: dict[str, Any] | None
) -> tuple[TinySSDModule, pl.LightningDataModule]:
    """The checkpoint's own model (not the config's) and a data module at its input size."""
    if ckpt is None:
        raise ConfigError("train=false evaluates a checkpoint: give ckpt_path=PATH (a .ckpt from a run folder).")
    module = module_from_checkpoint(ckpt, cfg.ckpt_path)
    hparams = ckpt["hyper_parameters"]
    overrides = {"image_size": int(hparams.get("image_size", cfg.data.image_size)), "num_classes": module.num_classes}
    if hparams.get("class_names"):
        overrides["class_names"] = list(hparams["class_names"])
    datamodule = instantiate(cfg.data, **overrides)
    return module, datamodule


def resolve_resume(ckpt_path: str | None, runs_dir: Path, current_run: Path) -> tuple[str | None, Path | None]:
    """``ckpt_path`` as a file, plus the run folder to continue in (``None``: a fresh run).

    ``last`` is the newest ``last.ckpt`` under ``runs_dir``; a run folder means its
    ``checkpoints/last.ckpt``; a ``.ckpt`` inside a run's ``checkpoints/`` continues that run.
    """
    if not ckpt_path:
        return None, None
    path = Path(ckpt_path)
    if ckpt_path == "last":
        candidates = [p for p in runs_dir.glob("*/checkpoints/last.ckpt") if p.parent.parent != current_run]
        if not candidates:
            raise ConfigError(f"ckpt_path=last found no run with checkpoints/last.ckpt under {runs_dir}.")
        path = max(candidates, key=lambda p: p.stat().st_mtime)
    elif path.is_dir():
        if not (path / "checkpoints" / "last.ckpt").is_file():
            raise ConfigError(f"run folder {path} has no checkpoints/last.ckpt to resume from.")
        path = path / "checkpoints" / "last.ckpt"
    run = (
        path.parent.parent
        if path.parent.name == "checkpoints" and (path.parent.parent / "config.yaml").exists()
        else None
    )
    return str(path), run


def train(cfg: DictConfig) -> dict[str, float]:
    """Train (and/or validate) as the config says; returns the final metrics."""
    check_config(cfg)
    output_dir = Path(cfg.paths.output_dir)
    ckpt = None
    if cfg.get("ckpt_path"):
        ckpt_path, resumed_run = resolve_resume(cfg.ckpt_path, output_dir.parent, output_dir)
        ckpt = load_checkpoint(ckpt_path)  # a clear error for anything that is not a tinyssd checkpoint
        with open_dict(cfg):
            cfg.ckpt_path = ckpt_path
            if resumed_run is not None and cfg.get("train", True):
                # Continue in the interrupted run's folder: same checkpoints, same TensorBoard run.
                print(f"tinyssd: resuming {resumed_run} from {ckpt_path}", flush=True)
                cfg.paths.output_dir = str(resumed_run)
                output_dir = resumed_run
    output_dir.mkdir(parents=True, exist_ok=True)
    with open_dict(cfg):
        accelerator = cfg.trainer.get("accelerator", "auto")
        cfg.trainer.precision = resolve_precision(cfg.trainer.get("precision", "auto"), accelerator)
        on_cpu = accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available())
        if cfg.trainer.get("sync_batchnorm") and on_cpu:
            # torch's SyncBatchNorm runs on GPUs only; CPU processes keep per-process statistics.
            cfg.trainer.sync_batchnorm = False
    if not (output_dir / "config.yaml").exists() or not cfg.get("ckpt_path"):
        OmegaConf.save(cfg, output_dir / "config.yaml", resolve=True)

    if cfg.get("seed") is not None:
        pl.seed_everything(cfg.seed, workers=True, verbose=False)

    evaluate_only = not cfg.get("train", True)
    if evaluate_only:
        module, datamodule = _module_for_evaluation(cfg, ckpt)
    else:
        datamodule = instantiate(cfg.data)
        module = build_module(cfg)
    callbacks = [FiniteLossGuard(), *_build_all(cfg.get("callbacks"))]
    loggers = _build_all(cfg.get("logger"))
    trainer: pl.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)

    print(f"tinyssd: run folder {output_dir} (precision {cfg.trainer.precision})", flush=True)
    start = time.perf_counter()
    if cfg.get("train", True):
        trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"), weights_only=True)
    if evaluate_only:
        # The module already holds the checkpoint's weights (loaded with weights_only=True).
        trainer.validate(module, datamodule=datamodule)
    elif cfg.get("validate", False):
        ckpt = "best" if trainer.checkpoint_callback else None
        trainer.validate(module, datamodule=datamodule, ckpt_path=ckpt, weights_only=True)
    wall = time.perf_counter() - start

    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if torch.is_tensor(v) and v.numel() == 1}
    metrics["wall_time_s"] = wall
    if trainer.is_global_zero:
        _write_job_summary(cfg, output_dir, trainer, metrics)
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger) and trainer.is_global_zero:
            final = {
                f"hp/{k.replace('/', '_')}": v for k, v in metrics.items() if k.startswith("val/") and math.isfinite(v)
            }
            logger.log_hyperparams(_flat_hparams(cfg), metrics=final or None)
    _report(trainer, output_dir, metrics)
    return metrics


def _write_job_summary(cfg: DictConfig, output_dir: Path, trainer: pl.Trainer, metrics: dict[str, float]) -> None:
    """``summary.json`` in the run folder: what the sweep summary reads."""
    try:
        overrides = list(HydraConfig.get().overrides.task)
    except ValueError:  # not under Hydra
        overrides = []
    best = {"val/map": None, "val/map_50": None}
    csv_path = output_dir / "metrics.csv"
    if csv_path.exists():
        rows = read_metrics_csv(csv_path)
        for key in best:
            values = [float(r[key]) for r in rows if r.get(key)]
            best[key] = max(values) if values else None
    summary = {
        "overrides": overrides,
        "best_val_map": best["val/map"],
        "best_val_map_50": best["val/map_50"],
        "val_map": metrics.get("val/map"),
        "val_map_50": metrics.get("val/map_50"),
        "val_class_error": metrics.get("val/class_error"),
        "val_bbox_mae": metrics.get("val/bbox_mae"),
        "epochs": trainer.current_epoch,  # after fit: the number of epochs trained
        "wall_time_s": metrics.get("wall_time_s"),
    }
    (output_dir / "summary.json").write_text(json.dumps(summary, indent=2))


def _report(trainer: pl.Trainer, output_dir: Path, metrics: dict[str, float]) -> None:
    if not trainer.is_global_zero:
        return
    lines = [f"tinyssd: finished in {metrics['wall_time_s']:.1f} s; run folder {output_dir}"]
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
    print("\n".join(lines), flush=True)
