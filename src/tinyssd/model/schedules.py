"""Learning-rate schedules with a linear warm-up, stepped once per optimizer step.

Lengths are given in epochs (``warmup_epochs`` may be fractional: 0.5 warms up over half an
epoch) and turned into steps with ``steps_per_epoch``, which the LightningModule passes from
the trainer, as the torchvision detection references and ultralytics warm up: per iteration,
so the first epoch is not spent at the warm-up's first rate.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from tinyssd.errors import ConfigError

__all__ = [
    "CosineFactor",
    "MultistepFactor",
    "cosine_factor",
    "multistep_factor",
    "steps_per_epoch",
    "warmup_cosine",
    "warmup_multistep",
]


def _check(warmup_epochs: float, start_factor: float, steps_per_epoch: int) -> None:
    if isinstance(warmup_epochs, bool) or not isinstance(warmup_epochs, (int, float)) or warmup_epochs < 0:
        raise ConfigError(
            f"scheduler.warmup_epochs must be a number >= 0 (epochs, may be fractional), got {warmup_epochs!r}."
        )
    if not 0 < start_factor <= 1:
        raise ConfigError(f"scheduler.start_factor must be in (0, 1], got {start_factor!r}.")
    if isinstance(steps_per_epoch, bool) or not isinstance(steps_per_epoch, int) or steps_per_epoch < 1:
        raise ConfigError(f"steps_per_epoch must be a whole number >= 1, got {steps_per_epoch!r}.")


def _warmup(epoch: float, warmup_epochs: float, start_factor: float) -> float:
    return start_factor + (1 - start_factor) * epoch / warmup_epochs


def cosine_factor(
    step: int, steps_per_epoch: int, max_epochs: float, warmup_epochs: float, start_factor: float, min_factor: float
) -> float:
    """The rate's factor at optimizer step ``step``: linear warm-up, then cosine to ``min_factor``."""
    epoch = step / steps_per_epoch
    if epoch < warmup_epochs:
        return _warmup(epoch, warmup_epochs, start_factor)
    span = max_epochs - warmup_epochs
    progress = min((epoch - warmup_epochs) / span, 1.0) if span > 0 else 1.0
    return min_factor + (1 - min_factor) * 0.5 * (1 + math.cos(math.pi * progress))


def multistep_factor(
    step: int,
    steps_per_epoch: int,
    milestones: Sequence[float],
    gamma: float,
    warmup_epochs: float,
    start_factor: float,
) -> float:
    """The rate's factor at ``step``: linear warm-up, then ``gamma`` per milestone epoch passed."""
    epoch = step / steps_per_epoch
    if epoch < warmup_epochs:
        return _warmup(epoch, warmup_epochs, start_factor)
    return gamma ** sum(epoch >= m for m in milestones)


@dataclass
class CosineFactor:
    """:func:`cosine_factor` as a callable object: ``LambdaLR`` saves its fields in checkpoints, and
    :meth:`replan` stretches the schedule to a new length (the time budget re-plans it)."""

    steps_per_epoch: int
    max_epochs: float
    warmup_epochs: float
    start_factor: float
    min_factor: float

    def __call__(self, step: int) -> float:
        return cosine_factor(
            step, self.steps_per_epoch, self.max_epochs, self.warmup_epochs, self.start_factor, self.min_factor
        )

    def replan(self, max_epochs: int, planned_epochs: int | None) -> None:
        """End the cosine at ``max_epochs``; the warm-up is kept (it is over before any re-plan)."""
        self.max_epochs = max_epochs


@dataclass
class MultistepFactor:
    """:func:`multistep_factor` as a callable object (see :class:`CosineFactor`)."""

    steps_per_epoch: int
    milestones: list[float]
    gamma: float
    warmup_epochs: float
    start_factor: float

    def __call__(self, step: int) -> float:
        return multistep_factor(
            step, self.steps_per_epoch, self.milestones, self.gamma, self.warmup_epochs, self.start_factor
        )

    def replan(self, max_epochs: int, planned_epochs: int | None) -> None:
        """Move the milestones in proportion: ``[12, 16]`` of a 20-epoch plan become ``[6, 8]`` in 10."""
        if planned_epochs:
            self.milestones = [m * max_epochs / planned_epochs for m in self.milestones]


def warmup_cosine(
    optimizer: Optimizer,
    max_epochs: float,
    warmup_epochs: float = 1,
    start_factor: float = 0.1,
    min_factor: float = 0.0,
    steps_per_epoch: int = 1,
) -> LambdaLR:
    """Linear warm-up from ``start_factor * lr`` over ``warmup_epochs``, then cosine to ``min_factor * lr``.

    Step it once per optimizer step (``interval: step``); with ``steps_per_epoch=1`` it is the
    same schedule stepped per epoch.
    """
    _check(warmup_epochs, start_factor, steps_per_epoch)
    if max_epochs is None or max_epochs <= 0 or warmup_epochs >= max_epochs:
        raise ConfigError(
            "scheduler: need 0 <= warmup_epochs < max_epochs (trainer.max_epochs), "
            f"got {warmup_epochs} and {max_epochs}."
        )
    return LambdaLR(optimizer, CosineFactor(steps_per_epoch, max_epochs, warmup_epochs, start_factor, min_factor))


def warmup_multistep(
    optimizer: Optimizer,
    milestones: Sequence[int],
    gamma: float = 0.1,
    warmup_epochs: float = 0,
    start_factor: float = 0.1,
    steps_per_epoch: int = 1,
) -> LambdaLR:
    """Optional linear warm-up, then multiply the rate by ``gamma`` at each milestone epoch."""
    _check(warmup_epochs, start_factor, steps_per_epoch)
    marks = sorted(float(m) for m in milestones)
    return LambdaLR(optimizer, MultistepFactor(steps_per_epoch, marks, gamma, warmup_epochs, start_factor))


def steps_per_epoch(trainer: Any) -> int:
    """Optimizer steps in one training epoch of a Lightning ``trainer`` (1 without one)."""
    if trainer is None:
        return 1
    # Set the training data up, so the count is known. (Not through estimated_stepping_batches: with
    # max_epochs=-1, a time budget's open-ended run, it answers inf without looking at the data.)
    if getattr(trainer, "train_dataloader", None) is None:
        trainer.fit_loop.setup_data()
    batches = trainer.num_training_batches
    if not math.isfinite(batches) or batches < 1:
        return 1
    return max(1, math.ceil(batches / trainer.accumulate_grad_batches))
