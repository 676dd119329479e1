"""A checkpoint is data, never code: crafted checkpoints are refused before anything runs.

Each crafted file names a callable with a side effect (a file written) in one of the specs a
checkpoint carries. Every command that loads a checkpoint must refuse it with one paragraph,
and the side effect must not have happened.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
import torch
from helpers import run_predict, run_train, write_banana_dataset

from tinyssd import CheckpointError, ConfigError, Detector, TinySSDModule
from tinyssd.model.checkpoints import load_checkpoint, load_module


def _checkpoint(module: TinySSDModule) -> dict:
    """What Lightning writes, reduced to the parts tinyssd reads."""
    import lightning

    return {
        "pytorch-lightning_version": lightning.__version__,
        "epoch": 0,
        "global_step": 0,
        "state_dict": module.state_dict(),
        "hyper_parameters": copy.deepcopy(dict(module.hparams)),
    }


@pytest.fixture(scope="module")
def genuine() -> dict:
    module = TinySSDModule(
        net={"_target_": "tinyssd.model.net.TinySSD", "num_classes": 1},
        loss={"_target_": "tinyssd.model.loss.MultiBoxLoss"},
        optimizer={"_target_": "torch.optim.SGD", "lr": 0.2},
        scheduler={"_target_": "tinyssd.model.schedules.warmup_cosine", "max_epochs": 4},
        class_names=["banana"],
        image_size=64,
        channels_last=False,
    )
    return _checkpoint(module)


def _payloads(marker: Path) -> dict[str, object]:
    """Specs whose construction writes ``marker`` (each does under plain hydra.utils.instantiate)."""
    writes = {"_target_": "builtins.open", "file": str(marker), "mode": "w"}
    copies = {"_target_": "shutil.copyfile", "src": __file__, "dst": str(marker)}
    return {
        "net": writes,
        "loss": copies,
        "optimizer": {"_target_": "shutil.copyfile", "src": __file__, "dst": str(marker)},
        "scheduler": {"_target_": "builtins.open", "file": str(marker), "mode": "w"},
        "nested_in_net": {"_target_": "tinyssd.model.net.TinySSD", "num_classes": 1, "sizes": copies},
        "nested_in_loss": {"_target_": "tinyssd.model.loss.MultiBoxLoss", "cls_loss": writes},
        "hydra_args": {"_target_": "tinyssd.model.loss.MultiBoxLoss", "_args_": [writes]},
        "partial": {"_target_": "torch.optim.SGD", "_partial_": True, "lr": copies},
        "class_names": [writes],
        "module_path_alias": {"_target_": "torch.optim.sgd.os.system", "command": f"touch {marker}"},
    }


SLOT = {
    "net": "net",
    "loss": "loss",
    "optimizer": "optimizer",
    "scheduler": "scheduler",
    "nested_in_net": "net",
    "nested_in_loss": "loss",
    "hydra_args": "loss",
    "partial": "optimizer",
    "class_names": "class_names",
    "module_path_alias": "optimizer",
}


def _craft(genuine: dict, tmp_path: Path, kind: str) -> tuple[Path, Path]:
    marker = tmp_path / f"pwned_{kind}"
    ckpt = copy.deepcopy(genuine)
    ckpt["hyper_parameters"][SLOT[kind]] = _payloads(marker)[kind]
    path = tmp_path / f"crafted_{kind}.ckpt"
    torch.save(ckpt, path)
    return path, marker


@pytest.mark.parametrize("kind", list(SLOT))
def test_crafted_specs_are_refused_before_anything_runs(genuine, tmp_path, kind):
    path, marker = _craft(genuine, tmp_path, kind)
    # The file itself loads with weights_only=True: the danger is only in what it names.
    assert torch.load(path, weights_only=True)["hyper_parameters"]
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError):
        Detector.from_checkpoint(path)
    with pytest.raises(CheckpointError):
        load_module(path)
    # Lightning's own loader rebuilds through the same allowlist.
    with pytest.raises((ConfigError, ValueError, TypeError)):
        TinySSDModule.load_from_checkpoint(path, weights_only=True)
    assert not marker.exists()


def test_genuine_checkpoint_still_loads(genuine, tmp_path):
    path = tmp_path / "genuine.ckpt"
    torch.save(genuine, path)
    module = load_module(path)
    assert module.num_classes == 1 and module.class_names == ["banana"]
    assert Detector.from_checkpoint(path).image_size == 64


def test_unknown_hyperparameter_and_non_finite_weights_are_refused(genuine, tmp_path):
    extra = copy.deepcopy(genuine)
    extra["hyper_parameters"]["_instantiator"] = "builtins.exec"
    torch.save(extra, tmp_path / "extra.ckpt")
    with pytest.raises(CheckpointError, match="not options"):
        load_checkpoint(tmp_path / "extra.ckpt")
    nan = copy.deepcopy(genuine)
    first = next(k for k, v in nan["state_dict"].items() if v.is_floating_point())
    nan["state_dict"][first] = torch.full_like(nan["state_dict"][first], float("nan"))
    torch.save(nan, tmp_path / "nan.ckpt")
    with pytest.raises(CheckpointError, match="NaN or infinite weights"):
        load_module(tmp_path / "nan.ckpt")


@pytest.mark.slow
def test_entry_points_refuse_crafted_checkpoints(genuine, tmp_path):
    """predict.py, train.py train=false and resuming: exit 2, one paragraph, nothing written."""
    data_dir = write_banana_dataset(tmp_path / "data", num_train=4, num_val=2)
    image = next((data_dir / "banana-detection" / "bananas_val" / "images").iterdir())
    path, marker = _craft(genuine, tmp_path, "loss")
    result = run_predict([f"ckpt_path={path}", f"input={image}", f"output_dir={tmp_path / 'out'}"])
    assert result.returncode == 2, result.stderr[-2000:]
    assert "refused" in result.stderr and "Traceback" not in result.stderr
    path, marker2 = _craft(genuine, tmp_path, "optimizer")
    common = [f"data.data_dir={data_dir}", "data.image_size=64", f"paths.log_dir={tmp_path / 'logs'}"]
    for args in (["train=false", f"ckpt_path={path}"], [f"ckpt_path={path}", "trainer.max_epochs=1"]):
        result = run_train([*common, *args])
        assert result.returncode == 2, result.stderr[-2000:]
        assert "refused" in result.stderr and "Traceback" not in result.stderr
    assert not marker.exists() and not marker2.exists()


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"net": {"_target_": "tinyssd.model.net.TinySSD", "num_classes": 10**9}}, "num_classes"),
        ({"net": {"_target_": "tinyssd.model.net.TinySSD", "num_classes": 5000}}, "weights do not fit"),
        ({"image_size": 10**6}, "image_size"),
        ({"max_detections": 10**12}, "max_detections"),
        ({"input_scale": float("nan")}, "finite"),
    ],
)
def test_settings_that_would_allocate_absurdly_are_refused(genuine, tmp_path, change, needle):
    """A spec cannot make tinyssd allocate more than the file's own weights (the net is sized on 'meta')."""
    crafted = copy.deepcopy(genuine)
    crafted["hyper_parameters"].update(change)
    torch.save(crafted, tmp_path / "big.ckpt")
    with pytest.raises(CheckpointError, match=needle):
        load_module(tmp_path / "big.ckpt")


def test_absurdly_nested_settings_are_refused(genuine, tmp_path):
    crafted = copy.deepcopy(genuine)
    deep: list = []
    for _ in range(5000):
        deep = [deep]
    crafted["hyper_parameters"]["class_names"] = deep
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(50_000)  # pickling is recursive; unpickling is not
    try:
        torch.save(crafted, tmp_path / "deep.ckpt")
    finally:
        sys.setrecursionlimit(limit)
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(tmp_path / "deep.ckpt")


@pytest.mark.parametrize("content", [b"root:x:0:0:root:/root:/bin/bash\n", b"\x80\x02" + b"q" * 50, b""])
def test_arbitrary_bytes_are_not_a_checkpoint(tmp_path, content):
    (tmp_path / "x.ckpt").write_bytes(content)
    with pytest.raises(CheckpointError, match="not a loadable tinyssd checkpoint"):
        load_checkpoint(tmp_path / "x.ckpt")


@pytest.mark.slow
@pytest.mark.parametrize("entry", ["{run}/checkpoints/../../victim.txt", "s3://bucket/victim.ckpt"])
def test_callback_state_cannot_point_lightning_at_other_files(train_in_process, tmp_path, entry):
    """Resuming restores ModelCheckpoint's paths, which it may later delete: crafted ones are refused."""
    _, run = train_in_process("trainer.max_epochs=1")
    victim = tmp_path / "logs" / "train" / "victim.txt"
    victim.write_text("keep me")
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    for state in ckpt["callbacks"].values():
        state["kth_best_model_path"] = state["best_model_path"] = entry.format(run=run)
    torch.save(ckpt, run / "checkpoints" / "last.ckpt")
    with pytest.raises(CheckpointError, match="replace or delete a file outside the run"):
        train_in_process("trainer.max_epochs=3", f"ckpt_path={run}")
    assert victim.read_text() == "keep me"
