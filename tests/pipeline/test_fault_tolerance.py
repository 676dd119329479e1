"""Nothing is lost on a kill, a NaN, an interrupted write, an old checkpoint or a failing sweep job."""

from __future__ import annotations

import csv
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from helpers import ROOT, TINY_ARGS, compose_train, quiet_trainer, run_train, write_banana_dataset
from lightning.pytorch.callbacks import ModelCheckpoint

from tinyssd import BananaDataModule, CheckpointError, ConfigError, DataError, TinySSDModule, TrainingError
from tinyssd.errors import EXIT_INTERRUPTED, OutputError
from tinyssd.model.checkpoints import AtomicCheckpointIO, load_checkpoint
from tinyssd.pipeline.callbacks import FiniteGuard
from tinyssd.pipeline.preflight import check_config

# ------------------------------------------------------------------ point 3: atomic writes


def test_checkpoint_write_stays_beside_its_target(tmp_path, monkeypatch):
    """No temporary file in $TMPDIR (another filesystem would turn the rename into a copy)."""
    renames = []
    real_replace = os.replace

    def no_tmpdir(*args, **kwargs):
        raise AssertionError("a checkpoint write used $TMPDIR or a cross-filesystem move")

    def spy(src, dst):
        renames.append((Path(src), Path(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(tempfile, "mkstemp", no_tmpdir)
    monkeypatch.setattr(shutil, "move", no_tmpdir)
    monkeypatch.setattr(os, "replace", spy)
    target = tmp_path / "run" / "checkpoints" / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"w": torch.ones(3)}, target)
    assert torch.load(target, weights_only=True)["w"].sum() == 3
    ((src, dst),) = renames
    assert dst == target and src.parent == target.parent
    assert sorted(p.name for p in target.parent.iterdir()) == ["last.ckpt"]


def test_interrupted_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    target = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"w": torch.ones(3)}, target)
    real_save = torch.save

    def killed_half_way(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        f.truncate(10)  # what a kill during the write leaves
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", killed_half_way)
    with pytest.raises(KeyboardInterrupt):
        AtomicCheckpointIO().save_checkpoint({"w": torch.zeros(3)}, target)
    monkeypatch.undo()
    assert torch.load(target, weights_only=True)["w"].sum() == 3
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_a_failed_checkpoint_write_is_one_paragraph(tmp_path, monkeypatch):
    target = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"w": torch.ones(3)}, target)

    def disk_full(obj, f, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    # A full disk is the machine's fault, not the input's: OutputError, exit status 1.
    with pytest.raises(OutputError, match="could not be written \\(No space left on device\\); the previous one"):
        AtomicCheckpointIO().save_checkpoint({"w": torch.zeros(3)}, target)
    monkeypatch.undo()
    assert torch.load(target, weights_only=True)["w"].sum() == 3 and len(list(tmp_path.iterdir())) == 1


@pytest.mark.slow
def test_the_pipeline_writes_checkpoints_atomically(train_in_process, monkeypatch):
    import tinyssd.model.checkpoints as checkpoints

    written = []
    real = checkpoints.atomic_torch_save
    monkeypatch.setattr(
        checkpoints, "atomic_torch_save", lambda obj, path: (written.append(Path(path)), real(obj, path))
    )
    _, run = train_in_process("trainer.max_epochs=1")
    assert run / "checkpoints" / "last.ckpt" in written


# ------------------------------------------------------------------ point 4: non-finite values and weights


@pytest.mark.parametrize("override", ["optimizer.lr=nan", "loss.bbox_weight=inf", "data.zoom_out=-inf"])
def test_non_finite_config_values_are_refused(override):
    with pytest.raises(ConfigError, match=rf"{override.split('=')[0]} is -?(nan|inf)"):
        check_config(compose_train([override]))


class CorruptedAfterStep(TinySSDModule):
    """A finite loss, but the update leaves a NaN weight (as lr=inf or an overflow would)."""

    def optimizer_step(self, *args, **kwargs):
        super().optimizer_step(*args, **kwargs)
        if self.trainer.global_step >= 1:
            with torch.no_grad():
                self.net.cls_heads[0].weight.view(-1)[0] = float("nan")


def test_non_finite_weights_stop_the_run_and_are_never_checkpointed(make_banana_dir, tmp_path):
    data_dir = make_banana_dir(num_train=16)
    saved = tmp_path / "ckpts"
    trainer = quiet_trainer(
        tmp_path, [FiniteGuard(), ModelCheckpoint(dirpath=saved, every_n_train_steps=1, save_top_k=-1)], max_epochs=2
    )
    module = CorruptedAfterStep(channels_last=False)
    with pytest.raises(TrainingError, match="the weights became NaN or infinite at step 1"):
        trainer.fit(module, datamodule=BananaDataModule(data_dir=str(data_dir), batch_size=2, image_size=64))
    written = list(saved.glob("*.ckpt"))
    assert written, "the steps before the bad one were checkpointed"
    for path in written:
        state = torch.load(path, weights_only=True)["state_dict"]
        assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point()), path


def test_a_checkpoint_with_non_finite_weights_is_never_written(tmp_path):
    trainer = SimpleNamespace(default_root_dir=str(tmp_path), global_step=7, current_epoch=1)
    state = {"w": torch.tensor([1.0, float("inf")])}
    with pytest.raises(TrainingError, match="no checkpoint was written yet"):
        FiniteGuard().on_save_checkpoint(trainer, None, {"state_dict": state})  # type: ignore[arg-type]


# ------------------------------------------------------------------ point 7 and 3: resuming


@pytest.mark.slow
def test_resume_from_an_older_checkpoint_keeps_the_newer_run(train_in_process, caplog):
    caplog.set_level(logging.INFO, logger="tinyssd")
    _, run = train_in_process("trainer.max_epochs=1")
    shutil.copy(run / "checkpoints" / "last.ckpt", run / "checkpoints" / "old.ckpt")
    train_in_process("trainer.max_epochs=3", f"ckpt_path={run}")  # resumes in the same folder
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 2
    rows_before = (run / "metrics.csv").read_text()
    assert [r.split(",")[0] for r in rows_before.splitlines()[1:]] == ["0", "1", "2"]
    # The resumed fit's training seconds go on from the first fit's.
    with open(run / "metrics.csv") as f:
        seconds = [float(r["time_s"]) for r in csv.DictReader(f)]
    assert 0 < seconds[0] < seconds[1] < seconds[2]

    _, new_run = train_in_process("trainer.max_epochs=4", f"ckpt_path={run / 'checkpoints' / 'old.ckpt'}")
    out = caplog.text
    assert "older than" in out and "new run folder" in out
    # The newer progress of the first run is untouched...
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 2
    assert (run / "metrics.csv").read_text() == rows_before
    # ...and the resumed training went on in its own folder.
    assert torch.load(new_run / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 3


@pytest.mark.slow
def test_unreadable_last_checkpoint_names_the_newest_intact_one(train_in_process):
    _, run = train_in_process("trainer.max_epochs=2")
    last = run / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])  # truncated, as a kill mid-copy leaves it
    (intact,) = [p for p in (run / "checkpoints").glob("epoch_*.ckpt")]
    with pytest.raises(CheckpointError, match="not a loadable") as err:
        train_in_process("trainer.max_epochs=3", f"ckpt_path={run}")
    assert f"newest intact checkpoint of that run is {intact}" in str(err.value)


@pytest.mark.slow
def test_resume_with_another_class_count_is_refused_before_any_file(train_in_process, tmp_path):
    _, run = train_in_process("trainer.max_epochs=1")
    before = sorted(p.name for p in run.rglob("*"))
    three = write_banana_dataset(tmp_path / "three", 8, 4, num_classes=3)
    with pytest.raises(CheckpointError, match=r"it detects 1 class\(es\) \['banana'\] and the config 3"):
        train_in_process(
            "trainer.max_epochs=2", f"ckpt_path={run}", "data.num_classes=3", "data.class_names=[a,b,c]", data=three
        )
    assert sorted(p.name for p in run.rglob("*")) == before  # no stray event file in the old run


@pytest.mark.slow
def test_evaluating_on_data_with_other_classes_blames_the_checkpoint(train_in_process, tmp_path):
    _, run = train_in_process("trainer.max_epochs=1")
    three = write_banana_dataset(tmp_path / "three", 8, 12, objects_per_image=3, num_classes=3)
    with pytest.raises(DataError, match=r"the checkpoint .* detects 1 class") as err:
        train_in_process("train=false", f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}", data=three)
    assert "on_bad_row" not in str(err.value)


# ------------------------------------------------------------------ point 10: errors while building objects


@pytest.mark.slow
@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("data.image_size=32", "data.image_size"),
        ("data.num_workers=-1", "data.num_workers"),
        ("data.augment=bogus", "data.augment"),
        ("data.num_classes=0", "num_classes"),
        ("data.class_names=[a,b]", "data.class_names has 2 names"),
        ("data.batch_size=abc", "data.batch_size must be a whole number, got 'abc'"),
        ("optimizer.momentum=fast", "optimizer.momentum must be a number"),
        ("trainer.max_epochs=2.5", "trainer.max_epochs must be a whole number"),
        ("trainer.precision=17", "trainer.precision must be"),
        ("+data.no_such_option=1", "data: "),
        ("seed=abc", "seed must be a whole number or null, got 'abc'"),
        ("callbacks.prediction_images.every_n_epochs=abc", "callbacks.prediction_images.every_n_epochs must be"),
        ("+model.foo=1", "model.foo is not an option of tinyssd.model.module.TinySSDModule"),
        ("model.compile=abc", "model.compile must be true or false"),
        ("trainer.devices=abc", "trainer: "),
        ("model.net.feature_channels=0", "must be positive whole numbers"),
        ("model.net.sizes=[[0.2],[0.3],[0.4],[0.5],[abc]]", "model.net.sizes must be a list of lists of numbers"),
        ("trainer.gradient_clip_val=abc", "trainer.gradient_clip_val must be a number or null"),
        ("ckpt_path=/dev/null", "is not a regular file"),
    ],
)
def test_config_errors_while_building_name_the_key(train_in_process, override, needle):
    with pytest.raises((ConfigError, CheckpointError)) as err:
        train_in_process(override)
    assert needle in str(err.value)


@pytest.mark.slow
def test_an_empty_ckpt_path_means_none(train_in_process):
    metrics, run = train_in_process("trainer.max_epochs=1", "ckpt_path=")
    assert (run / "checkpoints" / "last.ckpt").is_file() and "val/map" in metrics


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
def test_config_errors_exit_2_in_one_paragraph(tmp_path):
    for override, needle in (("data.image_size=32", "data.image_size"), ("trainer.accelerator=gpu", "no usable CUDA")):
        result = run_train([override, f"paths.log_dir={tmp_path}", f"data.data_dir={tmp_path / 'none'}"])
        assert result.returncode == 2, result.stderr[-2000:]
        assert needle in result.stderr and "Traceback" not in result.stderr
        assert "Error in call to target" not in result.stderr


@pytest.mark.slow
def test_an_unwritable_log_dir_is_one_paragraph(tmp_path):
    (tmp_path / "afile").write_text("x")
    for extra in ([], ["-m", "seed=1,2"]):
        result = run_train([*extra, f"paths.log_dir={tmp_path / 'afile'}", f"data.data_dir={tmp_path / 'none'}"])
        assert result.returncode == 2, result.stderr[-2000:]
        assert "cannot be created (Not a directory)" in result.stderr and "Traceback" not in result.stderr


# ------------------------------------------------------------------ point 5: SIGTERM


@pytest.mark.slow
def test_sigterm_exits_non_zero_and_leaves_a_resumable_run(make_banana_dir, tmp_path):
    data_dir = make_banana_dir(num_train=48, num_val=4)
    logs = tmp_path / "logs"
    args = [f"data.data_dir={data_dir}", f"paths.log_dir={logs}", *TINY_ARGS, "data.batch_size=2"]
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "train.py"), *args, "trainer.max_epochs=4", "trainer.accelerator=cpu"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not list(logs.rglob("checkpoints/last.ckpt")):
        time.sleep(0.2)
    (last,) = list(logs.rglob("checkpoints/last.ckpt"))
    time.sleep(1.0)
    os.killpg(proc.pid, signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == EXIT_INTERRUPTED, stderr[-2000:]
    assert "stopped by SIGTERM" in stderr and "Traceback" not in stderr
    run = last.parent.parent
    assert f"ckpt_path={run}" in stderr.replace("\n", " ")
    assert load_checkpoint(last)["epoch"] < 3
    result = run_train([*args, "trainer.max_epochs=4", "trainer.accelerator=cpu", f"ckpt_path={run}"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert load_checkpoint(last)["epoch"] == 3
    assert not [p for p in run.rglob("*.tmp")]


# ------------------------------------------------------------------ point 6: sweeps


@pytest.mark.slow
def test_a_failing_sweep_job_does_not_stop_the_others(make_banana_dir, tmp_path):
    data_dir = make_banana_dir()
    logs = tmp_path / "logs"
    result = run_train(
        ["-m", "data.image_size=64,32,64", "trainer.max_epochs=1", "data.batch_size=4", "trainer.accelerator=cpu"]
        + [f"data.data_dir={data_dir}", f"paths.log_dir={logs}", "callbacks.progress_bar.refresh_rate=0"]
    )
    assert result.returncode == 2, result.stderr[-3000:]
    (sweep,) = list((logs / "train" / "multiruns").iterdir())
    assert (sweep / "0" / "checkpoints" / "last.ckpt").is_file() and (
        sweep / "2" / "checkpoints" / "last.ckpt"
    ).is_file()
    rows = (sweep / "summary.csv").read_text().strip().splitlines()
    assert len(rows) == 4
    failed = [r for r in rows if ",failed," in r]
    assert len(failed) == 1 and failed[0].startswith("1,") and "data.image_size must be at least 64" in failed[0]
    assert "1 of 3 job(s) failed" in result.stderr


@pytest.mark.slow
def test_a_failing_optuna_trial_does_not_end_the_study(make_banana_dir, tmp_path):
    """Failed trials are told to Optuna as failed; the study goes on to its other trials."""
    data_dir = make_banana_dir()
    logs = tmp_path / "logs"
    result = run_train(
        # Sampler seed 1 draws both image sizes within four trials for the current search space
        # (a change of the space changes the draws: then pick another seed that gives both).
        ["-m", "hparams_search=optuna", "hydra.sweeper.n_trials=4", "hydra.sweeper.sampler.seed=1"]
        + ["data.image_size=choice(32,64)"]
        + [
            "trainer.max_epochs=1",
            "data.batch_size=4",
            "trainer.accelerator=cpu",
            "callbacks.progress_bar.refresh_rate=0",
        ]
        + [f"data.data_dir={data_dir}", f"paths.log_dir={logs}"]
    )
    (sweep,) = list((logs / "train" / "multiruns").iterdir())
    rows = (sweep / "summary.csv").read_text().strip().splitlines()[1:]
    assert len(rows) == 4, result.stderr[-3000:]
    failed = [r for r in rows if ",failed," in r]
    completed = [r for r in rows if ",completed," in r]
    assert failed and completed, rows  # both kinds happened, in one study
    assert all("data.image_size=32" in r for r in failed) and all("data.image_size=64" in r for r in completed)
    assert result.returncode == 2 and f"{len(failed)} of 4 job(s) failed" in result.stderr


@pytest.mark.slow
def test_best_ckpt_is_the_best_epochs_file_and_survives_resume(train_in_process):
    import filecmp

    import torch

    _, run = train_in_process("trainer.max_epochs=2")
    folder = run / "checkpoints"
    state = torch.load(folder / "last.ckpt", weights_only=True)["callbacks"]
    (key,) = [k for k in state if k.startswith("ModelCheckpoint{'monitor': 'val/map'")]
    best = Path(state[key]["best_model_path"])
    assert best.name.startswith("epoch_") and filecmp.cmp(folder / "best.ckpt", best, shallow=False)
    train_in_process("trainer.max_epochs=3", f"ckpt_path={run}")
    state = torch.load(folder / "last.ckpt", weights_only=True)["callbacks"]
    best = Path(state[key]["best_model_path"])
    assert int(torch.load(folder / "last.ckpt", weights_only=True)["epoch"]) == 2
    assert best.is_file() and filecmp.cmp(folder / "best.ckpt", best, shallow=False)
