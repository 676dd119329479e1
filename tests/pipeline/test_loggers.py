"""logger=tensorboard|csv|mlflow|wandb|many: each logger's local store gets scalars, images and hparams."""

from __future__ import annotations

import csv

import pytest
import torch

from tinyssd.pipeline.loggers import figure_to_image


@pytest.fixture(scope="module")
def many_loggers_run(tmp_path_factory):
    """One tiny run with every logger at once (logger=many), a grid every epoch, lr every step."""
    from helpers import TINY_ARGS, compose_train, write_banana_dataset

    from tinyssd.pipeline.training import train

    tmp = tmp_path_factory.mktemp("loggers")
    data = write_banana_dataset(tmp / "data", 8, 4)
    run = tmp / "logs" / "train" / "runs" / "run"
    cfg = compose_train(
        [
            f"data.data_dir={data}",
            f"paths.log_dir={tmp / 'logs'}",
            *TINY_ARGS,
            "trainer.accelerator=cpu",
            "logger=many",
            "scheduler=cosine",
            "trainer.max_epochs=2",
            "trainer.log_every_n_steps=1",
            "callbacks.prediction_images.every_n_epochs=1",
        ],
        run,
    )
    return train(cfg), run, tmp / "logs"


def _events(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"images": 0, "scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


@pytest.mark.slow
def test_tensorboard_gets_scalars_images_figures_and_hparams(many_loggers_run):
    _, run, _ = many_loggers_run
    acc = _events(run / "tensorboard")
    tags = acc.Tags()
    assert {"val/map", "train/loss", "lr-SGD"} <= set(tags["scalars"])
    assert {"val/predictions", "val/pr_curve", "val/confusion_matrix"} <= set(tags["images"])
    assert [e.step for e in acc.Images("val/confusion_matrix")] == [0, 1]  # each epoch's own matrix
    assert {"_hparams_/experiment", "_hparams_/session_start_info"} <= set(acc.PluginTagToContent("hparams"))


@pytest.mark.slow
def test_csv_logger_gets_every_scalar_and_the_hparams(many_loggers_run):
    _, run, _ = many_loggers_run
    with open(run / "csv" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert any(r.get("val/map") for r in rows) and any(r.get("hp/val_map") for r in rows)
    rates = [float(r["lr-SGD"]) for r in rows if r.get("lr-SGD")]
    # 8 pictures, batches of 4: 2 steps per epoch; warm-up over the first epoch, per step.
    assert rates[:3] == pytest.approx([0.02, 0.11, 0.2])
    hparams = (run / "csv" / "hparams.yaml").read_text()
    assert "optimizer.lr: 0.2" in hparams and "loss.bbox_weight" in hparams


@pytest.mark.slow
def test_mlflow_file_store_gets_scalars_images_and_params(many_loggers_run):
    _, run, logs = many_loggers_run
    (run_folder,) = [p.parent for p in (logs / "mlflow").glob("*/*/meta.yaml")]
    assert (run_folder / "metrics" / "val" / "map").read_text().count("\n") == 2  # one line per epoch
    assert (run_folder / "params" / "optimizer.lr").read_text() == "0.2"
    assert (run_folder / "tags" / "run_dir").read_text() == str(run)
    images = {p.name.split("+")[0] for p in (run_folder / "artifacts" / "images").glob("*.png")}
    assert {"val~predictions", "val~pr_curve", "val~confusion_matrix"} <= images


@pytest.mark.slow
def test_wandb_offline_run_gets_images_and_config(many_loggers_run):
    _, run, _ = many_loggers_run
    (offline,) = (run / "wandb").glob("offline-run-*")
    (records,) = offline.glob("run-*.wandb")  # what `wandb sync` uploads: scalars, config, summary
    data = records.read_bytes()
    assert b"val/map" in data and b"optimizer.lr" in data and b"hp/val_map" in data
    media = {p.name.rsplit("_", 2)[0] for p in (offline / "files" / "media" / "images" / "val").glob("*.png")}
    assert {"predictions", "pr_curve", "confusion_matrix"} <= media


def test_figures_become_images():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure = plt.figure(figsize=(2, 1), dpi=50)
    image = figure_to_image(figure)
    plt.close(figure)
    assert image.dtype == torch.uint8 and image.shape == (3, 50, 100)


def test_a_logger_whose_package_is_missing_is_one_paragraph(monkeypatch, tmp_path):
    from lightning.pytorch.loggers import wandb as lightning_wandb
    from omegaconf import OmegaConf

    from tinyssd.errors import ConfigError
    from tinyssd.pipeline.builders import build

    class Missing:
        def __bool__(self) -> bool:
            return False

        def __str__(self) -> str:
            return "Module not found: 'wandb'. HINT: Try running `pip install -U wandb`"

    monkeypatch.setattr(lightning_wandb, "_WANDB_AVAILABLE", Missing())
    node = OmegaConf.create({"_target_": "lightning.pytorch.loggers.WandbLogger", "save_dir": str(tmp_path)})
    with pytest.raises(ConfigError, match=r"logger.wandb needs a package that is not installed here: .*pip install"):
        build(node, "logger.wandb")
