"""``tinyssd check`` (``check.py``): a data set's report before training, and ``anchors=auto`` for a run.

The report (console table, ``check.json`` and ``check.png`` in the run folder) says per split
what :mod:`tinyssd.data.survey` counts, lists identical pictures within and across splits, and
sets the anchors against the training boxes: the recall each layout can reach (the share of
objects whose best anchor has IoU >= 0.5, per size bucket) for the chapter's preset, ``small``,
``dense``, the configured anchors when they differ, and ``auto`` (fitted by
:func:`tinyssd.model.anchor_fit.fit_anchors`).

``anchors=auto`` sets ``model.net.sizes`` and ``model.net.ratios`` to ``auto``; training then
fits them to its training boxes (:func:`fit_run_anchors`) and writes the numbers into the run's
``config.yaml`` and checkpoint, so eval, predict and export never refit.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict
from torch import Tensor

from tinyssd.data.index import SPLITS, DetectionIndex
from tinyssd.data.survey import canvas_boxes, duplicate_pictures, split_summary
from tinyssd.errors import ConfigError, DataError
from tinyssd.files import atomic_write_bytes
from tinyssd.model.anchor_fit import SIZE_BUCKETS, AnchorFit, best_anchor_iou, fit_anchors, reachable_recall
from tinyssd.model.net import feature_map_shapes
from tinyssd.pipeline.builders import build, container, save_config
from tinyssd.resize import STRETCH

log = logging.getLogger("tinyssd")

__all__ = ["ANCHOR_PRESETS", "AUTO", "check_data", "fit_run_anchors", "preset_anchors"]

AUTO = "auto"
# The presets of the package's conf/anchors/ (commands.CONFIG_DIR) the report compares (auto is fitted).
PRESET_DIR = Path(__file__).resolve().parents[1] / "conf" / "anchors"
ANCHOR_PRESETS = ("chapter", "small", "dense")
# The fit's settings (anchor_fit.* in conf/anchors/auto.yaml), with their defaults.
FIT_KEYS = {"sizes_per_scale": 2, "ratios_per_scale": 3, "generations": 300, "seed": 0}


def preset_anchors(name: str) -> tuple[list[list[float]], list[list[float]]]:
    """``(sizes, ratios)`` of a preset in the package's ``conf/anchors/``."""
    net = OmegaConf.load(PRESET_DIR / f"{name}.yaml").model.net
    return OmegaConf.to_container(net.sizes), OmegaConf.to_container(net.ratios)


def _fit_settings(cfg: DictConfig) -> dict[str, int]:
    given = container(cfg.get("anchor_fit")) or {}
    unknown = sorted(set(given) - set(FIT_KEYS))
    if unknown:
        raise ConfigError(
            f"anchor_fit.{unknown[0]} is not a setting of the anchor fit; they are {', '.join(FIT_KEYS)}."
        )
    settings = {**FIT_KEYS, **given}
    for key, value in settings.items():
        low = 0 if key in ("generations", "seed") else 1
        if isinstance(value, bool) or not isinstance(value, int) or value < low or value > 100_000:
            raise ConfigError(f"anchor_fit.{key} must be a whole number from {low} to 100000, got {value!r}.")
    return settings


def _grids(cfg: DictConfig) -> list[tuple[int, int]]:
    size = int(cfg.data.image_size)
    return feature_map_shapes(size, size, len(cfg.model.net.get("base_channels") or (16, 32, 64)))


def _canvas_boxes(cfg: DictConfig, index: DetectionIndex) -> Tensor:
    return canvas_boxes(index, int(cfg.data.image_size), cfg.data.get("resize", STRETCH))[0]


def _fit(cfg: DictConfig, boxes: Tensor) -> AnchorFit:
    """Anchors fitted to the training ``boxes (N, 4)`` on the canvas."""
    if not len(boxes):
        raise DataError("anchors=auto fits the anchors to the training boxes, but the train split has no object.")
    settings = _fit_settings(cfg)
    return fit_anchors(boxes, _grids(cfg), starts=[preset_anchors("chapter")], **settings)


def fit_run_anchors(cfg: DictConfig, datamodule: Any, checkpoint_net: dict | None = None) -> None:
    """Replace ``auto`` anchors in ``cfg.model.net`` by numbers: a resumed run's (``checkpoint_net``), else fitted."""
    net = cfg.model.net
    if net.get("sizes") != AUTO and net.get("ratios") != AUTO:
        return
    if net.get("sizes") != AUTO or net.get("ratios") != AUTO:
        raise ConfigError(
            "anchors=auto fits model.net.sizes and model.net.ratios together; set both to auto or neither."
        )
    if checkpoint_net is not None:
        sizes, ratios, note = checkpoint_net["sizes"], checkpoint_net["ratios"], "the resumed checkpoint's"
    else:
        fit = _fit(cfg, _canvas_boxes(cfg, datamodule.read_split("train")))
        sizes, ratios = fit.sizes, fit.ratios
        note = f"fitted to the training boxes: reachable recall {fit.recall:.3f}, mean best IoU {fit.mean_iou:.3f}"
    with open_dict(cfg):
        cfg.model.net.sizes, cfg.model.net.ratios = sizes, ratios
    log.info(f"anchors=auto ({note}): model.net.sizes={sizes} model.net.ratios={ratios}")


def _anchor_rows(cfg: DictConfig, boxes: dict[str, Tensor]) -> dict[str, dict]:
    """Per anchor layout, the recall it can reach on each split's ``boxes`` (canvas-normalised)."""
    size, grids = int(cfg.data.image_size), _grids(cfg)
    layouts = {name: preset_anchors(name) for name in ANCHOR_PRESETS}
    configured = (container(cfg.model.net.get("sizes")), container(cfg.model.net.get("ratios")))
    if AUTO not in configured and configured not in layouts.values():
        layouts["configured"] = configured
    if "train" in boxes and len(boxes["train"]):
        fit = _fit(cfg, boxes["train"])
        layouts[AUTO] = (fit.sizes, fit.ratios)
    rows = {}
    for name, (sizes, ratios) in layouts.items():
        row: dict[str, Any] = {"sizes": sizes, "ratios": ratios}
        row["anchors_per_cell"] = [len(s) + len(r) - 1 for s, r in zip(sizes, ratios, strict=True)]
        for split, split_boxes in boxes.items():
            best, _ = best_anchor_iou(split_boxes, sizes, ratios, grids)
            row[split] = reachable_recall(split_boxes, best, size)
        rows[name] = row
    return rows


def check_data(cfg: DictConfig) -> dict[str, Any]:
    """The ``check`` command: build the data module, read every split, write and print the report."""
    datamodule = build(cfg.data, "data")
    indices = {split: datamodule.read_split(split) for split in SPLITS if datamodule.has_split(split)}
    size, resize = int(cfg.data.image_size), cfg.data.get("resize", STRETCH)
    boxes = {split: _canvas_boxes(cfg, index) for split, index in indices.items()}
    report: dict[str, Any] = {
        "class_names": datamodule.class_names,
        "image_size": size,
        "resize": resize,
        "splits": {split: split_summary(index, size, resize) for split, index in indices.items()},
        "duplicates": duplicate_pictures(indices),
        "anchors": _anchor_rows(cfg, boxes),
    }
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, output_dir / "config.yaml")
    atomic_write_bytes(output_dir / "check.json", json.dumps(report, indent=2, allow_nan=False).encode())
    from tinyssd.data.survey_figure import check_figure

    check_figure(report, boxes, output_dir / "check.png")
    log.info(f"{check_table(report)}\n  written: {output_dir / 'check.json'}, {output_dir / 'check.png'}")
    return report


def check_table(report: dict[str, Any]) -> str:
    """The report as plain text: splits, classes, duplicates, anchors."""
    splits = report["splits"]
    names = report["class_names"]
    width = max(14, *(len(n) + 2 for n in names))
    lines = ["  " + "".ljust(width) + "".join(f"{s:>10}" for s in splits)]
    for key in ("pictures", "objects", "empty_pictures", "border_objects", "ignored_objects"):
        lines.append(f"  {key:<{width}}" + "".join(f"{splits[s][key]:>10}" for s in splits))
    for name in names:
        lines.append(f"  {name:<{width}}" + "".join(f"{splits[s]['objects_per_class'][name]:>10}" for s in splits))
    for split, summary in splits.items():
        q = summary["box_side_px"]
        if q:
            lines.append(
                f"  {split} box side on the {report['image_size']} px canvas: "
                f"{q['min']}..{q['max']} px, median {q['median']}"
            )
    for kind, groups in report["duplicates"].items():
        label = "across splits" if kind == "across" else "within a split"
        lines.append(f"  identical pictures {label}: {len(groups)} group(s)")
        lines += [f"    {' = '.join(group)}" for group in groups[:10]]
    first = next(iter(splits))
    split = "train" if "train" in splits else first
    buckets = [*SIZE_BUCKETS, "all"]
    lines.append(f"  reachable recall on {split} (objects with an anchor at IoU >= 0.5), by box side on the canvas")
    lines.append(
        "  " + "anchors".ljust(12) + "per cell".ljust(10) + "".join(f"{b:>10}" for b in buckets) + "  mean IoU"
    )
    for name, row in report["anchors"].items():
        cells = "".join(
            "n/a".rjust(10) if row[split][b]["objects"] == 0 else f"{row[split][b]['recall']:>10.3f}" for b in buckets
        )
        mean = row[split]["all"]["mean_best_iou"]
        per_cell = "/".join(str(n) for n in sorted(set(row["anchors_per_cell"])))
        lines.append(f"  {name:<12}{per_cell:<10}{cells}  " + ("n/a" if mean is None else f"{mean:.3f}"))
    auto = report["anchors"].get(AUTO)
    if auto:
        lines.append(f"  auto: model.net.sizes={auto['sizes']} model.net.ratios={auto['ratios']}")
    return "\n".join(lines)
