"""Errors a user can act on: their kinds, exit statuses, and the one-paragraph form they are shown in.

The vocabulary every layer raises in; it imports nothing of tinyssd's. How the entry points
turn these into output and exit statuses is :mod:`tinyssd.pipeline.cli`. Exit statuses: 0 completed;
2 a user error (bad data, config, checkpoint: one paragraph naming the thing and the fix);
1 a full or read-only disk (:class:`OutputError`), or a bug (its traceback); 143 stopped by
SIGTERM (:class:`RunInterrupted`; resumable).
"""

from __future__ import annotations

import logging
import re
import reprlib

__all__ = [
    "EXIT_ENVIRONMENT",
    "EXIT_INTERRUPTED",
    "EXIT_USER_ERROR",
    "MAX_MESSAGE_CHARS",
    "CheckpointError",
    "ConfigError",
    "DataError",
    "OutputError",
    "RunInterrupted",
    "TinySSDError",
    "TrainingError",
    "disk_fault",
    "escape_interpolation",
    "paragraph",
    "printable",
    "renamed_key_value",
    "shown",
]

log = logging.getLogger("tinyssd")

EXIT_USER_ERROR = 2
EXIT_ENVIRONMENT = 1  # the machine, not the input: a full or read-only disk
EXIT_INTERRUPTED = 128 + 15  # the shell's status for a process ended by SIGTERM
# An error paragraph is read by a person: values from files are cut to fit one screen.
MAX_MESSAGE_CHARS = 2000


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


class OutputError(TinySSDError):
    """A file could not be written (a full or read-only disk): the machine's fault, exit status 1."""

    exit_code = EXIT_ENVIRONMENT


class RunInterrupted(TinySSDError):
    """The run was stopped from outside (SIGTERM, or Ctrl-C where said); the message says how to go on."""

    exit_code = EXIT_INTERRUPTED

    def __init__(self, message: str = "", exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


# Control characters (C0 but newline and tab, DEL, C1) and the bidirectional overrides that
# reorder text: from a file they could retitle or clear a terminal, or disguise a name.
_UNPRINTABLE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def printable(text: str) -> str:
    """``text`` with control characters escaped (``\\x1b``), newlines and tabs kept: safe for a terminal."""
    return _UNPRINTABLE.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), str(text))


_SHORT = reprlib.Repr()
_SHORT.maxstring = _SHORT.maxother = 120
_SHORT.maxlist = _SHORT.maxtuple = _SHORT.maxdict = _SHORT.maxset = 8
_SHORT.maxlevel = 3


def shown(value: object) -> str:
    """A value from a file as a message shows it: its ``repr``, cut to a line (lists to 8 items)."""
    return _SHORT.repr(value)


class PrintableFilter(logging.Filter):
    """Escapes control characters in every message of the ``tinyssd`` logger (names from files reach it)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = printable(record.getMessage()), None
        return True


log.addFilter(PrintableFilter())


def escape_interpolation(text: str) -> str:
    """``text`` as an OmegaConf string that reads back as itself: ``${`` is escaped, never resolved.

    Strings from data and checkpoints (class names) go into the run's config this way, so a name
    such as ``${oc.env:SECRET}`` stays that name and never becomes the variable's value.
    """
    return re.sub(r"(\\*)\$\{", lambda m: m.group(1) * 2 + "\\${", text)


def _cut(text: str) -> str:
    if len(text) <= MAX_MESSAGE_CHARS:
        return text
    head, tail = MAX_MESSAGE_CHARS * 3 // 4, MAX_MESSAGE_CHARS // 8
    return f"{text[:head]} [... {len(text) - head - tail} characters cut ...] {text[-tail:]}"


def paragraph(err: BaseException) -> str:
    """The one-paragraph form of an error (unwrapped: terminals wrap it, grep finds it whole).

    Control characters are escaped and an overlong message is cut, so a value from a file can
    neither drive the terminal nor flood it.
    """
    text = str(err)
    name = type(err).__name__
    raised = re.split(rf"\n(?:[\w.]+\.)?{name}: ", text)
    if "Original Traceback (most recent call last)" in text and len(raised) > 1:
        # Raised in a data-loader worker: torch re-raises it with the worker's traceback as the
        # message; the user's paragraph is what the worker raised.
        text = raised[-1] + " (in a data-loader worker)"
    return printable(_cut(f"{name}: {' '.join(text.split())}"))


# A write the machine refused: the disk is full, read-only or failing; no input was wrong.
_DISK_ERRNOS = {"ENOSPC", "EDQUOT", "EROFS", "EIO", "EFBIG"}


def renamed_key_value(
    cfg, key: str, old_key: str, command: str, what: str, error: type[TinySSDError]
) -> tuple[str, object] | None:
    """``(key, value)`` given for ``key``, or for ``old_key``, its former name (logged with the new name);
    ``None`` when neither is given; ``error`` naming ``what`` when both are."""
    new, old = cfg.get(key), cfg.get(old_key)
    if new not in (None, "") and old not in (None, ""):
        raise error(f"{key}={new} and {old_key}={old} both name {what}; give {key}= only.")
    if new not in (None, ""):
        return key, new
    if old not in (None, ""):
        log.warning("%s: %s= is the old name of %s=; read as %s=%s.", command, old_key, key, key, old)
        return old_key, old
    return None


def disk_fault(err: BaseException) -> OutputError | None:
    """The :class:`OutputError` for an ``OSError`` of a full, read-only or failing disk, else None."""
    import errno

    if not isinstance(err, OSError) or errno.errorcode.get(err.errno or -1) not in _DISK_ERRNOS:
        return None
    where = f" ({err.filename})" if err.filename else ""
    return OutputError(
        f"a file could not be written{where}: {err.strerror or err}. Free disk space or give paths.log_dir (and "
        "output paths) a writable place; files written before are intact (checkpoints and reports are replaced "
        "atomically), and a training run resumes with ckpt_path=last."
    )
