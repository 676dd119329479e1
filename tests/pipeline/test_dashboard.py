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
        "callbacks.explain.every_n_epochs=2",
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
    # callbacks.explain: explain's pictures of the first val picture, after epoch 2 (index 1) only.
    for name in ("anchors", "labelling", "offsets", "scores", "nms"):
        assert [len(acc.Images(f"explain/{name}"))] == [1], name


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
    from tinyssd.plots import PREDICTION_COLOR, draw_detections

    image = torch.zeros(3, 48, 64, dtype=torch.uint8)
    runaway = torch.tensor([[-1e9, 10.0, 1e9, 1e12], [float("nan"), 0.0, 5.0, 5.0]])
    out = draw_detections(image, None, runaway, torch.tensor([0.5, 0.9]), ["a", "b"], width=2)
    expected = draw_detections(
        image, None, torch.tensor([[0.0, 10.0, 64.0, 48.0]]), torch.tensor([0.5]), ["a"], width=2
    )
    assert torch.equal(out, expected)
    assert _colored(out, PREDICTION_COLOR)[47, :].all()  # the runaway box, clipped: its bottom edge at the last row


def _colored(image: torch.Tensor, rgb: tuple[int, int, int]) -> torch.Tensor:
    """(H, W) mask of the pixels of exactly ``rgb``."""
    return (image == torch.tensor(rgb, dtype=torch.uint8)[:, None, None]).all(dim=0)


def test_labels_sit_on_filled_bands_inside_the_picture_truth_named_too():
    from tinyssd.plots import PREDICTION_COLOR, TRUTH_COLOR, draw_detections

    image = torch.zeros(3, 60, 100, dtype=torch.uint8)
    # A prediction at the right edge: its label band is wider than the box, so it shifts left, never cut.
    drawn = draw_detections(
        image,
        torch.tensor([[10.0, 30.0, 40.0, 55.0]]),
        torch.tensor([[85.0, 5.0, 100.0, 25.0]]),
        torch.tensor([0.97]),
        ["banana"],
        gt_names=["banana"],
    )
    band = _colored(drawn, PREDICTION_COLOR)
    assert band[:, :80].any() and band[:, 99].any()  # filled from left of the box to the picture's edge
    white = (drawn > 200).all(dim=0)  # the text (anti-aliased: bright, not always pure white)
    assert white[:, 40:100].any()  # the text, white on the band
    truth = _colored(drawn, TRUTH_COLOR)
    assert truth[:30, 10:40].sum() > 50  # the truth's name on a green band above its box
    assert white[:30, 10:60].any()


def test_figures_say_what_they_show(tmp_path):
    from tinyssd.pipeline.dashboard import TrainingCurves
    from tinyssd.plots import add_caption, confusion_matrix_figure, plot_curves, pr_curve_figure

    curves = {"all classes": torch.linspace(1, 0.2, 101), "banana": torch.linspace(1, 0.4, 101), "red": torch.ones(101)}
    figure = pr_curve_figure(curves)
    labels = [line.get_label() for line in figure.axes[0].lines]
    assert labels == ["all classes (AP 0.600)", "banana (AP 0.700)", "red (AP 1.000)"]
    figure = confusion_matrix_figure([[1, 0], [2, 0]], ["banana"], threshold=0.9)
    assert figure.axes[0].get_title() == "confusion matrix: IoU 0.5, detections scoring >= 0.9"
    captioned = add_caption(torch.zeros(3, 40, 200, dtype=torch.uint8), ["epoch 3", "green: ground truth"])
    assert captioned.shape[1] > 40 and _colored(captioned[:, :-40], (255, 255, 255)).float().mean() > 0.5
    rows = ["epoch,val/map,val/map_50,val/mar_100,train/loss,val/map_class/a,val/map_class/b"]
    rows += [f"{e},{m},{m},{m},{1 - m},{m},{m / 2}" for e, m in ((0, 0.1), (1, 0.5), (2, 0.3))]
    (tmp_path / "metrics.csv").write_text("\n".join(rows) + "\n")
    import matplotlib.pyplot as plt

    saved = []
    original = plt.Figure.savefig
    plt.Figure.savefig = lambda self, *a, **k: saved.append(self) or original(self, *a, **k)
    try:
        plot_curves(tmp_path / "metrics.csv", tmp_path / "curves.png", TrainingCurves.PANELS)
    finally:
        plt.Figure.savefig = original
    (fig,) = saved
    shown = {ax.get_title(): ax for ax in fig.axes if ax.get_visible()}
    assert set(shown) == {"loss", "mAP", "recall", "AP per class"}  # panels without data are left out
    assert [line.get_label() for line in shown["AP per class"].lines] == ["a", "b", "best epoch (1)"]
    assert all(float(t).is_integer() for t in shown["mAP"].get_xticks())
    assert "val/mar_100" in [line.get_label() for line in shown["recall"].lines]
