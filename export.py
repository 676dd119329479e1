"""Export a checkpoint: `python export.py ckpt_path=CKPT [format=onnx|torchscript] [output=PATH]`.

Writes one self-contained file (weights, NMS, class names and input size in its metadata),
runs it and checks it against PyTorch. See README.md, "Ship the model".
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("TINYSSD_ROOT", str(Path(__file__).resolve().parent))

import hydra
from omegaconf import DictConfig

from tinyssd.pipeline.cli import report_user_errors, run_hydra_app


@hydra.main(version_base="1.3", config_path="conf", config_name="export")
@report_user_errors
def main(cfg: DictConfig) -> None:
    from tinyssd.pipeline.exporting import export_from_config

    export_from_config(cfg)


if __name__ == "__main__":
    run_hydra_app(main, str(Path(__file__).resolve().parent / "conf"))
