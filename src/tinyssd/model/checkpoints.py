"""Checkpoints: where a run keeps them, how they are written, loaded and checked (resuming: pipeline.resume).

A checkpoint is data, never code. It is loaded with ``torch.load(weights_only=True)`` (no
arbitrary unpickling), its hyperparameters are checked against :mod:`tinyssd.model.specs`'s
allowlist before anything is built, and its weights must be finite. Writes go to a
temporary file beside the target and then ``os.replace`` (atomic on any filesystem, unlike a
move from ``$TMPDIR``), so a kill leaves the old file or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import errno
import inspect
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from tinyssd.errors import CheckpointError, ConfigError, OutputError, TinySSDError, disk_fault
from tinyssd.model.specs import build, check_plain, check_spec

__all__ = [
    "CHECKPOINT_DIR",
    "LAST_CHECKPOINT",
    "AtomicCheckpointIO",
    "atomic_torch_save",
    "atomic_write_bytes",
    "check_compatible",
    "check_hparams",
    "checkpoints_in",
    "describe_folder",
    "last_checkpoint",
    "load_checkpoint",
    "load_module",
    "make_writable_folder",
    "module_from_checkpoint",
    "rank_zero_process",
    "run_folder_lock",
    "tensor_problem",
]

# A run folder keeps its checkpoints in checkpoints/: the best by val mAP and last.ckpt.
CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT = "last.ckpt"
# Hyperparameters that are specs of an allowlisted kind; everything else must be plain data.
SPEC_KEYS = ("net", "loss", "optimizer", "scheduler")


def last_checkpoint(run_dir: str | os.PathLike) -> Path:
    """``<run>/checkpoints/last.ckpt``."""
    return Path(run_dir) / CHECKPOINT_DIR / LAST_CHECKPOINT


# --------------------------------------------------------------------------- writing


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


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint IO whose writes are atomic on any local filesystem."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO takes no storage_options")
        if "://" in str(path):  # remote storage: fsspec's own transaction
            return super().save_checkpoint(checkpoint, path, storage_options)
        try:
            atomic_torch_save(checkpoint, path)
        except OSError as err:
            raise OutputError(
                f"the checkpoint {path} could not be written ({err.strerror or err}); the previous one is intact. "
                "Free disk space or give paths.log_dir a writable place, then resume with ckpt_path=last."
            ) from err
        return None


# --------------------------------------------------------------------------- loading


def check_hparams(hparams: Any, where: str = "checkpoint") -> None:
    """Refuse hyperparameters that name anything outside the allowlist (nothing is built)."""
    from tinyssd.model.module import TinySSDModule

    if not isinstance(hparams, dict):
        raise CheckpointError(f"{where}: its hyper_parameters are not a mapping; it is not a tinyssd checkpoint.")
    accepted = set(inspect.signature(TinySSDModule.__init__).parameters) - {"self"}
    unknown = sorted(str(k) for k in hparams if k not in accepted)
    if unknown:
        raise CheckpointError(
            f"{where}: hyper_parameters {unknown} are not options of this tinyssd's model; "
            "use a checkpoint written by train.py of this version."
        )
    try:
        for key, value in hparams.items():
            if key in SPEC_KEYS and value is not None:
                check_spec(key, value, where=f"hyper_parameters.{key}")
            else:
                check_plain(value, f"hyper_parameters.{key}")
    except TinySSDError as err:
        raise CheckpointError(f"{where} was refused: {err}") from err
    except RecursionError as err:
        raise CheckpointError(f"{where} was refused: its settings are nested absurdly deep.") from err


def checkpoints_in(folder: Path) -> list[Path]:
    """The ``.ckpt`` files of a folder or of its ``checkpoints/`` (never a deep walk: it may be ``/``)."""
    return sorted([*folder.glob("*.ckpt"), *(folder / CHECKPOINT_DIR).glob("*.ckpt")])


def describe_folder(path: Path) -> str:
    """A folder given where a checkpoint file was expected: what to give instead."""
    found = checkpoints_in(path)[:5]
    if not found:
        return f"{path} is a folder with no .ckpt file in it; give the path of a .ckpt file."
    return f"{path} is a folder; give one of its checkpoint files, e.g. {', '.join(str(p) for p in found)}."


# dtypes of TinySSD's weights and buffers (batch-norm counts are int64), and of optimizer state.
WEIGHT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64, torch.int32)


def _dense_layout(tensor: torch.Tensor) -> bool:
    """Whether the elements tile their storage exactly in some dimension order (contiguous, channels-last, ...)."""
    expected = 1
    for size, stride in sorted(
        ((n, s) for n, s in zip(tensor.shape, tensor.stride(), strict=True) if n != 1), key=lambda p: p[1]
    ):
        if stride != expected:
            return False
        expected *= size
    return True


def tensor_problem(tensor: torch.Tensor) -> str | None:
    """Why ``tensor`` is not a plain weight (dense, strided, no element shared, storage holding all), or None.

    Checked before any arithmetic: a stride-0 view (``x.expand(...)``) keeps one element of
    storage for a tensor of any size, so a small file could claim a huge model, and a check
    over its values would allocate that size.
    """
    if tensor.layout != torch.strided:
        return f"a {str(tensor.layout).removeprefix('torch.')} tensor (only dense weights are)"
    if tensor.device.type == "meta":
        return "a tensor without data (meta)"
    if tensor.is_quantized:
        return "a quantized tensor"
    if tensor.dtype not in WEIGHT_DTYPES:
        return f"a {str(tensor.dtype).removeprefix('torch.')} tensor"
    if not _dense_layout(tensor):
        return f"a strided view of shape {tuple(tensor.shape)} (strides {tensor.stride()}), not a plain tensor"
    needed = (tensor.storage_offset() + tensor.numel()) * tensor.element_size()
    if tensor.untyped_storage().nbytes() < needed:
        return f"a tensor of shape {tuple(tensor.shape)} whose storage holds fewer bytes than its elements need"
    return None


def _check_tensors(value: Any, where: str, path: Path, depth: int = 0) -> None:
    """Every tensor anywhere in the checkpoint (weights, optimizer and callback state) is plain."""
    if depth > 32:
        raise CheckpointError(f"{path} was refused: its contents are nested absurdly deep (not a tinyssd checkpoint).")
    if torch.is_tensor(value):
        problem = tensor_problem(value)
        if problem:
            raise CheckpointError(
                f"{path}: {where} is {problem}; train.py writes dense weights only. The file was crafted or "
                "damaged; use a checkpoint written by train.py."
            )
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_tensors(item, f"{where}.{key}" if where else str(key), path, depth + 1)
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_tensors(item, f"{where}[{i}]", path, depth + 1)


def _is_torchscript(path: Path) -> bool:
    """Whether ``path`` is a TorchScript archive (a zip holding Python code and constants)."""
    try:
        if not zipfile.is_zipfile(path):
            return False
        with zipfile.ZipFile(path) as archive:
            return any(n.endswith("/constants.pkl") or "/code/" in n for n in archive.namelist()[:10_000])
    except (OSError, zipfile.BadZipFile, ValueError):
        return False


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load and check a tinyssd checkpoint (``weights_only=True``; specs allowlisted)."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(describe_folder(path))
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist; give the path of a .ckpt file.")
    if not path.is_file():
        raise CheckpointError(f"{path} is not a regular file; give the path of a .ckpt file.")
    if _is_torchscript(path):
        raise CheckpointError(
            f"{path} is a TorchScript program (torch.jit.save), not a checkpoint; tinyssd never loads TorchScript it "
            "is given (loading runs the code inside it). Give the .ckpt it was exported from, or an .onnx export."
        )
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "global" not in str(err).lower():  # garbage bytes, not a refused Python object
            raise CheckpointError(
                f"{path} is not a loadable tinyssd checkpoint (it is truncated, corrupt or another kind of file). "
                "Use a .ckpt written by train.py (runs/<run>/checkpoints/)."
            ) from err
        raise CheckpointError(
            f"{path} holds Python objects other than tensors and plain data, and was refused (loading them could "
            "run code). tinyssd checkpoints hold only weights and plain settings; use a .ckpt written by train.py."
        ) from err
    except Exception as err:  # torch's unpickler fails on arbitrary bytes in many ways (IndexError, KeyError, ...)
        raise CheckpointError(
            f"{path} is not a loadable tinyssd checkpoint (it is truncated, corrupt or another kind of file: "
            f"{str(err).splitlines()[0][:160] if str(err) else type(err).__name__}). Use a .ckpt written by "
            "train.py (runs/<run>/checkpoints/)."
        ) from err
    hparams = ckpt.get("hyper_parameters") if isinstance(ckpt, dict) else None
    state = ckpt.get("state_dict") if isinstance(ckpt, dict) else None
    if not isinstance(hparams, dict) or not isinstance(state, dict) or not isinstance(hparams.get("net"), dict):
        raise CheckpointError(
            f"{path} is not a tinyssd checkpoint (it lacks the network spec and weights train.py saves); "
            "use a .ckpt from a tinyssd run's checkpoints/ folder."
        )
    if not all(isinstance(k, str) and torch.is_tensor(v) for k, v in state.items()):
        raise CheckpointError(
            f"{path}: its state_dict holds entries that are not tensors; it is not a tinyssd checkpoint."
        )
    _check_tensors(ckpt, "", path)
    check_hparams(hparams, str(path))
    return ckpt


def _non_finite(state: dict[str, torch.Tensor]) -> list[str]:
    return [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]


def module_from_checkpoint(ckpt: dict[str, Any], path: str | os.PathLike = "checkpoint"):
    """Rebuild the :class:`~tinyssd.model.module.TinySSDModule` a checked checkpoint describes, with its weights."""
    from tinyssd.model.module import TinySSDModule

    bad = _non_finite(ckpt["state_dict"])
    if bad:
        raise CheckpointError(
            f"{path} has NaN or infinite weights ({', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''}); "
            "it cannot detect anything. Use an earlier checkpoint of the run."
        )
    hparams = ckpt["hyper_parameters"]
    try:
        # The network first on the meta device (no memory): its shapes must be the file's own,
        # so a spec cannot make tinyssd allocate more than the weights the file really holds.
        with torch.device("meta"):
            net = build("net", hparams["net"])
        expected = {f"net.{k}": tuple(v.shape) for k, v in net.state_dict().items()}
        actual = {k: tuple(v.shape) for k, v in ckpt["state_dict"].items() if k.startswith("net.")}
        if expected != actual:
            differ = sorted(k for k in expected.keys() | actual.keys() if expected.get(k) != actual.get(k))
            raise CheckpointError(
                f"{path}: its weights do not fit the model its own settings describe ({differ[0]} is "
                f"{actual.get(differ[0])} in the file, {expected.get(differ[0])} by its settings). The file was "
                "edited or mixed from two runs; use a checkpoint written by train.py."
            )
        module = TinySSDModule(**hparams)
    except CheckpointError:
        raise
    except TinySSDError as err:
        raise CheckpointError(f"{path} describes a model this tinyssd cannot build: {err}") from err
    _load_weights(module, ckpt["state_dict"], path)
    return module


def _load_weights(module: torch.nn.Module, state: dict[str, torch.Tensor], path: str | os.PathLike) -> None:
    mismatch = _shape_mismatch(module, state)
    if mismatch:
        raise CheckpointError(
            f"{path}: its weights do not fit the model its own settings describe ({mismatch}). The file was "
            "edited or mixed from two runs; use a checkpoint written by train.py."
        )
    module.load_state_dict(state, strict=True)


def _shape_mismatch(module: torch.nn.Module, state: dict[str, torch.Tensor]) -> str:
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    extra = sorted(set(state) - set(own))
    if missing or extra:
        return f"missing {missing[:3]}, unexpected {extra[:3]}"
    for key, value in own.items():
        if tuple(value.shape) != tuple(state[key].shape):
            return f"{key} is {tuple(state[key].shape)} in the file, {tuple(value.shape)} in the model"
    return ""


def load_module(path: str | os.PathLike):
    """``module_from_checkpoint(load_checkpoint(path))``."""
    return module_from_checkpoint(load_checkpoint(path), path)


def check_compatible(module: torch.nn.Module, ckpt: dict[str, Any], path: str | os.PathLike) -> None:
    """Refuse to resume training ``module`` (built from the config) from a checkpoint of another model."""
    mismatch = _shape_mismatch(module, ckpt["state_dict"])
    if not mismatch:
        return
    theirs = ckpt["hyper_parameters"]["net"]
    ours = getattr(module, "hparams", {}).get("net") or {}
    detail = mismatch
    if theirs.get("num_classes") != ours.get("num_classes"):
        names = ckpt["hyper_parameters"].get("class_names")
        detail = (
            f"it detects {theirs.get('num_classes')} class(es) {names or ''} and the config "
            f"{ours.get('num_classes')} (data.num_classes)"
        )
    elif theirs.get("sizes") != ours.get("sizes") or theirs.get("ratios") != ours.get("ratios"):
        detail = "its anchors (model.net.sizes / model.net.ratios, or anchors=...) differ from the config's"
    raise CheckpointError(
        f"ckpt_path={path} cannot be resumed with this config: {detail}. Resume with the config the run was "
        "trained with (its config.yaml), or start a new run without ckpt_path."
    )
