"""Crashes and bad runs: kill-and-resume, non-finite loss, bad checkpoints for resuming."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import ROOT, quiet_trainer, run_train

from tinyssd import BananaDataModule, TinySSDModule
from tinyssd.errors import CheckpointError, TrainingError
from tinyssd.pipeline.callbacks import FiniteLossGuard


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume(make_banana_dir, tmp_path):
    data_dir = make_banana_dir(num_train=48, num_val=4)
    logs = tmp_path / "logs"
    args = [
        f"data.data_dir={data_dir}",
        f"paths.log_dir={logs}",
        "data.image_size=64",
        "data.batch_size=2",
        "trainer.max_epochs=4",
        "callbacks.progress_bar.refresh_rate=0",
        "trainer.accelerator=cpu",
    ]
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "train.py"), *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + 300
    last = None
    while time.time() < deadline and proc.poll() is None:
        found = list(logs.rglob("checkpoints/last.ckpt"))
        if found:
            last = found[0]
            break
        time.sleep(0.2)
    assert last is not None, "training never wrote last.ckpt"
    time.sleep(1.0)  # well into the next epoch
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    run = last.parent.parent
    interrupted = torch.load(last, weights_only=True)
    assert interrupted["epoch"] < 3

    result = run_train([*args, "ckpt_path=last"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"resuming {run}" in result.stdout
    final = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert final["epoch"] == 3 and final["global_step"] == 4 * 24
    # One TensorBoard run, continued: every file is in the interrupted run's folder.
    assert len(list((run / "tensorboard").glob("events.out.tfevents.*"))) >= 2
    lines = (run / "metrics.csv").read_text().strip().splitlines()
    assert [line.split(",")[0] for line in lines[1:]] == ["0", "1", "2", "3"]


@pytest.mark.slow
def test_resume_by_run_folder_and_bad_resume_targets(train_in_process, tmp_path):
    from helpers import compose_train

    from tinyssd.pipeline.training import train

    _, run = train_in_process("trainer.max_epochs=1")
    train_in_process("trainer.max_epochs=2", f"ckpt_path={run}")
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 1
    junk = tmp_path / "junk.ckpt"
    junk.write_text("nope")
    with pytest.raises(CheckpointError, match="not a loadable tinyssd checkpoint"):
        train_in_process(f"ckpt_path={junk}")
    with pytest.raises(CheckpointError, match="found no run"):
        train(compose_train(["ckpt_path=last"], tmp_path / "none" / "train" / "runs" / "x"))


def test_nan_loss_stops_with_the_step(make_banana_dir, tmp_path):
    data_dir = make_banana_dir(num_train=8)
    module = TinySSDModule(channels_last=False)
    original = module.loss_fn.forward

    def nan_after_two_steps(*args, **kwargs):
        out = original(*args, **kwargs)
        if module.trainer.global_step >= 2:
            out["loss"] = out["loss"] * float("nan")
        return out

    module.loss_fn.forward = nan_after_two_steps
    dm = BananaDataModule(data_dir=str(data_dir), batch_size=2, image_size=64)
    trainer = quiet_trainer(tmp_path, [FiniteLossGuard()], max_epochs=3, enable_checkpointing=False)
    with pytest.raises(TrainingError, match="at step 2"):
        trainer.fit(module, datamodule=dm)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("optimizer.lr=-0.1", "optimizer.lr"),
        ("data.batch_size=0", "data.batch_size"),
        ("model.net.ratios=[[1],[1]]", "model.net.ratios has 2"),
        ("ckpt_path=/does/not/exist.ckpt", "ckpt_path"),
    ],
)
def test_bad_configs_fail_before_training(tmp_path, override, needle):
    result = run_train([override, f"paths.log_dir={tmp_path}", f"data.data_dir={tmp_path / 'nodata'}"])
    assert result.returncode == 2, result.stderr[-2000:]
    assert needle in result.stderr.replace("\n", " ") and "Traceback" not in result.stderr
    assert not list(Path(tmp_path).rglob("*.ckpt"))
