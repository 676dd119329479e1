"""Test helpers, imported as a package (``from helpers import write_banana_dataset``).

``tests/conftest.py`` holds only fixtures and hooks; what tests call lives here, one concern a module.
"""

from helpers.checkpoints import genuine_checkpoint
from helpers.configs import CONF, TINY_ARGS, compose_train, quiet_trainer, train_tiny
from helpers.datasets import (
    CLASS_COLOURS,
    FORMAT_CLASSES,
    FORMAT_PICTURES,
    SHARED_DATA,
    real_data_dir,
    write_all_formats,
    write_banana_dataset,
    write_banana_split,
)
from helpers.paths import FIXTURES, ROOT
from helpers.probes import WeightsAtStart
from helpers.processes import ENTRY_POINTS, run_in_process, run_predict, run_script, run_train, scratch_root

__all__ = [
    "CLASS_COLOURS",
    "CONF",
    "ENTRY_POINTS",
    "FIXTURES",
    "FORMAT_CLASSES",
    "FORMAT_PICTURES",
    "ROOT",
    "SHARED_DATA",
    "TINY_ARGS",
    "WeightsAtStart",
    "compose_train",
    "genuine_checkpoint",
    "quiet_trainer",
    "real_data_dir",
    "run_in_process",
    "run_predict",
    "run_script",
    "run_train",
    "scratch_root",
    "train_tiny",
    "write_all_formats",
    "write_banana_dataset",
    "write_banana_split",
]
