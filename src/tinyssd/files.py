"""Files on disk: atomic writes (the old file or the new one, never half of one) and the run-folder lock.

A write goes to a temporary file in the target's own folder, is flushed and ``fsync``-ed, then
``os.replace``-d over the target (atomic on any local filesystem, unlike a move from
``$TMPDIR``). A full, read-only or failing disk is an :class:`~tinyssd.errors.OutputError`.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
from pathlib import Path
from typing import Any

import torch

from tinyssd.errors import ConfigError, OutputError, disk_fault

__all__ = [
    "LOCK_FILE",
    "atomic_link",
    "atomic_torch_save",
    "atomic_write_bytes",
    "file_digest",
    "make_writable_folder",
    "rank_zero_process",
    "run_folder_lock",
]


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to a temporary file in ``path``'s own folder, fsync, then ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            try:
                torch.save(obj, f)
            except RuntimeError as err:
                # torch's zip writer reports a failed write (a full disk) as RuntimeError, not OSError.
                if "write" not in str(err).lower():
                    raise
                raise OSError(errno.EIO, f"the write failed: {str(err).splitlines()[0][:200]}") from err
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes, what: str = "the file") -> None:
    """Write ``data`` beside ``path``, fsync, ``os.replace``: the old file or the new one, never half of one.

    A full, read-only or failing disk is an :class:`OutputError` (the machine's fault, exit status
    1); any other ``OSError`` (a name the file system refuses, say) is raised as it is.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        if disk_fault(err) is None:
            raise
        raise OutputError(
            f"{what} {path} could not be written ({err.strerror or err}); nothing of it was left half-written. Free "
            "disk space or choose a folder you can write to, then run the command again."
        ) from err


LOCK_FILE = ".tinyssd.lock"


def rank_zero_process() -> bool:
    """Whether this is the job's first process (DDP starts the others with these variables set)."""
    return all(os.environ.get(k, "0") == "0" for k in ("RANK", "LOCAL_RANK", "NODE_RANK"))


@contextlib.contextmanager
def run_folder_lock(folder: Path):
    """Hold ``<folder>/.tinyssd.lock`` while a run writes ``folder``; a second run into it is refused.

    An OS file lock (``flock``): released when the process ends, however it ends, so a killed
    run never leaves a stale lock. Only the job's first process takes it (DDP's others share
    the folder); where ``fcntl`` does not exist (Windows) runs are not locked.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    if not rank_zero_process():
        yield
        return
    folder.mkdir(parents=True, exist_ok=True)
    handle = open(folder / LOCK_FILE, "a+")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            owner = handle.read().strip() or "another process"
            raise ConfigError(
                f"the run folder {folder} is being written by another run ({owner}); two runs in one folder would "
                "mix their checkpoints and logs. Wait for it to finish, or give this run another folder "
                "(hydra.run.dir=... or leave it at its default)."
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"process {os.getpid()}")
        handle.flush()
        yield
    finally:
        handle.close()


def make_writable_folder(folder: str | os.PathLike) -> None:
    """Create ``folder`` (and parents) and write and delete a probe file in it; ``OSError`` if that fails.

    Entry points call it before slow work, so an unwritable output is reported first.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    probe = folder / f".tinyssd-write-test-{os.getpid()}"
    probe.write_bytes(b"")
    probe.unlink()


def atomic_link(source: str | os.PathLike, target: str | os.PathLike) -> None:
    """Make ``target`` the same file as ``source`` (a hard link; a copy where links are refused), atomically."""
    source, target = Path(source), Path(target)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        try:
            os.link(source, tmp)
        except OSError:
            atomic_write_bytes(tmp, source.read_bytes(), "the copy")
        os.replace(tmp, target)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        fault = disk_fault(err)
        if fault is None:
            raise
        raise fault from err


def file_digest(path: str | os.PathLike) -> str:
    """SHA-256 of a file, hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
