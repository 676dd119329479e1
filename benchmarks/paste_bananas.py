"""Make a banana-format test set on backgrounds of your choice, to measure generalisation.

The banana data set was made by pasting banana cut-outs onto crops of photographs, so a
model can learn its backgrounds and its banana positions. This script cuts the four bananas
out of the chapter's ``banana.jpg`` (colour mask inside their boxes), then pastes 1-3 of them,
randomly mirrored, rotated and scaled (32-75 px), anywhere on random square crops of the
background pictures you give, and writes ``OUT/banana-detection/{bananas_val,bananas_train}``
(the same pictures in both, so the data module loads it). Evaluate a checkpoint on it:

    python benchmarks/paste_bananas.py ../shared/data/banana.jpg BACKGROUND... --out /tmp/ood
    python train.py train=false ckpt_path=CKPT data.data_dir=/tmp/ood
"""

from __future__ import annotations

import argparse
import random
import shutil
from pathlib import Path

import torch
import torch.nn.functional as nnf
from torchvision.io import decode_image, write_png
from torchvision.transforms.v2 import functional as F

# The four bananas of the chapter's banana.jpg (256x256), with a margin: x1, y1, x2, y2.
BANANA_BOXES = ((128, 12, 188, 76), (109, 150, 171, 212), (19, 180, 81, 239), (172, 88, 235, 144))
IMAGE_SIZE = 256


def cutouts(picture: torch.Tensor) -> list[torch.Tensor]:
    """RGBA cut-outs ``(4, h, w)`` uint8 of the bananas in ``banana.jpg``."""
    out = []
    for x1, y1, x2, y2 in BANANA_BOXES:
        patch = picture[:, y1:y2, x1:x2]
        r, g, b = patch.int()
        mask = ((r > 120) & (g > 90) & (b < 0.8 * g) & (r - b > 50)).float()[None, None]
        mask = -nnf.max_pool2d(-nnf.max_pool2d(mask, 3, 1, 1), 3, 1, 1)  # close pin holes
        out.append(torch.cat([patch, (mask[0] * 255).to(torch.uint8)]))
    return out


def paste(canvas: torch.Tensor, cutout: torch.Tensor, taken: list[tuple[int, int, int, int]]) -> tuple | None:
    """Paste a mirrored/rotated/scaled cut-out at a free place; its tight box, or None."""
    if random.random() < 0.5:
        cutout = cutout.flip(-1)
    cutout = F.rotate(cutout, random.uniform(-180, 180), expand=True)
    ys, xs = (cutout[3] > 128).nonzero(as_tuple=True)
    cutout = cutout[:, ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    scale = random.uniform(32, 75) / max(cutout.shape[1:])
    h, w = (max(8, round(s * scale)) for s in cutout.shape[1:])
    cutout = F.resize(cutout, [h, w], antialias=True)
    for _ in range(20):
        px, py = random.randint(0, IMAGE_SIZE - w), random.randint(0, IMAGE_SIZE - h)
        if all(px + w <= a1 or a2 <= px or py + h <= b1 or b2 <= py for a1, b1, a2, b2 in taken):
            break
    else:
        return None
    alpha = cutout[3:].float() / 255
    region = canvas[:, py : py + h, px : px + w].float()
    canvas[:, py : py + h, px : px + w] = (alpha * cutout[:3].float() + (1 - alpha) * region).round().to(torch.uint8)
    ys, xs = (cutout[3] > 128).nonzero(as_tuple=True)
    return px + int(xs.min()), py + int(ys.min()), px + int(xs.max()) + 1, py + int(ys.max()) + 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("picture", type=Path, help="the chapter's banana.jpg")
    parser.add_argument("backgrounds", type=Path, nargs="+", help="background pictures (no bananas in them)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    random.seed(args.seed)
    pieces = cutouts(decode_image(str(args.picture))[:3])
    backgrounds = [decode_image(str(p))[:3] for p in args.backgrounds]
    split = args.out / "banana-detection" / "bananas_val"
    (split / "images").mkdir(parents=True, exist_ok=True)
    rows = ["img_name,label,xmin,ymin,xmax,ymax"]
    for i in range(args.count):
        background = random.choice(backgrounds)
        height, width = background.shape[-2:]
        side = int(random.uniform(0.4, 1.0) * min(height, width))
        y0, x0 = random.randint(0, height - side), random.randint(0, width - side)
        canvas = F.resize(background[:, y0 : y0 + side, x0 : x0 + side], [IMAGE_SIZE] * 2, antialias=True).clone()
        taken: list[tuple[int, int, int, int]] = []
        for _ in range(random.choice([1, 1, 2, 3])):
            box = paste(canvas, random.choice(pieces), taken)
            if box is not None:
                taken.append(box)
                rows.append(f"{i}.png,0,{box[0]},{box[1]},{box[2]},{box[3]}")
        write_png(canvas, str(split / "images" / f"{i}.png"))
    (split / "label.csv").write_text("\n".join(rows) + "\n")
    shutil.copytree(split, split.parent / "bananas_train", dirs_exist_ok=True)
    print(f"{args.count} pictures, {len(rows) - 1} bananas in {args.out}")


if __name__ == "__main__":
    main()
