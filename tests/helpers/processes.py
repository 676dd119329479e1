"""The project's scripts run as a user runs them: in this process (fast) or in a process of their own."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

from helpers.paths import ROOT

ENTRY_POINTS = ("train.py", "predict.py", "eval.py", "export.py", "check.py", "explain.py")


def run_script(
    script: str,
    args: list[str],
    cwd: Path = ROOT,
    timeout: int = 600,
    env: dict | None = None,
    real_process: bool = False,
):
    """Run one of the project's scripts with a command line, as a user does; a CompletedProcess.

    The entry points run in this process (:func:`run_in_process`: the same script, command-line
    parsing, exit status and output, without paying torch's and Lightning's imports again);
    ``real_process=True``, or any other script, starts ``python SCRIPT`` instead.
    """
    env = {"TINYSSD_ROOT": str(scratch_root()), **(env or {})}
    if script in ENTRY_POINTS and not real_process:
        return run_in_process(script, args, cwd=cwd, env=env)
    import subprocess

    return subprocess.run(
        [sys.executable, str(ROOT / script), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
    )


_scratch: list[Path] = []


def scratch_root() -> Path:
    """The project root the scripts see in tests (``TINYSSD_ROOT``): a temporary folder, so runs
    that leave ``paths.log_dir`` at its default write their ``logs/`` there, not into the checkout."""
    if not _scratch:
        import tempfile

        _scratch.append(Path(tempfile.mkdtemp(prefix="tinyssd-tests-")))
    return _scratch[0]


# The warning filters of a fresh interpreter (pytest changes them inside each test).
_PROCESS_WARNING_FILTERS = list(__import__("warnings").filters)


def _print_warning(message, category, filename, lineno, file=None, line=None) -> None:
    import warnings

    sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


def run_in_process(script: str, args: list[str], cwd: Path = ROOT, env: dict | None = None):
    """``python SCRIPT ARGS`` without a new interpreter: ``runpy`` runs the script as ``__main__``
    with ``sys.argv``, the working directory and the environment set, and restores them after.

    Returns a CompletedProcess: the exit status (``SystemExit``'s code; an uncaught exception
    prints its traceback and gives 1, as Python does) and what went to stdout and stderr,
    Hydra's log lines included (its console handler is made while they are redirected).
    """
    import contextlib
    import io
    import logging
    import runpy
    import subprocess
    import traceback
    import warnings

    from hydra.core.global_hydra import GlobalHydra

    import tinyssd.pipeline.cli

    argv = [str(ROOT / script), *args]
    saved = (sys.argv, os.getcwd(), dict(os.environ), torch.get_num_threads(), torch.is_grad_enabled())
    root = logging.getLogger()
    saved_logging = (root.handlers[:], root.level, logging.getLogger("tinyssd").handlers[:])
    out, err = io.StringIO(), io.StringIO()
    code = 0
    try:
        os.chdir(cwd)
        os.environ.update(env or {})
        sys.argv = argv
        torch.set_grad_enabled(True)  # as in a fresh interpreter
        tinyssd.pipeline.cli._task_started = tinyssd.pipeline.cli._reported = False
        GlobalHydra.instance().clear()
        with warnings.catch_warnings(), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            # Warnings go to stderr under a fresh interpreter's filters, not to pytest's record.
            warnings.filters[:] = _PROCESS_WARNING_FILTERS
            warnings.showwarning = _print_warning
            try:
                runpy.run_path(argv[0], run_name="__main__")
            except SystemExit as done:
                code = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
                if not isinstance(done.code, (int, type(None))):
                    print(done.code, file=sys.stderr)
            except Exception:
                traceback.print_exc()
                code = 1
    finally:
        sys.argv, cwd_before, environ, threads, grad_enabled = saved
        torch.set_grad_enabled(grad_enabled)
        os.chdir(cwd_before)
        os.environ.clear()
        os.environ.update(environ)
        torch.set_num_threads(threads)
        GlobalHydra.instance().clear()
        root_handlers, level, tinyssd_handlers = saved_logging
        root.handlers[:] = root_handlers
        root.setLevel(level)
        logging.getLogger("tinyssd").handlers[:] = tinyssd_handlers
    return subprocess.CompletedProcess(["python", *argv], code, out.getvalue(), err.getvalue())


def run_train(args: list[str], **kwargs):
    """``train.py`` with a command line (see :func:`run_script`)."""
    return run_script("train.py", args, **kwargs)


def run_predict(args: list[str], **kwargs):
    """``predict.py`` with a command line (see :func:`run_script`)."""
    return run_script("predict.py", args, **kwargs)
