"""Checkpoints made in a test, as train.py writes them (without training)."""

from __future__ import annotations

import copy


def genuine_checkpoint(class_names=("banana",), image_size: int = 64) -> dict:
    """An untrained module's checkpoint as train.py writes it (the parts tinyssd reads)."""
    from tinyssd import TinySSDModule

    module = TinySSDModule(
        net={"_target_": "tinyssd.model.net.TinySSD", "num_classes": len(class_names)},
        class_names=list(class_names),
        image_size=image_size,
        channels_last=False,
    )
    return {
        "epoch": 0,
        "global_step": 0,
        "state_dict": module.state_dict(),
        "hyper_parameters": copy.deepcopy(dict(module.hparams)),
    }
