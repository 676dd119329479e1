"""Errors a user can act on, and how the entry points report them.

Exit statuses of ``train.py`` / ``predict.py``: 0 completed; 2 a user error (bad data, config,
checkpoint: one paragraph on stderr naming the thing and the fix); 143 stopped by SIGTERM
(``RunInterrupted``; resumable); 1 anything else (a bug: its traceback) or, for a multirun,
some job failed (each job still runs; see :mod:`tinyssd.sweep`).
"""

from __future__ import annotations

import functools
import logging
import re
import sys
from collections.abc import Callable
from typing import Any, TypeVar

from hydra.experimental.callback import Callback as HydraCallback

__all__ = [
    "EXIT_INTERRUPTED",
    "EXIT_USER_ERROR",
    "CheckpointError",
    "ConfigError",
    "DataError",
    "OutputFolderCheck",
    "RunInterrupted",
    "TinySSDError",
    "TrainingError",
    "entry_point",
    "report_user_errors",
    "run_hydra_app",
]

F = TypeVar("F", bound=Callable)
log = logging.getLogger("tinyssd")

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 128 + 15  # the shell's status for a process ended by SIGTERM


class TinySSDError(Exception):
    """A problem with the user's input: its message names the thing and the fix."""

    exit_code = EXIT_USER_ERROR


class ConfigError(TinySSDError, ValueError):
    """An impossible or inconsistent configuration."""


class DataError(TinySSDError):
    """Missing, corrupt or malformed data."""


class CheckpointError(TinySSDError):
    """A checkpoint that is missing, unsafe, or does not match the configuration."""


class TrainingError(TinySSDError):
    """Training cannot go on (a non-finite loss, say); the message says what to change."""


class RunInterrupted(TinySSDError):
    """The run was stopped from outside (SIGTERM); the message says how to resume it."""

    exit_code = EXIT_INTERRUPTED


class OutputFolderCheck(HydraCallback):
    """Hydra callback: a run folder that cannot be made is a user error (exit 2), not a traceback.

    Hydra makes the run's folder (under ``paths.log_dir``) before the task starts and fails
    with a chain of tracebacks when it cannot; this makes it first, when the run starts.
    """

    def on_run_start(self, config: Any, **kwargs: Any) -> None:
        self._make(config.hydra.run.dir)

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        self._make(config.hydra.sweep.dir)

    @staticmethod
    def _make(folder: str) -> None:
        from pathlib import Path

        try:
            Path(folder).mkdir(parents=True, exist_ok=True)
        except OSError as err:
            reason = err.strerror or str(err)
            print(
                f"\nConfigError: the run folder {folder} cannot be created ({reason}); set paths.log_dir to a "
                "folder you can write to.\n",
                file=sys.stderr,
                flush=True,
            )
            sys.exit(EXIT_USER_ERROR)


def paragraph(err: BaseException) -> str:
    """The one-paragraph form of an error (unwrapped: terminals wrap it, grep finds it whole)."""
    text = str(err)
    name = type(err).__name__
    raised = re.split(rf"\n(?:[\w.]+\.)?{name}: ", text)
    if "Original Traceback (most recent call last)" in text and len(raised) > 1:
        # Raised in a data-loader worker: torch re-raises it with the worker's traceback as the
        # message; the user's paragraph is what the worker raised.
        text = raised[-1] + " (in a data-loader worker)"
    return f"{name}: {' '.join(text.split())}"


# Set once a task function starts: Hydra's exit 1 before that was a config it could not compose.
_task_started = False


def run_hydra_app(main: Callable[[], Any]) -> None:
    """Run a ``@hydra.main`` function; a command line Hydra cannot compose exits 2, not 1.

    Hydra prints its own one-paragraph message (unknown key, missing group option, bad
    override syntax) and exits 1 for those and for bugs alike; a bug happens inside the task,
    a composition error before it.
    """
    try:
        main()
    except SystemExit as done:
        if done.code == 1 and not _task_started:
            for hint in renamed_key_hints(sys.argv[1:]):
                print(hint, file=sys.stderr, flush=True)
            sys.exit(EXIT_USER_ERROR)
        raise


# Config keys that moved (the model group became the LightningModule, the network nested in it).
RENAMED_KEYS = {
    "module.": "model.",
    **{f"model.{k}": f"model.net.{k}" for k in ("sizes", "ratios", "num_classes", "base_channels", "feature_channels")},
}


def renamed_key_hints(args: list[str]) -> list[str]:
    """A line for each command-line override that names a key by its old name, with the new one."""
    hints = []
    for arg in args:
        key = arg.split("=", 1)[0].lstrip("+~")
        for old, new in RENAMED_KEYS.items():
            if key == old or key.startswith(old if old.endswith(".") else old + "."):
                hints.append(f"{key} is now {new}{key[len(old) :]} (see conf/model/tinyssd.yaml).")
                break
    return hints


def report_user_errors(func: F) -> F:
    """Turn a :class:`TinySSDError` into one paragraph on stderr and its exit status (2).

    Anything else is a bug and keeps its traceback.
    """

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        global _task_started
        _task_started = True
        try:
            return func(*args, **kwargs)
        except TinySSDError as err:
            print(f"\n{paragraph(err)}\n", file=sys.stderr, flush=True)
            sys.exit(err.exit_code)

    return wrapper  # type: ignore[return-value]


def _in_multirun() -> bool:
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    except Exception:  # not under Hydra
        return False


def entry_point(func: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a Hydra task function: single runs as :func:`report_user_errors`; in a multirun a
    failing job is reported, recorded in its ``summary.json`` and the sweep goes on. It returns
    ``None``, which Hydra's Optuna sweeper records as a failed trial (NaN would not do: Optuna
    2.x raises on a NaN objective and the sweeper then crashes telling it). The multirun's exit
    status is set by :class:`tinyssd.sweep.SweepSummary` when it ends.
    """
    single = report_user_errors(func)

    @functools.wraps(func)
    def wrapper(cfg, *args, **kwargs):
        global _task_started
        _task_started = True
        if not _in_multirun():
            return single(cfg, *args, **kwargs)
        from tinyssd.sweep import record_failed_job

        try:
            return func(cfg, *args, **kwargs)
        except Exception as err:  # every job runs; KeyboardInterrupt still stops the sweep
            user_error = isinstance(err, TinySSDError)
            if user_error:
                print(f"\n{paragraph(err)}\n", file=sys.stderr, flush=True)
            else:
                log.exception("job failed")
            record_failed_job(cfg, err, user_error)
            if isinstance(err, RunInterrupted):
                # A SIGTERM is meant for the whole sweep: summarise what ran, then stop.
                from tinyssd.sweep import summarise_current_sweep

                summarise_current_sweep()
                sys.exit(err.exit_code)
            return None

    return wrapper
