"""Composed configs and tiny runs: what tests pass to ``train(cfg)`` and the scripts."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from helpers.datasets import write_banana_dataset
from helpers.paths import ROOT
from helpers.processes import run_train

TINY_ARGS = ["data.image_size=64", "data.batch_size=4", "callbacks.progress_bar.refresh_rate=0"]


def train_tiny(tmp: Path, *overrides: str, num_train: int = 8, num_val: int = 4):
    """Train on a fresh tiny dataset under ``tmp``; returns (run folder, CompletedProcess)."""
    data_dir = write_banana_dataset(tmp / "data", num_train, num_val)
    result = run_train([f"data.data_dir={data_dir}", f"paths.log_dir={tmp / 'logs'}", *TINY_ARGS, *overrides])
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = list((tmp / "logs" / "train" / "runs").iterdir())
    return run, result


CONF = ROOT / "conf"


def compose_train(overrides: Sequence[str] = (), output_dir: Path | None = None, config_name: str = "train"):
    """The composed ``train.yaml`` (or ``eval.yaml``) as the script would get it (``paths.output_dir`` given)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name, overrides=list(overrides), return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        if output_dir is not None:
            cfg.paths.output_dir = str(output_dir)
        del cfg.hydra
    return cfg


def quiet_trainer(root: Path, callbacks: list, max_epochs: int, **kwargs):
    """A bare CPU Lightning Trainer (no logger, no progress bar) for tests of single callbacks."""
    import lightning.pytorch as pl

    return pl.Trainer(
        max_epochs=max_epochs,
        accelerator="cpu",
        default_root_dir=root,
        logger=False,
        enable_progress_bar=False,
        callbacks=callbacks,
        **kwargs,
    )
