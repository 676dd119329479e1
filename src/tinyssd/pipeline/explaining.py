"""``tinyssd explain`` (``explain.py``): one picture through TinySSD step by step, and the same in TensorBoard.

The picture is any file (``source=``) or one of a data set's (``split``, ``picture``: its position
or file name), with its objects. The anchors and labelling come from a checkpoint (``model=``) or,
without one, from ``anchor_preset`` and ``assigner``; a checkpoint adds class scores per scale
and the boxes before and after NMS. PNG files (:mod:`tinyssd.model.explain_figures`) and
``explain.json`` go to the run folder. During training, ``callbacks.explain.every_n_epochs=N``
logs the same pictures for one validation picture (:func:`explain_callback`).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from omegaconf import DictConfig
from torch import Tensor
from torchvision.io import write_png

from tinyssd.errors import ConfigError, printable
from tinyssd.files import atomic_write_bytes
from tinyssd.images import read_image
from tinyssd.model.explain_figures import figures
from tinyssd.model.explanation import Explanation, explain
from tinyssd.model.net import TinySSD
from tinyssd.resize import STRETCH, placement, to_canvas, to_canvas_image

log = logging.getLogger("tinyssd")

__all__ = ["ExplainPictures", "explain_callback", "explain_from_config", "summary"]


def _model(cfg: DictConfig) -> Any:
    from tinyssd.model.checkpoints import load_module
    from tinyssd.model.run_files import model_argument, resolve_model_path

    if cfg.get("model") is None:
        return None
    key, given = model_argument(cfg, "explain")
    path = resolve_model_path(given, Path(cfg.paths.log_dir) / "train" / "runs", key)
    if path.suffix != ".ckpt":
        raise ConfigError(
            f"{key}={given}: explain looks inside the network, so it needs a checkpoint (.ckpt), not {path.name}."
        )
    return load_module(path).cpu().eval()


def _picture(cfg: DictConfig, class_names: list[str] | None) -> tuple[Tensor, Tensor | None, str, list[str] | None]:
    """``(image, labels or None, where, class names)`` of the picture asked for."""
    if cfg.get("source"):
        return read_image(cfg.source), None, str(cfg.source), class_names
    from tinyssd.pipeline.builders import build

    datamodule = build(cfg.data, "data", **({"class_names": class_names} if class_names else {}))
    index = datamodule.read_split(cfg.split)
    wanted = cfg.get("picture", 0)
    if isinstance(wanted, int) and not isinstance(wanted, bool):
        if not 0 <= wanted < len(index):
            raise ConfigError(f"picture={wanted}: the {cfg.split} split has pictures 0..{len(index) - 1}.")
        position = wanted
    else:
        names = [f.name for f in index.files]
        if str(wanted) not in names:
            raise ConfigError(f"picture={wanted!r} is not a picture of the {cfg.split} split (e.g. {names[0]}).")
        position = names.index(str(wanted))
    file = index.files[position]
    return read_image(file), index.labels[position], f"{file} ({index.sources[position]})", index.class_names


def explain_from_config(cfg: DictConfig) -> Explanation:
    """The ``explain`` command: compute, draw and write; returns the explanation."""
    from tinyssd.pipeline.checking import preset_anchors

    module = _model(cfg)
    class_names = list(module.class_names) if module is not None else None
    image, labels, where, names = _picture(cfg, class_names)
    if module is not None:
        net, size, resize = module.net, int(module.hparams.image_size), module.hparams.get("resize", STRETCH)
        assigner, topk = module.hparams.get("assigner", "max_iou"), module.hparams.get("atss_topk", 9)
    else:
        sizes, ratios = preset_anchors(cfg.anchor_preset)
        net = TinySSD(num_classes=max(1, len(names or [])), sizes=sizes, ratios=ratios)
        size, resize, assigner, topk = int(cfg.data.image_size), cfg.data.get("resize", STRETCH), cfg.assigner, 9
    names = names or [f"class {k}" for k in range(net.num_classes)]
    height, width = image.shape[-2:]
    place = placement(width, height, size, resize)
    canvas_labels = None
    if labels is not None:
        canvas_labels = torch.cat((labels[:, :1], to_canvas(labels[:, None, 1:].double(), place)[:, 0].float()), 1)
    point = None
    if cfg.get("cell") is not None:
        x, y = (float(v) for v in cfg.cell)
        point = tuple(
            to_canvas(torch.tensor([[x / width, y / height, x / width, y / height]]).double(), place)[0, :2].tolist()
        )
    result = explain(to_canvas_image(image, size, resize), net, canvas_labels, point, assigner, topk, module)
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, picture in figures(result, names).items():
        write_png(picture, str(output_dir / name))
        written.append(name)
    report = summary(result, names)
    atomic_write_bytes(output_dir / "explain.json", json.dumps({"picture": where, **report}, indent=2).encode())
    lines = [f"explained {printable(where)} ({size} px canvas, {resize})"]
    lines += [f"  scale {k}: {n} anchors" for k, n in enumerate(report["anchors_per_scale"])]
    for assigner_name, objects in report["labelling"].items():
        for j, obj in enumerate(objects):
            lines.append(
                f"  {assigner_name:<8} object {j} ({obj['class']}): {obj['positives']} positive anchors, "
                f"best IoU {obj['best_iou']:.2f}" + (" UNLABELLED" if obj["unlabelled"] else "")
            )
    log.info("\n".join([*lines, f"  written: {', '.join(written)}, explain.json in {output_dir}"]))
    return result


def summary(result: Explanation, names: list[str]) -> dict[str, Any]:
    """``explain.json``: the counts and flags behind the pictures."""
    labelling = {
        assigner: [
            {
                "class": names[int(result.labels[j, 0])],
                "positives": len(obj.anchors),
                "scales": sorted(set(obj.scale)),
                "iou": [round(v, 4) for v in obj.iou],
                "best_iou": round(obj.best_iou, 4),
                "unlabelled": obj.unlabelled,
                "below_threshold": obj.below_threshold,
            }
            for j, obj in enumerate(objects)
        ]
        for assigner, objects in result.labelling.items()
    }
    out: dict[str, Any] = {
        "anchors_per_scale": result.level_counts,
        "grids": [list(g) for g in result.grids],
        "anchors_per_cell": result.per_cell,
        "cell_point": list(result.point),
        "labelling": labelling,
        "offsets": result.offsets,
    }

    def rows(dets: dict[str, Tensor], keep: Tensor) -> list[dict[str, Any]]:
        boxes, scores, labels = dets["boxes"][keep], dets["scores"][keep], dets["labels"][keep]
        return [
            {"class": names[int(c)], "score": round(float(s), 4), "box": [round(v, 4) for v in b.tolist()]}
            for b, s, c in zip(boxes, scores, labels, strict=True)
        ]

    if result.after_nms is not None:
        out["before_nms"] = rows(result.before_nms, torch.ones_like(result.before_nms["scores"], dtype=torch.bool))
        out["detections"] = rows(result.after_nms, result.after_nms["scores"] >= result.threshold)
    return out


class ExplainPictures(pl.Callback):
    """Log ``explain``'s pictures of one validation picture every ``every_n_epochs`` epochs."""

    def __init__(self, every_n_epochs: int, picture: int = 0) -> None:
        if isinstance(every_n_epochs, bool) or not isinstance(every_n_epochs, int) or every_n_epochs < 1:
            raise ConfigError(
                f"callbacks.explain.every_n_epochs must be a whole number >= 1 (or null: off), got {every_n_epochs!r}."
            )
        self.every_n_epochs, self.picture = every_n_epochs, picture

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        from tinyssd.pipeline.loggers import log_image

        if trainer.sanity_checking or not trainer.is_global_zero or (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        dataset = (getattr(trainer.datamodule, "datasets", None) or {}).get("val")
        if dataset is None or not len(dataset):
            return
        image, labels = dataset[min(self.picture, len(dataset) - 1)]
        image = image if image.dtype == torch.uint8 else (image.clamp(0, 1) * 255).round().to(torch.uint8)
        was_training = pl_module.training
        result = explain(
            image.cpu(), pl_module.net, labels.cpu(), assigner=pl_module.hparams.get("assigner", "max_iou"),
            atss_topk=pl_module.hparams.get("atss_topk", 9), module=pl_module,
        )  # fmt: skip
        pl_module.train(was_training)
        for name, picture in figures(result, list(pl_module.class_names)).items():
            log_image(trainer.loggers, f"explain/{name.removesuffix('.png')}", picture, trainer.global_step)


def explain_callback(every_n_epochs: int | None = None, picture: int = 0) -> ExplainPictures | None:
    """``callbacks.explain``: the callback, or ``None`` (off) while ``every_n_epochs`` is null."""
    return None if every_n_epochs is None else ExplainPictures(every_n_epochs, picture)
