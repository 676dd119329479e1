"""train.py end to end, as a user runs it (its command line; see helpers.run_script)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from helpers import real_data_dir, run_train

# Every test here trains through train.py's command line.
pytestmark = pytest.mark.slow

TINY = ["data.image_size=64", "data.batch_size=4", "trainer.accelerator=cpu", "callbacks.progress_bar.refresh_rate=0"]


def _events(folder: Path) -> list[Path]:
    return list(folder.rglob("events.out.tfevents.*"))


def test_fast_dev_run(make_banana_dir, tmp_path):
    data_dir = make_banana_dir()
    # A real `python train.py` (the other tests run the script in this process).
    args = ["debug=fdr", f"data.data_dir={data_dir}", f"paths.log_dir={tmp_path / 'logs'}", *TINY]
    result = run_train(args, real_process=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "[tinyssd][INFO] - finished in" in result.stdout
    # The report goes through logging, once: Hydra's train.log in the run folder holds it too.
    (log,) = (tmp_path / "logs" / "debug" / "runs").glob("*/train.log")
    assert log.read_text().count("[tinyssd][INFO] - finished in") == 1


def test_short_training_writes_checkpoints_events_and_config(make_banana_dir, tmp_path):
    data_dir = make_banana_dir(num_train=8, num_val=4, objects_per_image=2, num_classes=2)
    logs = tmp_path / "logs"
    result = run_train(
        [
            f"data.data_dir={data_dir}",
            f"paths.log_dir={logs}",
            "trainer.max_epochs=2",
            "data.num_classes=2",
            "data.class_names=[a,b]",
            *TINY,
        ]
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = list((logs / "train" / "runs").iterdir())
    assert (run / "config.yaml").is_file() and (run / ".hydra" / "overrides.yaml").is_file()
    ckpts = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert "last.ckpt" in ckpts and any(name.startswith("epoch_") for name in ckpts)
    assert _events(run / "tensorboard")
    # Checkpoints hold only plain data: they load without unpickling arbitrary objects.
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["epoch"] == 1 and ckpt["hyper_parameters"]["net"]["num_classes"] == 2
    assert re.search(r"^\s+val/map\s+[\d.]", result.stdout, re.M)


def test_image_size_384_and_augmentation_fast_dev_run(make_banana_dir, tmp_path):
    data_dir = make_banana_dir(image_size=(96, 128))
    result = run_train(
        [
            "debug=fdr",
            f"data.data_dir={data_dir}",
            f"paths.log_dir={tmp_path / 'logs'}",
            "data.image_size=384",
            "data.augment=ssd",
            "data.batch_size=2",
            "trainer.accelerator=cpu",
        ]
    )
    assert result.returncode == 0, result.stderr[-3000:]


def test_missing_data_offline_is_one_clear_error(tmp_path):
    result = run_train(
        [
            f"data.data_dir={tmp_path / 'empty'}",
            "data.url=http://127.0.0.1:9/banana-detection.zip",
            f"paths.log_dir={tmp_path / 'logs'}",
            *TINY,
        ]
    )
    assert result.returncode == 2
    assert "DataError" in result.stderr and "banana-detection.zip" in result.stderr
    assert "Traceback" not in result.stderr


def test_unknown_key_and_bad_anchor_config_fail_fast(tmp_path):
    result = run_train(["no_such_key=1", f"paths.log_dir={tmp_path}"])
    # Hydra's own message; exit 2 like every user error (a bug inside the run exits 1).
    assert result.returncode == 2 and "no_such_key" in result.stderr
    result = run_train(["model.sizes=[[0.2]]", f"paths.log_dir={tmp_path}"])  # its name before model.net
    assert result.returncode == 2 and "model.sizes is now model.net.sizes" in result.stderr
    result = run_train(["model.net.sizes=[[0.2]]", f"paths.log_dir={tmp_path}"])
    assert result.returncode == 2 and "model.net.sizes has 1 scales" in result.stderr.replace("\n", " ")


@pytest.mark.real_data
def test_real_data_smoke(tmp_path):
    data_dir = real_data_dir()
    if data_dir is None:
        pytest.skip("the banana dataset is not present (set TINYSSD_REAL_DATA or put it in ../shared/data)")
    result = run_train(
        [
            f"data.data_dir={data_dir}",
            f"paths.log_dir={tmp_path / 'logs'}",
            "trainer.max_epochs=1",
            "data.batch_size=8",
            "trainer.limit_train_batches=2",
            "trainer.limit_val_batches=1",
            # Decode only the batches used, not the whole set (the smoke test is the pipeline's).
            "data.cache=none",
            "callbacks.progress_bar.refresh_rate=0",
        ]
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert re.search(r"^\s+val/class_error\s+[\d.]", result.stdout, re.M)
