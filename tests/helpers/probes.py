"""Callbacks that tests add to a run from the command line (``+callbacks.probe._target_=helpers.probes.X``)."""

from __future__ import annotations

from typing import ClassVar

import torch


class WeightsAtStart:
    """A Lightning callback for tests (``+callbacks.probe._target_=helpers.probes.WeightsAtStart``):
    records the network's weights when training starts, before the first optimizer step."""

    seen: ClassVar[dict[str, torch.Tensor]] = {}

    def __new__(cls):
        import lightning.pytorch as pl

        class Probe(pl.Callback):
            def on_train_start(self, trainer, pl_module):
                WeightsAtStart.seen = {k: v.detach().clone() for k, v in pl_module.net.state_dict().items()}

        return Probe()
