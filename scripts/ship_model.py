"""Put a trained run's best model into the package, as the trained model that ships with tinyssd.

    python scripts/ship_model.py RUN_FOLDER --name banana --command "python train.py experiment=best ..."

writes ``src/tinyssd/models/NAME.ckpt`` (the run's best checkpoint with only what inference and
fine-tuning read: hyperparameters and weights; no optimizer state, no callback state) and
``NAME.json`` beside it: how it was made (command, commit, training seconds, epochs, val mAP,
date, machine). The file loads through the same checked loader as any checkpoint. Commands then
take it by name: ``predict.py model=NAME``, ``eval.py ckpt_path=NAME``, ``init_from=NAME``,
``Detector.load("NAME")``.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import platform
import subprocess
from pathlib import Path

import torch

from tinyssd.files import atomic_torch_save, atomic_write_bytes
from tinyssd.model.checkpoints import load_checkpoint, load_module
from tinyssd.model.run_files import SHIPPED_FOLDER, best_checkpoint

# What a shipped file keeps of a Lightning checkpoint.
KEPT = ("hyper_parameters", "state_dict", "epoch", "global_step", "pytorch-lightning_version")


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _training_seconds(run: Path) -> tuple[float | None, int | None, float | None]:
    """Training seconds, epochs and best val mAP from the run's metrics.csv."""
    path = run / "metrics.csv"
    if not path.is_file():
        return None, None, None
    rows = list(csv.DictReader(path.open()))
    maps = [float(r["val/map"]) for r in rows if r.get("val/map")]
    seconds = float(rows[-1]["time_s"]) if rows and rows[-1].get("time_s") else None
    return seconds, len(rows), max(maps) if maps else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="the run folder (logs/train/runs/DATE_TIME)")
    parser.add_argument("--name", required=True, help="the name commands will take (e.g. banana)")
    parser.add_argument("--command", required=True, help="the command that trained the run, recorded as is")
    parser.add_argument("--note", default=None, help="anything a reader of the figures should know, recorded as is")
    parser.add_argument("--commit", default=None, help="the commit that trained it (default: this checkout's HEAD)")
    args = parser.parse_args()
    source = best_checkpoint(args.run)
    if source is None:
        raise SystemExit(f"{args.run} has no best checkpoint; give a run folder that was validated.")
    ckpt = load_checkpoint(source)
    shipped = {k: ckpt[k] for k in KEPT if k in ckpt}
    shipped["state_dict"] = {k: v.contiguous().clone() for k, v in ckpt["state_dict"].items()}
    SHIPPED_FOLDER.mkdir(parents=True, exist_ok=True)
    target = SHIPPED_FOLDER / f"{args.name}.ckpt"
    atomic_torch_save(shipped, target)
    load_module(target)  # it loads as any checkpoint does
    commit = (
        args.commit
        or subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
        ).stdout.strip()
    )
    seconds, epochs, best_map = _training_seconds(args.run)
    record = {
        "name": args.name,
        "command": args.command,
        "commit": commit,
        "source": f"{source.name} of the run (epoch {ckpt.get('epoch')})",
        "training_seconds": seconds,
        "epochs": epochs,
        "best_val_map": best_map,
        "classes": ckpt["hyper_parameters"].get("class_names"),
        "image_size": ckpt["hyper_parameters"].get("image_size"),
        "date": datetime.date.today().isoformat(),
        "machine": f"{_cpu()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
        "bytes": target.stat().st_size,
    }
    if args.note:
        record["note"] = args.note
    atomic_write_bytes(SHIPPED_FOLDER / f"{args.name}.json", (json.dumps(record, indent=2) + "\n").encode())
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
