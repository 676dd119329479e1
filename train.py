"""Train TinySSD: `python train.py [overrides]`, e.g. `python train.py loss=focal trainer.devices=1`.

A thin wrapper of `tinyssd train` (tinyssd.pipeline.commands): the same configs, overrides and behaviour.
`python train.py --help` lists the main keys. See README.md.
"""

from __future__ import annotations

import os
from pathlib import Path

# Runs (logs/) and the banana data (data/) live in the clone when the scripts are used.
os.environ.setdefault("TINYSSD_ROOT", str(Path(__file__).resolve().parent))

from tinyssd.pipeline.commands import run

if __name__ == "__main__":
    run("train")
