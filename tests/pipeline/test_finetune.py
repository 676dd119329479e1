"""init_from=CKPT: a new run from another run's weights (the class heads follow the data set)."""

from __future__ import annotations

import logging

import pytest
import torch
from helpers import WeightsAtStart, write_all_formats

from tinyssd.errors import CheckpointError, ConfigError
from tinyssd.model.checkpoints import load_checkpoint
from tinyssd.model.module import TinySSDModule
from tinyssd.pipeline.finetune import init_from_checkpoint


def _module(num_classes: int, **net) -> TinySSDModule:
    return TinySSDModule(net={"_target_": "tinyssd.model.net.TinySSD", "num_classes": num_classes, **net})


def _save(module: TinySSDModule, path):
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, path)
    return path


def test_matching_layers_load_and_the_class_heads_start_afresh(tmp_path):
    torch.manual_seed(0)
    source = _module(1)
    path = _save(source, tmp_path / "banana.ckpt")
    target = _module(3)
    fresh_cls = [h.weight.clone() for h in target.net.cls_heads]
    report = init_from_checkpoint(target, path)
    for key, value in source.net.state_dict().items():
        if ".cls_heads." not in f".{key}":
            assert torch.equal(target.net.state_dict()[key], value), key  # blocks, BN statistics, box heads
    for head, fresh in zip(target.net.cls_heads, fresh_cls, strict=True):
        assert torch.equal(head.weight, fresh) and head.weight.shape[0] != 0
    assert set(report.reinitialised) == {f"net.cls_heads.{i}.{p}" for i in range(5) for p in ("weight", "bias")}
    assert "cls_heads.0" in report.summary() and "detects 1 class(es)" in report.summary()
    assert "loaded blocks (84/84 tensors), bbox_heads (10/10 tensors); re-initialised cls_heads.0" in report.summary()


def test_same_class_count_loads_every_layer(tmp_path):
    source = _module(2)
    target = _module(2)
    report = init_from_checkpoint(target, _save(source, tmp_path / "a.ckpt"))
    assert not report.reinitialised and "every layer" in report.summary()
    assert all(torch.equal(v, source.net.state_dict()[k]) for k, v in target.net.state_dict().items())


def test_other_anchors_reinitialise_the_box_heads_too(tmp_path):
    source = _module(1)
    target = _module(1, sizes=[[0.2, 0.272, 0.14], [0.37, 0.447], [0.54, 0.619], [0.71, 0.79], [0.88, 0.961]])
    report = init_from_checkpoint(target, _save(source, tmp_path / "a.ckpt"))
    assert "net.bbox_heads.0.weight" in report.reinitialised and "net.bbox_heads.1.weight" in report.loaded


def test_a_checkpoint_of_which_no_block_fits_is_refused(tmp_path):
    source = _module(1, base_channels=[8, 16, 32], feature_channels=64)
    with pytest.raises(CheckpointError, match="none of its feature-block weights fit"):
        init_from_checkpoint(_module(1), _save(source, tmp_path / "a.ckpt"))


class _Boom:
    def __reduce__(self):
        return (print, ("code ran",))


def test_init_from_loads_through_the_checked_loader(tmp_path, capsys):
    """The file is a checkpoint like any other: a pickle with code in it is refused, nothing runs."""
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": _Boom(), "hyper_parameters": {}}, path)
    with pytest.raises(CheckpointError, match="refused"):
        init_from_checkpoint(_module(1), path)
    assert "code ran" not in capsys.readouterr().out


def test_freeze_backbone_trains_only_the_heads():
    module = TinySSDModule(net={"_target_": "tinyssd.model.net.TinySSD", "num_classes": 1}, freeze_backbone=True)
    trainable = {n for n, p in module.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(("net.cls_heads", "net.bbox_heads")) for n in trainable)
    module.train()
    assert not module.net.blocks.training and module.net.cls_heads.training  # BN statistics kept
    optimizer = module.configure_optimizers()
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(trainable)


def test_init_from_that_is_not_a_file_is_a_config_error(tmp_path):
    from helpers import compose_train

    from tinyssd.pipeline.preflight import check_config

    cfg = compose_train([f"init_from={tmp_path / 'none.ckpt'}"], tmp_path / "run")
    with pytest.raises(ConfigError, match=r"init_from=.* is not a checkpoint"):
        check_config(cfg)
    cfg = compose_train(["model.freeze_backbone=true"], tmp_path / "run")
    with pytest.raises(ConfigError, match="give init_from"):
        check_config(cfg)


@pytest.mark.slow
def test_init_from_a_one_class_checkpoint_trains_on_three_classes(train_in_process, tmp_path, caplog):
    """The acceptance test: a 1-class banana checkpoint onto a 3-class COCO set."""
    caplog.set_level(logging.INFO, logger="tinyssd")
    _, banana_run = train_in_process("trainer.max_epochs=1")
    (source_ckpt,) = (banana_run / "checkpoints").glob("epoch_*.ckpt")
    source = load_checkpoint(source_ckpt)["state_dict"]
    formats = write_all_formats(tmp_path / "formats")
    metrics, run = train_in_process(
        "data=coco",
        *formats["coco"],
        f"init_from={source_ckpt}",
        "trainer.max_epochs=2",
        "+callbacks.probe._target_=helpers.probes.WeightsAtStart",
    )
    at_start = WeightsAtStart.seen
    blocks = [k for k in at_start if k.startswith("blocks.")]
    assert blocks and all(torch.equal(at_start[k], source[f"net.{k}"]) for k in blocks)  # step 0: the source's
    assert at_start["cls_heads.0.weight"].shape[0] == 4 * (3 + 1)  # 4 anchors x (3 classes + background)
    assert torch.isfinite(torch.tensor(metrics["train/loss"]))
    (ckpt,) = (run / "checkpoints").glob("epoch_*.ckpt")
    trained = load_checkpoint(ckpt)
    assert trained["hyper_parameters"]["class_names"] == ["banana", "blue", "red"]
    assert not torch.equal(trained["state_dict"]["net.blocks.1.0.weight"], source["net.blocks.1.0.weight"])
    said = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("init_from="))
    assert "loaded blocks (84/84 tensors), bbox_heads (10/10 tensors); re-initialised cls_heads.0," in said, said
    assert "the checkpoint detects 1 class(es) ['banana'], this model 3" in said


@pytest.mark.slow
def test_frozen_backbone_keeps_the_source_weights_and_statistics(train_in_process, tmp_path):
    _, banana_run = train_in_process("trainer.max_epochs=1")
    (source_ckpt,) = (banana_run / "checkpoints").glob("epoch_*.ckpt")
    source = load_checkpoint(source_ckpt)["state_dict"]
    _, run = train_in_process(f"init_from={source_ckpt}", "model.freeze_backbone=true", "trainer.max_epochs=1")
    trained = load_checkpoint(next((run / "checkpoints").glob("epoch_*.ckpt")))["state_dict"]
    blocks = [k for k in source if k.startswith("net.blocks.")]
    assert any("running_mean" in k for k in blocks)
    assert [k for k in blocks if not torch.equal(trained[k], source[k])] == []
    assert not torch.equal(trained["net.cls_heads.0.weight"], source["net.cls_heads.0.weight"])
