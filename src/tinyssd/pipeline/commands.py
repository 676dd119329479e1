"""The ``tinyssd`` command (``tinyssd train|eval|predict|export|check|explain [overrides]``) and the scripts beside it.

``train.py``, ``eval.py``, ``predict.py``, ``export.py``, ``check.py`` and ``explain.py`` in the clone are thin
wrappers of :func:`run`; the console command ``tinyssd`` (``[project.scripts]``) is :func:`main`. Both read the
configs that ship inside the package (``tinyssd/conf``; ``conf/`` in the clone links there), so
the command works from any folder after ``pip install``. A user's own config folder is added with
Hydra's ``--config-dir DIR`` (its files take precedence). ``--help`` prints :data:`HELP`'s lines for the
command: one per main key and per config group option.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["COMMANDS", "CONFIG_DIR", "GROUPS", "MAIN_KEYS", "help_text", "main", "run"]

# The configs that ship with the package.
CONFIG_DIR = Path(__file__).resolve().parents[1] / "conf"


@dataclass(frozen=True)
class Command:
    """One subcommand: its config (folder under :data:`CONFIG_DIR` and file name) and what it does."""

    config_folder: str
    config_name: str
    summary: str
    example: str


COMMANDS = {
    "train": Command("", "train", "train a model (a run folder per run; -m: sweeps)", "tinyssd train experiment=best"),
    "eval": Command("", "eval", "evaluate a checkpoint or .onnx export on a split", "tinyssd eval model=best"),
    "predict": Command(
        "predict", "predict", "detect objects in pictures, a folder or a glob", "tinyssd predict source=banana.jpg"
    ),
    "export": Command("", "export", "write an .onnx (or TorchScript) file and check it", "tinyssd export model=last"),
    "check": Command("", "check", "report on a data set and the anchors that fit it", "tinyssd check data=yolo"),
    "explain": Command(
        "", "explain", "one picture step by step: anchors, labelling, scores, NMS", "tinyssd explain model=banana"
    ),
}

# Config groups (folders of conf/) and what each option does; the train command composes them.
GROUPS: dict[str, dict[str, str]] = {
    "experiment": {
        "best": "the recipe that beats YOLOv8n on bananas (FPN, ATSS, GIoU, AdamW, mosaic; 17 epochs)",
        "chapter": "the chapter's recipe spelled out (the default config)",
        "multiclass": "the recipe for small multi-class COCO sets such as ../shared/data/multiclass",
        "ssd_paper_loss": "the SSD paper's loss (smooth-L1, 3:1 hard negative mining) on the chapter's model",
    },
    "data": {
        "banana": "the banana set's CSV layout: data.data_dir holds banana-detection/ (downloaded when missing)",
        "coco": "COCO: data.train.images, data.train.annotations (and val, test)",
        "voc": "Pascal VOC: data.root (the folder holding VOCdevkit), data.year",
        "yolo": "YOLO: data.yaml (an ultralytics data set YAML)",
    },
    "module": {"tinyssd": "the LightningModule at key model, its network in model.net (model.net.sizes, ...)"},
    "anchors": {
        "chapter": "the chapter's five scales, 4 anchors per cell",
        "small": "the chapter's plus a smaller square on the finest scale",
        "dense": "three sizes and four ratios per scale (6 per cell)",
        "auto": "fitted to the training boxes when training starts (k-means on 1 - IoU, then evolution)",
    },
    "loss": {
        "ce_l1": "the chapter's loss: cross-entropy + L1 on positive anchors' offsets",
        "focal": "focal classification loss (exercise A) + a box loss",
        "smooth_l1": "cross-entropy + smooth-L1 box loss (exercise A)",
    },
    "optimizer": {"sgd": "the chapter's SGD (lr 0.2, wd 5e-4)", "adamw": "AdamW (lr 0.002)"},
    "scheduler": {
        "none": "constant learning rate (the chapter)",
        "cosine": "linear warm-up, then cosine decay",
        "multistep": "optional warm-up, then the rate times gamma at milestones",
    },
    "trainer": {
        "default": "Lightning's Trainer: accelerator and precision chosen for the machine",
        "cpu": "force the CPU",
        "gpu": "one GPU, bf16/16-mixed where it runs fast",
        "ddp": "data-parallel on several devices (trainer.devices=N)",
    },
    "callbacks": {
        "default": "checkpoints (best.ckpt, last.ckpt), metrics files, progress bar, LR monitor",
        "none": "no callbacks",
        "early_stopping": "stop when val mAP stops improving (callbacks.early_stopping.patience)",
        "ema": "exponential moving average of the weights (callbacks.ema.decay)",
        "learning_rate_monitor": "log the learning rate",
        "metrics_files": "metrics.csv, curves.png, val_predictions.png in the run folder",
        "model_checkpoint": "best checkpoint by val mAP, and last.ckpt",
        "progress_bar": "the progress bar",
        "explain": "explain's pictures of a val picture in TensorBoard (callbacks.explain.every_n_epochs=N)",
    },
    "logger": {
        "tensorboard": "TensorBoard event files in the run folder (the default)",
        "csv": "Lightning's CSVLogger",
        "mlflow": "MLflow on a local file store",
        "wandb": "Weights & Biases, offline",
        "many": "every logger at once",
        "none": "no logger",
    },
    "debug": {
        "fdr": "one training and one validation batch, nothing written",
        "overfit": "fit one batch again and again",
        "profiler": "Lightning's simple profiler",
    },
    "hparams_search": {"optuna": "Optuna TPE sweep over the learning rate, loss weights, ... (with -m)"},
    "paths": {"default": "root_dir, log_dir (logs/ under the folder you run from, or the clone)"},
    "hydra": {"default": "one run folder per run: logs/<task>/runs/DATE_TIME"},
}

# The keys a user sets most, per command: key -> what it does.
MAIN_KEYS: dict[str, dict[str, str]] = {
    "train": {
        "data.data_dir": "the folder holding banana-detection/ (data=banana)",
        "trainer.max_epochs": "epochs (the chapter: 20)",
        "trainer.budget": "train for a time instead: minutes or 1h30m (experiment=best: 20)",
        "trainer.devices": "how many devices (GPUs, or CPU processes with trainer=ddp)",
        "data.batch_size": "pictures per step (32)",
        "data.image_size": "input side in pixels (256)",
        "ckpt_path": "resume a run: a .ckpt, a run folder, last or best",
        "init_from": "fine-tune from a checkpoint's weights (a file, run folder, last, best or banana)",
        "test": "true: evaluate the best checkpoint on the test split after training",
        "seed": "the random seed (42)",
    },
    "eval": {
        "model": "a .ckpt or .onnx file, a run folder, last, best or a shipped name (banana)",
        "data.data_dir": "the folder holding banana-detection/ (or data=coco|voc|yolo and its keys)",
        "split": "val | test",
        "threshold": "score from which precision, recall and the confusion matrix count a detection",
        "runtime": "auto | torch | onnxruntime | openvino",
    },
    "predict": {
        "model": "a .ckpt or .onnx file, a run folder, last, best or a shipped name (default: banana)",
        "source": "a picture, a folder or a glob",
        "threshold": "show and save detections from this score (0.9, the chapter's)",
        "output_dir": "where the annotated pictures and detections.json go (a new run folder)",
        "device": "auto | cpu | cuda",
        "runtime": "auto | torch | onnxruntime | openvino",
        "overwrite": "true: replace an output_dir's earlier results",
    },
    "export": {
        "model": "a .ckpt, a run folder, last, best or a shipped name (banana)",
        "format": "onnx | torch_export | torchscript",
        "output": "the file to write (beside the checkpoint by default)",
        "batch": "dynamic | N",
        "nms": "true: NMS in the graph",
        "dtype": "uint8 | float32 input pixels",
    },
    "check": {
        "data.data_dir": "the folder holding banana-detection/ (or data=coco|voc|yolo and its keys)",
        "model.net.sizes": "your anchors (or anchors=small|dense), shown beside chapter, small, dense and auto",
        "anchor_fit.generations": "evolution steps of the auto fit (300; anchor_fit.seed, sizes_per_scale, ...)",
        "data.image_size": "the model's input side the boxes are measured on (256)",
        "data.resize": "stretch | letterbox, as training would place the pictures",
    },
    "explain": {
        "model": "a .ckpt, a run folder, last, best or a shipped name (banana); null: anchors only",
        "source": "any picture; without it, a picture of the data set (data.data_dir, data=...)",
        "split": "val | train | test: the split the picture comes from",
        "picture": "its position in the split or its file name (0)",
        "cell": "[x, y] pixels: the cell whose anchors are drawn (the first object's centre)",
        "anchor_preset": "without a model: chapter | small | dense",
        "assigner": "without a model: max_iou | atss, whose offsets are shown",
    },
}


def help_text(command: str | None = None) -> str:
    """``tinyssd --help`` (command None) or ``tinyssd COMMAND --help``."""
    if command is None:
        lines = ["usage: tinyssd COMMAND [key=value ...] [-m] [--config-dir DIR]", "", "commands:"]
        lines += [f"  {name:<8} {spec.summary}  (e.g. {spec.example})" for name, spec in COMMANDS.items()]
        lines += [
            "",
            "tinyssd COMMAND --help lists its main keys and config groups. Any key of the composed config can be",
            "set (key=value); --cfg job prints the whole config, --hydra-help Hydra's own options.",
            'Bash completion: eval "$(tinyssd -sc install=bash)"',
        ]
        return "\n".join(lines)
    spec = COMMANDS[command]
    lines = [f"usage: tinyssd {command} [key=value ...]   {spec.summary}", f"example: {spec.example}", "", "main keys:"]
    lines += [f"  {key:<20} {text}" for key, text in MAIN_KEYS[command].items()]
    if command == "train":
        lines += ["", "config groups (group=option):"]
        for group, options in GROUPS.items():
            for option, text in options.items():
                lines.append(f"  {group + '=' + option:<28} {text}")
    lines += [
        "",
        "--cfg job prints the composed config; --config-dir DIR adds your own config folder; -m runs a sweep",
        '(train only); --hydra-help: Hydra\'s options. Completion: eval "$(tinyssd -sc install=bash)".',
    ]
    return "\n".join(lines)


def _task(command: str) -> Callable[[Any], Any]:
    from tinyssd.pipeline.cli import entry_point, report_user_errors

    if command == "train":

        @entry_point
        def train_task(cfg: Any) -> float | None:
            from tinyssd.pipeline.training import train

            metrics = train(cfg)
            # Sweepers (hparams_search) maximise this value: the run's best validation of the metric
            # (the epoch its best checkpoint keeps), or its last value when it was never validated.
            metric = cfg.get("optimized_metric")
            return metrics.get(f"best/{metric}", metrics.get(metric))

        return train_task
    if command == "eval":

        @entry_point
        def eval_task(cfg: Any) -> float | None:
            from tinyssd.pipeline.evaluation import evaluate

            return evaluate(cfg)["map"]

        return eval_task
    if command == "predict":

        @report_user_errors
        def predict_task(cfg: Any) -> None:
            from tinyssd.pipeline.predicting import predict_from_config

            status = predict_from_config(cfg)
            if status:
                sys.exit(status)

        return predict_task

    module_name, function = _RUNNERS[command]

    @report_user_errors
    def task(cfg: Any) -> None:
        import importlib

        getattr(importlib.import_module(module_name), function)(cfg)

    return task


# The other commands: one function of a pipeline module on the composed config (a fixed table in code).
_RUNNERS = {
    "export": ("tinyssd.pipeline.exporting", "export_from_config"),
    "check": ("tinyssd.pipeline.checking", "check_data"),
    "explain": ("tinyssd.pipeline.explaining", "explain_from_config"),
}


def run(command: str, args: list[str] | None = None, program: str | None = None) -> None:
    """Run one command with Hydra overrides ``args`` (default: ``sys.argv[1:]``) on the packaged configs."""
    import hydra

    from tinyssd.pipeline.cli import run_hydra_app

    args = sys.argv[1:] if args is None else list(args)
    if any(a in ("-h", "--help") for a in args):
        print(help_text(command))
        return
    spec = COMMANDS[command]
    config_dir = CONFIG_DIR / spec.config_folder if spec.config_folder else CONFIG_DIR
    app = hydra.main(version_base="1.3", config_path=str(config_dir), config_name=spec.config_name)(_task(command))
    sys.argv = [program or sys.argv[0], *args]
    run_hydra_app(app, str(config_dir))


def main(argv: list[str] | None = None) -> None:
    """``tinyssd COMMAND [overrides]``."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(help_text())
        sys.exit(0 if argv else 2)
    if argv[0] in ("-sc", "--shell-completion"):
        from tinyssd.pipeline.completion import shell_completion

        sys.exit(shell_completion(argv[1] if len(argv) > 1 else "", list(COMMANDS), run))
    command, *args = argv
    if command not in COMMANDS:
        print(
            f"tinyssd: {command!r} is not a command; choose one of {', '.join(COMMANDS)} (tinyssd --help).",
            file=sys.stderr,
        )
        sys.exit(2)
    run(command, args, program=f"tinyssd {command}")


if __name__ == "__main__":
    main()
