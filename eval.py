"""Evaluate a checkpoint: `python eval.py ckpt_path=PATH [data=coco data.val...=...] [split=val|test]`.

Prints mAP, per-class AP and a confusion matrix, and writes metrics.json and
confusion_matrix.png in the run folder (logs/eval/runs/DATE_TIME). See README.md.
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("TINYSSD_ROOT", str(Path(__file__).resolve().parent))

import hydra
from omegaconf import DictConfig

from tinyssd.pipeline.cli import entry_point, run_hydra_app


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
@entry_point
def main(cfg: DictConfig) -> float | None:
    from tinyssd.pipeline.evaluation import evaluate

    return evaluate(cfg)["map"]


if __name__ == "__main__":
    run_hydra_app(main, str(Path(__file__).resolve().parent / "conf"))
