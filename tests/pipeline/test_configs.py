"""The Hydra configs compose, and every group option builds its object."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import ROOT, write_all_formats
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import OmegaConf, open_dict

from tinyssd import ConfigError
from tinyssd.pipeline.budget import prepare_budget
from tinyssd.pipeline.builders import build, build_module, resolve_precision
from tinyssd.pipeline.preflight import check_config

CONF = ROOT / "conf"


def _compose(tmp_path: Path, overrides: list[str] = ()):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=[*overrides], return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / "run")
        cfg.data.data_dir = str(tmp_path / "data")
        del cfg.hydra
    return cfg


def _options(group: str) -> list[str]:
    """The selectable options of a group (``_name.yaml`` files are shared parts, not options)."""
    return sorted(p.stem for p in (CONF / group).glob("*.yaml") if not p.stem.startswith("_"))


def test_default_is_the_chapter_recipe(tmp_path):
    cfg = _compose(tmp_path)
    assert cfg.trainer.max_epochs == 20 and cfg.data.batch_size == 32
    assert cfg.optimizer.lr == 0.2 and cfg.optimizer.weight_decay == 5e-4
    assert cfg.loss.cls_loss == "ce" and cfg.loss.bbox_loss == "l1" and cfg.loss.negative_mining_ratio is None
    assert cfg.scheduler is None
    assert (
        cfg.data.augment == "none" and cfg.data.mosaic == 0 and cfg.data.zoom_out == 1 and cfg.model.input_scale == 255
    )
    OmegaConf.resolve(cfg)
    module = build_module(cfg)
    anchors, _, _ = module(torch.zeros(1, 3, 256, 256, dtype=torch.uint8))
    assert anchors.shape == (1, 5444, 4)


@pytest.mark.parametrize(
    ("group", "option"),
    [
        (g, o)
        for g in (
            "data",
            "model",
            "loss",
            "optimizer",
            "scheduler",
            "trainer",
            "callbacks",
            "logger",
            "experiment",
            "debug",
        )
        for o in _options(g)
    ],
)
def test_every_group_option_composes_and_builds(tmp_path, group, option):
    extra: list[str] = []
    if (group, option) in (("data", "coco"), ("data", "voc"), ("data", "yolo")):
        extra = write_all_formats(tmp_path / "sets")[option][1:]  # where that format's files are
    if (group, option) == ("experiment", "multiclass"):
        write_all_formats(tmp_path / "data" / "multiclass")  # the layout of ../shared/data/multiclass
    cfg = _compose(tmp_path, [f"{group}={option}", *extra])
    OmegaConf.resolve(cfg)
    prepare_budget(cfg)  # as train does before its checks: a recipe with a time budget sets its epochs
    if cfg.trainer.accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        with pytest.raises(ConfigError, match=r"trainer\.accelerator=gpu but this machine has no usable CUDA GPU"):
            check_config(cfg)
        with open_dict(cfg):
            cfg.trainer.accelerator = "cpu"
    check_config(cfg)
    datamodule = instantiate(cfg.data)
    module = build_module(cfg, datamodule.class_names)
    optimizers = module.configure_optimizers()
    assert optimizers is not None
    for node in ("callbacks", "logger"):
        for spec in (cfg.get(node) or {}).values():
            # A factory may leave an optional callback out (callbacks.ema while its decay is null, callbacks.explain
            # while its every_n_epochs is).
            off = spec.get("decay", "set") is None or spec.get("every_n_epochs", "set") is None
            assert instantiate(spec) is not None or off
    with open_dict(cfg):
        cfg.trainer.precision = resolve_precision(cfg.trainer.precision, "cpu")
        if group == "trainer" and option in ("gpu", "ddp"):
            cfg.trainer.accelerator = "cpu"
            cfg.trainer.devices = 1
            cfg.trainer.strategy = "auto"
    build(cfg.trainer, "trainer", logger=False, enable_checkpointing=False)  # trainer.budget is tinyssd's


def test_command_line_anchor_overrides_and_mismatch(tmp_path):
    cfg = _compose(
        tmp_path, ["model.net.sizes=[[0.2],[0.4],[0.6],[0.8],[0.9]]", "model.net.ratios=[[1],[1],[1],[1],[1]]"]
    )
    OmegaConf.resolve(cfg)
    anchors, _, _ = build_module(cfg)(torch.zeros(1, 3, 256, 256))
    assert anchors.shape[1] == 5444 // 4
    bad = _compose(tmp_path, ["model.net.sizes=[[0.2],[0.4],[0.6],[0.8]]"])
    OmegaConf.resolve(bad)
    with pytest.raises(ConfigError, match=r"model\.net\.sizes has 4 scales"):
        build_module(bad)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optimizer.lr=0", "optimizer.lr"),
        ("data.batch_size=-1", "data.batch_size"),
        ("ckpt_path=/no/such.ckpt", "ckpt_path"),
        ("data.mosaic=1.5", "data.mosaic"),
        ("data.zoom_out=0.5", "data.zoom_out"),
        ("model.input_scale=0", "model.input_scale"),
    ],
)
def test_impossible_values_fail_before_training(tmp_path, override, message):
    cfg = _compose(tmp_path, [override])
    with pytest.raises(ConfigError, match=message):
        # What train() does before it writes or trains anything: the cross-group check, then
        # each component checks its own arguments as it is built.
        check_config(cfg)
        build(cfg.data, "data")
        build_module(cfg)


def test_precision_auto_resolves():
    assert resolve_precision("auto", "cpu") in ("bf16-mixed", "32-true")
    assert resolve_precision("16-mixed", "cpu") == "16-mixed"


def test_optuna_search_composes(tmp_path):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=["hparams_search=optuna"], return_hydra_config=True)
    assert cfg.hydra.sweeper._target_.endswith("OptunaSweeper")
    assert cfg.hydra.sweeper.direction == "maximize" and cfg.optimized_metric == "val/map"
    params = cfg.hydra.sweeper.params
    assert {"optimizer.lr", "loss.bbox_weight", "loss.negative_mining_ratio", "data.mosaic", "anchors"} <= set(params)


def test_optuna_search_space_holds_the_best_recipe():
    """The search can find the shipped best recipe: each of its values lies inside the space."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra_plugins.hydra_optuna_sweeper._impl import create_optuna_distribution_from_override

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        search = compose("train", overrides=["hparams_search=optuna"], return_hydra_config=True)
        best = compose("train", overrides=["experiment=best"])
    parser = OverridesParser.create()
    for key, space in search.hydra.sweeper.params.items():
        distribution = create_optuna_distribution_from_override(parser.parse_override(f"{key}={space}"))
        value = "small" if key == "anchors" else OmegaConf.select(best, key)
        assert distribution._contains(distribution.to_internal_repr(value)), (key, value, distribution)


def test_dense_anchor_preset_changes_anchor_count(tmp_path):
    cfg = _compose(tmp_path, ["anchors=dense"])
    OmegaConf.resolve(cfg)
    anchors, cls_preds, _ = build_module(cfg)(torch.zeros(1, 3, 256, 256))
    assert anchors.shape[1] == 1361 * 6 and cls_preds.shape[1] == anchors.shape[1]


def test_small_anchor_preset_adds_one_anchor_per_cell_on_the_finest_scale(tmp_path):
    cfg = _compose(tmp_path, ["anchors=small"])
    OmegaConf.resolve(cfg)
    anchors, cls_preds, _ = build_module(cfg)(torch.zeros(1, 3, 256, 256))
    # 32x32 cells x 5 on the finest scale, the chapter's 4 on 16x16 + 8x8 + 4x4 + 1x1 cells.
    assert anchors.shape[1] == 32 * 32 * 5 + (16 * 16 + 8 * 8 + 4 * 4 + 1) * 4 == 6468
    assert cls_preds.shape[1] == anchors.shape[1]


def test_best_experiment_is_the_documented_recipe(tmp_path):
    cfg = _compose(tmp_path, ["experiment=best"])
    OmegaConf.resolve(cfg)
    assert cfg.trainer.budget == 20 and cfg.trainer.max_epochs is None
    assert prepare_budget(cfg).budget_s == 1200 and cfg.trainer.max_epochs == -1  # the plan sets the epochs
    check_config(cfg)
    module = build_module(cfg)
    anchors, _, _ = module(torch.zeros(1, 3, 256, 256, dtype=torch.uint8))
    assert anchors.shape[1] == 6468  # anchors=small
    assert module.loss_fn.negative_mining_ratio == 10 and module.loss_fn.bbox_weight == 20
    assert module.loss_fn.iou_loss == "giou" and module.loss_fn.iou_weight == 2
    assert module.hparams.assigner == "atss" and module.hparams.optimizer["_target_"] == "torch.optim.AdamW"
    assert module.net.neck is not None
    data = instantiate(cfg.data)
    assert data.mosaic == 0.5 and data.zoom_out == 1.5 and data.train_transform is not None


def test_keys_by_their_old_names_get_the_new_name():
    from tinyssd.pipeline.cli import renamed_key_hints

    hints = renamed_key_hints(
        ["model.sizes=[[0.2]]", "+module.foo=1", "model.compile=true", "data=coco", "paths.data_dir=../shared/data"]
    )
    assert hints == [
        "model.sizes is now model.net.sizes (tinyssd train --help lists the main keys).",
        "module.foo is now model.foo (tinyssd train --help lists the main keys).",
        "paths.data_dir is now data.data_dir (tinyssd train --help lists the main keys).",
    ]


def test_optimizer_adamw_builds_adamw_with_its_settings(tmp_path):
    cfg = _compose(tmp_path, ["optimizer=adamw"])
    OmegaConf.resolve(cfg)
    optimizer = build_module(cfg).configure_optimizers()
    assert isinstance(optimizer, torch.optim.AdamW)
    assert optimizer.defaults["lr"] == 0.002 and tuple(optimizer.defaults["betas"]) == (0.9, 0.999)


def test_neck_and_assigner_are_config_choices_and_default_to_the_chapter(tmp_path):
    cfg = _compose(tmp_path)
    OmegaConf.resolve(cfg)
    module = build_module(cfg)
    assert module.net.neck is None and module.hparams.assigner == "max_iou"
    assert "neck" not in module.hparams and module.hparams.net["neck"] == "none"
    cfg = _compose(tmp_path, ["model.neck=fpn", "model.assigner=atss", "model.atss_topk=5"])
    OmegaConf.resolve(cfg)
    check_config(cfg)
    module = build_module(cfg)
    assert module.net.neck is not None and module.hparams.net["neck"] == "fpn"
    assert module.hparams.assigner == "atss" and module.hparams.atss_topk == 5
    for bad, message in (("model.neck=bifpn", "model.net.neck='bifpn'"), ("model.assigner=x", "model.assigner='x'")):
        cfg = _compose(tmp_path, [bad])
        OmegaConf.resolve(cfg)
        with pytest.raises(ConfigError, match=message):
            build_module(cfg)
