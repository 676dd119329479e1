"""Sweep bookkeeping: each job's ``summary.json`` and the multirun's ``summary.csv``/``summary.md``."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

__all__ = ["COLUMNS", "SweepSummary", "collect_summaries", "write_summary"]

COLUMNS = (
    "job",
    "overrides",
    "best_val_map",
    "best_val_map_50",
    "val_class_error",
    "val_bbox_mae",
    "epochs",
    "wall_time_s",
)


def collect_summaries(sweep_dir: Path) -> list[dict[str, Any]]:
    """Every job's ``summary.json`` below a multirun folder, best val mAP first."""
    rows = []
    for path in sorted(sweep_dir.glob("*/summary.json")):
        data = json.loads(path.read_text())
        data["job"] = path.parent.name
        rows.append(data)
    return sorted(rows, key=lambda r: -(r.get("best_val_map") if r.get("best_val_map") is not None else -1.0))


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return " ".join(map(str, value))
    return "" if value is None else str(value)


def write_summary(sweep_dir: Path) -> list[dict[str, Any]]:
    """Write ``summary.csv`` and ``summary.md`` in ``sweep_dir``; returns the rows."""
    rows = collect_summaries(sweep_dir)
    with open(sweep_dir / "summary.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(COLUMNS)
        writer.writerows([[_fmt(r.get(c)) for c in COLUMNS] for r in rows])
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_fmt(r.get(c)) for c in COLUMNS) + " |" for r in rows]
    (sweep_dir / "summary.md").write_text("\n".join(lines) + "\n")
    return rows


class SweepSummary(Callback):
    """Hydra callback: when a multirun ends, summarise its jobs in the sweep folder."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if sweep_dir.is_dir():
            rows = write_summary(sweep_dir)
            print(f"tinyssd: sweep summary of {len(rows)} job(s) in {sweep_dir / 'summary.md'}", flush=True)
