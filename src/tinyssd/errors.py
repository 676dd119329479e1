"""Errors a user can act on, and how the entry points report them."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import TypeVar

__all__ = ["CheckpointError", "ConfigError", "DataError", "TinySSDError", "TrainingError", "report_user_errors"]

F = TypeVar("F", bound=Callable)


class TinySSDError(Exception):
    """A problem with the user's input: its message names the thing and the fix."""


class ConfigError(TinySSDError, ValueError):
    """An impossible or inconsistent configuration."""


class DataError(TinySSDError):
    """Missing, corrupt or malformed data."""


class CheckpointError(TinySSDError):
    """A checkpoint that is missing, unsafe, or does not match the configuration."""


class TrainingError(TinySSDError):
    """Training cannot go on (a non-finite loss, say); the message says what to change."""


def report_user_errors(func: F) -> F:
    """Turn a :class:`TinySSDError` into one readable paragraph on stderr and exit status 2.

    Anything else is a bug and keeps its traceback.
    """

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except TinySSDError as err:
            # One unwrapped paragraph: terminals wrap it, and grep finds it whole in logs.
            print(f"\n{type(err).__name__}: {err}\n", file=sys.stderr, flush=True)
            sys.exit(2)

    return wrapper  # type: ignore[return-value]
