"""The trained banana model that ships in the package: made by scripts/ship_model.py, usable by name."""

from __future__ import annotations

import json

import pytest
from helpers import real_data_dir, run_script, write_banana_dataset

from tinyssd import Detector, TinySSDModule
from tinyssd.model.checkpoints import load_checkpoint, load_module
from tinyssd.model.run_files import SHIPPED_FOLDER, resolve_model_path, shipped_model, shipped_models
from tinyssd.pipeline.finetune import init_from_checkpoint

BANANA = SHIPPED_FOLDER / "banana.ckpt"


def test_the_banana_model_ships_with_how_it_was_made():
    assert "banana" in shipped_models()
    record = json.loads((SHIPPED_FOLDER / "banana.json").read_text())
    assert "experiment=best" in record["command"] and record["commit"] and record["training_seconds"] > 0
    assert record["best_val_map"] >= 0.8 and record["classes"] == ["banana"]
    assert BANANA.stat().st_size < 10_000_000  # weights and settings only
    ckpt = load_checkpoint(BANANA)  # the same checked loader as any checkpoint
    assert set(ckpt) <= {"hyper_parameters", "state_dict", "epoch", "global_step", "pytorch-lightning_version"}


def test_a_name_resolves_to_the_package_unless_a_file_of_that_name_exists(tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    assert resolve_model_path("banana", runs) == BANANA
    monkeypatch.chdir(tmp_path)
    (tmp_path / "banana").mkdir()  # the user's own folder named banana wins
    assert shipped_model("banana") is None


def test_the_banana_model_loads_by_name_for_detection_and_fine_tuning():
    detector = Detector.load("banana")
    assert detector.class_names == ["banana"] and detector.image_size == load_module(BANANA).contract.image_size
    report = init_from_checkpoint(TinySSDModule(net=load_module(BANANA).hparams["net"]), BANANA)
    assert "loaded" in report.summary() and "re-initialised" not in report.summary()


@pytest.mark.real_data
def test_the_banana_model_finds_the_four_bananas_of_the_chapters_picture_and_nothing_else():
    data = real_data_dir()
    if data is None:
        pytest.skip("needs ../shared/data (banana.jpg)")
    picture = next(p for p in (data / "banana.jpg", data / "banana-detection" / "banana.jpg") if p.is_file())
    (dets,) = Detector.load("banana", threshold=0.0).predict(picture)
    confident = int((dets.scores >= 0.9).sum())
    doubtful = int(((dets.scores >= 0.2) & (dets.scores < 0.9)).sum())
    assert (confident, doubtful) == (4, 0), dets.scores[:8].tolist()


def test_eval_and_predict_take_the_model_by_name(tmp_path):
    data = write_banana_dataset(tmp_path / "data", num_train=2, num_val=2, image_size=(256, 256))
    result = run_script(
        "eval.py", ["model=banana", f"data.data_dir={data}", "logger=none", f"hydra.run.dir={tmp_path / 'eval'}"]
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["checkpoint"] == str(BANANA)
    images = data / "banana-detection" / "bananas_val" / "images"
    result = run_script("predict.py", ["model=banana", f"source={images}", f"output_dir={tmp_path / 'pred'}"])
    assert result.returncode == 0, result.stderr[-2000:]


@pytest.mark.slow
def test_export_takes_the_model_by_name_and_writes_into_its_run_folder(tmp_path):
    result = run_script("export.py", ["model=banana", f"hydra.run.dir={tmp_path / 'export'}"])
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "export" / "banana.onnx").is_file() and not (SHIPPED_FOLDER / "banana.onnx").exists()
