"""Objects from a composed config: ``hydra.utils.instantiate`` of trusted nodes, the LightningModule, precision.

Configs are the user's own files (trusted: their ``_target_`` picks what is built), unlike
checkpoints, whose specs go through :mod:`tinyssd.specs`'s allowlist. What a constructor
refuses comes out as one paragraph naming the config key.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from lightning.fabric.utilities.exceptions import MisconfigurationException
from omegaconf import DictConfig, OmegaConf

from tinyssd.errors import ConfigError, TinySSDError
from tinyssd.module import TinySSDModule

__all__ = ["build", "build_all", "build_module", "container", "fast_bf16_available", "resolve_precision"]


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


def container(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


def build_all(group: DictConfig | None, where: str) -> list[Any]:
    if not group:
        return []
    return [build(c, f"{where}.{k}") for k, c in group.items() if isinstance(c, DictConfig) and "_target_" in c]


def build_module(cfg: DictConfig, class_names: list[str] | None = None) -> TinySSDModule:
    """The LightningModule described by a composed config, with a class head for ``class_names``.

    ``class_names`` come from the data module (the data set's classes); without them, from
    ``data.class_names``.
    """
    net = dict(container(cfg.model))
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
    options = container(cfg.module)
    accepted = set(inspect.signature(TinySSDModule.__init__).parameters)
    unknown = sorted(k for k in options if k not in accepted)
    if unknown:
        raise ConfigError(f"module.{unknown[0]} is not an option of TinySSDModule; see conf/train.yaml's module block.")
    return TinySSDModule(
        net=net,
        compile=compile_net,
        freeze_backbone=freeze_backbone,
        loss=container(cfg.loss),
        optimizer=container(cfg.optimizer),
        scheduler=container(cfg.get("scheduler")),
        class_names=class_names,
        image_size=cfg.data.image_size,
        resize=cfg.data.get("resize", "stretch"),
        **options,
    )


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
