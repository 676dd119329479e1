"""Detector API and predict.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import run_predict, train_tiny
from torchvision.io import decode_image, encode_jpeg, write_png

from tinyssd import CheckpointError, TinySSDModule
from tinyssd.deploy.detector import Detector
from tinyssd.model.checkpoints import load_checkpoint


class FixedBoxNet(torch.nn.Module):
    """A stand-in network that always predicts one known box: exercises the mapping exactly."""

    def __init__(self, box: tuple[float, float, float, float]):
        super().__init__()
        from tinyssd.model.net import TinySSD

        self.inner = TinySSD(num_classes=1)
        self.num_classes = 1
        self.box = torch.tensor(box)

    def forward(self, x):
        anchors, _, _ = self.inner(x)
        num = anchors.shape[1]
        # Anchor 0 becomes the box (zero offsets on an anchor equal to it); all else background.
        anchors = anchors.clone()
        anchors[0, 0] = self.box
        cls = torch.zeros(x.shape[0], num, 2)
        cls[..., 0] = 10.0
        cls[:, 0] = torch.tensor([-10.0, 10.0])
        return anchors, cls, torch.zeros(x.shape[0], 4 * num)


def _detector_with_box(box) -> Detector:
    module = TinySSDModule(image_size=128, class_names=["banana"], channels_last=False)
    module.net = FixedBoxNet(box)
    return Detector(module, threshold=0.5)


def test_boxes_map_back_to_original_pixels_non_square():
    det = _detector_with_box((0.25, 0.5, 0.75, 1.0))
    image = torch.zeros(3, 480, 640, dtype=torch.uint8)
    (out,) = det.predict([image])
    assert (out.width, out.height) == (640, 480)
    torch.testing.assert_close(out.boxes, torch.tensor([[160.0, 240.0, 480.0, 480.0]]))
    assert out.to_list()[0]["class_name"] == "banana"


def test_grayscale_rgba_and_jpeg_inputs(tmp_path):
    det = _detector_with_box((0.1, 0.1, 0.5, 0.5))
    gray = torch.randint(0, 255, (1, 50, 70), dtype=torch.uint8)
    rgba = torch.randint(0, 255, (4, 60, 40), dtype=torch.uint8)
    write_png(gray, str(tmp_path / "g.png"))
    from PIL import Image  # torchvision cannot encode RGBA PNGs

    Image.fromarray(rgba.permute(1, 2, 0).numpy(), mode="RGBA").save(tmp_path / "a.png")
    (tmp_path / "c.jpg").write_bytes(
        encode_jpeg(torch.randint(0, 255, (3, 90, 30), dtype=torch.uint8)).numpy().tobytes()
    )
    outs = det.predict([tmp_path / "g.png", tmp_path / "a.png", tmp_path / "c.jpg", gray, rgba])
    assert [(o.width, o.height) for o in outs] == [(70, 50), (40, 60), (30, 90), (70, 50), (40, 60)]
    assert all(len(o.boxes) == 1 for o in outs)


@pytest.fixture(scope="module")
def trained_ckpt(tmp_path_factory) -> Path:
    """A real (briefly trained) checkpoint from train.py."""
    run, _ = train_tiny(tmp_path_factory.mktemp("ckpt"), "trainer.max_epochs=1")
    return run / "checkpoints" / "last.ckpt"


_predict = run_predict


@pytest.mark.slow
def test_predict_folder_with_a_text_file(trained_ckpt, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    write_png(torch.randint(0, 255, (3, 64, 64), dtype=torch.uint8), str(folder / "one.png"))
    write_png(torch.randint(0, 255, (3, 80, 100), dtype=torch.uint8), str(folder / "two.png"))
    (folder / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    result = _predict([f"ckpt_path={trained_ckpt}", f"input={folder}", f"output_dir={out}", "threshold=0.0"])
    assert result.returncode == 0, result.stderr[-2000:]  # a note beside the pictures is no error
    assert sorted(p.name for p in out.glob("*_pred.png")) == ["one_pred.png", "two_pred.png"]
    assert (
        "error:" not in result.stderr
        and "skipped 1 file(s) that are not pictures or videos (notes.txt" in result.stdout
    )
    report = json.loads((out / "detections.json").read_text())
    assert len(report["images"]) == 2 and not report["errors"] and len(report["skipped"]) == 1
    assert decode_image(str(out / "two_pred.png")).shape == (3, 80, 100)


@pytest.mark.slow
def test_detector_equals_predict_json(trained_ckpt, tmp_path):
    image = tmp_path / "x.png"
    write_png(torch.randint(0, 255, (3, 70, 90), dtype=torch.uint8), str(image))
    out = tmp_path / "out"
    result = _predict([f"ckpt_path={trained_ckpt}", f"input={image}", f"output_dir={out}", "threshold=0.0"])
    assert result.returncode == 0, result.stderr[-2000:]
    (entry,) = json.loads((out / "detections.json").read_text())["images"]
    (dets,) = Detector.from_checkpoint(trained_ckpt, threshold=0.0).predict([image])
    assert entry["detections"] == dets.to_list() and len(dets.boxes) > 0


@pytest.mark.slow
def test_empty_folder_and_unmatched_glob(trained_ckpt, tmp_path):
    (tmp_path / "empty").mkdir()
    result = _predict([f"ckpt_path={trained_ckpt}", f"input={tmp_path / 'empty'}"])
    assert result.returncode == 2 and "empty names no pictures or videos;" in result.stderr
    result = _predict([f"ckpt_path={trained_ckpt}", f"input={tmp_path}/*.nothing"])
    assert result.returncode == 2 and "*.nothing' names no pictures or videos;" in result.stderr


@pytest.mark.slow
def test_wrong_checkpoints_are_refused(trained_ckpt, tmp_path):
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"definitely not a checkpoint")
    with pytest.raises(CheckpointError, match="not a loadable tinyssd checkpoint"):
        load_checkpoint(junk)
    other = tmp_path / "other.ckpt"
    torch.save({"state_dict": {}, "something": 1}, other)
    with pytest.raises(CheckpointError, match="not a tinyssd checkpoint"):
        load_checkpoint(other)
    ckpt = torch.load(trained_ckpt, weights_only=True)
    ckpt["hyper_parameters"]["net"]["num_classes"] = 3
    ckpt["hyper_parameters"]["class_names"] = ["a", "b", "c"]
    mixed = tmp_path / "mixed.ckpt"
    torch.save(ckpt, mixed)
    with pytest.raises(CheckpointError, match="weights do not fit the model"):
        Detector.from_checkpoint(mixed)
    with pytest.raises(CheckpointError, match="num_classes=2"):
        Detector.from_checkpoint(trained_ckpt, num_classes=2)
    result = _predict([f"ckpt_path={junk}", f"input={tmp_path}"])
    assert result.returncode == 2 and "Traceback" not in result.stderr


def test_unsafe_pickle_is_not_executed(tmp_path):
    evil = tmp_path / "evil.ckpt"
    marker = tmp_path / "pwned"

    class Boom:
        def __reduce__(self):
            return (Path.touch, (marker,))

    torch.save({"state_dict": Boom()}, evil)
    with pytest.raises(CheckpointError):
        load_checkpoint(evil)
    assert not marker.exists()


# ------------------------------------------------------------------ bad files and options (issue 12, point 9)


@pytest.mark.slow
def test_bad_files_are_named_and_skipped_the_rest_processed(trained_ckpt, tmp_path):
    import numpy as np
    from PIL import Image

    folder = tmp_path / "in"
    folder.mkdir()
    write_png(torch.randint(0, 255, (3, 64, 64), dtype=torch.uint8), str(folder / "a_good.png"))
    frames = [Image.new("RGB", (40, 30), c) for c in ("red", "blue")]
    frames[0].save(folder / "b_anim.gif", save_all=True, append_images=frames[1:])
    Image.fromarray(np.full((30, 40), 40000, dtype=np.uint16)).save(folder / "c_16bit.png")
    write_png(torch.randint(0, 255, (3, 50, 60), dtype=torch.uint8), str(folder / "d_good.png"))
    out = tmp_path / "out"
    # batch_size=2: the bad file shares a batch with a good one.
    result = _predict([f"ckpt_path={trained_ckpt}", f"input={folder}", f"output_dir={out}", "batch_size=2"])
    assert result.returncode == 1, result.stderr[-2000:]
    assert "Traceback" not in result.stderr and "b_anim.gif has 2 frames" in result.stderr
    report = json.loads((out / "detections.json").read_text())
    assert [Path(e["path"]).name for e in report["images"]] == ["a_good.png", "c_16bit.png", "d_good.png"]
    assert [Path(e["path"]).name for e in report["errors"]] == ["b_anim.gif"]
    assert (out / "c_16bit_pred.png").is_file()


@pytest.mark.parametrize(
    ("options", "needle"),
    [
        ({"batch_size": -1}, "batch_size must be a whole number >= 1"),
        ({"batch_size": 0}, "batch_size must be a whole number >= 1"),
        ({"batch_size": 2.5}, "batch_size must be a whole number"),
        ({"threshold": 1.5}, "threshold must be a number in [0, 1]"),
        ({"threshold": -0.1}, "threshold must be a number in [0, 1]"),
        ({"threshold": "abc"}, "threshold must be a number in [0, 1], got 'abc'"),
        ({"threshold": float("nan")}, "threshold must be a number in [0, 1]"),
        ({"nms_threshold": 2}, "nms_threshold must be a number in [0, 1] or null"),
        ({"num_classes": 0}, "num_classes must be a whole number >= 1 or null"),
        ({"device": "cuda:7" if torch.cuda.is_available() else "cuda"}, "no such CUDA GPU"),
        ({"device": "tpu"}, "not a device name"),
    ],
)
def test_predict_options_are_checked_first(options, needle):
    from omegaconf import OmegaConf

    from tinyssd import ConfigError
    from tinyssd.deploy.prediction import check_predict_options

    cfg = OmegaConf.create(
        {"ckpt_path": "x.ckpt", "input": "x.png", "threshold": 0.9, "nms_threshold": None, "output_dir": None}
        | {"device": "auto", "batch_size": 16, "num_classes": None}
        | options
    )
    with pytest.raises(ConfigError) as err:
        check_predict_options(cfg)
    assert needle in str(err.value)


def test_output_dir_that_is_a_file_or_cannot_be_made(tmp_path):
    from tinyssd import ConfigError
    from tinyssd.deploy.prediction import prepare_output_dir

    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        prepare_output_dir(tmp_path / "file")
    with pytest.raises(ConfigError, match="cannot be created"):
        prepare_output_dir(tmp_path / "file" / "below")
    assert prepare_output_dir(tmp_path / "new" / "deep").is_dir()


@pytest.mark.slow
def test_predict_bad_options_exit_2_in_one_paragraph(trained_ckpt, tmp_path):
    image = tmp_path / "x.png"
    write_png(torch.randint(0, 255, (3, 40, 40), dtype=torch.uint8), str(image))
    (tmp_path / "afile").write_text("x")
    for args, needle in (
        (["threshold=abc"], "threshold must be"),
        ([f"output_dir={tmp_path / 'afile'}"], "is a file"),
        ([f"ckpt_path={trained_ckpt.parent}"], "is a folder; give one of its checkpoint files"),
    ):
        result = _predict([f"ckpt_path={trained_ckpt}", f"input={image}", *args])
        assert result.returncode == 2, result.stderr[-2000:]
        assert needle in result.stderr and "Traceback" not in result.stderr


def test_non_checkpoint_files_get_our_words_not_torchs(tmp_path):
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"\x80\x02}q\x00.garbage" * 10)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(junk)
    assert "weights_only" not in str(err.value).replace("weights_only=True", "")
    truncated = tmp_path / "truncated.ckpt"
    torch.save({"w": torch.ones(1000)}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:500])
    with pytest.raises(CheckpointError, match="truncated, corrupt or another kind of file"):
        load_checkpoint(truncated)


def test_odd_file_names_and_empty_files(tmp_path):
    """A name that is not valid UTF-8 is read and written; an empty file is named and skipped."""
    import os

    from tinyssd.deploy.prediction import predict_files

    folder = tmp_path / "in"
    folder.mkdir()
    write_png(torch.randint(0, 255, (3, 40, 40), dtype=torch.uint8), str(folder / "x.png"))
    odd = os.fsdecode(os.fsencode(folder) + b"/\xff\xfe.png")
    os.rename(folder / "x.png", odd)
    (folder / "empty.png").write_bytes(b"")
    entries, errors = predict_files(
        _detector_with_box((0.1, 0.1, 0.5, 0.5)), sorted(folder.iterdir()), tmp_path / "out"
    )
    assert [e["path"] for e in entries] == [odd] and Path(entries[0]["annotated"]).is_file()
    assert len(errors) == 1 and "empty.png is empty" in errors[0]["error"]
