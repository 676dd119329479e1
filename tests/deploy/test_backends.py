"""One backend seam: a checkpoint in PyTorch, an .onnx export in ONNX Runtime or OpenVINO, the same detections."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from helpers import FIXTURES, run_script, write_banana_dataset

from tinyssd import ConfigError, Detector
from tinyssd.deploy.backends import RUNTIMES, load_backend
from tinyssd.deploy.export import export_model
from tinyssd.model.checkpoints import load_module

pytestmark = pytest.mark.skipif(importlib.util.find_spec("openvino") is None, reason="openvino is not installed")


@pytest.fixture(scope="module")
def exported() -> Path:
    """``fixtures/v0_run.onnx``: ``python export.py ckpt_path=tests/fixtures/v0_run.ckpt`` (an export is data too)."""
    return FIXTURES / "v0_run.onnx"


@pytest.mark.slow
def test_the_fixture_export_is_the_checkpoints(exported, tmp_path):
    """The committed export still equals a fresh export of its checkpoint's detections."""
    fresh = tmp_path / "fresh.onnx"
    export_model(load_module(FIXTURES / "v0_run.ckpt"), fresh)
    pictures = list(
        torch.randint(0, 256, (3, 3, 64, 64), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    )
    ours, theirs = (Detector.load(p, threshold=0.0).predict(pictures) for p in (exported, fresh))
    for a, b in zip(ours, theirs, strict=True):
        assert torch.equal(a.labels, b.labels) and torch.allclose(a.scores, b.scores, atol=1e-6)


def test_every_runtime_of_the_table_loads_and_states_the_same_contract(exported):
    contracts = {name: load_backend(exported, name).contract for name in RUNTIMES[".onnx"]}
    assert len(set(contracts.values())) == 1 and set(contracts) == {"onnxruntime", "openvino"}
    assert load_backend(FIXTURES / "v0_run.ckpt").contract.class_names == ("banana",)


def test_openvino_detections_equal_onnx_runtimes(exported):
    pictures = torch.randint(0, 256, (5, 3, 64, 64), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    results = {
        runtime: Detector.load(exported, runtime=runtime, threshold=0.0).predict(list(pictures))
        for runtime in ("onnxruntime", "openvino")
    }
    for ours, theirs in zip(results["onnxruntime"], results["openvino"], strict=True):
        assert torch.equal(ours.labels, theirs.labels)
        assert torch.allclose(ours.scores, theirs.scores, atol=1e-5)
        assert torch.allclose(ours.boxes, theirs.boxes, atol=1e-3)  # pixels


def test_a_runtime_that_cannot_run_the_file_is_named(exported):
    with pytest.raises(ConfigError, match=r"runtime=openvino cannot run .*a checkpoint.*auto, torch"):
        load_backend(FIXTURES / "v0_run.ckpt", "openvino")
    with pytest.raises(ConfigError, match=r"runtime=torch cannot run .*an exported model.*onnxruntime, openvino"):
        load_backend(exported, "torch")


def test_eval_and_predict_take_runtime_openvino(exported, tmp_path):
    data = write_banana_dataset(tmp_path / "data", num_train=2, num_val=4)
    metrics = {}
    for runtime in ("onnxruntime", "openvino"):
        result = run_script(
            "eval.py",
            [f"ckpt_path={exported}", f"data.data_dir={data}", f"runtime={runtime}", "logger=none",
             f"hydra.run.dir={tmp_path / runtime}"],
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-2000:]
        metrics[runtime] = json.loads((tmp_path / runtime / "metrics.json").read_text())
    for key in ("map", "map_50", "precision", "recall"):
        assert metrics["openvino"][key] == pytest.approx(metrics["onnxruntime"][key], abs=1e-4)
    images = data / "banana-detection" / "bananas_val" / "images"
    result = run_script("predict.py", [f"model={exported}", f"input={images}", "runtime=openvino",
                                       f"output_dir={tmp_path / 'pred'}"])  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert len(json.loads((tmp_path / "pred" / "detections.json").read_text())["images"]) == 4
