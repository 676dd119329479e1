"""Objects from plain-data specs, ``{"_target_": NAME, **kwargs}``, with NAME from an allowlist.

A checkpoint stores the network, loss, optimizer and scheduler as such specs, so it loads
with ``torch.load(weights_only=True)``. The specs are data written by whoever handed over the
file, so they never choose what gets imported or called: :func:`build` looks ``_target_`` up
in :data:`ALLOWED` (a fixed table of tinyssd's own classes and ``torch.optim``'s optimizers and
schedulers), checks every argument is plain data accepted by that callable's signature, and
only then calls it. Anything else is refused with a :class:`~tinyssd.errors.ConfigError`
before any side effect. Hydra's ``instantiate`` is kept for the trusted config files only.

To train with a class of your own, add it in code with :func:`register` (never from a file).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch.optim import lr_scheduler

from tinyssd.errors import ConfigError, TinySSDError, shown
from tinyssd.limits import MAX_CLASSES, MAX_IMAGE_SIZE
from tinyssd.model.anchors import ASSIGNERS
from tinyssd.model.metrics import check_map_backend
from tinyssd.resize import check_resize_mode

__all__ = [
    "ALLOWED",
    "KINDS",
    "build",
    "build_optimization",
    "check_module_options",
    "check_plain",
    "check_spec",
    "register",
]

KINDS = ("net", "loss", "optimizer", "scheduler")
# Arguments the module passes itself (a spec naming them would replace what is trained).
RESERVED = {"optimizer": ("params",), "scheduler": ("optimizer", "steps_per_epoch")}
# torch schedulers that take callables or other schedulers cannot be described by plain data.
_SCHEDULERS = (
    "StepLR",
    "MultiStepLR",
    "ConstantLR",
    "LinearLR",
    "ExponentialLR",
    "PolynomialLR",
    "CosineAnnealingLR",
    "CosineAnnealingWarmRestarts",
    "CyclicLR",
    "OneCycleLR",
)

ALLOWED: dict[str, dict[str, Callable[..., Any]]] = {kind: {} for kind in KINDS}


def register(kind: str, target: Callable[..., Any], *names: str) -> None:
    """Allow ``target`` as a ``kind`` spec under its import path (and any extra ``names``)."""
    if kind not in ALLOWED:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    for name in (f"{target.__module__}.{target.__qualname__}", *names):
        ALLOWED[kind][name] = target


def _register_defaults() -> None:
    from tinyssd.model import schedules
    from tinyssd.model.loss import MultiBoxLoss
    from tinyssd.model.net import TinySSD

    # The second names are those of checkpoints written before the package was grouped into
    # data/, model/, deploy/, pipeline/ (tinyssd.model was then the network's module).
    register("net", TinySSD, "tinyssd.model.net.TinySSD", "tinyssd.model.TinySSD", "tinyssd.TinySSD")
    register(
        "loss", MultiBoxLoss, "tinyssd.model.loss.MultiBoxLoss", "tinyssd.loss.MultiBoxLoss", "tinyssd.MultiBoxLoss"
    )
    for name, obj in vars(torch.optim).items():
        if isinstance(obj, type) and issubclass(obj, torch.optim.Optimizer) and obj is not torch.optim.Optimizer:
            register("optimizer", obj, f"torch.optim.{name}")
    for name in _SCHEDULERS:
        if hasattr(lr_scheduler, name):
            register("scheduler", getattr(lr_scheduler, name), f"torch.optim.lr_scheduler.{name}")
    register(
        "scheduler", schedules.warmup_cosine, "tinyssd.model.schedules.warmup_cosine", "tinyssd.schedules.warmup_cosine"
    )
    register(
        "scheduler",
        schedules.warmup_multistep,
        "tinyssd.model.schedules.warmup_multistep",
        "tinyssd.schedules.warmup_multistep",
    )


def check_plain(value: Any, where: str) -> None:
    """Refuse anything but finite numbers, bools, text, ``None`` and lists/dicts of them.

    A nested mapping with a ``_target_`` is a spec inside a spec: refused too.
    """
    if value is None or isinstance(value, (bool, int, str)):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ConfigError(f"{where} is {value}; it must be a finite number.")
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            check_plain(item, f"{where}[{i}]")
        return
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ConfigError(f"{where} has a non-text key {key!r}; only plain values are allowed.")
            if key.startswith("_"):
                raise ConfigError(f"{where}.{key}: nested objects ({key}) are not allowed here; only plain values are.")
            check_plain(item, f"{where}.{key}")
        return
    raise ConfigError(f"{where} is a {type(value).__name__}; only numbers, text, lists and mappings are allowed.")


def check_spec(kind: str, spec: Any, where: str | None = None) -> tuple[Callable[..., Any], dict[str, Any]]:
    """Validate a spec of ``kind``; returns ``(callable, kwargs)`` without calling anything."""
    if not ALLOWED["net"]:
        _register_defaults()
    where = where or kind
    if not isinstance(spec, Mapping):
        raise ConfigError(f"{where} must be a mapping with a _target_, got a {type(spec).__name__}.")
    target_name = spec.get("_target_")
    allowed = ALLOWED[kind]
    if not isinstance(target_name, str) or target_name not in allowed:
        shown = ", ".join(sorted(n for n in allowed if n.count(".") <= 3)[:12])
        raise ConfigError(
            f"{where}._target_={target_name!r} is not allowed: a {kind} can only be one of tinyssd's own "
            f"classes or torch's ({shown}, ...). Nothing was imported or called."
        )
    target = allowed[target_name]
    kwargs = {k: v for k, v in spec.items() if k != "_target_"}
    check_plain(kwargs, where)
    try:
        signature = inspect.signature(target)
    except (TypeError, ValueError):  # builtins without a signature: accept their documented keywords
        signature = None
    for key in kwargs:
        if key in RESERVED.get(kind, ()):
            raise ConfigError(f"{where}.{key} is set by tinyssd itself; remove it from the spec.")
        if signature is not None and key not in signature.parameters:
            raise ConfigError(
                f"{where}.{key} is not an argument of {target_name}; its arguments are "
                f"{', '.join(p for p in signature.parameters if p not in RESERVED.get(kind, ()))}."
            )
    return target, kwargs


def build(kind: str, spec: Any, where: str | None = None, **extra: Any) -> Any:
    """Build the object a spec describes (``extra``: arguments tinyssd passes, e.g. ``params``)."""
    target, kwargs = check_spec(kind, spec, where)
    try:
        return target(**kwargs, **extra)
    except TinySSDError:
        raise
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{where or kind} ({spec['_target_']}): {err}") from err


def check_module_options(**options: Any) -> None:
    """Refuse impossible options of the LightningModule (from a config, or a checkpoint's hyperparameters)."""

    def number(key: str, low: float, high: float, integer: bool = False) -> None:
        value = options[key]
        kind = int if integer else (int, float)
        if isinstance(value, bool) or not isinstance(value, kind) or not (low <= value <= high):
            bounds = (
                f"a whole number >= {low:g}" if integer and high == float("inf") else f"a number in [{low:g}, {high:g}]"
            )
            raise ConfigError(f"model.{key} must be {bounds}, got {value!r}.")

    number("nms_threshold", 0, 1)
    number("pos_threshold", 0, 1)
    number("display_threshold", 0, 1)
    # Upper bounds keep a crafted checkpoint from asking for absurd allocations.
    number("max_detections", 1, 100_000, integer=True)
    number("image_size", 64, MAX_IMAGE_SIZE, integer=True)
    number("input_scale", 1e-6, 1e6)
    number("atss_topk", 1, 1000, integer=True)
    if options["assigner"] not in ASSIGNERS:
        raise ConfigError(
            f"model.assigner={options['assigner']!r} is not one of {list(ASSIGNERS)} "
            "(max_iou = the chapter's IoU >= 0.5 matching, atss = adaptive training sample selection)."
        )
    for key in ("channels_last", "compile", "freeze_backbone"):
        if not isinstance(options[key], bool):
            raise ConfigError(f"model.{key} must be true or false, got {options[key]!r}.")
    check_resize_mode(options["resize"], "model.resize")
    check_map_backend(options["map_backend"], "model.map_backend")
    names = options["class_names"]
    if names is not None and (
        not isinstance(names, (list, tuple)) or not names or not all(isinstance(n, str) and n for n in names)
    ):
        raise ConfigError(f"class_names must be a non-empty list of names (text), got {shown(names)}.")
    if names is not None and len(names) > MAX_CLASSES:
        raise ConfigError(f"class_names lists {len(names)} classes; tinyssd detects at most {MAX_CLASSES}.")


def build_optimization(optimizer: dict[str, Any], scheduler: dict[str, Any] | None, params: list, trainer: Any) -> Any:
    """Lightning's ``configure_optimizers`` value for checked optimizer and scheduler specs.

    tinyssd's schedules step per optimizer step (a smooth warm-up, ``steps_per_epoch`` from the
    trainer); torch's step per epoch.
    """
    from tinyssd.model.schedules import steps_per_epoch

    built = build("optimizer", optimizer, params=params)
    if not scheduler:
        return built
    target, _ = check_spec("scheduler", scheduler)
    per_step = "steps_per_epoch" in inspect.signature(target).parameters
    extra = {"steps_per_epoch": steps_per_epoch(trainer)} if per_step else {}
    schedule = build("scheduler", scheduler, optimizer=built, **extra)
    return {"optimizer": built, "lr_scheduler": {"scheduler": schedule, "interval": "step" if per_step else "epoch"}}
