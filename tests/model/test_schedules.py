"""Learning-rate schedules: a per-step warm-up (fractional epochs), then cosine or milestones."""

from __future__ import annotations

import itertools

import pytest
import torch

from tinyssd.errors import ConfigError
from tinyssd.model.schedules import warmup_cosine, warmup_multistep


def _rates(scheduler, steps: int) -> list[float]:
    rates = []
    for _ in range(steps):
        rates.append(scheduler.optimizer.param_groups[0]["lr"])
        scheduler.optimizer.step()
        scheduler.step()
    return rates


def _optimizer(lr: float = 0.2) -> torch.optim.Optimizer:
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)


def test_warm_up_rises_every_step_then_cosine_falls_to_the_floor():
    steps_per_epoch, epochs = 10, 4
    rates = _rates(warmup_cosine(_optimizer(), epochs, warmup_epochs=0.5, steps_per_epoch=steps_per_epoch), 41)
    # Half an epoch (5 steps) from 0.1 * lr up to lr, one step at a time: no flat first epoch.
    assert rates[:6] == pytest.approx([0.02, 0.056, 0.092, 0.128, 0.164, 0.2])
    decay = rates[5:]
    assert all(a > b for a, b in itertools.pairwise(decay))  # strictly falling, step by step
    assert rates[5 + 35 // 2] == pytest.approx(0.1, abs=0.01)  # half-way through the cosine: half the rate
    assert rates[40] == pytest.approx(0.0, abs=1e-12)


def test_whole_epoch_warm_up_ends_at_the_full_rate_on_the_epoch_boundary():
    rates = _rates(warmup_cosine(_optimizer(1.0), 3, warmup_epochs=1, start_factor=0.5, steps_per_epoch=4), 5)
    assert rates == pytest.approx([0.5, 0.625, 0.75, 0.875, 1.0])


def test_multistep_warm_up_then_gamma_at_each_milestone_epoch():
    scheduler = warmup_multistep(_optimizer(1.0), milestones=[2, 3], gamma=0.1, warmup_epochs=0.25, steps_per_epoch=8)
    rates = _rates(scheduler, 32)
    assert rates[:3] == pytest.approx([0.1, 0.55, 1.0])
    assert rates[15] == pytest.approx(1.0) and rates[16] == pytest.approx(0.1)  # epoch 2 starts at step 16
    assert rates[23] == pytest.approx(0.1) and rates[24] == pytest.approx(0.01)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"warmup_epochs": -1}, "warmup_epochs must be a number >= 0"),
        ({"warmup_epochs": 4}, "warmup_epochs < max_epochs"),
        ({"start_factor": 0}, "start_factor must be in"),
    ],
)
def test_impossible_schedules_are_config_errors(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        warmup_cosine(_optimizer(), 4, steps_per_epoch=3, **{"warmup_epochs": 1, **kwargs})


def test_the_module_steps_tinyssd_schedules_per_step_and_torch_schedulers_per_epoch():
    from tinyssd.model.module import TinySSDModule

    cosine = {"_target_": "tinyssd.model.schedules.warmup_cosine", "max_epochs": 4, "warmup_epochs": 0.5}
    config = TinySSDModule(scheduler=cosine).configure_optimizers()
    assert config["lr_scheduler"]["interval"] == "step"
    step_lr = {"_target_": "torch.optim.lr_scheduler.StepLR", "step_size": 2}
    assert TinySSDModule(scheduler=step_lr).configure_optimizers()["lr_scheduler"]["interval"] == "epoch"
    with pytest.raises(ConfigError, match="steps_per_epoch is set by tinyssd"):
        TinySSDModule(scheduler={**cosine, "steps_per_epoch": 3})
