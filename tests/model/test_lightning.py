"""Lightning habits: early stopping (and its resume), weight averaging, trainer.predict, the profiler."""

from __future__ import annotations

import json

import pytest
import torch

from tinyssd.errors import ConfigError
from tinyssd.pipeline.callbacks import EarlyStopping


def _epochs(run) -> list[int]:
    return [int(line.split(",")[0]) for line in (run / "metrics.csv").read_text().splitlines()[1:]]


# val/map can never gain 1.0 on its best: every validation after the first is one without gain.
NEVER_BETTER = "callbacks.early_stopping.min_delta=1.0"


def test_early_stopping_is_off_until_patience_is_set():
    assert not EarlyStopping().enabled and EarlyStopping(patience=3).enabled
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ConfigError, match="patience must be a whole number"):
            EarlyStopping(patience=bad)


@pytest.mark.slow
def test_early_stopping_stops_at_the_right_epoch_and_says_so(train_in_process, caplog):
    import logging

    caplog.set_level(logging.INFO, logger="tinyssd")
    _, run = train_in_process("callbacks.early_stopping.patience=2", NEVER_BETTER, "trainer.max_epochs=8")
    # Best at epoch 0, no gain at epochs 1 and 2: patience 2 is used up after epoch 2.
    assert _epochs(run) == [0, 1, 2]
    assert json.loads((run / "summary.json").read_text())["epochs"] == 3
    assert "stopped early after epoch 2: no val/map gain in 2 validation(s)" in caplog.text


@pytest.mark.slow
def test_early_stopping_state_survives_a_resume(train_in_process):
    _, run = train_in_process("callbacks.early_stopping.patience=3", NEVER_BETTER, "trainer.max_epochs=2")
    assert _epochs(run) == [0, 1]  # one validation without gain so far
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert "current_model_state" not in ckpt  # without callbacks.ema.decay, no weight averaging
    state = ckpt["callbacks"]
    (key,) = [k for k in state if k.startswith("EarlyStopping")]
    assert state[key]["wait_count"] == 1
    # Resumed with room for 10 epochs: two more without gain end it (a fresh state would need four).
    train_in_process("callbacks.early_stopping.patience=3", NEVER_BETTER, "trainer.max_epochs=10", f"ckpt_path={run}")
    assert _epochs(run) == [0, 1, 2, 3]


@pytest.mark.slow
def test_trainer_predict_yields_pixel_detections(tmp_path):
    import lightning.pytorch as pl
    from helpers import write_banana_dataset

    from tinyssd import BananaDataModule
    from tinyssd.model.module import TinySSDModule

    data = BananaDataModule(data_dir=str(write_banana_dataset(tmp_path, 4, 3)), image_size=64, batch_size=2)
    module = TinySSDModule(image_size=64, pos_threshold=0.0, max_detections=5)
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    batches = trainer.predict(module, datamodule=data)
    detections = [d for batch in batches for d in batch]
    assert len(detections) == 3  # the val split, one entry per picture
    images = torch.stack([data.datasets["val"][i][0] for i in range(3)])
    normalised = module.eval().detect(images)
    for pixel, unit in zip(detections, normalised, strict=True):
        assert set(pixel) == {"boxes", "scores", "labels"} and len(pixel["boxes"]) == 5
        torch.testing.assert_close(pixel["boxes"], unit["boxes"] * 64)  # input pixels = normalised x 64
        torch.testing.assert_close(pixel["scores"], unit["scores"])


@pytest.mark.slow
def test_profiler_debug_config_writes_the_simple_profile(train_in_process):
    _, run = train_in_process("debug=profiler", "trainer.max_epochs=1")
    profile = run / "fit-profile.txt"
    text = profile.read_text()
    assert "run_training_batch" in text and "Total" in text


def test_ema_is_off_until_decay_is_set():
    from tinyssd.pipeline.callbacks import ema

    assert ema() is None and ema(decay=0.99) is not None
    for bad in (0, 1, 1.5, True, "x"):
        with pytest.raises(ConfigError, match=r"callbacks\.ema\.decay must be"):
            ema(decay=bad)


@pytest.mark.slow
def test_ema_weights_are_the_ones_checkpointed_and_loaded_and_a_resume_goes_on(train_in_process):
    from tinyssd.model.checkpoints import load_checkpoint, load_module

    # With the decay ramp (callbacks.ema.warmup_steps), through the config.
    _, run = train_in_process("callbacks.ema.decay=0.5", "callbacks.ema.warmup_steps=2", "trainer.max_epochs=2")
    ckpt = load_checkpoint(run / "checkpoints" / "last.ckpt")
    averaged, raw = ckpt["state_dict"], ckpt["current_model_state"]
    assert averaged.keys() == raw.keys()
    assert any(not torch.equal(averaged[k], raw[k]) for k in averaged if k.startswith("net."))
    # What eval.py, predict.py and export.py load is the averaged network.
    module = load_module(run / "checkpoints" / "last.ckpt")
    for key, value in module.state_dict().items():
        torch.testing.assert_close(value, averaged[key])
    # A resume continues from the raw weights and the average (one more epoch).
    train_in_process(
        "callbacks.ema.decay=0.5", "callbacks.ema.warmup_steps=2", "trainer.max_epochs=3", f"ckpt_path={run}"
    )
    assert load_checkpoint(run / "checkpoints" / "last.ckpt")["epoch"] == 2


@pytest.mark.slow
def test_fpn_and_atss_train_checkpoint_and_load(train_in_process):
    from tinyssd.model.checkpoints import load_module

    # Eight training pictures in batches of seven: the last batch holds one picture.
    metrics, run = train_in_process(
        "model.neck=fpn", "model.assigner=atss", "trainer.max_epochs=1", "data.batch_size=7"
    )
    assert torch.isfinite(torch.tensor(float(metrics["train/loss"])))
    module = load_module(run / "checkpoints" / "last.ckpt").eval()
    assert module.net.neck is not None and module.hparams.assigner == "atss"
    anchors, cls_preds, _ = module(torch.zeros(1, 3, 64, 64, dtype=torch.uint8))
    assert anchors.shape[1] == cls_preds.shape[1]
    # The FPN's upsampling exports: ONNX Runtime gives the checkpoint's detections.
    pytest.importorskip("onnxruntime")
    from tinyssd.deploy.export import export_model
    from tinyssd.deploy.graph import detection_difference
    from tinyssd.deploy.onnx_runtime import OnnxModel

    path, _ = export_model(module, run / "fpn.onnx")
    images = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    assert detection_difference(module.detect(images), OnnxModel(path).detect(images)) <= 1e-4


def test_ema_decay_ramp_is_hand_computed_and_used_by_the_callback():
    from torch.optim.swa_utils import AveragedModel

    from tinyssd.pipeline.callbacks import ema, ramped_ema_multi_avg_fn

    update = ramped_ema_multi_avg_fn(decay=0.9, warmup_steps=10)
    # After 1 update: d = 0.9 * (1 - exp(-0.1)) = 0.0856463; after 100: 0.9 * (1 - exp(-10)) = 0.8999591.
    # AveragedModel calls it once per device and dtype group.
    for n, d in ((1, 0.0856463), (100, 0.8999591)):
        floats, integers = [torch.zeros(2)], [torch.zeros(3, dtype=torch.long)]
        update(floats, [torch.ones(2)], torch.tensor(n))
        update(integers, [torch.full((3,), 10, dtype=torch.long)], torch.tensor(n))
        torch.testing.assert_close(floats[0], torch.full((2,), 1 - d), atol=1e-6, rtol=0)
        assert integers[0].tolist() == [int(10 * (1 - d))] * 3  # integer buffers: truncated, as torch's EMA
    callback = ema(decay=0.9, warmup_steps=10)
    weights = torch.nn.Linear(1, 1, bias=False)
    torch.nn.init.zeros_(weights.weight)
    averaged = AveragedModel(weights, **callback._kwargs)
    averaged.update_parameters(weights)  # the first update copies
    with torch.no_grad():
        weights.weight.fill_(1.0)
    averaged.update_parameters(weights)  # n_averaged = 1
    assert averaged.module.weight.item() == pytest.approx(1 - 0.0856463, abs=1e-6)
    # Without warmup_steps the decay is constant (Lightning's own EMA function).
    assert ema(decay=0.9)._kwargs["avg_fn"].__name__ == "ema_update" and "multi_avg_fn" not in ema(decay=0.9)._kwargs
    assert "avg_fn" not in callback._kwargs
    with pytest.raises(ConfigError, match=r"callbacks\.ema\.warmup_steps"):
        ema(decay=0.9, warmup_steps=0)
