"""What a short run leaves for the user: TensorBoard images and scalars, CSV, PNGs; evaluation."""

from __future__ import annotations

import csv
import re

import pytest
import torch
from helpers import run_train, train_tiny
from torchvision.io import decode_image


@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dash")
    run, result = train_tiny(
        tmp,
        "trainer.max_epochs=3",
        "callbacks.prediction_images.every_n_epochs=2",
        "model.display_threshold=0.0",
        num_train=12,
        num_val=6,
    )
    return tmp, run, result


@pytest.mark.slow
def test_event_file_has_images_and_map_scalars(short_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, run, _ = short_run
    acc = EventAccumulator(str(run / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    tags = acc.Tags()
    for tag in ("val/map", "val/map_50", "val/class_error", "val/bbox_mae", "train/loss_cls", "train/loss_bbox"):
        assert tag in tags["scalars"], tag
    assert len(acc.Scalars("val/map")) == 3
    assert "val/predictions" in tags["images"] and "val/pr_curve" in tags["images"]
    assert [e.step for e in acc.Images("val/predictions")] == [1, 2]  # every 2 epochs, and the last
    assert any(t.startswith("lr") for t in tags["scalars"])


@pytest.mark.slow
def test_metrics_csv_and_pngs(short_run):
    _, run, _ = short_run
    with open(run / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["epoch"] for r in rows] == ["0", "1", "2"]
    for key in ("train/loss", "val/loss", "val/map", "val/map_50", "val/class_error", "val/bbox_mae", "lr-SGD"):
        assert rows[-1][key] != "", key
    # Wall-clock seconds of training so far, for curves against time.
    seconds = [float(r["time_s"]) for r in rows]
    assert 0 < seconds[0] < seconds[1] < seconds[2]
    for name in ("curves.png", "val_predictions.png", "pr_curve.png"):
        image = decode_image(str(run / name))
        assert image.shape[0] in (3, 4) and image.shape[1] > 50, name


def _table(stdout: str) -> dict[str, float]:
    return {m.group(1): float(m.group(2)) for m in re.finditer(r"^\s+(val/\S+)\s+([-\d.e]+)\s*$", stdout, re.M)}


@pytest.mark.slow
def test_evaluate_reproduces_logged_metrics(short_run):
    tmp, run, _ = short_run
    best = next(p for p in (run / "checkpoints").iterdir() if p.name.startswith("epoch_"))
    epoch = int(best.stem.split("_")[1])
    result = run_train(
        [
            "train=false",
            f"ckpt_path={best}",
            f"data.data_dir={tmp / 'data'}",
            f"paths.log_dir={tmp / 'eval'}",
            "callbacks.progress_bar.refresh_rate=0",
        ]
    )
    assert result.returncode == 0, result.stderr[-3000:]
    table = _table(result.stdout)
    with open(run / "metrics.csv") as f:
        logged = next(r for r in csv.DictReader(f) if int(r["epoch"]) == epoch)
    for key in ("val/map", "val/map_50", "val/class_error", "val/bbox_mae"):
        assert abs(table[key] - float(logged[key])) < 1e-5, (key, table[key], logged[key])


@pytest.mark.slow
def test_evaluate_needs_a_checkpoint(tmp_path):
    result = run_train(["train=false", f"paths.log_dir={tmp_path}"])
    assert result.returncode == 2 and "ckpt_path" in result.stderr


def test_drawing_clips_runaway_and_non_finite_boxes():
    """A diverging model predicts boxes millions of pixels wide: drawn clipped, NaN ones skipped."""
    from torchvision.utils import draw_bounding_boxes

    from tinyssd.plots import draw_detections

    image = torch.zeros(3, 48, 64, dtype=torch.uint8)
    runaway = torch.tensor([[-1e9, 10.0, 1e9, 1e12], [float("nan"), 0.0, 5.0, 5.0]])
    out = draw_detections(image, None, runaway, torch.tensor([0.5, 0.9]), ["a", "b"], width=2)
    expected = draw_bounding_boxes(
        image, torch.tensor([[0.0, 10.0, 64.0, 48.0]]), labels=["a 0.50"], colors="red", width=2
    )
    assert torch.equal(out, expected)
