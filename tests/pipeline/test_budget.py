"""trainer.budget: the duration it reads, the plan it makes, the schedule it stretches, a run that keeps to it."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch
from torch.optim.lr_scheduler import LambdaLR

from tinyssd.errors import ConfigError
from tinyssd.model.schedules import CosineFactor, MultistepFactor, warmup_cosine
from tinyssd.pipeline.budget import parse_budget, plan_steps


@pytest.mark.parametrize(
    ("value", "seconds"),
    [(20, 1200), (0.5, 30), ("20", 1200), ("90s", 90), ("20min", 1200), ("20m", 1200), ("1h30m", 5400), ("1.5h", 5400)],
)
def test_budget_is_minutes_or_a_duration(value, seconds):
    assert parse_budget(value) == pytest.approx(seconds)


@pytest.mark.parametrize("value", ["soon", "20 parsecs", "h", 0, -5, True, "1h-30m", float("nan")])
def test_a_budget_that_is_not_a_time_is_refused_by_key(value):
    with pytest.raises(ConfigError, match=r"trainer\.budget=.* is not a time.*trainer\.budget=20"):
        parse_budget(value)


def test_the_plan_fills_the_budget_with_whole_epochs_then_part_of_one():
    # 10 steps per epoch at 1 s each and a 5 s validation: 15 s an epoch; 10 s spent, 20 steps done.
    plan = plan_steps(100, 10, 20, 10, 1.0, 5.0)  # 90 s left: six whole epochs exactly
    assert (plan.steps, plan.epochs, plan.expected_end_s) == (80, 8.0, 100)
    plan = plan_steps(110, 10, 20, 10, 1.0, 5.0)  # 10 s more: 5 steps and their validation
    assert (plan.steps, plan.epochs, plan.expected_end_s) == (85, 8.5, 110)
    plan = plan_steps(107, 10, 20, 10, 1.0, 5.0)  # 7 s more: 2 steps are not worth a 5 s validation
    assert plan.steps == 80
    assert plan_steps(110, 10, 20, 10, 1.0, 5.0, max_steps=50).steps == 50  # trainer.max_epochs caps it
    assert plan_steps(10, 30, 20, 10, 1.0, 5.0).steps == 20  # over budget already: no more steps
    assert plan_steps(116, 10, 20, 10, 1.0, 5.0, reserve_s=6).steps == 85  # 6 s kept free at the end


def test_replanned_schedules_end_at_the_new_length_and_survive_a_checkpoint(tmp_path):
    cosine = CosineFactor(steps_per_epoch=10, max_epochs=1000, warmup_epochs=1, start_factor=0.1, min_factor=0.0)
    assert cosine(10) == pytest.approx(1.0) and cosine(400) > 0.5  # flat-ish before the plan
    cosine.replan(5, None)  # cosine over epochs 1-5: half-way (rate 0.5) at step 30, 0 at step 50
    assert cosine(30) == pytest.approx(0.5) and cosine(50) == pytest.approx(0.0) and cosine(60) == pytest.approx(0.0)
    steps = MultistepFactor(steps_per_epoch=1, milestones=[12.0, 16.0], gamma=0.1, warmup_epochs=0, start_factor=0.1)
    steps.replan(10, 20)
    assert steps.milestones == [6.0, 8.0] and steps(5) == 1 and steps(6) == pytest.approx(0.1)

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    schedule = warmup_cosine(optimizer, 1000, warmup_epochs=1, steps_per_epoch=10)
    schedule.lr_lambdas[0].replan(3, None)
    torch.save(schedule.state_dict(), tmp_path / "s.pt")
    fresh = warmup_cosine(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0), 1000, steps_per_epoch=10)
    fresh.load_state_dict(torch.load(tmp_path / "s.pt", weights_only=True))
    assert isinstance(fresh, LambdaLR) and fresh.lr_lambdas[0].max_epochs == 3


def test_multistep_milestones_move_in_proportion_to_the_epochs_they_were_written_for():
    from tinyssd.pipeline.budget import TimeBudget

    assert TimeBudget(60, 20).planned_epochs == 20.0  # trainer.max_epochs=20: milestones [12, 16] of 20
    assert TimeBudget(60, None).planned_epochs is None  # no epoch count: the milestones stay where they are
    steps = MultistepFactor(steps_per_epoch=1, milestones=[12.0, 16.0], gamma=0.1, warmup_epochs=0, start_factor=1)
    steps.replan(10, None)
    assert steps.milestones == [12.0, 16.0]


class _SimulatedClock:
    """Time that passes only when the run does something: 1 s per training step, 0.5 s per validation."""

    def __init__(self) -> None:
        self.now = 0.0


@pytest.mark.slow
def test_a_tiny_budget_ends_the_run_on_its_plan_with_the_schedule_at_its_end(train_in_process, monkeypatch):
    import tinyssd.pipeline.budget as budget

    clock = _SimulatedClock()

    class SimulatedBudget(budget.TimeBudget):  # the real callback, on a clock that contention cannot disturb
        def _now(self) -> float:
            return clock.now

        def on_train_batch_end(self, trainer, *args) -> None:
            clock.now += 1.0
            super().on_train_batch_end(trainer, *args)

        def on_validation_epoch_end(self, trainer, pl_module) -> None:
            if not trainer.sanity_checking:
                clock.now += 0.5
            super().on_validation_epoch_end(trainer, pl_module)

    monkeypatch.setattr(budget, "TimeBudget", SimulatedBudget)
    _, run = train_in_process("scheduler=cosine", "trainer.budget=30.5s", "trainer.max_epochs=null", "logger=csv")
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
    state = checkpoint["callbacks"]["TimeBudget"]
    # 8 training pictures in batches of 4: 2 steps (2 s) and a validation (0.5 s) an epoch. After epoch 0,
    # 28 s are left, 1.5 s of them kept free (a step and a validation): ten whole epochs (25 s), then one
    # step (1 s) and its validation (0.5 s).
    assert checkpoint["global_step"] == 23 and state["planned_epochs"] == pytest.approx(11.5)
    assert state["spent_s"] == pytest.approx(29.0)  # the last validation ends where the plan said
    assert json.loads((run / "summary.json").read_text())["epochs"] == 12  # the last one cut short
    # The cosine schedule was stretched to the plan: its length is 11.5 epochs and its rate ends at 0.
    factor = checkpoint["lr_schedulers"][0]["lr_lambdas"][0]
    assert factor["max_epochs"] == pytest.approx(11.5)
    # Counted in epochs of 2 steps (an open-ended run, max_epochs=-1, must still count its batches): the
    # rate logged at step 9 (epoch 4.5: a third of the 10.5 epochs after the warm-up) is 0.2 * 0.75.
    assert factor["steps_per_epoch"] == 2
    rows = csv.DictReader(open(run / "csv" / "metrics.csv"))
    rates = {int(r["step"]): float(r["lr-SGD"]) for r in rows if r.get("lr-SGD")}
    assert rates[9] == pytest.approx(0.2 * 0.75)
    assert rates[19] == pytest.approx(0.2 * 0.5 * (1 + math.cos(math.pi * 8.5 / 10.5)))
    assert checkpoint["lr_schedulers"][0]["_last_lr"][0] == pytest.approx(0.0, abs=1e-6)
    assert all(e["steps"] == 2 for e in state["epochs"][:-1]) and state["epochs"][-1]["steps"] == 1


@pytest.mark.slow
def test_a_budget_run_keeps_to_wall_clock_time(train_in_process):
    metrics, _ = train_in_process("trainer.budget=10s", "trainer.max_epochs=null", "logger=csv")
    # Real time, loosely: contention on a shared machine moves it by seconds, not by the budget.
    assert metrics["wall_time_s"] <= 10 + 4, metrics["wall_time_s"]
