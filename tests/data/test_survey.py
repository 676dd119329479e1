"""The data survey: boxes on the canvas, border objects, identical pictures, split counts."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torchvision.io import write_png

from tinyssd.data.index import DetectionIndex
from tinyssd.data.survey import border_objects, canvas_boxes, duplicate_pictures, split_summary


def index_of(files: list[Path], sizes: list[tuple[int, int]], labels: list[list[list[float]]]) -> DetectionIndex:
    return DetectionIndex(
        files=files,
        sizes=torch.tensor(sizes, dtype=torch.int64),
        labels=[torch.tensor(rows, dtype=torch.float32).reshape(-1, 5) for rows in labels],
        sources=[f"line {i + 2}" for i in range(len(files))],
        class_names=["banana", "blue"],
    )


def test_canvas_boxes_follow_the_resize_mode():
    # A 200x100 picture, letterboxed on 256: scaled to 256x128, centred 64 px down.
    index = index_of(
        [Path("a.png"), Path("b.png")],
        [(200, 100), (64, 64)],
        [[[1, 0, 0, 1, 1]], [[0, 0.25, 0.25, 0.5, 0.5], [-2, 0, 0, 1, 1]]],
    )
    boxes, classes = canvas_boxes(index, 256, "letterbox")
    torch.testing.assert_close(boxes, torch.tensor([[0.0, 0.25, 1.0, 0.75], [0.25, 0.25, 0.5, 0.5]]))
    assert classes.tolist() == [1, 0]  # the ignored object (class -2) is left out
    stretched, _ = canvas_boxes(index, 256, "stretch")
    torch.testing.assert_close(stretched[0], torch.tensor([0.0, 0.0, 1.0, 1.0]))


def test_border_objects_are_those_within_a_pixel_of_the_edge():
    index = index_of(
        [Path("a.png")],
        [(100, 50)],
        [[[0, 0.005, 0.2, 0.3, 0.6], [1, 0.4, 0.2, 0.6, 0.6], [1, 0.7, 0.1, 1.0, 0.5], [0, 0.3, 0.3, 0.4, 0.99]]],
    )
    found = border_objects(index)
    # x1 = 0.5 px (left edge), x2 = 100 px (right edge), y2 = 49.5 px (bottom edge); not the middle one.
    assert found == [
        "a.png (line 2): banana at [0, 10, 30, 30]",
        "a.png (line 2): blue at [70, 5, 100, 25]",
        "a.png (line 2): banana at [30, 15, 40, 50]",
    ]


def test_identical_pictures_within_and_across_splits(tmp_path: Path):
    pictures = [
        (torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(i)) * 255).to(torch.uint8) for i in range(3)
    ]
    names = {}
    for split, ids in {"train": (0, 1, 1), "val": (0, 2)}.items():
        for k, i in enumerate(ids):
            path = tmp_path / f"{split}_{k}.png"
            write_png(pictures[i], str(path))
            names.setdefault(split, []).append(path)
    indices = {split: index_of(files, [(8, 8)] * len(files), [[]] * len(files)) for split, files in names.items()}
    found = duplicate_pictures(indices)
    assert found["within"] == [[f"train: {tmp_path / 'train_1.png'}", f"train: {tmp_path / 'train_2.png'}"]]
    assert found["across"] == [[f"train: {tmp_path / 'train_0.png'}", f"val: {tmp_path / 'val_0.png'}"]]


def test_split_summary_counts():
    index = index_of(
        [Path("a.png"), Path("b.png"), Path("c.png")],
        [(64, 64)] * 3,
        [[[0, 0.1, 0.1, 0.5, 0.5], [0, 0.5, 0.5, 0.9, 0.9]], [], [[1, 0.25, 0.25, 0.75, 0.75], [-3, 0, 0, 1, 1]]],
    )
    summary = split_summary(index, 256, "stretch")
    assert summary["pictures"] == 3 and summary["objects"] == 3 and summary["ignored_objects"] == 1
    assert summary["objects_per_class"] == {"banana": 2, "blue": 1}
    assert summary["pictures_per_class"] == {"banana": 1, "blue": 1}
    assert summary["empty_pictures"] == 1
    assert summary["picture_sizes"] == {"64x64": 3}
    assert summary["box_side_px"]["min"] == pytest.approx(102.4) and summary["box_side_px"]["max"] == 128.0
