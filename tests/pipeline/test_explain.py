"""``explain.py``: the shipped model on any picture, a data set's picture with its objects, bad options."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from helpers import run_script, write_all_formats, write_banana_dataset
from torchvision.io import decode_image, write_jpeg


def run_explain(tmp: Path, *args: str):
    logs = tmp / "logs"
    result = run_script("explain.py", [f"paths.log_dir={logs}", *args])
    runs = sorted((logs / "explain" / "runs").glob("*")) if (logs / "explain").is_dir() else []
    return result, runs[-1] if runs else None


def test_the_shipped_model_on_any_picture(tmp_path: Path):
    picture = tmp_path / "p.jpg"
    write_jpeg(torch.randint(0, 255, (3, 90, 120), dtype=torch.uint8), str(picture))
    result, run = run_explain(tmp_path, "model=banana", f"source={picture}", "cell=[10,80]")
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name for p in run.glob("*.png")) == ["anchors.png", "nms.png", "scores.png"]
    assert decode_image(str(run / "scores.png")).shape[0] == 3
    report = json.loads((run / "explain.json").read_text())
    assert report["anchors_per_scale"] == [5120, 1024, 256, 64, 4]  # the banana model: anchors=small at 256
    assert report["cell_point"][0] < 0.1 and report["cell_point"][1] > 0.85  # (10, 80) of 120x90
    scores = [d["score"] for d in report["before_nms"]]
    assert len(scores) == 50 and scores == sorted(scores, reverse=True)
    assert all(d["score"] >= 0.9 for d in report["detections"])  # the banana model's display threshold


def test_a_data_set_picture_with_its_objects(tmp_path: Path):
    data = write_banana_dataset(tmp_path / "data", 4, 3)
    result, run = run_explain(tmp_path, f"data.data_dir={data}", "picture=1.png", "anchor_preset=dense")
    assert result.returncode == 0, result.stderr[-3000:]
    assert {"anchors.png", "labelling.png", "offsets.png"} == {p.name for p in run.glob("*.png")}
    report = json.loads((run / "explain.json").read_text())
    assert report["anchors_per_cell"] == [6] * 5 and set(report["labelling"]) == {"max_iou", "atss"}
    assert "1.png" in report["picture"] and report["offsets"]["object"] == 0


def test_a_three_class_picture_with_the_chapter_rule_beside_atss(tmp_path: Path):
    formats = write_all_formats(tmp_path / "sets")
    result, run = run_explain(tmp_path, *formats["yolo"], "picture=val_4.png", "assigner=atss")
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((run / "explain.json").read_text())
    # val_4 (128x128) holds a banana and two blue objects: each listed under both rules, by class.
    for rule in ("max_iou", "atss"):
        assert [o["class"] for o in report["labelling"][rule]] == ["banana", "blue", "blue"]
    assert all(o["positives"] >= 1 for o in report["labelling"]["max_iou"])
    assert {"anchors.png", "labelling.png", "offsets.png"} == {p.name for p in run.glob("*.png")}


def test_bad_options_are_named(tmp_path: Path):
    data = write_banana_dataset(tmp_path / "data", 4, 3)
    result, _ = run_explain(tmp_path, f"data.data_dir={data}", "picture=7")
    assert result.returncode == 2 and "picture=7: the val split has pictures 0..2" in result.stderr
    result, _ = run_explain(tmp_path, f"data.data_dir={data}", "picture=nope.png")
    assert result.returncode == 2 and "is not a picture of the val split" in result.stderr
    assert "Traceback" not in result.stderr
