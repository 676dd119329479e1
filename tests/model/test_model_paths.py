"""One resolver for every command's model argument: a file, a run folder, ``last`` or ``best``."""

from __future__ import annotations

import os
import time

import pytest
import torch
from helpers import genuine_checkpoint

from tinyssd import CheckpointError
from tinyssd.model.run_files import resolve_model_path

CALLBACK = "ModelCheckpoint{'monitor': 'val/map', 'mode': 'max'}"


def _run(runs, name: str, best: str | None, epochs=("epoch_001.ckpt", "epoch_002.ckpt"), age: float = 0.0):
    folder = runs / name / "checkpoints"
    folder.mkdir(parents=True)
    for epoch in epochs:
        (folder / epoch).write_bytes(b"x")
    ckpt = genuine_checkpoint()
    if best:
        ckpt["callbacks"] = {CALLBACK: {"best_model_path": str(folder / best)}}
    torch.save(ckpt, folder / "last.ckpt")
    stamp = time.time() - age
    os.utime(folder / "last.ckpt", (stamp, stamp))
    return runs / name


def test_files_folders_last_and_best(tmp_path):
    runs = tmp_path / "logs" / "train" / "runs"
    old = _run(runs, "old", "epoch_002.ckpt", age=100)
    new = _run(runs, "new", "epoch_001.ckpt")
    assert resolve_model_path(str(tmp_path / "m.onnx"), runs) == tmp_path / "m.onnx"
    assert resolve_model_path(str(old), runs) == old / "checkpoints" / "last.ckpt"
    assert resolve_model_path("last", runs) == new / "checkpoints" / "last.ckpt"
    # best: the one the newest run's checkpoint callback names, not merely its newest epoch file
    assert resolve_model_path("best", runs) == new / "checkpoints" / "epoch_001.ckpt"
    # a resumed run never resumes itself
    assert resolve_model_path("last", runs, exclude=new) == old / "checkpoints" / "last.ckpt"


def test_best_without_callback_state_is_the_newest_epoch_file(tmp_path):
    runs = tmp_path / "runs"
    run = _run(runs, "a", None)
    later = run / "checkpoints" / "epoch_001.ckpt"
    os.utime(later, (time.time() + 5, time.time() + 5))
    assert resolve_model_path("best", runs) == later


def test_what_cannot_be_resolved_is_named(tmp_path):
    with pytest.raises(CheckpointError, match="model=last found no run"):
        resolve_model_path("last", tmp_path / "runs", key="model")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match=r"is a folder without checkpoints/last\.ckpt"):
        resolve_model_path(str(tmp_path / "empty"), tmp_path / "runs")
    _run(tmp_path / "runs", "a", None, epochs=())
    with pytest.raises(CheckpointError, match="has no best checkpoint"):
        resolve_model_path("best", tmp_path / "runs")
