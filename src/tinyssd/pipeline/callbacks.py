"""Lightning callbacks that control the run: stop it when it goes wrong or stops improving, keep its best.

* :class:`FiniteGuard` - stops the run at the first non-finite loss or weight, naming the step,
  and never lets such weights into a checkpoint;
* :class:`EarlyStopping` - Lightning's, off until ``patience`` is set;
* :func:`ema` - Lightning's ``EMAWeightAveraging``, off until ``decay`` is set;
* :class:`BestMetric` - the best value of the monitored metric over the run (what sweeps rank).

The callbacks that write files and pictures are in :mod:`tinyssd.pipeline.dashboard`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import EarlyStopping as LightningEarlyStopping
from lightning.pytorch.callbacks import EMAWeightAveraging, ModelCheckpoint
from torch import Tensor

from tinyssd.errors import ConfigError, TrainingError
from tinyssd.files import atomic_link
from tinyssd.model.run_files import BEST_CHECKPOINT, last_checkpoint

__all__ = [
    "EMA",
    "BestCheckpoint",
    "BestMetric",
    "EarlyStopping",
    "FiniteGuard",
    "FiniteLossGuard",
    "ema",
    "ramped_ema_multi_avg_fn",
]


class FiniteGuard(pl.Callback):
    """Stop the run when the training loss or the weights become NaN or infinite, naming the step.

    A finite loss can still leave non-finite weights (an infinite learning rate, an overflow in
    the update), so both are watched. The first bad step is recorded on the device; the host
    looks at it every ``check_every_n_steps`` steps (``None``: every step on a CPU, where
    reading it costs nothing, every 50 on an accelerator, to keep the step free of host syncs),
    at every epoch end, and always before a checkpoint is written: a checkpoint with
    non-finite weights is never written, so the checkpoints on disk stay the last good ones.
    """

    def __init__(self, check_every_n_steps: int | None = None) -> None:
        self.check_every_n_steps = check_every_n_steps
        self._first_bad: Tensor | None = None

    def _every(self, device: torch.device) -> int:
        if self.check_every_n_steps is not None:
            return max(1, self.check_every_n_steps)
        return 1 if device.type == "cpu" else 50

    # Slots of the device-side record: the first step with a non-finite loss, and with non-finite weights.
    _SLOTS = ("the training loss", "the weights")

    def _flag(self, slot: int, finite: Tensor, step: int) -> None:
        if self._first_bad is None or self._first_bad.device != finite.device:
            self._first_bad = torch.full((len(self._SLOTS),), -1, dtype=torch.long, device=finite.device)
        bad = ~finite & (self._first_bad[slot] < 0)
        self._first_bad[slot] = torch.where(bad, step, self._first_bad[slot])

    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: Tensor) -> None:
        self._flag(0, torch.isfinite(loss.detach()).all(), trainer.global_step)
        if (trainer.global_step + 1) % self._every(loss.device) == 0:
            self._raise_if_bad(trainer)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        params = [p.detach() for p in pl_module.parameters()]
        if not params:
            return
        finite = torch.stack([torch.isfinite(p).all() for p in params]).all()
        # The optimizer step has run: global_step already counts it.
        self._flag(1, finite, max(trainer.global_step - 1, 0))
        if trainer.global_step % self._every(params[0].device) == 0:
            self._raise_if_bad(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._raise_if_bad(trainer)

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._raise_if_bad(trainer)

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        self._raise_if_bad(trainer)
        state = checkpoint.get("state_dict", {})
        bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
        if bad:
            self._raise(trainer, trainer.global_step, f"the weights ({bad[0]})")

    def _raise_if_bad(self, trainer: pl.Trainer) -> None:
        if self._first_bad is None:
            return
        steps = self._first_bad.tolist()
        seen = [(step, slot) for slot, step in enumerate(steps) if step >= 0]
        if seen:
            step, slot = min(seen)
            self._raise(trainer, step, self._SLOTS[slot])

    def _raise(self, trainer: pl.Trainer, step: int, what: str) -> None:
        last = last_checkpoint(trainer.default_root_dir)
        kept = (
            f"the last good checkpoint is {last} (no checkpoint with non-finite weights is ever written)"
            if last.exists()
            else "no checkpoint was written yet"
        )
        raise TrainingError(
            f"{what} became NaN or infinite at step {step} (epoch {trainer.current_epoch}); {kept}. "
            "Lower optimizer.lr, try trainer.precision=32-true or trainer.gradient_clip_val=1.0, "
            "and resume with ckpt_path=last."
        )


# The name of earlier versions.
FiniteLossGuard = FiniteGuard


def ramped_ema_multi_avg_fn(decay: float, warmup_steps: float) -> Callable[[list[Tensor], list[Tensor], Tensor], None]:
    """``AveragedModel``'s ``multi_avg_fn`` for an EMA whose decay ramps up over the first updates.

    After ``n`` updates the decay is ``decay * (1 - exp(-n / warmup_steps))`` (ultralytics'
    ``ModelEMA``): the early average follows the fast-changing weights instead of lagging on the
    first ones, and the full ``decay`` applies once ``n`` is a few ``warmup_steps``. Called once
    per device and dtype group (one read of ``n`` per step, not one per tensor).
    """

    @torch.no_grad()
    def update(averaged: list[Tensor], current: list[Tensor], num_averaged: Tensor) -> None:
        d = decay * (1 - math.exp(-float(num_averaged) / warmup_steps))
        if torch.is_floating_point(averaged[0]) or torch.is_complex(averaged[0]):
            torch._foreach_lerp_(averaged, current, 1 - d)
        else:  # integer buffers (batch norm's num_batches_tracked), as torch's own EMA does
            for a, c in zip(averaged, current, strict=True):
                a.copy_(a * d + c * (1 - d))

    return update


class EMA(EMAWeightAveraging):
    """Lightning's ``EMAWeightAveraging``, with the decay optionally ramped (:func:`ramped_ema_multi_avg_fn`)."""

    def __init__(self, decay: float, warmup_steps: float | None = None, **kwargs: Any) -> None:
        super().__init__(decay=decay, **kwargs)
        if warmup_steps is not None:
            self._kwargs.pop("avg_fn", None)
            self._kwargs["multi_avg_fn"] = ramped_ema_multi_avg_fn(decay, warmup_steps)


def ema(
    decay: float | None = None,
    update_every_n_steps: int = 1,
    update_starting_at_step: int | None = None,
    warmup_steps: float | None = None,
) -> pl.Callback | None:
    """An exponential moving average of the weights (Lightning's ``EMAWeightAveraging``), or ``None`` (off).

    With ``decay`` set, validation runs on the averaged weights and every checkpoint's
    ``state_dict`` holds them (the raw weights go to its ``current_model_state``, for resuming),
    so ``eval.py``, ``predict.py`` and ``export.py`` use the averaged network. Batch-norm
    statistics are averaged too. ``decay`` near 1 averages over about ``1 / (1 - decay)`` steps;
    ``warmup_steps`` ramps the decay up from 0 over about that many updates (null: constant).
    """
    if decay is None:
        return None
    if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0 < decay < 1:
        raise ConfigError(f"callbacks.ema.decay must be a number in (0, 1) or null (off), got {decay!r}.")
    if isinstance(update_every_n_steps, bool) or not isinstance(update_every_n_steps, int) or update_every_n_steps < 1:
        raise ConfigError(
            f"callbacks.ema.update_every_n_steps must be a whole number >= 1, got {update_every_n_steps!r}."
        )
    if warmup_steps is not None and (
        isinstance(warmup_steps, bool) or not isinstance(warmup_steps, (int, float)) or not 0 < warmup_steps < 1e9
    ):
        raise ConfigError(
            f"callbacks.ema.warmup_steps must be a positive number of updates or null (no ramp), got {warmup_steps!r}."
        )
    return EMA(
        decay=float(decay),
        warmup_steps=None if warmup_steps is None else float(warmup_steps),
        update_every_n_steps=update_every_n_steps,
        update_starting_at_step=update_starting_at_step,
    )


class EarlyStopping(LightningEarlyStopping):
    """Lightning's :class:`~lightning.pytorch.callbacks.EarlyStopping`, off while ``patience`` is ``None``.

    Stops when ``monitor`` has not improved by more than ``min_delta`` for ``patience``
    validations in a row. Its state (best score, validations without gain) is saved in every
    checkpoint and restored by ``ckpt_path``; the configured ``patience`` wins over the saved one,
    so a resumed run can be given more (or less) patience.
    """

    def __init__(self, monitor: str = "val/map", patience: int | None = None, mode: str = "max", **kwargs: Any) -> None:
        if patience is not None and (isinstance(patience, bool) or not isinstance(patience, int) or patience < 1):
            raise ConfigError(
                f"callbacks.early_stopping.patience must be a whole number >= 1 (validations without gain), or null "
                f"to train every epoch; got {patience!r}."
            )
        self.enabled = patience is not None
        super().__init__(monitor=monitor, patience=patience or 1, mode=mode, **kwargs)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.enabled:
            super().on_validation_end(trainer, pl_module)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.enabled:
            super().on_train_epoch_end(trainer, pl_module)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        patience = self.patience
        super().load_state_dict(state_dict)
        self.patience = patience


class BestMetric(pl.Callback):
    """The best value ``monitor`` reached in any validation of the run (resumes with the run).

    ``train.py`` returns it to sweepers, so a trial is ranked by its best epoch, as the
    checkpoint it leaves is.
    """

    def __init__(self, monitor: str = "val/map", mode: str = "max") -> None:
        if mode not in ("max", "min"):
            raise ConfigError(f"mode must be max or min, got {mode!r}.")
        self.monitor, self.mode = monitor, mode
        self.best: float | None = None
        self.best_epoch: int | None = None

    @property
    def state_key(self) -> str:
        return self._generate_state_key(monitor=self.monitor, mode=self.mode)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        value = trainer.callback_metrics.get(self.monitor)
        if trainer.sanity_checking or value is None:
            return
        value = float(value)
        if value != value:  # NaN never becomes the best
            return
        if self.best is None or (value > self.best if self.mode == "max" else value < self.best):
            self.best, self.best_epoch = value, trainer.current_epoch

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_epoch": self.best_epoch}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        best, epoch = state_dict.get("best"), state_dict.get("best_epoch")
        self.best = float(best) if isinstance(best, (int, float)) else None
        self.best_epoch = int(epoch) if isinstance(epoch, int) else None


class BestCheckpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint that also keeps ``best.ckpt``: the best epoch's file under a fixed name.

    ``best.ckpt`` is a hard link to (or, where links are refused, a copy of) the top checkpoint,
    replaced atomically whenever a better one is saved; it outlives the epoch file that Lightning
    deletes when a better one comes, and a resumed run goes on replacing it.
    """

    @property
    def state_key(self) -> str:
        # ModelCheckpoint's own key, so runs written before this class resume with their best-k state.
        return super().state_key.replace(type(self).__qualname__, ModelCheckpoint.__qualname__, 1)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        self._keep_best(trainer)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        self._keep_best(trainer)

    def _keep_best(self, trainer: pl.Trainer) -> None:
        best = Path(self.best_model_path) if self.best_model_path else None
        if not trainer.is_global_zero or best is None or not best.is_file():
            return
        target = best.parent / BEST_CHECKPOINT
        if target.is_file() and os.path.samefile(target, best):
            return
        atomic_link(best, target)
