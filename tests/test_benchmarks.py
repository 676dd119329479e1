"""Benchmark helpers that run without their optional dependencies."""

from __future__ import annotations

import importlib.util
import sys

import torch
from helpers import ROOT, write_banana_dataset

from tinyssd.data.formats.banana import read_banana_split
from tinyssd.data.formats.yolo import read_yolo_split, read_yolo_yaml


def _peer_yolo():
    spec = importlib.util.spec_from_file_location("peer_yolo", ROOT / "benchmarks" / "peer_yolo.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("peer_yolo", module)
    spec.loader.exec_module(module)
    return module


def test_peer_yolo_layout_holds_the_banana_labels(tmp_path):
    """What YOLOv8n trains on is the banana folder's ground truth, read back through tinyssd's YOLO reader."""
    data = write_banana_dataset(tmp_path / "data", 6, 3, objects_per_image=2, image_size=(80, 64), num_classes=2)
    banana = data / "banana-detection"
    yaml = _peer_yolo().write_yolo_layout(banana, tmp_path / "yolo", ["a", "b"])
    spec = read_yolo_yaml(yaml)
    assert spec["names"] == ["a", "b"]
    for split, folder in (("train", "bananas_train"), ("val", "bananas_val")):
        expected = read_banana_split(banana / folder, ["a", "b"])
        got = read_yolo_split(spec, split, yaml, ["a", "b"])
        by_name = {p.name: rows for p, rows in zip(got.files, got.labels, strict=True)}
        assert sorted(by_name) == sorted(p.name for p in expected.files)
        for path, rows in zip(expected.files, expected.labels, strict=True):
            # Six decimals of a normalised coordinate: within 1e-6 of the banana pixels.
            torch.testing.assert_close(by_name[path.name], rows, atol=2e-6, rtol=0)


def test_peer_yolo_plot_reads_tinyssd_time_and_map(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.csv").write_text("epoch,step,time_s,val/map\n0,10,30.5,0.1\n1,20,61.0,0.25\n")
    assert _peer_yolo().tinyssd_curve(run) == [(30.5, 0.1), (61.0, 0.25)]
