"""Fine-tuning: start a new run from another run's weights (``init_from=CKPT``).

Unlike ``ckpt_path`` (which resumes the same run: weights, optimizer, epoch, callbacks),
``init_from`` copies only the network's weights, and only those whose shapes fit the new
model: the feature blocks always fit, the box heads fit when the anchors per location agree,
and the class heads fit only when the class count agrees. Everything else keeps its fresh
initialisation, and :class:`InitReport` says what loaded and what did not.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from tinyssd.errors import CheckpointError
from tinyssd.model.checkpoints import load_checkpoint

__all__ = ["NET_PREFIX", "InitReport", "init_from_checkpoint", "layer_name", "part_name"]

# Keys of the network's weights inside a TinySSDModule state_dict.
NET_PREFIX = "net."


def part_name(key: str) -> str:
    """``net.cls_heads.0.weight`` -> ``cls_heads``: the part of the network (blocks, cls_heads, bbox_heads)."""
    return key.removeprefix(NET_PREFIX).split(".", 1)[0]


def layer_name(key: str) -> str:
    """``net.cls_heads.0.weight`` -> ``cls_heads.0``: the layer a state_dict entry belongs to."""
    return key.removeprefix(NET_PREFIX).rsplit(".", 1)[0]


@dataclass
class InitReport:
    """What ``init_from`` did: state_dict keys loaded, and those re-initialised with the reason."""

    path: Path
    loaded: list[str] = field(default_factory=list)
    reinitialised: dict[str, str] = field(default_factory=dict)
    source_classes: list[str] | None = None

    def summary(self) -> str:
        """One paragraph for the run's log: per part of the network, what loaded and what did not."""
        parts: dict[str, list[int]] = {}
        for key in [*self.loaded, *self.reinitialised]:
            parts.setdefault(part_name(key), [0, 0])[key in self.loaded] += 1
        loaded = [f"{p} ({n}/{r + n} tensors)" for p, (r, n) in parts.items() if n]
        text = f"init_from={self.path}: loaded {', '.join(loaded)}"
        if not self.reinitialised:
            return text + "; every layer of the model loaded."
        fresh = ", ".join(dict.fromkeys(layer_name(k) for k in self.reinitialised))
        reasons = "; ".join(dict.fromkeys(self.reinitialised.values()))
        return f"{text}; re-initialised {fresh} ({reasons})."


def init_from_checkpoint(module: nn.Module, path: str | os.PathLike) -> InitReport:
    """Copy the weights of the checkpoint at ``path`` into ``module.net`` where the shapes agree.

    The file is loaded as every checkpoint is (``weights_only=True``, hyperparameters checked
    against the allowlist), and nothing in it is built: only tensors are copied. Weights (and
    batch-norm statistics) whose name and shape match load; the rest of the model keeps its
    initialisation. A checkpoint of which nothing fits, or with NaN weights, is refused.
    """
    path = Path(path)
    ckpt = load_checkpoint(path)
    source = {k: v for k, v in ckpt["state_dict"].items() if k.startswith(NET_PREFIX)}
    hparams = ckpt["hyper_parameters"]
    report = InitReport(path, source_classes=hparams.get("class_names"))
    own = module.state_dict()
    theirs_classes = hparams["net"].get("num_classes")
    ours_classes = getattr(module, "num_classes", None)
    update: dict[str, torch.Tensor] = {}
    for key, value in own.items():
        if not key.startswith(NET_PREFIX):
            continue
        theirs = source.get(key)
        if theirs is None:
            report.reinitialised[key] = "not in the checkpoint"
        elif tuple(theirs.shape) != tuple(value.shape):
            if ".cls_heads." in key and theirs_classes != ours_classes:
                report.reinitialised[key] = (
                    f"the checkpoint detects {theirs_classes} class(es) {report.source_classes or ''}, this model "
                    f"{ours_classes}".replace(" ,", ",")
                )
            else:
                report.reinitialised[key] = "another shape (other anchors or channels)"
        elif theirs.is_floating_point() and not bool(torch.isfinite(theirs).all()):
            raise CheckpointError(
                f"init_from={path} has NaN or infinite weights ({key}); use an earlier checkpoint of that run."
            )
        else:
            update[key] = theirs.to(dtype=value.dtype)
            report.loaded.append(key)
    if not any(".blocks." in k and k.endswith(".weight") for k in report.loaded):
        raise CheckpointError(
            f"init_from={path}: none of its feature-block weights fit this model (model.net.base_channels / "
            "model.net.feature_channels differ), so it would start from scratch anyway. Use a checkpoint of a model "
            "with the same channels, or drop init_from."
        )
    module.load_state_dict(update, strict=False)
    return report
