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


def test_peer_yolo_reads_coco_and_yolo_sets_with_their_classes(tmp_path):
    """Multi-class mode: a COCO folder and a YOLO data.yaml give the YOLO layout the same boxes and classes."""
    from helpers import FORMAT_CLASSES, write_all_formats

    write_all_formats(tmp_path / "sets")
    peer = _peer_yolo()
    layouts = {}
    for kind, data in (("coco", tmp_path / "sets" / "coco"), ("yolo", tmp_path / "sets" / "yolo" / "data.yaml")):
        names = peer.class_names_of(data, None)
        assert names == FORMAT_CLASSES
        yaml = peer.write_yolo_layout(data, tmp_path / f"layout_{kind}", names)
        spec = read_yolo_yaml(yaml)
        assert spec["names"] == FORMAT_CLASSES
        got = read_yolo_split(spec, "val", yaml, names)
        layouts[kind] = {p.name: rows for p, rows in zip(got.files, got.labels, strict=True)}
        expected = peer.read_split(data, "val", names)
        for path, rows in zip(expected.files, expected.labels, strict=True):
            torch.testing.assert_close(layouts[kind][path.name], rows, atol=2e-6, rtol=0)
    assert layouts["coco"].keys() == layouts["yolo"].keys()
    assert any((rows[:, 0] == 2).any() for rows in layouts["coco"].values())  # the third class is there


def test_peer_yolo_scores_name_each_class():
    values = {
        "map": torch.tensor(0.5),
        "map_50": torch.tensor(0.9),
        "map_75": torch.tensor(0.4),
        "map_per_class": torch.tensor([0.6, 0.3]),
        "classes": torch.tensor([0, 2], dtype=torch.int32),
    }
    assert _peer_yolo().scores(values, ["banana", "blue", "red"]) == {
        "map": 0.5,
        "map_50": 0.9,
        "map_75": 0.4,
        "ap_banana": 0.6,
        "ap_red": 0.3,
    }
    assert "ap_banana" not in _peer_yolo().scores(values, ["banana"])
