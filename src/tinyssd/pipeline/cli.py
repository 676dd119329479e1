"""How the entry points (train.py, eval.py, predict.py, export.py) report errors and exit.

A :class:`~tinyssd.errors.TinySSDError` becomes one paragraph on stderr and its exit status
(2, or 1 for a full disk); anything else is a bug and keeps its traceback. A command line
Hydra cannot compose exits 2; a multirun job that fails is recorded and the sweep goes on
(:mod:`tinyssd.pipeline.sweep`).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import sys
from collections.abc import Callable
from typing import Any, TypeVar

from hydra.experimental.callback import Callback as HydraCallback

from tinyssd.errors import (
    EXIT_ENVIRONMENT,
    EXIT_USER_ERROR,
    RunInterrupted,
    TinySSDError,
    disk_fault,
    paragraph,
    printable,
)

__all__ = [
    "OutputFolderCheck",
    "entry_point",
    "renamed_key_hints",
    "report_user_errors",
    "run_hydra_app",
    "stop_on_sigterm",
]

F = TypeVar("F", bound=Callable)
log = logging.getLogger("tinyssd")


@contextlib.contextmanager
def stop_on_sigterm():
    """Within the block, SIGTERM raises :class:`RunInterrupted` (so the code can say what it finished)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: Any) -> None:
        raise RunInterrupted("stopped by SIGTERM")

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class OutputFolderCheck(HydraCallback):
    """Hydra callback: a run folder that cannot be made is a user error (exit 2), not a traceback.

    Hydra makes the run's folder (under ``paths.log_dir``) before the task starts and fails
    with a chain of tracebacks when it cannot; this makes it first, when the run starts.
    """

    def on_run_start(self, config: Any, **kwargs: Any) -> None:
        self._claim(config.hydra.run)

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        self._claim(config.hydra.sweep)

    @classmethod
    def _claim(cls, node: Any) -> None:
        """Make ``node.dir``; a timestamped default that another run already made gets ``_2``, ``_3``, ...

        Two runs started in the same second would otherwise share one folder (and the second
        would be refused, or mix its files with the first's). A folder named on the command
        line is used as given.
        """
        from omegaconf import OmegaConf, read_write

        timestamped = "${now:" in str(OmegaConf.to_container(node, resolve=False)["dir"])
        folder = cls._make(str(node.dir), exclusive=timestamped)
        if folder != str(node.dir):
            with read_write(node):
                node.dir = folder

    @staticmethod
    def _make(folder: str, exclusive: bool = False) -> str:
        """Make ``folder`` (with ``exclusive``: a new one, suffixed when taken) and check it takes bytes."""
        import errno
        import os
        from pathlib import Path

        if exclusive:
            base, number = folder, 1
            while True:
                try:
                    Path(folder).parent.mkdir(parents=True, exist_ok=True)
                    Path(folder).mkdir()  # atomic: of two runs racing for a name, one gets it
                    break
                except FileExistsError:
                    number += 1
                    folder = f"{base}_{number}"
                except OSError:
                    break  # reported below, with the same words as any folder that cannot be made
        probe = Path(folder) / f".tinyssd-write-test-{os.getpid()}"
        try:
            Path(folder).mkdir(parents=True, exist_ok=True)
            # Hydra writes its config files next: a folder that takes no bytes (a full disk, /proc)
            # is found here, not by a traceback from Hydra's own writes.
            with open(probe, "wb") as f:
                f.write(b"\0" * 65536)
                f.flush()
                os.fsync(f.fileno())
        except OSError as err:
            reason = err.strerror or str(err)
            full = err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EIO)
            print(
                f"\n{'OutputError' if full else 'ConfigError'}: the run folder {printable(folder)} cannot be "
                f"{'written' if Path(folder).is_dir() else 'created'} ({reason}); "
                + (
                    "free disk space, or set paths.log_dir to a folder on another disk.\n"
                    if full
                    else "set paths.log_dir (or hydra.run.dir) to a folder you can write to.\n"
                ),
                file=sys.stderr,
                flush=True,
            )
            global _reported
            _reported = True  # run_hydra_app: this exit status is meant, not a composition error
            sys.exit(EXIT_ENVIRONMENT if full else EXIT_USER_ERROR)
        finally:
            try:
                probe.unlink(missing_ok=True)
            except OSError:
                pass
        return folder


# Set once a task function starts: Hydra's exit 1 before that was a config it could not compose.
_task_started = False
# Set when tinyssd itself reported the error before the task (a run folder that takes no bytes).
_reported = False


def run_hydra_app(main: Callable[[], Any], config_dir: str | None = None) -> None:
    """Run a ``@hydra.main`` function; a command line Hydra cannot compose exits 2, not 1.

    Hydra prints its own one-paragraph message (unknown key, missing group option, bad
    override syntax) and exits 1 for those and for bugs alike; a bug happens inside the task,
    a composition error before it. ``config_dir``: the script's config folder, to answer a
    config group set to null (which Hydra reports with a traceback) before Hydra sees it.
    """
    problem = _null_group(sys.argv[1:], config_dir)
    if problem:
        print(f"\nConfigError: {printable(problem)}\n", file=sys.stderr, flush=True)
        sys.exit(EXIT_USER_ERROR)
    try:
        main()
    except SystemExit as done:
        if done.code == 1 and not _task_started and not _reported:
            for hint in renamed_key_hints(sys.argv[1:]):
                print(hint, file=sys.stderr, flush=True)
            sys.exit(EXIT_USER_ERROR)
        raise


def _null_group(args: list[str], config_dir: str | None) -> str | None:
    """The message for an override that sets a config group (a folder of ``config_dir``) to null."""
    if config_dir is None:
        return None
    from pathlib import Path

    for arg in args:
        key, _, value = arg.partition("=")
        group = key.lstrip("+")
        if value.strip().lower() in ("null", "~") and group and (Path(config_dir) / group).is_dir():
            options = sorted(p.stem for p in (Path(config_dir) / group).glob("*.yaml") if not p.stem.startswith("_"))
            return (
                f"{arg}: {group} is a config group; choose one of its options ({', '.join(options)}), e.g. "
                f"{group}=none where that exists, or drop the group with ~{group}. To turn off one entry, set its key: "
                f"{group}.NAME=null."
            )
    return None


# Config keys that moved (the model group became the LightningModule, the network nested in it).
RENAMED_KEYS = {
    "module.": "model.",
    # One data-folder key, in the data group (conf/data/_shared.yaml).
    "paths.data_dir": "data.data_dir",
    **{f"model.{k}": f"model.net.{k}" for k in ("sizes", "ratios", "num_classes", "base_channels", "feature_channels")},
}


def renamed_key_hints(args: list[str]) -> list[str]:
    """A line for each command-line override that names a key by its old name, with the new one."""
    hints = []
    for arg in args:
        key = arg.split("=", 1)[0].lstrip("+~")
        for old, new in RENAMED_KEYS.items():
            if key == old or key.startswith(old if old.endswith(".") else old + "."):
                hints.append(f"{key} is now {new}{key[len(old) :]} (tinyssd train --help lists the main keys).")
                break
    return hints


def report_user_errors(func: F) -> F:
    """Turn a :class:`TinySSDError` into one paragraph on stderr and its exit status (2; 1 for a full disk).

    Anything else is a bug and keeps its traceback.
    """

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        global _task_started
        _task_started = True
        try:
            try:
                if args:
                    _check_command_line(args[0])
                return func(*args, **kwargs)
            except OSError as err:
                fault = disk_fault(err)
                if fault is None:
                    raise
                raise fault from err
        except TinySSDError as err:
            print(f"\n{paragraph(err)}\n", file=sys.stderr, flush=True)
            sys.exit(err.exit_code)

    return wrapper  # type: ignore[return-value]


def _check_command_line(cfg: Any) -> None:
    """What only a command line can do wrong: ``+key=value`` adding a key nothing reads."""
    from pathlib import Path

    from tinyssd.pipeline.preflight import check_added_keys

    check_added_keys(cfg, Path(sys.argv[0]).name or "the command")


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
    status is set by :class:`tinyssd.pipeline.sweep.SweepSummary` when it ends.
    """
    single = report_user_errors(func)

    @functools.wraps(func)
    def wrapper(cfg, *args, **kwargs):
        global _task_started
        _task_started = True
        if not _in_multirun():
            return single(cfg, *args, **kwargs)
        _check_command_line(cfg)
        from tinyssd.pipeline.sweep import record_failed_job

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
                from tinyssd.pipeline.sweep import summarise_current_sweep

                summarise_current_sweep()
                sys.exit(err.exit_code)
            return None

    return wrapper
