"""``data.close_mosaic``: the last epochs of training without mosaics (ultralytics' ``close_mosaic``).

Mosaics put objects at new places, next to other backgrounds and cut at the tiles' edges; the
pictures the model meets afterwards are whole. Training the last epochs on whole pictures (with
the rest of the augmentation) lets the model settle on them. The switch is read at the start of
every epoch from the trainer's epoch count, so a time budget's re-planned count
(``trainer.budget``) and a resumed run move it too.
"""

from __future__ import annotations

import logging

import lightning.pytorch as pl
from lightning.pytorch.utilities import rank_zero_only

__all__ = ["CloseMosaic"]

# The project's logger, not Lightning's rank_zero_info: Lightning's console handler and Hydra's
# root handler would both print that one.
log = logging.getLogger("tinyssd")


class CloseMosaic(pl.Callback):
    """Turn the data module's mosaics off for its last ``close_mosaic`` epochs (on for the others).

    A no-op unless the data module has ``close_mosaic > 0`` and a ``mosaic`` share; the training
    pipeline adds it to every run.
    """

    def __init__(self) -> None:
        self.closed = False

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        datamodule = trainer.datamodule
        epochs = getattr(datamodule, "close_mosaic", 0)
        if not epochs or not getattr(datamodule, "mosaic", 0) or trainer.max_epochs is None or trainer.max_epochs < 0:
            return
        closed = trainer.current_epoch >= trainer.max_epochs - epochs
        if closed != self.closed:
            datamodule.use_mosaic(not closed)
            self.closed = closed
            if closed and rank_zero_only.rank == 0:
                log.info(
                    f"no mosaics from epoch {trainer.current_epoch} "
                    f"(the last {epochs} of {trainer.max_epochs}: data.close_mosaic)"
                )
