"""Learning-rate schedules with linear warm-up, stepped once per epoch."""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from tinyssd.errors import ConfigError

__all__ = ["warmup_cosine", "warmup_multistep"]


def _warmup_factor(epoch: int, warmup_epochs: int, start_factor: float) -> float:
    return start_factor + (1 - start_factor) * epoch / warmup_epochs


def warmup_cosine(
    optimizer: Optimizer, max_epochs: int, warmup_epochs: int = 1, start_factor: float = 0.1, min_factor: float = 0.0
) -> LambdaLR:
    """Linear warm-up from ``start_factor * lr`` over ``warmup_epochs``, then cosine to ``min_factor * lr``."""
    if max_epochs < 1 or warmup_epochs < 0 or warmup_epochs >= max_epochs:
        raise ConfigError(f"scheduler: need 0 <= warmup_epochs < max_epochs, got {warmup_epochs} and {max_epochs}.")

    def factor(epoch: int) -> float:
        if epoch < warmup_epochs:
            return _warmup_factor(epoch, warmup_epochs, start_factor)
        progress = (epoch - warmup_epochs) / max(1, max_epochs - warmup_epochs)
        return min_factor + (1 - min_factor) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return LambdaLR(optimizer, factor)


def warmup_multistep(
    optimizer: Optimizer,
    milestones: Sequence[int],
    gamma: float = 0.1,
    warmup_epochs: int = 0,
    start_factor: float = 0.1,
) -> LambdaLR:
    """Optional linear warm-up, then multiply the rate by ``gamma`` at each milestone epoch."""
    marks = sorted(int(m) for m in milestones)

    def factor(epoch: int) -> float:
        if epoch < warmup_epochs:
            return _warmup_factor(epoch, warmup_epochs, start_factor)
        return gamma ** sum(epoch >= m for m in marks)

    return LambdaLR(optimizer, factor)
