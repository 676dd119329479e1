"""Hostile runs, round 3: what a command writes, replaces or deletes, and the config values it takes.

Root causes (issue 26): resume never deletes outside its run (3), full or read-only disks (8),
nothing overwritten without a word (9), config values outside the libraries' ranges (10).
Each ends in one paragraph with exit 2 (1 for a full disk), and nothing outside the target is
written, replaced or deleted.
"""

from __future__ import annotations

import errno
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import compose_train, genuine_checkpoint, run_script, write_banana_dataset
from torchvision.io import write_png

from tinyssd import CheckpointError, ConfigError
from tinyssd.errors import OutputError
from tinyssd.files import run_folder_lock
from tinyssd.model.checkpoints import AtomicCheckpointIO
from tinyssd.pipeline.resume import check_callback_paths, resolve_resume

CALLBACK = "ModelCheckpoint{'monitor': 'val/map', 'mode': 'max'}"


def _one_paragraph(result, code: int, needle: str) -> None:
    assert result.returncode == code, (result.returncode, result.stderr[-3000:])
    assert needle in result.stderr, result.stderr[-3000:]
    assert "Traceback" not in result.stderr


# --------------------------------------------------------------------------- 3. resume deletes nothing outside


def _run_with_linked_state(tmp_path: Path) -> tuple[Path, Path]:
    """A run folder whose checkpoints/ holds a link to another folder, named by the callback state."""
    run = tmp_path / "logs" / "train" / "runs" / "old"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("{}\n")
    victim_dir = tmp_path / "precious"
    victim_dir.mkdir()
    victim = victim_dir / "thesis.ckpt"
    victim.write_text("years of work")
    (run / "checkpoints" / "link").symlink_to(victim_dir, target_is_directory=True)
    named = str(run / "checkpoints" / "link" / "thesis.ckpt")
    ckpt = genuine_checkpoint()
    ckpt["callbacks"] = {
        CALLBACK: {
            "dirpath": str(run / "checkpoints"),
            "best_model_path": named,
            "kth_best_model_path": named,
            "best_k_models": {named: torch.tensor(0.1)},
            "last_model_path": str(run / "checkpoints" / "last.ckpt"),
        }
    }
    torch.save(ckpt, run / "checkpoints" / "last.ckpt")
    return run, victim


def test_callback_state_through_a_symlink_is_refused(tmp_path):
    run, victim = _run_with_linked_state(tmp_path)
    with pytest.raises(CheckpointError, match="through a symbolic link"):
        resolve_resume(str(run), run.parent, run.parent / "new")
    assert victim.read_text() == "years of work"


def test_genuine_and_moved_callback_paths_pass(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    path = run / "checkpoints" / "last.ckpt"
    inside = {"best_model_path": str(run / "checkpoints" / "epoch_001.ckpt"), "dirpath": str(run / "checkpoints")}
    check_callback_paths({"callbacks": {CALLBACK: inside}}, path, (run,))
    # A run folder moved elsewhere: its state names the old place, which Lightning leaves alone.
    moved = {"best_model_path": "/old/place/run/checkpoints/epoch_001.ckpt", "dirpath": "/old/place/run/checkpoints"}
    check_callback_paths({"callbacks": {CALLBACK: moved}}, path, (run,))
    # The whole log folder behind a link (logs on another disk) is fine too.
    real = tmp_path / "disk2"
    real.mkdir()
    (real / "run").mkdir()
    (tmp_path / "logs").symlink_to(real, target_is_directory=True)
    linked = tmp_path / "logs" / "run"
    named = {"best_model_path": str(linked / "checkpoints" / "epoch_001.ckpt")}
    check_callback_paths({"callbacks": {CALLBACK: named}}, linked / "checkpoints" / "last.ckpt", (linked,))


def test_train_refuses_to_resume_linked_state_before_any_file(tmp_path):
    run, victim = _run_with_linked_state(tmp_path)
    data_dir = write_banana_dataset(tmp_path / "data", 2, 2)
    result = run_script(
        "train.py",
        [f"ckpt_path={run}", f"data.data_dir={data_dir}", "data.image_size=64", f"paths.log_dir={tmp_path / 'logs'}"],
    )
    _one_paragraph(result, 2, "through a symbolic link")
    assert victim.read_text() == "years of work"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["last.ckpt", "link"]


# --------------------------------------------------------------------------- 8. full or read-only disks


@pytest.fixture
def full_disk(tmp_path) -> Path:
    """A 256 KiB tmpfs filled to the last byte (where this process may mount one), else skip."""
    mount = tmp_path / "full"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], capture_output=True)
    if made.returncode != 0:
        pytest.skip("cannot mount a tmpfs here; the monkeypatched writer tests cover this root cause")
    try:
        for chunk in (4096, 1):  # to the last byte
            try:
                with open(mount / "filler", "ab") as f:
                    while True:
                        f.write(b"\0" * chunk)
                        f.flush()
            except OSError:
                pass
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], capture_output=True)


def test_torchs_runtime_error_on_a_failed_write_is_a_full_disk_paragraph(tmp_path, monkeypatch):
    target = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"w": torch.ones(3)}, target)

    def failing_zip_writer(obj, f, *args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:664] . PytorchStreamWriter failed writing file data/0")

    monkeypatch.setattr(torch, "save", failing_zip_writer)
    with pytest.raises(OutputError, match=r"could not be written .*the previous one is intact"):
        AtomicCheckpointIO().save_checkpoint({"w": torch.zeros(3)}, target)
    monkeypatch.undo()
    assert torch.load(target, weights_only=True)["w"].sum() == 3 and len(list(tmp_path.iterdir())) == 1


def test_a_checkpoint_onto_a_full_filesystem(full_disk):
    with pytest.raises(OutputError, match="could not be written"):
        AtomicCheckpointIO().save_checkpoint({"w": torch.ones(100_000)}, full_disk / "last.ckpt")
    assert sorted(p.name for p in full_disk.iterdir()) == ["filler"]


def _picture(path: Path, value: int = 0) -> Path:
    write_png(torch.full((3, 32, 32), value, dtype=torch.uint8), str(path))
    return path


def test_predict_onto_a_full_filesystem_is_one_paragraph_exit_1(tmp_path, full_disk):
    torch.save(genuine_checkpoint(), tmp_path / "m.ckpt")
    picture = _picture(tmp_path / "a.png")
    result = run_script("predict.py", [f"model={tmp_path / 'm.ckpt'}", f"input={picture}", f"output_dir={full_disk}"])
    assert result.returncode in (1, 2), result.stderr[-2000:]  # the probe (2) or a write (1) finds it first
    assert "Traceback" not in result.stderr and "No space left" in result.stderr
    assert sorted(p.name for p in full_disk.iterdir()) == ["filler"]


def test_training_onto_a_full_filesystem_is_one_paragraph_exit_1(tmp_path, full_disk):
    data_dir = write_banana_dataset(tmp_path / "data", 2, 2)
    result = run_script("train.py", [f"data.data_dir={data_dir}", f"paths.log_dir={full_disk / 'logs'}"])
    _one_paragraph(result, 1, "OutputError")
    assert "No space left on device" in result.stderr


def test_report_writes_that_fail_are_paragraphs_exit_1(tmp_path, monkeypatch):
    """Without a tmpfs: the disk refuses the report (ENOSPC from the writer); one paragraph, exit 1."""
    import tinyssd.model.checkpoints

    torch.save(genuine_checkpoint(), tmp_path / "m.ckpt")
    picture = _picture(tmp_path / "a.png")

    def disk_full(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tinyssd.model.checkpoints.os, "replace", disk_full)
    out = tmp_path / "out"
    result = run_script("predict.py", [f"model={tmp_path / 'm.ckpt'}", f"input={picture}", f"output_dir={out}"])
    monkeypatch.undo()
    _one_paragraph(result, 1, "could not be written (No space left on device)")
    assert not (out / "detections.json").exists() and not list(out.glob(".*.tmp"))


# --------------------------------------------------------------------------- 9. nothing overwritten silently


def test_predict_never_replaces_earlier_outputs_or_input_pictures(tmp_path):
    torch.save(genuine_checkpoint(), tmp_path / "m.ckpt")
    pictures = tmp_path / "pictures"
    pictures.mkdir()
    _picture(pictures / "a.png")
    model = f"model={tmp_path / 'm.ckpt'}"
    out = tmp_path / "out"
    assert run_script("predict.py", [model, f"input={pictures}", f"output_dir={out}"]).returncode == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    result = run_script("predict.py", [model, f"input={pictures}", f"output_dir={out}"])
    _one_paragraph(result, 2, "already holds detections.json, a_pred.png")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert run_script("predict.py", [model, f"input={pictures}", f"output_dir={out}", "overwrite=true"]).returncode == 0
    # The user's own a_pred.png beside a.png, output into the same folder: never replaced.
    own = _picture(pictures / "a_pred.png", 200).read_bytes()
    result = run_script("predict.py", [model, f"input={pictures}", f"output_dir={pictures}", "overwrite=true"])
    _one_paragraph(result, 2, "would replace the input picture")
    assert (pictures / "a_pred.png").read_bytes() == own and not (pictures / "detections.json").exists()


def test_runs_started_in_the_same_second_get_folders_of_their_own(tmp_path, monkeypatch):
    """Hydra names run folders by the second; a second run in that second gets ``_2``, not the first's folder."""
    import datetime

    import hydra.core.utils

    class Frozen(datetime.datetime):
        @classmethod
        def now(cls, tz=None):
            return cls(2026, 12, 2, 12, 0, 0)

    monkeypatch.setattr(hydra.core.utils, "datetime", Frozen)
    torch.save(genuine_checkpoint(), tmp_path / "m.ckpt")
    picture = _picture(tmp_path / "a.png")
    env = {"TINYSSD_ROOT": str(tmp_path)}
    for _ in range(3):
        result = run_script("predict.py", [f"model={tmp_path / 'm.ckpt'}", f"source={picture}"], env=env)
        assert result.returncode == 0, result.stderr[-2000:]
    runs = sorted(p.name for p in (tmp_path / "logs" / "predict" / "runs").iterdir())
    assert runs == ["2026-12-02_12-00-00", "2026-12-02_12-00-00_2", "2026-12-02_12-00-00_3"]
    assert all((tmp_path / "logs" / "predict" / "runs" / r / "detections.json").is_file() for r in runs)
    # A folder named on the command line is used as given (and so refused when it holds outputs).
    given = tmp_path / "logs" / "predict" / "runs" / runs[0]
    result = run_script(
        "predict.py", [f"model={tmp_path / 'm.ckpt'}", f"source={picture}", f"hydra.run.dir={given}"], env=env
    )
    _one_paragraph(result, 2, "already holds detections.json")


def test_a_run_folder_in_use_or_finished_is_refused(tmp_path):
    data_dir = write_banana_dataset(tmp_path / "data", 2, 2)
    run = tmp_path / "shared_run"
    args = [f"data.data_dir={data_dir}", "data.image_size=64", f"hydra.run.dir={run}", "trainer.max_epochs=1"]
    with run_folder_lock(run):
        result = run_script("train.py", args)
    _one_paragraph(result, 2, "is being written by another run (process")
    assert not (run / "checkpoints").exists()
    (run / "checkpoints").mkdir()
    torch.save(genuine_checkpoint(), run / "checkpoints" / "last.ckpt")
    before = (run / "checkpoints" / "last.ckpt").read_bytes()
    result = run_script("train.py", args)
    _one_paragraph(result, 2, "already holds a run's checkpoints (last.ckpt")
    assert (run / "checkpoints" / "last.ckpt").read_bytes() == before


def test_a_killed_run_leaves_no_stale_lock(tmp_path):
    """A process killed while it holds the run folder's lock leaves no lock behind (an OS lock, not a file)."""
    from tinyssd.files import LOCK_FILE

    lock = tmp_path / LOCK_FILE
    code = f"import fcntl, os; f = open({str(lock)!r}, 'a+'); fcntl.flock(f, fcntl.LOCK_EX); os.kill(os.getpid(), 9)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == -9
    with run_folder_lock(tmp_path):
        pass


def test_export_never_replaces_a_checkpoint_or_an_earlier_export(tmp_path):
    torch.save(genuine_checkpoint(), tmp_path / "m.ckpt")
    other_run = tmp_path / "other" / "checkpoints"
    other_run.mkdir(parents=True)
    (other_run / "last.ckpt").write_bytes(b"another run's weights")
    result = run_script("export.py", [f"ckpt_path={tmp_path / 'm.ckpt'}", f"output={other_run / 'last.ckpt'}"])
    _one_paragraph(result, 2, "does not end in .onnx")
    assert (other_run / "last.ckpt").read_bytes() == b"another run's weights"
    (tmp_path / "m.onnx").write_bytes(b"an earlier export")
    result = run_script("export.py", [f"ckpt_path={tmp_path / 'm.ckpt'}"])
    _one_paragraph(result, 2, "already exists; nothing was replaced")
    assert (tmp_path / "m.onnx").read_bytes() == b"an earlier export"


# --------------------------------------------------------------------------- 10. config values


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["seed=-1"], "seed must be a whole number from 0 to 4294967295"),
        ([f"seed={2**64}"], "seed must be a whole number"),
        (["logger=mlflow", "logger.mlflow.tracking_uri=http://127.0.0.1:9"], "cannot be reached"),
    ],
)
def test_config_values_outside_the_libraries_ranges_are_refused_by_key(args, needle, tmp_path):
    from tinyssd.pipeline.preflight import check_config

    data_dir = write_banana_dataset(tmp_path / "data", 2, 2)
    cfg = compose_train([f"data.data_dir={data_dir}", f"paths.log_dir={tmp_path / 'logs'}", *args], tmp_path / "run")
    with pytest.raises(ConfigError, match=re.escape(needle)):
        check_config(cfg)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["seed=-1"], "seed must be a whole number from 0 to 4294967295"),
        (["callbacks=null"], "callbacks is a config group"),
        (["+epochs=2"], "+epochs adds a key that nothing in train.py reads"),
        (["+paths.extra=1"], "+paths.extra adds a key"),
        (["hydra.run.dir=/proc"], "cannot be written"),
    ],
)
def test_config_values_outside_the_libraries_ranges(args, needle, tmp_path):
    data_dir = write_banana_dataset(tmp_path / "data", 2, 2)
    result = run_script("train.py", [f"data.data_dir={data_dir}", f"paths.log_dir={tmp_path / 'logs'}", *args])
    _one_paragraph(result, 2, needle)
    assert not list((tmp_path / "logs").rglob("*.ckpt"))


def test_added_keys_are_refused_by_every_command(tmp_path):
    torch.save(genuine_checkpoint(), tmp_path / "m.ckpt")
    picture = _picture(tmp_path / "a.png")
    for script, args in (
        ("predict.py", [f"model={tmp_path / 'm.ckpt'}", f"input={picture}", "+treshold=0.5"]),
        ("eval.py", [f"ckpt_path={tmp_path / 'm.ckpt'}", "+treshold=0.5"]),
        ("export.py", [f"ckpt_path={tmp_path / 'm.ckpt'}", "+treshold=0.5"]),
    ):
        result = run_script(script, [*args, f"paths.log_dir={tmp_path / 'logs'}"])
        _one_paragraph(result, 2, f"+treshold adds a key that nothing in {script} reads")
    assert not (tmp_path / "m.onnx").exists()


def test_added_keys_that_something_reads_are_accepted(tmp_path):
    from helpers import compose_train

    from tinyssd.pipeline.preflight import check_added_keys

    cfg = compose_train(["+trainer.detect_anomaly=false", "+callbacks.probe._target_=helpers.probes.WeightsAtStart"])
    check_added_keys(cfg)


@pytest.mark.parametrize(("stop", "code", "name"), [("int", 130, "SIGINT"), ("term", 143, "SIGTERM")])
def test_an_interrupted_predict_keeps_and_marks_what_it_finished(stop, code, name, tmp_path, monkeypatch):
    import json

    import tinyssd.deploy.detector

    torch.save(genuine_checkpoint(), tmp_path / "m.ckpt")
    pictures = tmp_path / "pictures"
    pictures.mkdir()
    for k in range(3):
        _picture(pictures / f"p{k}.png", 40 * k)
    real, calls = tinyssd.deploy.detector.Detector.predict, []

    def stopping(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            if stop == "int":
                raise KeyboardInterrupt
            os.kill(os.getpid(), signal.SIGTERM)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(tinyssd.deploy.detector.Detector, "predict", stopping)
    out = tmp_path / "out"
    result = run_script(
        "predict.py", [f"model={tmp_path / 'm.ckpt'}", f"input={pictures}", f"output_dir={out}", "batch_size=1"]
    )
    _one_paragraph(result, code, f"stopped by {name}")
    report = json.loads((out / "detections.json").read_text())
    assert report["complete"] is False and report["stopped_by"].startswith(name)
    assert [Path(e["path"]).name for e in report["images"]] == ["p0.png"]
    assert signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, signal.default_int_handler, None) or callable(
        signal.getsignal(signal.SIGTERM)
    )


@pytest.mark.slow
def test_training_without_a_logger_drops_the_learning_rate_monitor(train_in_process):
    """logger=none with the default callbacks: Lightning refuses a LearningRateMonitor without a logger."""
    metrics, run = train_in_process("logger=none", "trainer.max_epochs=1")
    assert (run / "checkpoints" / "last.ckpt").is_file() and "val/map" in metrics
