"""Explain one picture step by step: `python explain.py [model=banana] [source=PICTURE]`.

A thin wrapper of `tinyssd explain` (tinyssd.pipeline.commands): the same configs, overrides and behaviour.
`python explain.py --help` lists the main keys. See README.md.
"""

from __future__ import annotations

import os
from pathlib import Path

# Runs (logs/) and the banana data (data/) live in the clone when the scripts are used.
os.environ.setdefault("TINYSSD_ROOT", str(Path(__file__).resolve().parent))

from tinyssd.pipeline.commands import run

if __name__ == "__main__":
    run("explain")
