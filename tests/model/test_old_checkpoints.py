"""Checkpoints written before the package was regrouped still load, predict and evaluate the same.

``fixtures/v0_run.ckpt`` was written by train.py of the flat layout (``tinyssd.model.TinySSD``,
``tinyssd.loss.MultiBoxLoss`` ... in its specs); ``fixtures/v0_expected.json`` holds what that
version's predict.py and eval.py gave (``fixtures/make_v0_checkpoint.py`` made both).
"""

from __future__ import annotations

import json

import pytest
from helpers import FIXTURES, run_script, write_banana_dataset

from tinyssd import Detector

EXPECTED = json.loads((FIXTURES / "v0_expected.json").read_text())


def test_an_old_checkpoint_names_the_old_targets():
    import torch

    hparams = torch.load(FIXTURES / "v0_run.ckpt", weights_only=True)["hyper_parameters"]
    assert hparams["net"]["_target_"] == "tinyssd.model.TinySSD"
    assert hparams["loss"]["_target_"] == "tinyssd.loss.MultiBoxLoss"


def test_an_old_checkpoint_predicts_the_same(tmp_path):
    data = write_banana_dataset(tmp_path / "data", num_train=8, num_val=4)
    images = sorted((data / "banana-detection" / "bananas_val" / "images").iterdir())
    detector = Detector.load(FIXTURES / "v0_run.ckpt", threshold=0.0)
    for path, dets in zip(images, detector.predict(images), strict=True):
        got, want = dets.to_list()[:10], EXPECTED["detections"][path.name]
        assert [d["label"] for d in got] == [d["label"] for d in want]
        for g, w in zip(got, want, strict=True):
            assert g["score"] == pytest.approx(w["score"], abs=2e-5)
            assert g["box"] == pytest.approx(w["box"], abs=0.02)


def test_an_old_checkpoint_evaluates_the_same(tmp_path):
    data = write_banana_dataset(tmp_path / "data", num_train=8, num_val=4)
    result = run_script(
        "eval.py",
        [f"ckpt_path={FIXTURES / 'v0_run.ckpt'}", f"data.data_dir={data}", "trainer.precision=32",
         f"hydra.run.dir={tmp_path / 'eval'}", "logger=none"],
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    for key, value in EXPECTED["metrics"].items():
        assert metrics[key] == pytest.approx(value, abs=1e-6), key
