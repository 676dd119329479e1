"""Shared fixtures: small banana-format datasets written to a temporary folder."""

from __future__ import annotations

import csv
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
import torch
from torchvision.io import write_png

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"

# Colours of the synthetic objects, one per class.
CLASS_COLOURS = [(255, 220, 0), (0, 120, 255), (220, 0, 60)]


def write_banana_split(
    split_dir: Path,
    num_images: int,
    objects_per_image: int | Sequence[int] = 1,
    image_size: tuple[int, int] = (64, 64),
    num_classes: int = 1,
    seed: int = 0,
) -> list[list[tuple[int, int, int, int, int]]]:
    """Write ``images/*.png`` and ``label.csv`` with coloured boxes on noise; return the boxes.

    Each object is a filled rectangle in its class colour; boxes do not overlap much.
    """
    gen = torch.Generator().manual_seed(seed)
    height, width = image_size
    (split_dir / "images").mkdir(parents=True, exist_ok=True)
    all_boxes = []
    with open(split_dir / "label.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["img_name", "label", "xmin", "ymin", "xmax", "ymax"])
        for i in range(num_images):
            count = objects_per_image if isinstance(objects_per_image, int) else objects_per_image[i]
            img = (torch.rand(3, height, width, generator=gen) * 80).to(torch.uint8)
            boxes = []
            for k in range(count):
                # Objects sit in separate vertical bands so they never overlap.
                band = width // max(count, 1)
                bw = int(band * 0.6)
                bh = int(height * (0.3 + 0.3 * torch.rand(1, generator=gen).item()))
                x1 = k * band + int((band - bw) * torch.rand(1, generator=gen).item())
                y1 = int((height - bh) * torch.rand(1, generator=gen).item())
                cls = int(torch.randint(num_classes, (1,), generator=gen))
                colour = torch.tensor(CLASS_COLOURS[cls], dtype=torch.uint8)[:, None, None]
                img[:, y1 : y1 + bh, x1 : x1 + bw] = colour
                boxes.append((cls, x1, y1, x1 + bw, y1 + bh))
                writer.writerow([f"{i}.png", cls, x1, y1, x1 + bw, y1 + bh])
            write_png(img, str(split_dir / "images" / f"{i}.png"))
            all_boxes.append(boxes)
    return all_boxes


@pytest.fixture
def make_banana_dir(tmp_path: Path) -> Callable[..., Path]:
    """Factory: a data_dir holding ``banana-detection/{bananas_train,bananas_val}``."""

    def make(
        num_train: int = 8,
        num_val: int = 4,
        objects_per_image: int = 1,
        image_size: tuple[int, int] = (64, 64),
        num_classes: int = 1,
        name: str = "data",
    ) -> Path:
        data_dir = tmp_path / name
        root = data_dir / "banana-detection"
        write_banana_split(root / "bananas_train", num_train, objects_per_image, image_size, num_classes, seed=1)
        write_banana_split(root / "bananas_val", num_val, objects_per_image, image_size, num_classes, seed=2)
        return data_dir

    return make


def real_data_dir() -> Path | None:
    """The real banana data: $TINYSSD_REAL_DATA, else ../shared/data beside the project."""
    env = os.environ.get("TINYSSD_REAL_DATA")
    candidate = Path(env) if env else SHARED_DATA
    return candidate if (candidate / "banana-detection" / "bananas_val" / "label.csv").is_file() else None


def run_train(args: list[str], cwd: Path = ROOT, timeout: int = 600, env: dict | None = None):
    """Run train.py in a subprocess; returns the CompletedProcess."""
    import subprocess

    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
    )
