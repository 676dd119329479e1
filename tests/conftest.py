"""Fixtures and hooks; the helpers tests call are the ``helpers`` package (tests/helpers/)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from helpers import TINY_ARGS, compose_train, write_banana_dataset

if os.environ.get("PYTEST_XDIST_WORKER"):
    # pytest -n N: N workers share the cores; one thread each (and in the processes they start)
    # instead of every worker's torch spreading over all of them.
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)


@pytest.fixture
def make_banana_dir(tmp_path: Path) -> Callable[..., Path]:
    """Factory over :func:`write_banana_dataset` in the test's temporary folder."""

    def make(name: str = "data", **kwargs) -> Path:
        return write_banana_dataset(tmp_path / name, **kwargs)

    return make


@pytest.fixture
def train_in_process(tmp_path: Path):
    """``train(cfg)`` in this process on a tiny dataset; each call gets a fresh run folder.

    Returns ``(metrics, run folder)``; the run folder is where Hydra would have put the run
    (``logs/train/runs/<n>``); a resumed run may continue elsewhere.
    """
    from tinyssd.pipeline.training import train

    data_dir = write_banana_dataset(tmp_path / "data", 8, 4)
    calls = {"n": 0}

    def run(*overrides: str, data: Path | None = None):
        calls["n"] += 1
        run_dir = tmp_path / "logs" / "train" / "runs" / f"run{calls['n']}"
        # Another data format (data=coco ...) brings its own locations in the overrides.
        where = [] if any(o.startswith("data=") for o in overrides) else [f"data.data_dir={data or data_dir}"]
        cfg = compose_train([*where, *TINY_ARGS, "trainer.accelerator=cpu", *overrides], run_dir)
        return train(cfg), run_dir

    return run


# Fixtures that train for real (a train.py subprocess or an in-process run): a test using one must
# be marked slow itself (@pytest.mark.slow), so `pytest -m "not slow"` stays the quick inner loop.
TRAINING_FIXTURES = {"trained_ckpt", "short_run", "workspace", "train_in_process", "coco_run", "trained_run"}


def pytest_collection_modifyitems(config, items):
    unmarked = [
        item.nodeid
        for item in items
        if TRAINING_FIXTURES & set(getattr(item, "fixturenames", ())) and item.get_closest_marker("slow") is None
    ]
    if unmarked:
        raise pytest.UsageError(
            "these tests train (they use a training fixture) but are not marked @pytest.mark.slow: "
            + ", ".join(unmarked)
        )
