"""The pipeline's pre-flight check of a composed config, before anything is built or written.

Each component checks its own arguments' ranges when it is built; this module does what no
single component can: every value has the type its constructor declares (text given for a
number is named by its key, not left to a bare ``TypeError``), no number anywhere is NaN or
infinite, the hardware asked for exists, and settings that span groups agree.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

from tinyssd.errors import ConfigError
from tinyssd.model.run_files import NEWEST_RUN_NAMES, shipped_model, shipped_models
from tinyssd.pipeline.config_types import check_types

__all__ = [
    "check_added_keys",
    "check_config",
    "check_finite",
    "check_hardware",
    "check_required",
]


def check_finite(node: Any, prefix: str = "") -> None:
    """No NaN or infinite number anywhere in the config (``nan <= 0`` is false, so ranges miss it)."""
    if isinstance(node, (DictConfig, ListConfig)):
        node = OmegaConf.to_container(node, resolve=True)
    if isinstance(node, dict):
        for key, value in node.items():
            if prefix == "" and key == "hydra":
                continue
            check_finite(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(node, (list, tuple)):
        for i, value in enumerate(node):
            check_finite(value, f"{prefix}[{i}]")
    elif isinstance(node, float) and not math.isfinite(node):
        raise ConfigError(f"{prefix} is {node}; it must be a finite number.")


def check_hardware(cfg: DictConfig) -> None:
    """The accelerator asked for exists here."""
    accelerator = str(cfg.trainer.get("accelerator", "auto"))
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"trainer.accelerator={accelerator} but this machine has no usable CUDA GPU; use "
            "trainer.accelerator=auto (or cpu), or run on a machine with a GPU."
        )
    if accelerator == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("trainer.accelerator=mps but MPS is not available here; use trainer.accelerator=auto.")


def _positive(value: Any, key: str) -> None:
    if value is not None and (not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0):
        raise ConfigError(f"{key} must be a positive number, got {value!r}.")


def check_required(cfg: DictConfig) -> None:
    """Every ``???`` (a value the config cannot guess: a data set's path, a checkpoint) is given."""
    missing = sorted(k for k in OmegaConf.missing_keys(cfg) if not k.startswith("hydra."))
    if missing:
        raise ConfigError(
            f"{missing[0]} has no default and must be given: add {missing[0]}=... to the command line"
            + (f" (also missing: {', '.join(missing[1:])})." if len(missing) > 1 else ".")
        )


# Seeds reach numpy, whose generator takes 0 .. 2**32 - 1.
MAX_SEED = 2**32 - 1
# Groups whose new entries are built (each needs a _target_), or read by their owner.
_BUILT_GROUPS = ("callbacks", "logger")


def _leaf_keys(node: Any, prefix: str = "") -> list[str]:
    if isinstance(node, dict):
        keys = []
        for key, value in node.items():
            keys += _leaf_keys(value, f"{prefix}.{key}" if prefix else str(key))
        return keys
    return [prefix]


def check_added_keys(cfg: DictConfig, script: str = "train.py") -> None:
    """Refuse a ``+key=value`` override that adds a key no part of the run reads.

    Hydra suggests ``+key`` for a mistyped key (``+epochs=2``); without this check the run would
    go on as if it had not been given. A key added under an object the config builds
    (``+trainer.x``, ``+model.x``, ``+callbacks.NAME._target_=...``) is checked by that object's
    constructor; anywhere else nothing would read it.
    """
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import OverrideType

    if not HydraConfig.initialized():
        return
    hydra_cfg = HydraConfig.get()
    groups = set(hydra_cfg.runtime.choices)
    try:
        overrides = OverridesParser.create().parse_overrides(list(hydra_cfg.overrides.task))
    except Exception:  # Hydra parsed them once already; nothing to add here
        return
    plain = OmegaConf.to_container(cfg, resolve=False)
    for override in overrides:
        key = override.key_or_group
        if override.type != OverrideType.ADD or key in groups or key.startswith("hydra.") or override.package:
            continue
        parent = key.rpartition(".")[0]
        node = OmegaConf.select(cfg, parent) if parent else None
        built = isinstance(node, DictConfig) and "_target_" in node
        new_component = parent in _BUILT_GROUPS and isinstance(OmegaConf.select(cfg, key), DictConfig)
        if built or new_component:
            continue
        last = key.rpartition(".")[2]
        leaves = [k for k in _leaf_keys(plain) if not k.startswith("hydra") and k != key]
        import difflib

        near = [k for k in leaves if last and last in k.rpartition(".")[2]] or difflib.get_close_matches(key, leaves, 3)
        hint = f" Did you mean {' or '.join(near[:3])}?" if near else ""
        raise ConfigError(
            f"+{key} adds a key that nothing in {script} reads, so it would change nothing.{hint} Set an existing key "
            f"without '+' (python {script} --cfg job lists them all)."
        )


def _check_seed(seed: Any) -> None:
    if seed is None:
        return
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise ConfigError(f"seed must be a whole number from 0 to {MAX_SEED} (or null for none), got {seed!r}.")


def _check_group_nodes(cfg: DictConfig) -> None:
    for key in ("callbacks", "logger"):
        if key in cfg and cfg[key] is not None and not isinstance(cfg[key], DictConfig):
            raise ConfigError(
                f"{key} must be a group of {key} (or {key}=none), got {cfg[key]!r}; set one entry with {key}.NAME=..."
            )


def check_tracking_servers(cfg: DictConfig, timeout_s: float = 5.0) -> None:
    """A logger that sends to a server (MLflow's ``tracking_uri`` over HTTP) can reach it, checked in seconds.

    MLflow's client retries an unreachable server for minutes before failing with tracebacks.
    """
    import socket
    from urllib.parse import urlsplit

    for name, node in (cfg.get("logger") or {}).items():
        uri = node.get("tracking_uri") if isinstance(node, DictConfig) else None
        if not isinstance(uri, str) or not uri.lower().startswith(("http://", "https://")):
            continue
        parts = urlsplit(uri)
        try:
            port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
        except ValueError:
            raise ConfigError(f"logger.{name}.tracking_uri={uri} has a port that is not a number.") from None
        if not parts.hostname:
            raise ConfigError(f"logger.{name}.tracking_uri={uri} names no host; give http://HOST:PORT.")
        try:
            socket.create_connection((parts.hostname, port), timeout=timeout_s).close()
        except OSError as err:
            raise ConfigError(
                f"logger.{name}.tracking_uri={uri} cannot be reached ({err.strerror or err}); start the tracking "
                "server, fix the address, or log to a local store (the default logger=mlflow writes under logs/)."
            ) from None


def check_config(cfg: DictConfig) -> None:
    """Fail before any training with one paragraph naming the first impossible setting."""
    check_required(cfg)
    check_finite(cfg)
    _check_group_nodes(cfg)
    check_types(cfg)
    check_hardware(cfg)
    _check_seed(cfg.get("seed"))
    check_tracking_servers(cfg)
    _positive(cfg.optimizer.get("lr"), "optimizer.lr")
    max_epochs = cfg.trainer.get("max_epochs")
    if max_epochs is not None and max_epochs != -1:
        _positive(max_epochs, "trainer.max_epochs")
    ckpt = cfg.get("ckpt_path")
    if ckpt is not None and not isinstance(ckpt, str):
        raise ConfigError(f"ckpt_path must be a path or 'last', got {ckpt!r}.")
    if ckpt and ckpt != "last" and not Path(ckpt).exists():
        raise ConfigError(
            f"ckpt_path={ckpt} does not exist; give a .ckpt file, a run folder, or ckpt_path=last "
            "(the newest run's last.ckpt)."
        )
    init_from = cfg.get("init_from")
    named = isinstance(init_from, str) and (init_from in NEWEST_RUN_NAMES or shipped_model(init_from) is not None)
    if init_from is not None and not named and (not isinstance(init_from, str) or not Path(init_from).exists()):
        raise ConfigError(
            f"init_from={init_from} is not a checkpoint; give the .ckpt to start from "
            "(e.g. logs/train/runs/<run>/checkpoints/best.ckpt), a run folder, last, best, or a shipped model "
            f"({', '.join(shipped_models()) or 'none in this install'}); or drop init_from."
        )
    if cfg.model.get("freeze_backbone") and not init_from and not ckpt:
        raise ConfigError(
            "model.freeze_backbone=true trains only the heads on a randomly initialised backbone; "
            "give init_from=CKPT (the model to fine-tune), or drop model.freeze_backbone."
        )
    data_classes = cfg.data.get("num_classes")
    net_classes = (cfg.model.get("net") or {}).get("num_classes")
    if net_classes is not None and data_classes is not None and net_classes != data_classes:
        raise ConfigError(
            f"model.net.num_classes={net_classes} but data.num_classes={data_classes}; "
            "they must match (leave model.net.num_classes at null: the data set's classes decide)."
        )
