"""Run and sweep bookkeeping: each job's ``summary.json``, the multirun's ``summary.csv``/``summary.md``.

Every job of a multirun runs, whatever the others do: a failed job leaves a ``summary.json``
with ``status`` ``failed`` (or ``interrupted``) and its error, appears in the sweep summary
with that error, and makes the multirun exit non-zero (2 when every failure was a user
error, else 1) after all jobs ran and the summary was written.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from tinyssd.errors import EXIT_USER_ERROR, RunInterrupted, paragraph, printable

__all__ = [
    "COLUMNS",
    "SUMMARY_FILE",
    "SweepSummary",
    "collect_summaries",
    "read_job_summary",
    "record_failed_job",
    "summarise_current_sweep",
    "write_job_summary",
    "write_summary",
]

SUMMARY_FILE = "summary.json"
COLUMNS = (
    "job",
    "status",
    "overrides",
    "optimized_metric",
    "best",
    "best_epoch",
    "best_val_map",
    "best_val_map_50",
    "val_class_error",
    "val_bbox_mae",
    "epochs",
    "wall_time_s",
    "error",
)


def _overrides() -> list[str]:
    try:
        from hydra.core.hydra_config import HydraConfig

        return list(HydraConfig.get().overrides.task)
    except ValueError:  # not under Hydra
        return []


def write_job_summary(output_dir: Path, summary: dict[str, Any]) -> Path:
    """``<run>/summary.json`` (with the run's Hydra overrides); returns its path."""
    path = Path(output_dir) / SUMMARY_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"status": "completed", "overrides": _overrides(), **summary}
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    tmp.replace(path)
    return path


def record_failed_job(cfg: DictConfig, err: BaseException, user_error: bool) -> None:
    """Record a failed job in its own folder (``status`` failed or interrupted, and the error)."""
    output_dir = cfg.get("paths", {}).get("output_dir")
    if not output_dir:
        return
    status = "interrupted" if isinstance(err, RunInterrupted) else "failed"
    write_job_summary(Path(output_dir), {"status": status, "user_error": user_error, "error": paragraph(err)})


def read_job_summary(path: Path) -> dict[str, Any]:
    """A job's summary; an unreadable one reads as a failed job saying so."""
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as err:
        return {"status": "failed", "user_error": False, "error": f"{path} is unreadable ({err})"}
    return data


def collect_summaries(sweep_dir: Path) -> list[dict[str, Any]]:
    """Every job of a multirun folder, best val mAP first, then the failed ones.

    A job folder without ``summary.json`` (killed before it could write one) counts as failed.
    """
    rows = []
    for job in sorted(p for p in sweep_dir.iterdir() if p.is_dir() and p.name.isdigit()):
        path = job / SUMMARY_FILE
        if path.is_file():
            data = read_job_summary(path)
        else:
            data = {"status": "failed", "user_error": False, "error": "the job ended without writing summary.json"}
        data["job"] = job.name
        rows.append(data)

    def rank(row: dict[str, Any]) -> tuple:
        best = row.get("best", row.get("best_val_map"))
        return (row.get("status") != "completed", -(best if isinstance(best, (int, float)) else -1.0), int(row["job"]))

    return sorted(rows, key=rank)


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

    def cell(value: Any) -> str:
        return _fmt(value).replace("|", "\\|")

    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(cell(r.get(c)) for c in COLUMNS) + " |" for r in rows]
    (sweep_dir / "summary.md").write_text("\n".join(lines) + "\n")
    return rows


def summarise_current_sweep() -> None:
    """Write the summary of the running multirun now (when it is stopped before its end)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        sweep_dir = Path(HydraConfig.get().sweep.dir)
    except ValueError:
        return
    if sweep_dir.is_dir():
        write_summary(sweep_dir)


class SweepSummary(Callback):
    """Hydra callback: when a multirun ends, summarise its jobs; exit non-zero if any failed."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if not sweep_dir.is_dir():
            return
        rows = write_summary(sweep_dir)
        failed = [r for r in rows if r.get("status") != "completed"]
        print(f"tinyssd: sweep summary of {len(rows)} job(s) in {sweep_dir / 'summary.md'}", flush=True)
        if failed:
            for r in failed:
                line = f"tinyssd: job {r['job']} {r.get('status')}: {r.get('error')}"
                print(printable(line), file=sys.stderr, flush=True)
            print(f"tinyssd: {len(failed)} of {len(rows)} job(s) failed", file=sys.stderr, flush=True)
            sys.exit(EXIT_USER_ERROR if all(r.get("user_error") for r in failed) else 1)
