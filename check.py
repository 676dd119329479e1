"""Check a data set before training: `python check.py [data=coco|voc|yolo ...] [anchors=small]`.

A thin wrapper of `tinyssd check` (tinyssd.pipeline.commands): the same configs, overrides and behaviour.
`python check.py --help` lists the main keys. See README.md.
"""

from __future__ import annotations

import os
from pathlib import Path

# Runs (logs/) and the banana data (data/) live in the clone when the scripts are used.
os.environ.setdefault("TINYSSD_ROOT", str(Path(__file__).resolve().parent))

from tinyssd.pipeline.commands import run

if __name__ == "__main__":
    run("check")
