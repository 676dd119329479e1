"""Train TinySSD: `python train.py [overrides]`, e.g. `python train.py loss=focal trainer.devices=1`.

Sweeps: `python train.py -m loss=ce_l1,focal`. See README.md for the main overrides.
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("TINYSSD_ROOT", str(Path(__file__).resolve().parent))

import hydra
from omegaconf import DictConfig

from tinyssd.pipeline.cli import entry_point, run_hydra_app


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
@entry_point
def main(cfg: DictConfig) -> float | None:
    from tinyssd.pipeline.training import train

    metrics = train(cfg)
    # Sweepers (hparams_search) maximise this value: the run's best validation of the metric
    # (the epoch its best checkpoint keeps), or its last value when it was never validated.
    metric = cfg.get("optimized_metric")
    return metrics.get(f"best/{metric}", metrics.get(metric))


if __name__ == "__main__":
    run_hydra_app(main, str(Path(__file__).resolve().parent / "conf"))
