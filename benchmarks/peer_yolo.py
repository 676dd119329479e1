"""A YOLO model, trained from scratch for the same wall-clock budget, scored with tinyssd's mAP.

    pip install ultralytics          # optional: only this benchmark needs it
    python benchmarks/peer_yolo.py train --data ../shared/data/banana-detection --budget 1200 \\
        --out benchmarks/results/peer_yolo
    python benchmarks/peer_yolo.py train --data ../shared/data/multiclass/coco --model yolo26n.yaml \\
        --budget 1200 --out /tmp/peer_yolo26n_multiclass
    python benchmarks/peer_yolo.py plot --out benchmarks/results/peer_yolo \\
        --tinyssd "experiment=best=logs/train/runs/RUN" --png benchmarks/results/peer_yolo.png

``train`` reads the data with tinyssd's own readers, so both detectors learn the same ground truth:
a banana-format folder (``bananas_train/``, ``bananas_val/``, each with ``label.csv`` and
``images/``), a COCO folder (``train/``, ``val/`` and ``annotations/instances_{train,val}.json``) or
an ultralytics ``data.yaml``; the classes are the data's (``--names`` for the banana format, default
``banana``). It writes the YOLO layout (the pictures linked, not copied), trains ultralytics'
``--model`` (``yolov8n.yaml``, ``yolo11n.yaml``, ``yolo26n.yaml``, ...) from scratch (no pretrained
weights; ``imgsz=256 batch=32 device=cpu``, ultralytics' default recipe otherwise, with its ``time``
budget, which re-plans the epochs and the schedule to end on time), keeps every epoch's weights, and
scores each with the same torchmetrics COCO mAP that ``train.py`` logs as ``val/map``.
``<out>/peer_yolo.json`` has, per epoch, the training seconds so far (validation included, as in
tinyssd's ``time_s``), ultralytics' own mAP50-95 and tinyssd's ``map``, ``map_50``, ``map_75`` (and
each class's AP when there are several).

``plot`` draws val mAP against training seconds for the YOLO run and for tinyssd runs (their
``metrics.csv``: ``time_s`` and ``val/map``) in one picture, and prints the table.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import sys
from pathlib import Path

import torch

from tinyssd.boxes import to_pixels, valid_rows
from tinyssd.data.formats.banana import read_banana_split
from tinyssd.data.formats.coco import coco_categories, read_coco_split
from tinyssd.data.formats.yolo import read_yolo_split, read_yolo_yaml
from tinyssd.data.index import DetectionIndex
from tinyssd.model.metrics import make_map_metric

SPLITS = {"train": "bananas_train", "val": "bananas_val"}


def class_names_of(data: Path, names: list[str] | None) -> list[str]:
    """The classes: a COCO folder's categories, a YOLO YAML's names, else ``names`` (default ``banana``)."""
    if data.suffix in (".yaml", ".yml"):
        return list(read_yolo_yaml(data)["names"])
    annotations = data / "annotations" / "instances_train.json"
    if annotations.is_file():
        return coco_categories(annotations)[1]
    return names or ["banana"]


def read_split(data: Path, split: str, class_names: list[str]) -> DetectionIndex:
    """One split (``train``, ``val``) of a banana folder, a COCO folder or a YOLO YAML, by tinyssd's readers."""
    if data.suffix in (".yaml", ".yml"):
        return read_yolo_split(read_yolo_yaml(data), split, data, class_names)
    annotations = data / "annotations" / f"instances_{split}.json"
    if annotations.is_file():
        return read_coco_split(data / split, annotations, class_names)
    return read_banana_split(data / SPLITS[split], class_names)


def write_yolo_layout(data: Path, work: Path, class_names: list[str]) -> Path:
    """The data set as an ultralytics dataset under ``work``; returns its ``data.yaml``."""
    for split in SPLITS:
        index = read_split(data, split, class_names)
        images, labels = work / "images" / split, work / "labels" / split
        images.mkdir(parents=True, exist_ok=True)
        labels.mkdir(parents=True, exist_ok=True)
        for path, rows in zip(index.files, index.labels, strict=True):
            link = images / path.name
            if not link.exists():
                link.symlink_to(path.resolve())
            rows = rows[valid_rows(rows)]
            centre, size = (rows[:, 1:3] + rows[:, 3:5]) / 2, rows[:, 3:5] - rows[:, 1:3]
            lines = [
                f"{int(c)} {x:.6f} {y:.6f} {w:.6f} {h:.6f}"
                for c, (x, y), (w, h) in zip(rows[:, 0].tolist(), centre.tolist(), size.tolist(), strict=True)
            ]
            (labels / f"{path.stem}.txt").write_text("".join(line + "\n" for line in lines))
    names = "\n".join(f"  {i}: {name}" for i, name in enumerate(class_names))
    yaml = work / "data.yaml"
    yaml.write_text(f"path: {work.resolve()}\ntrain: images/train\nval: images/val\nnames:\n{names}\n")
    return yaml


def torchmetrics_map(weights: Path, data: Path, class_names: list[str], imgsz: int) -> dict[str, float]:
    """tinyssd's val mAP (``tinyssd.model.metrics.make_map_metric``) of an ultralytics checkpoint on the val split."""
    from ultralytics import YOLO

    index = read_split(data, "val", class_names)
    model = YOLO(str(weights))
    metric = make_map_metric(len(class_names), "faster_coco_eval")
    # ultralytics' own validation settings: every detection from score 0.001, NMS IoU 0.7, 100 per picture.
    results = model.predict(
        [str(p) for p in index.files], imgsz=imgsz, conf=0.001, iou=0.7, max_det=100, device="cpu", verbose=False
    )
    for result, rows, (width, height) in zip(results, index.labels, index.sizes.tolist(), strict=True):
        boxes = result.boxes
        metric.update(
            [{"boxes": boxes.xyxy.float(), "scores": boxes.conf.float(), "labels": boxes.cls.long()}],
            [{"boxes": to_pixels(rows[:, 1:], width, height), "labels": rows[:, 0].long()}],
        )
    return scores(metric.compute(), class_names)


def scores(values: dict, class_names: list[str]) -> dict[str, float]:
    """``map``, ``map_50``, ``map_75`` and, with several classes, ``ap_<class>`` from a torchmetrics result."""
    out = {key: round(float(values[key]), 4) for key in ("map", "map_50", "map_75")}
    if len(class_names) > 1:
        per_class = values["map_per_class"].flatten().tolist()
        classes = values["classes"].flatten().tolist()
        out.update({f"ap_{class_names[int(c)]}": round(float(v), 4) for c, v in zip(classes, per_class, strict=True)})
    return out


def _quiet_ultralytics(settings_dir: Path) -> None:
    """No downloads, and no logging to the integrations ultralytics finds installed (tinyssd's own
    requirements include mlflow, which it would write to the working directory); its settings
    file goes to ``settings_dir``, not the user's."""
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ["YOLO_CONFIG_DIR"] = str(settings_dir)
    settings_dir.mkdir(parents=True, exist_ok=True)
    from ultralytics import settings

    settings.update({key: False for key in settings if key in INTEGRATIONS})


# ultralytics' logging integrations (its settings keys).
INTEGRATIONS = ("clearml", "comet", "dvc", "hub", "mlflow", "neptune", "raytune", "tensorboard", "wandb", "platform")


def train(args: argparse.Namespace) -> None:
    out = args.out.resolve()
    try:
        _quiet_ultralytics(out / "ultralytics_settings")  # before anything imports ultralytics
        from ultralytics import YOLO, __version__
    except ImportError:
        sys.exit("benchmarks/peer_yolo.py needs ultralytics, an optional benchmark dependency: pip install ultralytics")
    names = class_names_of(args.data, args.names)
    yaml = write_yolo_layout(args.data, out / "dataset", names)
    YOLO(args.model).train(
        data=str(yaml),
        imgsz=args.imgsz,
        batch=args.batch,
        device="cpu",
        time=args.budget / 3600,
        pretrained=False,
        project=str(out),
        name="yolo",
        exist_ok=True,
        save_period=1,
        plots=False,
        workers=args.workers,
        seed=args.seed,
    )
    run = out / "yolo"
    with open(run / "results.csv", newline="") as f:
        rows = [{k.strip(): v for k, v in r.items()} for r in csv.DictReader(f)]
    epochs = []
    for row in rows:
        epoch = int(float(row["epoch"]))  # 1-based here, 0-based in the weights' names
        weights = run / "weights" / f"epoch{epoch - 1}.pt"
        epochs.append(
            {
                "epoch": epoch,
                "time_s": round(float(row["time"]), 1),
                "ultralytics_map50_95": round(float(row["metrics/mAP50-95(B)"]), 4),
                **torchmetrics_map(weights, args.data, names, args.imgsz),
            }
        )
        print(json.dumps(epochs[-1]), flush=True)
    report = {
        "model": args.model,
        "ultralytics": __version__,
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "budget_s": args.budget,
        "imgsz": args.imgsz,
        "batch": args.batch,
        "data": str(args.data),
        "classes": names,
        "epochs": epochs,
    }
    (out / "peer_yolo.json").write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {out / 'peer_yolo.json'}")


def tinyssd_curve(run: Path) -> list[tuple[float, float]]:
    """(training seconds, val/map) per epoch of a tinyssd run folder."""
    with open(run / "metrics.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("val/map") and r.get("time_s")]
    return [(float(r["time_s"]), float(r["val/map"])) for r in rows]


def plot(args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    report = json.loads((args.out / "peer_yolo.json").read_text())
    model = Path(report.get("model", "yolov8n.yaml")).stem
    curves = {f"{model} (ultralytics, from scratch)": [(e["time_s"], e["map"]) for e in report["epochs"]]}
    for spec in args.tinyssd:
        label, _, folder = spec.rpartition("=")
        curves[f"tinyssd {label}"] = tinyssd_curve(Path(folder))
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for label, points in curves.items():
        ax.plot(*zip(*points, strict=True), marker="o", markersize=3, label=label)
        best = max(m for _, m in points)
        print(f"{label}: best val mAP {best:.3f}, last {points[-1][1]:.3f} at {points[-1][0]:.0f} s")
    ax.set(xlabel="training seconds (2-core CPU, validation included)", ylabel="val mAP (torchmetrics COCO)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.png, dpi=110)
    print(f"wrote {args.png}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    t = commands.add_parser("train", help="train a YOLO model for a budget and score every epoch")
    t.add_argument("--data", type=Path, required=True, help="banana-format folder, COCO folder or YOLO data.yaml")
    t.add_argument("--budget", type=float, default=1200, help="wall-clock training seconds (default 1200)")
    t.add_argument("--out", type=Path, required=True)
    t.add_argument("--names", nargs="+", default=None, help="banana format: class names, in label order")
    t.add_argument("--model", default="yolov8n.yaml", help="ultralytics model config (from scratch)")
    t.add_argument("--imgsz", type=int, default=256)
    t.add_argument("--batch", type=int, default=32)
    t.add_argument("--workers", type=int, default=2)
    t.add_argument("--seed", type=int, default=0)
    p = commands.add_parser("plot", help="val mAP against training seconds, the YOLO run and tinyssd runs")
    p.add_argument("--out", type=Path, required=True, help="the train command's --out")
    p.add_argument("--tinyssd", nargs="*", default=[], help="LABEL=RUN_FOLDER of tinyssd runs")
    p.add_argument("--png", type=Path, required=True)
    args = parser.parse_args()
    train(args) if args.command == "train" else plot(args)


if __name__ == "__main__":
    main()
