"""The README's pictures, from a short three-class run and the shipped banana model.

    python scripts/readme_pictures.py --data ../shared/data --out docs/pictures

trains ``experiment=multiclass`` on ``<data>/multiclass`` for ``--epochs`` epochs (a short run:
the pictures show what a run writes, not how good a full one gets), copies its ``curves.png``,
``val_predictions.png``, ``pr_curve.png`` and ``confusion_matrix.png``, and adds
``banana_pred.png``: ``tinyssd predict`` on ``<data>/banana.jpg`` with the shipped model, and
``check.png``: ``tinyssd check`` on the three-class set (its boxes against the anchor presets and
``anchors=auto``), and ``explain_*.png``: ``tinyssd explain`` with the shipped model on
``banana.jpg`` (anchors, scores) and on a three-class picture with its objects (labelling).
``--only run|predict|check|explain`` makes one group. The command, date and machine of
each group go to ``<out>/README.md``.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

RUN_PICTURES = ("curves.png", "val_predictions.png", "pr_curve.png", "confusion_matrix.png")
EXPLAIN_PICTURES = ("explain_anchors.png", "explain_scores.png", "explain_labelling.png")
GROUPS = {"run": RUN_PICTURES, "predict": ("banana_pred.png",), "check": ("check.png",), "explain": EXPLAIN_PICTURES}


def _tinyssd(args: list[str], cwd: Path) -> None:
    command = [sys.executable, "-m", "tinyssd.pipeline.commands", *args]
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{' '.join(args)} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"), help="holds multiclass/ and banana.jpg")
    parser.add_argument("--out", type=Path, default=Path("docs/pictures"))
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--only", choices=GROUPS, help="make one group of pictures (default: all)")
    args = parser.parse_args(argv)
    groups = [args.only] if args.only else list(GROUPS)
    data = args.data.resolve()
    for needed in (data / "multiclass" / "coco", data / "banana.jpg"):
        if not needed.exists():
            sys.exit(f"{needed} is missing; --data must name the folder that holds multiclass/ and banana.jpg.")
    args.out.mkdir(parents=True, exist_ok=True)
    coco = data / "multiclass" / "coco"
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        if "run" in groups:
            train = [
                "train",
                "experiment=multiclass",
                f"data.data_dir={data}",
                f"trainer.max_epochs={args.epochs}",
                f"data.image_size={args.image_size}",
                "callbacks.prediction_images.every_n_epochs=1",
                "callbacks.prediction_images.threshold=0.5",
                "callbacks.progress_bar.refresh_rate=0",
                f"hydra.run.dir={work / 'run'}",
            ]
            _tinyssd(train, work)
            for name in RUN_PICTURES:
                shutil.copy(work / "run" / name, args.out / name)
        if "predict" in groups:
            _tinyssd(["predict", f"source={data / 'banana.jpg'}", f"output_dir={work / 'predict'}"], work)
            shutil.copy(work / "predict" / "banana_pred.png", args.out / "banana_pred.png")
        coco_data = ["data=coco"] + [
            f"data.{s}.{k}={coco / (s if k == 'images' else f'annotations/instances_{s}.json')}"
            for s in ("train", "val")
            for k in ("images", "annotations")
        ]
        if "check" in groups:
            size = f"data.image_size={args.image_size}"
            _tinyssd(["check", *coco_data, size, f"hydra.run.dir={work / 'check'}"], work)
            shutil.copy(work / "check" / "check.png", args.out / "check.png")
        if "explain" in groups:
            banana = ["explain", "model=banana", f"source={data / 'banana.jpg'}", f"hydra.run.dir={work / 'ex1'}"]
            _tinyssd(banana, work)
            three = ["explain", *coco_data, "picture=3", "anchor_preset=small", "assigner=atss"]
            _tinyssd([*three, f"hydra.run.dir={work / 'ex2'}"], work)
            shutil.copy(work / "ex1" / "anchors.png", args.out / "explain_anchors.png")
            shutil.copy(work / "ex1" / "scores.png", args.out / "explain_scores.png")
            shutil.copy(work / "ex2" / "labelling.png", args.out / "explain_labelling.png")
    made = {
        "run": f"`experiment=multiclass` trained for {args.epochs} epochs on the three-class set (a short run): "
        + ", ".join(RUN_PICTURES),
        "predict": "the shipped banana model on `banana.jpg`: banana_pred.png",
        "check": "`tinyssd check` on the three-class set (COCO files): check.png",
        "explain": "`tinyssd explain` with the shipped model on `banana.jpg` and without a model on a three-class "
        "picture: " + ", ".join(EXPLAIN_PICTURES),
    }
    notes = args.out / "README.md"
    lines = notes.read_text().splitlines() if notes.exists() else []
    kept = [line for line in lines[2:] if line.startswith("- ") and not any(line.endswith(f"[{g}]") for g in groups)]
    machine = f"{platform.processor() or platform.machine()} ({platform.system()})"
    for group in groups:
        epochs = f" --epochs {args.epochs}" if group == "run" else ""
        command = f"`python scripts/readme_pictures.py --only {group}{epochs} --image-size {args.image_size}`"
        kept.append(f"- {datetime.date.today()}, {machine}, {command}: {made[group]} [{group}]")
    notes.write_text("# The README's pictures\n\n" + "\n".join(kept) + "\n")
    print(f"pictures in {args.out}: {', '.join(name for g in groups for name in GROUPS[g])}")


if __name__ == "__main__":
    main()
