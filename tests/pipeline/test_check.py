"""``check.py``: the data-set report in every format, identical pictures named, and ``anchors=auto`` in training."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from helpers import run_script, write_all_formats
from helpers.datasets import real_data_dir

FORMATS = ("banana", "coco", "voc", "yolo")


def run_check(tmp: Path, *args: str):
    logs = tmp / "logs"
    result = run_script("check.py", [f"paths.log_dir={logs}", *args])
    runs = sorted((logs / "check" / "runs").iterdir()) if (logs / "check" / "runs").is_dir() else []
    return result, runs[-1] if runs else None


def comparable(report: dict) -> dict:
    """What every format must agree on (the banana CSV cannot list pictures without objects)."""
    splits = {
        split: {
            k: v
            for k, v in summary.items()
            if k not in ("pictures", "empty_pictures", "picture_sizes", "border_examples")
        }
        for split, summary in report["splits"].items()
    }
    objects = {split: summary["pictures"] - summary["empty_pictures"] for split, summary in report["splits"].items()}
    anchors = {
        name: {k: v for k, v in row.items() if name != "auto" or k not in ("sizes", "ratios")}
        for name, row in report["anchors"].items()
    }
    return {"splits": splits, "pictures_with_objects": objects, "anchors": anchors}


def assert_alike(ours, theirs, where: str = "", fitted: bool = False) -> None:
    """Equal, but for float rounding (YOLO stores normalised numbers) and the fit, which may land elsewhere
    from boxes a rounding apart: its recall and mean IoU within 0.01 (reachable objects within 1%)."""
    if isinstance(ours, dict):
        assert ours.keys() == theirs.keys(), where
        for key in ours:
            assert_alike(ours[key], theirs[key], f"{where}.{key}", fitted or key == "auto")
    elif isinstance(ours, float) or isinstance(theirs, float):
        assert ours == pytest.approx(theirs, abs=0.01 if fitted else 1e-5), where
    elif isinstance(ours, int) and fitted and where.endswith("reachable"):
        assert abs(ours - theirs) <= max(1, theirs // 100), where
    else:
        assert ours == theirs, where


def test_check_reports_every_format_alike_and_names_pictures_shared_by_splits(tmp_path: Path):
    formats = write_all_formats(tmp_path / "sets")
    reports = {}
    for name in FORMATS:
        result, run = run_check(tmp_path / name, *formats[name], "anchor_fit.generations=20")
        assert result.returncode == 0, result.stderr[-3000:]
        assert (run / "check.png").stat().st_size > 10_000
        reports[name] = json.loads((run / "check.json").read_text())
        assert "reachable recall on train" in result.stdout + result.stderr
    for name in FORMATS:
        assert_alike(comparable(reports[name]), comparable(reports["coco"]), name)
    coco = reports["coco"]
    assert coco["splits"]["train"]["objects_per_class"] == {"banana": 2, "blue": 3, "red": 2}
    assert (
        coco["splits"]["train"]["empty_pictures"] == 2 and reports["banana"]["splits"]["train"]["empty_pictures"] == 0
    )
    # write_all_formats puts the same picture bytes in train, val and test: every picture is named.
    across = coco["duplicates"]["across"]
    assert len(across) == 6 and coco["duplicates"]["within"] == []
    assert any(
        group
        == [
            f"train: {tmp_path / 'sets/coco/train/train_1.png'}",
            f"val: {tmp_path / 'sets/coco/val/val_1.png'}",
            f"test: {tmp_path / 'sets/coco/test/test_1.png'}",
        ]
        for group in across
    )
    # The (64, 32) picture's red object fills it: it touches the border.
    assert coco["splits"]["train"]["border_objects"] >= 1
    assert set(coco["anchors"]) == {"chapter", "small", "dense", "auto"}


def test_check_names_a_bad_fit_setting(tmp_path: Path):
    formats = write_all_formats(tmp_path / "sets")
    result, _ = run_check(tmp_path, *formats["yolo"], "anchor_fit.generations=-1")
    assert result.returncode == 2
    assert "anchor_fit.generations must be a whole number" in result.stderr
    assert "Traceback" not in result.stderr


def test_configured_anchors_join_the_comparison(tmp_path: Path):
    formats = write_all_formats(tmp_path / "sets")
    result, run = run_check(
        tmp_path,
        *formats["yolo"],
        "model.net.sizes=[[0.1],[0.2],[0.3],[0.5],[0.8]]",
        "model.net.ratios=[[1],[1],[1],[1],[1]]",
        "anchor_fit.generations=0",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads((run / "check.json").read_text())
    assert report["anchors"]["configured"]["anchors_per_cell"] == [1] * 5


@pytest.mark.slow
def test_multiclass_set_reports_alike_in_four_formats_and_auto_reaches_the_best_preset(tmp_path: Path):
    data = real_data_dir()
    if data is None or not (data / "multiclass" / "coco").is_dir():
        pytest.skip("../shared/data/multiclass is not here")
    root = data / "multiclass"
    formats = {
        "coco": ["data=coco"]
        + [
            f"data.{s}.{k}={root / 'coco' / (s if k == 'images' else f'annotations/instances_{s}.json')}"
            for s in ("train", "val")
            for k in ("images", "annotations")
        ],
        "voc": ["data=voc", f"data.root={root / 'voc'}", "data.class_names=[banana,blue,red]"],
        "yolo": ["data=yolo", f"data.yaml={root / 'yolo' / 'data.yaml'}"],
        "banana": ["data=banana", f"data.data_dir={root}", "data.num_classes=3", "data.class_names=[banana,blue,red]"],
    }
    reports = {}
    for name, args in formats.items():
        result, run = run_check(tmp_path / name, *args)
        assert result.returncode == 0, result.stderr[-3000:]
        reports[name] = json.loads((run / "check.json").read_text())
    for name in formats:
        assert_alike(comparable(reports[name]), comparable(reports["coco"]), name)
    coco = reports["coco"]
    assert coco["splits"]["train"]["objects_per_class"] == {"banana": 262, "blue": 258, "red": 228}
    assert coco["splits"]["train"]["empty_pictures"] == 31 and coco["splits"]["val"]["pictures"] == 100
    recall = {name: row["train"]["all"]["recall"] for name, row in coco["anchors"].items()}
    assert recall["auto"] >= max(recall["chapter"], recall["small"], recall["dense"])


@pytest.mark.slow
def test_training_with_auto_anchors_records_the_fitted_numbers(train_in_process):
    metrics, run = train_in_process("anchors=auto", "trainer.max_epochs=1", "anchor_fit.generations=20")
    config = yaml.safe_load((run / "config.yaml").read_text())
    sizes, ratios = config["model"]["net"]["sizes"], config["model"]["net"]["ratios"]
    assert [len(s) for s in sizes] == [2] * 5 and all(isinstance(v, float) for s in sizes for v in s)
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
    assert ckpt["hyper_parameters"]["net"]["sizes"] == sizes
    assert ckpt["hyper_parameters"]["net"]["ratios"] == ratios
    assert "val/map" in metrics
