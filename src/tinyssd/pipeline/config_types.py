"""Every key of a config node has the type its ``_target_``'s signature declares: checked by key, in words.

Text given for a number is named by its key and the type it needs, not left to a bare
``TypeError`` inside a constructor.
"""

from __future__ import annotations

import collections.abc as cabc
import os
import types
import typing
from pathlib import Path
from typing import Any

from hydra.utils import get_object
from omegaconf import DictConfig, OmegaConf, open_dict

from tinyssd.errors import ConfigError

__all__ = ["EXTRA_VALUES", "TOP_LEVEL", "TYPED_GROUPS", "check_types", "describe"]

# Config groups whose _target_ signature types their keys.
TYPED_GROUPS = ("data", "model", "loss", "optimizer", "scheduler", "trainer")


_UNKNOWN = object()
# Values a config may hold that the target never sees (train() resolves them first).
EXTRA_VALUES = {
    ("trainer", "precision"): ("auto",),
    ("model.net", "num_classes"): (None,),
    ("model.net", "sizes"): ("auto",),  # anchors=auto: fitted to the data when training starts
    ("model.net", "ratios"): ("auto",),
}


_PLURAL = {bool: "true/false values", int: "whole numbers", float: "numbers", str: "texts"}


def _plural(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin in (list, tuple, cabc.Sequence, cabc.Iterable):
        args = [a for a in typing.get_args(annotation) if a is not Ellipsis]
        return f"lists of {_plural(args[0])}" if args else "lists"
    return _PLURAL.get(annotation, "values")


def describe(annotation: Any) -> str:
    """A type annotation in words: ``int`` -> "a whole number", ``Sequence[float]`` -> "a list of numbers"."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        members = [a for a in typing.get_args(annotation) if a is not type(None)]
        if float in members and int in members:  # "a number" says both
            members.remove(int)
        literals = [v for a in members if typing.get_origin(a) is typing.Literal for v in typing.get_args(a)]
        parts = [describe(a) for a in members if typing.get_origin(a) is not typing.Literal]
        if literals:
            parts.append("one of " + ", ".join(repr(v) for v in literals))
        text = " or ".join(dict.fromkeys(parts))
        return text + (" or null" if type(None) in typing.get_args(annotation) else "")
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(annotation))
    if origin in (list, tuple, cabc.Sequence, cabc.Iterable):
        args = [a for a in typing.get_args(annotation) if a is not Ellipsis]
        return f"a list of {_plural(args[0])}" if args else "a list"
    names = {bool: "true or false", int: "a whole number", float: "a number", str: "text"}
    return names.get(annotation, getattr(annotation, "__name__", str(annotation)))


def _matches(value: Any, annotation: Any) -> bool | object:
    """Whether a plain config value fits an annotation (``_UNKNOWN`` when it cannot be told)."""
    if annotation is Any:
        return True
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        results = [_matches(value, a) for a in args]
        if any(r is True for r in results):
            return True
        return _UNKNOWN if any(r is _UNKNOWN for r in results) else False
    if origin is typing.Literal:
        return value in args and not isinstance(value, bool)
    if annotation is type(None):
        return value is None
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation in (str, os.PathLike, Path):
        return isinstance(value, str)
    if origin in (list, tuple, cabc.Sequence, cabc.Iterable) or annotation in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return False
        items = [a for a in args if a is not Ellipsis]
        if origin is tuple and len(items) > 1:
            return len(value) == len(items) and not any(
                _matches(v, a) is False for v, a in zip(value, items, strict=True)
            )
        item = items[0] if items else Any
        return not any(_matches(v, item) is False for v in value)
    if origin in (dict, cabc.Mapping) or annotation is dict:
        return isinstance(value, dict)
    return _UNKNOWN


def _sequence_item(annotation: Any) -> Any:
    """The item type of the list an annotation allows (``Sequence[str] | None`` -> ``str``), or None."""
    for member in (annotation, *typing.get_args(annotation)):
        if typing.get_origin(member) in (list, tuple, cabc.Sequence, cabc.Iterable):
            return next((a for a in typing.get_args(member) if a is not Ellipsis), Any)
    return None


def _coerce_text(value: Any, annotation: Any) -> Any:
    """Numbers typed where text is declared (a folder named 2024) become that text; lists item by item."""
    if isinstance(value, list):
        item = _sequence_item(annotation)
        return value if item is None else [_coerce_text(v, item) for v in value]
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if is_number and _matches("x", annotation) is True and _matches(value, annotation) is not True:
        return str(value)
    return value


def _signature_types(target: str) -> dict[str, Any]:
    """Types of a target's keyword arguments; a class's ``**kwargs`` passed to its bases count too."""
    try:
        obj = get_object(target)
        if isinstance(obj, type):
            hints: dict[str, Any] = {}
            for cls in reversed(obj.__mro__):  # subclasses last: their annotations win
                if "__init__" in vars(cls) and cls.__module__.startswith("tinyssd"):
                    hints.update(typing.get_type_hints(cls.__init__))
            if not hints:
                hints = typing.get_type_hints(obj.__init__)
        else:
            hints = typing.get_type_hints(obj)
    except Exception:  # an annotation that cannot be resolved: nothing to check against
        return {}
    hints.pop("return", None)
    return hints


# Top-level keys of train.yaml and their types.


TOP_LEVEL = {"seed": int | None, "train": bool, "validate": bool, "test": bool, "optimized_metric": str | None}


def _typed_nodes(cfg: DictConfig) -> list[tuple[str, DictConfig]]:
    """(key, node) of every object the config builds: the typed groups, each callback and logger."""
    nodes = [(g, cfg.get(g)) for g in TYPED_GROUPS]
    for group in ("callbacks", "logger"):
        children = cfg.get(group)
        if isinstance(children, DictConfig):
            nodes += [(f"{group}.{k}", v) for k, v in children.items()]
    built = [(k, v) for k, v in nodes if isinstance(v, DictConfig) and "_target_" in v]
    # Objects nested in one (model.net): typed by their own target.
    nested = [(f"{k}.{c}", v) for k, node in built for c, v in node.items() if isinstance(v, DictConfig)]
    return built + [(k, v) for k, v in nested if "_target_" in v]


def check_types(cfg: DictConfig) -> None:
    """Every key of a ``_target_`` node has the type that target's signature declares."""
    for key, annotation in TOP_LEVEL.items():
        value = cfg.get(key)
        if key in cfg and _matches(value, annotation) is False:
            raise ConfigError(f"{key} must be {describe(annotation)}, got {value!r}.")
    for group, node in _typed_nodes(cfg):
        hints = _signature_types(str(node._target_))
        values = OmegaConf.to_container(node, resolve=True)
        for key, value in values.items():
            if key not in hints or str(key).startswith("_"):
                continue
            annotation = hints[key]
            fixed = _coerce_text(value, annotation)
            if fixed != value or type(fixed) is not type(value):
                with open_dict(cfg):
                    node[key] = fixed
                value = fixed
            if value in EXTRA_VALUES.get((group, key), ()):
                continue
            if _matches(value, annotation) is False:
                raise ConfigError(f"{group}.{key} must be {describe(annotation)}, got {value!r}.")
