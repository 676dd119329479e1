"""Objects from a composed config: ``hydra.utils.instantiate`` of trusted nodes, the LightningModule, precision.

Configs are the user's own files (trusted: their ``_target_`` picks what is built), unlike
checkpoints, whose specs go through :mod:`tinyssd.model.specs`'s allowlist. What a constructor
refuses comes out as one paragraph naming the config key.
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
from typing import Any

import torch
from hydra.errors import InstantiationException
from hydra.utils import get_object, instantiate
from lightning.fabric.utilities.exceptions import MisconfigurationException
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict

from tinyssd.errors import ConfigError, TinySSDError, escape_interpolation
from tinyssd.files import atomic_write_bytes
from tinyssd.model.module import TinySSDModule
from tinyssd.resize import STRETCH

__all__ = [
    "CONFIG_ONLY_MODEL_KEYS",
    "OWN_KEYS",
    "apply_precision",
    "build",
    "build_all",
    "build_module",
    "container",
    "fast_bf16_available",
    "resolve_precision",
    "save_config",
]


# Keys of the model group that only feed interpolations (conf/module/tinyssd.yaml).
CONFIG_ONLY_MODEL_KEYS = ("neck",)


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


def apply_precision(cfg: DictConfig) -> str:
    """Resolve ``trainer.precision`` (``auto``) in the config for its accelerator; returns the accelerator asked for."""
    with open_dict(cfg):
        accelerator = cfg.trainer.get("accelerator", "auto")
        cfg.trainer.precision = resolve_precision(cfg.trainer.get("precision", "auto"), accelerator)
    return accelerator


def container(node: Any) -> Any:
    """A config node as plain data (dicts and lists, interpolations resolved); anything else as it is."""
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, (DictConfig, ListConfig)) else node


def _escaped(value: Any) -> Any:
    if isinstance(value, str):
        return escape_interpolation(value)
    if isinstance(value, dict):
        return {k: _escaped(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_escaped(v) for v in value]
    return value


def save_config(cfg: DictConfig, path: str | os.PathLike) -> None:
    """The run's resolved config as YAML that reads back as the same values.

    Resolved values are final: any ``${`` left in them (a class name from a data set) is text,
    so it is escaped and loading the file never resolves it.
    """
    resolved = OmegaConf.to_container(cfg, resolve=True)
    atomic_write_bytes(path, OmegaConf.to_yaml(OmegaConf.create(_escaped(resolved))).encode(), "the run's config")


def build_all(group: DictConfig | None, where: str) -> list[Any]:
    """Every ``_target_`` child of a group (callbacks, loggers); a factory returning ``None`` means off."""
    if not group:
        return []
    built = [build(c, f"{where}.{k}") for k, c in group.items() if isinstance(c, DictConfig) and "_target_" in c]
    return [b for b in built if b is not None]


def build_module(cfg: DictConfig, class_names: list[str] | None = None) -> TinySSDModule:
    """The LightningModule of ``cfg.model`` (its ``_target_``, the network spec nested in ``model.net``).

    The loss, optimizer and scheduler come from their own groups; the data decide the input
    (``data.image_size``, ``data.resize``) and the classes: ``class_names`` from the data module,
    without them ``data.class_names``. Specs are handed over as plain data, as a checkpoint
    records them.
    """
    if class_names is None and cfg.data.get("class_names"):
        class_names = list(cfg.data.class_names)
    if not isinstance(cfg.model.get("net"), DictConfig):
        raise ConfigError("model.net must hold the network (_target_: tinyssd.model.net.TinySSD ...); see conf/module/")
    net = dict(container(cfg.model.net))
    if net.get("num_classes") is None:
        net["num_classes"] = len(class_names) if class_names else cfg.data.get("num_classes", 1)
    elif class_names and net["num_classes"] != len(class_names):
        raise ConfigError(
            f"model.net.num_classes={net['num_classes']} but the data set has {len(class_names)} classes "
            f"{class_names}; leave model.net.num_classes at null (the data set decides)."
        )
    parameters = inspect.signature(get_object(str(cfg.model._target_))).parameters
    # model.neck is the config's switch for model.net.neck (which interpolates it), not a module option.
    options = {k: v for k, v in container(cfg.model).items() if k not in CONFIG_ONLY_MODEL_KEYS}
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        unknown = sorted(str(k) for k in options if not str(k).startswith("_") and k not in parameters)
        if unknown:
            raise ConfigError(
                f"model.{unknown[0]} is not an option of {cfg.model._target_}; see conf/module/tinyssd.yaml for them."
            )
    return build(
        OmegaConf.create(options),
        "model",
        _recursive_=False,
        _convert_="all",
        net=net,
        loss=container(cfg.loss),
        optimizer=container(cfg.optimizer),
        scheduler=container(cfg.get("scheduler")),
        class_names=class_names,
        image_size=cfg.data.image_size,
        resize=cfg.data.get("resize", STRETCH),
    )


# Keys of a group that are tinyssd's settings (read by tinyssd), never passed to the group's target.
OWN_KEYS = {"trainer": ("budget",)}  # trainer.budget: tinyssd.pipeline.budget's TimeBudget


def build(node: DictConfig, where: str, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate`` of a trusted config node; a user error inside comes out unwrapped.

    ``kwargs`` (values the program computed: class names from a data set or a checkpoint, the
    callbacks) are passed to the constructor as they are, never merged into the config: Hydra
    would resolve a ``${...}`` inside them as an interpolation, so a class name
    ``${oc.env:SECRET}`` from a downloaded data set would become the variable's value. Hydra's
    own options (``_recursive_``, ``_convert_``) still go to ``instantiate``.

    Hydra wraps whatever a constructor raises in "Error in call to target ..."; a
    :class:`TinySSDError` (or Lightning's misconfiguration error, or a wrong keyword) is the
    user's and is reported as one paragraph naming ``where``.
    """
    options = {k: v for k, v in kwargs.items() if k.startswith("_") and k.endswith("_")}
    values = {k: v for k, v in kwargs.items() if k not in options}
    try:
        factory = instantiate(node, _partial_=True, **options)
    except InstantiationException as err:
        _raise_user_error(err.__cause__, node, where)
        raise
    own = OWN_KEYS.get(where, ())
    if own:
        kept = {k: v for k, v in factory.keywords.items() if k not in own}
        factory = functools.partial(factory.func, *factory.args, **kept)
    try:
        return factory(**values)
    except TinySSDError:
        raise
    except Exception as err:
        _raise_user_error(err, node, where)
        raise


def _raise_user_error(cause: BaseException | None, node: DictConfig, where: str) -> None:
    """Raise ``cause`` as the user's error (a :class:`ConfigError` naming ``where``) when it is one."""
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


class _NoPromotions(logging.Filter):
    """Drops Lightning's advertisements ("💡 Tip: ... try installing litlogger / litmodels"); warnings stay."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip")


def quiet_lightning() -> None:
    """Silence what Lightning prints that says nothing about the run (its promotional tips); idempotent."""
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _NoPromotions) for f in logger.filters):
            logger.addFilter(_NoPromotions())
