"""data.close_mosaic: the last epochs without mosaics, in both placements and across worker processes."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
import torch

from tinyssd import BananaDataModule
from tinyssd.data.close_mosaic import CloseMosaic
from tinyssd.errors import ConfigError

SIZE = 64


def _module(tmp_path, make_banana_dir, **kwargs) -> BananaDataModule:
    data_dir = tmp_path / "data"
    if not data_dir.exists():
        make_banana_dir(num_train=8, num_val=2, objects_per_image=2)
    return BananaDataModule(data_dir=str(data_dir), batch_size=4, image_size=SIZE, close_mosaic=2, **kwargs)


def _epoch(callback: CloseMosaic, dm: BananaDataModule, epoch: int, max_epochs: int = 5) -> None:
    trainer = SimpleNamespace(datamodule=dm, current_epoch=epoch, max_epochs=max_epochs)
    callback.on_train_epoch_start(trainer, None)


def test_the_last_epochs_leave_the_loader_without_mosaics_also_in_worker_processes(tmp_path, make_banana_dir):
    dm = _module(tmp_path, make_banana_dir, augment="flip", mosaic=1.0, num_workers=1)
    dm.setup("fit")
    loader = dm.train_dataloader()  # one persistent worker: the share must reach its copy of the data set
    callback = CloseMosaic()
    _epoch(callback, dm, epoch=2)
    assert {labels.shape[1] for _, labels in loader} == {8}  # every item a mosaic of four: 4 x 2 rows
    _epoch(callback, dm, epoch=3)  # the last 2 of 5
    assert dm.datasets["train"].mosaic == 0
    assert {labels.shape[1] for _, labels in loader} == {2}
    _epoch(callback, dm, epoch=2)  # a run resumed from before the switch has them again
    assert {labels.shape[1] for _, labels in loader} == {8}


def test_the_last_epochs_on_the_device_have_no_mosaics(tmp_path, make_banana_dir, caplog):
    dm = _module(tmp_path, make_banana_dir, augment="light", mosaic=1.0, augment_on="device")
    dm.setup("fit")
    images, labels = next(iter(dm.train_dataloader()))
    callback = CloseMosaic()
    with caplog.at_level(logging.INFO):
        _epoch(callback, dm, epoch=3)
        _epoch(callback, dm, epoch=4)
    # Said once, through the project's logger only (Lightning's would print twice under Hydra).
    said = [r for r in caplog.records if "no mosaics" in r.getMessage()]
    assert [(r.name, r.getMessage()) for r in said] == [
        ("tinyssd", "no mosaics from epoch 3 (the last 2 of 5: data.close_mosaic)")
    ]
    dm.trainer = SimpleNamespace(training=True)
    _, out_labels = dm.on_after_batch_transfer((images, labels), 0)
    assert out_labels.shape == (4, 2, 5) and dm.batch_augment.mosaic == 0 and dm.mosaic == 1.0


def test_no_switch_without_an_epoch_count_or_the_setting(tmp_path, make_banana_dir):
    dm = _module(tmp_path, make_banana_dir, mosaic=0.5)
    dm.setup("fit")
    callback = CloseMosaic()
    _epoch(callback, dm, epoch=4, max_epochs=-1)  # a time budget before its plan: the count is not known yet
    assert dm.datasets["train"].mosaic == 0.5
    dm.close_mosaic = 0
    _epoch(callback, dm, epoch=4)
    assert dm.datasets["train"].mosaic == 0.5
    for bad in (-1, True, 1.5):
        with pytest.raises(ConfigError, match=r"data\.close_mosaic"):
            BananaDataModule(data_dir=str(tmp_path / "data"), close_mosaic=bad)
    assert torch.is_tensor(dm.datasets["train"]._mosaic)
