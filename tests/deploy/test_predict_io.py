"""What predict takes in (paths, tensors, PIL, NumPy; folders with other files, lists, videos) and writes out
(YOLO label files, crops, COCO results)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import run_predict
from PIL import Image
from torchvision.io import write_png

from tinyssd import Detector
from tinyssd.deploy.outputs import yolo_rows
from tinyssd.deploy.sources import expand_inputs
from tinyssd.errors import DataError


@pytest.fixture(scope="module")
def banana() -> Detector:
    """The shipped banana model, threshold 0: every kept box counts."""
    return Detector.load("banana", threshold=0.0)


def _scene(width: int = 120, height: int = 90, x: int = 20) -> torch.Tensor:
    """A gray picture with a yellow crescent 48 px wide (a banana to this model) from ``x``.

    A crescent, not a bar: the shipped model has learnt that a yellow rectangle is no banana.
    """
    img = torch.full((3, height, width), 60, dtype=torch.uint8)
    yy, xx = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    cx, cy, r = x + 24, height // 2, 24
    crescent = ((xx - cx) ** 2 + (yy - cy) ** 2 <= r * r) & ((xx - cx) ** 2 + (yy - cy + 10) ** 2 > r * r)
    img[:, crescent] = torch.tensor([230, 200, 40], dtype=torch.uint8)[:, None]
    return img


def test_pil_numpy_and_tensor_inputs_give_identical_detections(banana, tmp_path):
    tensor = _scene()
    array = tensor.permute(1, 2, 0).numpy()  # (H, W, C) RGB uint8, as PIL and imageio give
    pil = Image.fromarray(array)
    write_png(tensor, str(tmp_path / "scene.png"))
    floats = tensor.float() / 255
    results = banana.predict([tensor, array, pil, tmp_path / "scene.png", floats.permute(1, 2, 0).numpy()])
    assert len(results[0].boxes) > 0
    for other in results[1:]:
        torch.testing.assert_close(other.boxes, results[0].boxes)
        torch.testing.assert_close(other.scores, results[0].scores)
        assert other.labels.tolist() == results[0].labels.tolist() and (other.width, other.height) == (120, 90)
    # One picture alone (not in a list) is one result, whatever its type.
    assert len(banana.predict(pil)) == 1 and len(banana.predict(array)) == 1
    gray = banana.predict(np.asarray(pil.convert("L")))[0]
    assert (gray.width, gray.height) == (120, 90)
    with pytest.raises(DataError, match=r"NumPy picture \(H, W, C\) with 1, 3 or 4 channels"):
        banana.predict(np.zeros((2, 3, 4, 5), dtype=np.uint8))
    with pytest.raises(DataError, match=r"uint8 \(0..255\) or float"):
        banana.predict(np.zeros((8, 8, 3), dtype=np.int64))
    with pytest.raises(DataError, match="cannot read a picture from dict"):
        banana.predict([{"not": "a picture"}])


def test_sources_sort_pictures_videos_and_the_rest(tmp_path):
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    write_png(_scene(), str(folder / "a.png"))
    (folder / "clip.mp4").write_bytes(b"")
    (folder / "notes.txt").write_text("x")
    (folder / "broken.jpg").symlink_to(tmp_path / "missing.jpg")
    found = expand_inputs(folder)
    assert [p.name for p in found.images] == ["a.png"] and [p.name for p in found.videos] == ["clip.mp4"]
    reasons = {p.name: r for p, r in found.skipped}
    assert set(reasons) == {"notes.txt", "broken.jpg", "sub"} and "broken symbolic link" in reasons["broken.jpg"]
    # A list file: one path per line, relative to its folder; comments and blank lines skipped.
    listing = tmp_path / "list.txt"
    listing.write_text("# mine\nin/a.png\n\nin/clip.mp4\n")
    found = expand_inputs(listing)
    assert found.images == [tmp_path / "in" / "a.png"] and found.videos == [tmp_path / "in" / "clip.mp4"]
    listing.write_text("in/a.png\nin/gone.png\n")
    with pytest.raises(DataError, match=r"list.txt, line 2: in/gone.png does not exist"):
        expand_inputs(listing)
    only_text = tmp_path / "text"
    only_text.mkdir()
    (only_text / "readme.md").write_text("x")
    with pytest.raises(DataError, match=r"names no pictures or videos \(1 other file"):
        expand_inputs(only_text)


def test_yolo_rows_round_trip_through_the_yolo_reader(banana, tmp_path):
    from tinyssd.data.formats.yolo import YoloDataModule

    picture = _scene(160, 96)
    (dets,) = banana.predict([picture], threshold=0.02)
    assert len(dets.boxes) > 0
    (tmp_path / "images" / "val").mkdir(parents=True)
    (tmp_path / "labels" / "val").mkdir(parents=True)
    write_png(picture, str(tmp_path / "images" / "val" / "p.png"))
    (tmp_path / "labels" / "val" / "p.txt").write_text(yolo_rows(dets))
    (tmp_path / "data.yaml").write_text("train: images/val\nval: images/val\nnames: [banana]\n")
    module = YoloDataModule(yaml=str(tmp_path / "data.yaml"), image_size=64, batch_size=1)
    index = module.read_split("val")  # labels (G, 5): class, then xyxy normalised to the picture
    torch.testing.assert_close(index.labels[0][:, 0], dets.labels.float())
    scale = torch.tensor([160, 96, 160, 96], dtype=torch.float64)
    torch.testing.assert_close(index.labels[0][:, 1:].double() * scale, dets.boxes.double(), atol=2e-3, rtol=0)


def _video(path: Path, frames: int = 6, size: tuple[int, int] = (96, 80)) -> None:
    import av

    width, height = size
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for k in range(frames):  # the crescent moves right, frame by frame
            image = _scene(width, height, x=5 + 6 * k)
            frame = av.VideoFrame.from_ndarray(image.permute(1, 2, 0).contiguous().numpy(), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


def _frame_count(path: Path) -> int:
    import av

    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


@pytest.mark.slow
def test_a_video_gives_a_record_per_frame_and_an_annotated_video(tmp_path):
    _video(tmp_path / "clip.mp4")
    out = tmp_path / "out"
    args = ["model=banana", f"source={tmp_path / 'clip.mp4'}", "threshold=0.0", "save_txt=true"]
    result = run_predict([*args, f"output_dir={out}", "batch_size=4"])
    assert result.returncode == 0, result.stderr[-2000:]
    (video,) = json.loads((out / "detections.json").read_text())["videos"]
    assert [f["frame"] for f in video["frames"]] == list(range(6)) and video["fps"] == 10
    assert all((f["width"], f["height"]) == (96, 80) and f["time"] == f["frame"] / 10 for f in video["frames"])
    assert _frame_count(out / "clip_pred.mp4") == 6 and len(list((out / "labels").glob("clip_*.txt"))) == 6
    assert "clip.mp4" in result.stdout and "in 6 frame(s)" in result.stdout
    # vid_stride=2: frames 0, 2, 4, and a video of those three.
    result = run_predict([*args, f"output_dir={tmp_path / 'stride'}", "vid_stride=2"])
    (video,) = json.loads((tmp_path / "stride" / "detections.json").read_text())["videos"]
    assert [f["frame"] for f in video["frames"]] == [0, 2, 4] and _frame_count(
        tmp_path / "stride" / "clip_pred.mp4"
    ) == 3
    # A file named .mp4 that is no video: named, the rest processed, exit 1.
    (tmp_path / "clips").mkdir()
    (tmp_path / "clips" / "bad.mp4").write_bytes(b"not a video")
    write_png(_scene(), str(tmp_path / "clips" / "a.png"))
    result = run_predict(["model=banana", f"source={tmp_path / 'clips'}", f"output_dir={tmp_path / 'bad'}"])
    assert result.returncode == 1 and "bad.mp4 cannot be opened as a video" in result.stderr, result.stderr[-2000:]
    assert "Traceback" not in result.stderr and not list((tmp_path / "bad").glob("*.mp4*"))


@pytest.mark.slow
def test_a_folder_with_other_files_is_processed_and_they_are_counted(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    write_png(_scene(160, 96), str(folder / "one.png"))
    write_png(_scene(160, 96, x=40), str(folder / "two.png"))
    (folder / "notes.txt").write_text("not an image")
    (folder / "gone.png").symlink_to(tmp_path / "nowhere.png")
    out = tmp_path / "out"
    result = run_predict(["model=banana", f"source={folder}", f"output_dir={out}", "save_crops=true", "threshold=0.02"])
    assert result.returncode == 0, result.stderr[-2000:]
    assert "skipped 2 file(s) that are not pictures or videos (gone.png, notes.txt" in result.stdout
    report = json.loads((out / "detections.json").read_text())
    assert [Path(e["path"]).name for e in report["images"]] == ["one.png", "two.png"] and not report["errors"]
    assert {Path(s["path"]).name for s in report["skipped"]} == {"gone.png", "notes.txt"}
    crops = sorted(p.name for p in (out / "crops" / "0_banana").iterdir())
    kept = sum(len(e["detections"]) for e in report["images"])
    assert kept > 0 and len(crops) == kept
