"""``trainer.budget``: train for a wall-clock time instead of an epoch count.

A recipe tuned to one machine's epoch count overruns a slower one and leaves a faster one
idle. With a budget, :class:`TimeBudget` times each epoch's training steps and validation and,
after every epoch, plans how many optimizer steps still fit (whole epochs, then part of one:
training stops mid-epoch and validates, as early stopping does), and stretches the learning-rate
schedule to end on the last planned step (warm-up kept; cosine ends there, multistep milestones
move in proportion to ``trainer.max_epochs`` when set), as ultralytics' ``time`` does.
``trainer.max_epochs`` caps the plan when set. The plan is in the run log; the time spent travels
in checkpoints, so a resumed run keeps its budget.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import asdict, dataclass
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig, open_dict

from tinyssd.errors import ConfigError
from tinyssd.pipeline.reporting import say

__all__ = [
    "BUDGET_KEY",
    "PROVISIONAL_EPOCHS",
    "BudgetPlan",
    "TimeBudget",
    "parse_budget",
    "plan_steps",
    "prepare_budget",
]

BUDGET_KEY = "budget"  # trainer.budget: read here, never passed to Lightning's Trainer
_UNITS = {"h": 3600.0, "m": 60.0, "min": 60.0, "s": 1.0}
# The schedule's length before the first plan when trainer.max_epochs is null (Lightning's default).
PROVISIONAL_EPOCHS = 1000
_NUMBER = r"\d+(?:\.\d*)?"
_DURATION = re.compile(rf"({_NUMBER})(h|min|m|s)")


def parse_budget(value: Any) -> float | None:
    """Seconds in ``trainer.budget``: a number of minutes, or a duration such as ``1h30m``, ``90s``, ``20min``."""
    if value is None:
        return None
    seconds = math.nan
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value) * 60
    elif isinstance(value, str):
        text = value.replace(" ", "").lower()
        if re.fullmatch(_NUMBER, text):
            seconds = float(text) * 60
        elif re.fullmatch(f"(?:{_DURATION.pattern})+", text):
            seconds = sum(float(n) * _UNITS[unit] for n, unit in _DURATION.findall(text))
    if not math.isfinite(seconds) or seconds <= 0:
        raise ConfigError(
            f"trainer.budget={value!r} is not a time: give minutes (trainer.budget=20) or a duration "
            "(trainer.budget=1h30m, 90s, 20min); trainer.budget=null trains trainer.max_epochs epochs."
        )
    return seconds


@dataclass
class BudgetPlan:
    """What fits: ``steps`` optimizer steps in all (``epochs`` of them whole or partial)."""

    steps: int
    epochs: float
    seconds_per_step: float
    seconds_per_validation: float
    expected_end_s: float


def plan_steps(
    budget_s: float,
    elapsed_s: float,
    steps_done: int,
    steps_per_epoch: int,
    seconds_per_step: float,
    seconds_per_validation: float,
    max_steps: int | None = None,
    reserve_s: float = 0.0,
) -> BudgetPlan:
    """The optimizer steps that end training, validation included, within ``budget_s``.

    Whole epochs (each ``steps_per_epoch`` steps and one validation) while they fit, then as many
    steps of one more epoch as leave time for its validation, if they take at least as long as
    that validation (a shorter tail is not worth validating). ``reserve_s`` of the budget is kept
    free at the end; ``max_steps`` caps the plan.
    """
    left = budget_s - reserve_s - elapsed_s
    epoch_s = steps_per_epoch * seconds_per_step + seconds_per_validation
    whole = max(0, math.floor(left / epoch_s)) if epoch_s > 0 else 0
    tail_s = left - whole * epoch_s - seconds_per_validation
    tail = math.floor(tail_s / seconds_per_step) if seconds_per_step > 0 and tail_s > 0 else 0
    tail = min(tail, steps_per_epoch - 1) if tail * seconds_per_step >= seconds_per_validation else 0
    steps = steps_done + whole * steps_per_epoch + tail
    if max_steps is not None:
        steps = min(steps, max_steps)
    steps = max(steps, steps_done)
    added = steps - steps_done
    validations = math.ceil(added / steps_per_epoch) if steps_per_epoch else 0
    return BudgetPlan(
        steps=steps,
        epochs=steps / steps_per_epoch,
        seconds_per_step=seconds_per_step,
        seconds_per_validation=seconds_per_validation,
        expected_end_s=elapsed_s + added * seconds_per_step + validations * seconds_per_validation,
    )


def prepare_budget(cfg: DictConfig) -> TimeBudget | None:
    """The callback for ``trainer.budget`` (``None`` without one), the config readied for a planned run.

    With a budget and no ``trainer.max_epochs``, Lightning is told to run without an epoch limit
    (the plan sets one) and the schedule starts as long as Lightning's own default
    (:data:`PROVISIONAL_EPOCHS`: flat after its warm-up) until the first plan, at the end of the
    first epoch.
    """
    budget_s = parse_budget(cfg.trainer.get(BUDGET_KEY))
    if budget_s is None:
        return None
    cap = cfg.trainer.get("max_epochs")
    with open_dict(cfg):
        if cap is None:
            cfg.trainer.max_epochs = -1
        scheduler = cfg.get("scheduler")
        if scheduler and "max_epochs" in scheduler and scheduler.get("max_epochs") in (None, -1):
            scheduler.max_epochs = PROVISIONAL_EPOCHS
    return TimeBudget(budget_s, cap)


def _schedule_factors(trainer: pl.Trainer) -> list[Any]:
    """The re-plannable factors (tinyssd's schedules) of the trainer's LR schedulers."""
    found = []
    for config in trainer.lr_scheduler_configs:
        for factor in getattr(config.scheduler, "lr_lambdas", []):
            if hasattr(factor, "replan"):
                found.append(factor)
    return found


@dataclass
class EpochTime:
    """One epoch's cost: seconds in training steps, their number, seconds in validation, and the whole
    cycle from its start to the next epoch's (checkpoints, logging and loader start-up included)."""

    train_s: float
    steps: int
    validation_s: float = 0.0
    cycle_s: float | None = None

    @property
    def fixed_s(self) -> float:
        """What the epoch costs besides its training steps (validation and the rest)."""
        return self.validation_s if self.cycle_s is None else max(self.cycle_s - self.train_s, 0.0)


class TimeBudget(Callback):
    """Plans the epoch count and the schedule after every epoch so that training ends within ``budget_s``."""

    def __init__(self, budget_s: float, max_epochs: int | None = None) -> None:
        self.budget_s = budget_s
        self.max_epochs = max_epochs if max_epochs and max_epochs > 0 else None
        self.spent_s = 0.0  # in earlier sessions of this run (restored on resume)
        # The schedule's length before the next re-plan: multistep milestones were written for
        # trainer.max_epochs when it is set and move in proportion; without it they stay where they are.
        self.planned_epochs: float | None = float(self.max_epochs) if self.max_epochs else None
        self.plan: BudgetPlan | None = None
        self.epochs: list[EpochTime] = []
        self._start = self._mark = self._now()
        self._steps_at_start = 0
        self._epoch_start: float | None = None  # this session's current epoch (None before the first)
        self._training = False  # inside an epoch's training steps

    def _now(self) -> float:
        """The clock (a test gives the callback a simulated one)."""
        return time.perf_counter()

    @property
    def state_key(self) -> str:
        return "TimeBudget"

    def elapsed(self) -> float:
        """Seconds of training so far, earlier sessions of a resumed run included."""
        return self.spent_s + self._now() - self._start

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._start = self._now()

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        now = self._now()
        if self.epochs and self.epochs[-1].cycle_s is None and self._epoch_start is not None:
            self.epochs[-1].cycle_s = now - self._epoch_start
        self._epoch_start = self._mark = now
        self._steps_at_start, self._training = trainer.global_step, True

    def _close_training(self, trainer: pl.Trainer) -> None:
        if self._training:
            self.epochs.append(EpochTime(self._now() - self._mark, trainer.global_step - self._steps_at_start))
            self._mark, self._training = self._now(), False

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._close_training(trainer)
            self._mark = self._now()

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking and self.epochs:
            self.epochs[-1].validation_s += self._now() - self._mark

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        planned_out = self.plan is not None and trainer.global_step >= self.plan.steps
        # Steps slower than planned: stop while the last validation and the run's end still fit.
        validation_s = self.plan.seconds_per_validation if self.plan else 0.0
        out_of_time = self.elapsed() + 2 * validation_s >= self.budget_s
        if trainer.strategy.reduce_boolean_decision(planned_out or out_of_time, all=False):
            trainer.should_stop = True  # Lightning validates, then stops (as for early stopping)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Lightning (>= 2.0) calls this after the epoch's validation: the epoch's whole cost is known.
        self._close_training(trainer)  # an epoch without validation
        if not trainer.should_stop and self.epochs:
            self._replan(trainer)

    def _replan(self, trainer: pl.Trainer) -> None:
        # The first epoch holds one-off costs (cache filling, kernel warm-up): later epochs speak for the rest.
        seen = self.epochs[1:] or self.epochs
        steps = sum(e.steps for e in seen)
        seconds_per_step = sum(e.train_s for e in seen) / max(steps, 1)
        # Per epoch (validation, when not every epoch, spread over them), measured on whole cycles where there are.
        cycles = [e for e in seen if e.cycle_s is not None] or seen
        seconds_per_validation = sum(e.fixed_s for e in cycles) / len(cycles)
        steps_per_epoch = max(1, round(steps / len(seen)))
        cap = self.max_epochs * steps_per_epoch if self.max_epochs else None
        # Kept free: a step, for the spread of step times, and the work that ends a run (the last
        # checkpoint, curves and pictures), about a validation's worth.
        reserve_s = seconds_per_step + seconds_per_validation
        plan = plan_steps(
            self.budget_s, self.elapsed(), trainer.global_step, steps_per_epoch, seconds_per_step,
            seconds_per_validation, cap, reserve_s,
        )  # fmt: skip
        plan = BudgetPlan(**trainer.strategy.broadcast(asdict(plan), src=0))  # every process follows rank 0's plan
        self.plan = plan
        trainer.fit_loop.max_epochs = max(trainer.current_epoch + 1, math.ceil(plan.epochs))
        if plan.steps <= trainer.global_step:
            trainer.should_stop = True
        for factor in _schedule_factors(trainer):
            factor.replan(plan.epochs, self.planned_epochs)
        self.planned_epochs = plan.epochs
        say(
            f"time budget {self.budget_s / 60:g} min: {self.elapsed():.0f} s spent after epoch "
            f"{trainer.current_epoch}; {seconds_per_step * 1000:.0f} ms per step, {seconds_per_validation:.1f} s "
            f"per validation -> {plan.epochs:.2f} epochs in all ({plan.steps} steps), "
            f"expected end at {plan.expected_end_s:.0f} s"
        )

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        say(
            f"time budget {self.budget_s / 60:g} min: training took {self.elapsed():.0f} s "
            f"({trainer.global_step} steps in {trainer.current_epoch} epochs, the last one possibly cut short; "
            "validation included)"
        )

    def state_dict(self) -> dict[str, Any]:
        return {
            "spent_s": self.elapsed(),
            "planned_epochs": self.planned_epochs,
            "epochs": [asdict(e) for e in self.epochs],
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.spent_s = float(state_dict.get("spent_s", 0.0))
        self.planned_epochs = state_dict.get("planned_epochs")
        self.epochs = [EpochTime(**e) for e in state_dict.get("epochs", [])]
        self._start = self._now()
