"""Augmentation on the device (whole batches) draws what the loader's per-picture path draws.

Each transform's statistics in both placements, on fixed seeds: flip rate, the brightness,
contrast and saturation moments, the zoom-out scale distribution, the mosaic split positions;
and boxes that follow the pixels exactly.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torchvision.transforms.v2 import functional as TF

from tinyssd import BananaDataModule
from tinyssd.data.augment import MOSAIC_CENTER, build_augment
from tinyssd.data.batch_augment import BatchAugment, adjust_colours
from tinyssd.errors import ConfigError

SIZE = 64
N = 1200  # pictures per placement: a share's standard error is 0.014


def _labels(n: int, boxes: list[list[float]]) -> torch.Tensor:
    """The same normalised rows (class, x1, y1, x2, y2) for ``n`` pictures."""
    return torch.tensor(boxes, dtype=torch.float32).expand(n, -1, -1).clone()


def _loader(kind: str, image: torch.Tensor, labels: torch.Tensor, zoom_out: float = 1.0, n: int = N):
    """``n`` pictures through the loader's per-picture augmentation."""
    aug = build_augment(kind, SIZE, zoom_out)
    outs = [aug(image, labels) for _ in range(n)]
    return torch.stack([o[0] for o in outs]), torch.stack([o[1] for o in outs])


def _close(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    """Means within 4 standard errors of their difference, spreads within 15%."""
    a, b = a.double(), b.double()
    se = (a.var() / len(a) + b.var() / len(b)).sqrt()
    assert abs(a.mean() - b.mean()) <= 4 * se + 1e-9, f"{what}: means {a.mean():.4f} vs {b.mean():.4f}"
    assert abs(a.std() - b.std()) <= 0.15 * max(a.std(), b.std()) + 1e-9, f"{what}: spread {a.std()} vs {b.std()}"


def test_colour_steps_equal_torchvisions():
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (8, 3, 40, 40), dtype=torch.uint8, generator=gen)
    b, c, s = 0.875 + 0.25 * torch.rand(8, generator=gen), 0.5 + torch.rand(8, generator=gen), torch.rand(8) + 0.5
    out = adjust_colours(images.float(), b, c, s)
    ref = torch.stack(
        [
            TF.adjust_saturation(TF.adjust_contrast(TF.adjust_brightness(im, float(bi)), float(ci)), float(si))
            for im, bi, ci, si in zip(images, b, c, s, strict=True)
        ]
    )
    diff = (out - ref.float()).abs()
    assert diff.max() <= 1 and (diff > 0).float().mean() < 1e-3  # float rounding, a unit here and there


def test_flip_rate_matches_the_loader():
    torch.manual_seed(1)
    image = torch.zeros(3, SIZE, SIZE, dtype=torch.uint8)
    image[:, :, : SIZE // 2] = 200  # bright left half: a flipped picture is bright on the right
    labels = _labels(1, [[0, 0.1, 0.2, 0.3, 0.4]])[0]
    loader_images, loader_labels = _loader("flip", image, labels)
    device_images, device_labels = BatchAugment("flip")(
        image.expand(N, -1, -1, -1).clone(), _labels(N, labels.tolist())
    )
    for images, rows in ((loader_images, loader_labels), (device_images, device_labels)):
        flipped = images[:, 0, 0, -1] > 100
        assert abs(flipped.float().mean() - 0.5) < 4 * 0.5 / N**0.5
        # The box follows: mirrored exactly when the picture is.
        expected = torch.where(flipped[:, None], torch.tensor([0.7, 0.2, 0.9, 0.4]), torch.tensor([0.1, 0.2, 0.3, 0.4]))
        assert torch.allclose(rows[:, 0, 1:], expected, atol=1e-6)
    _close((loader_images[:, 0, 0, -1] > 100).float(), (device_images[:, 0, 0, -1] > 100).float(), "flip rate")


def test_brightness_contrast_saturation_moments_match_the_loader():
    torch.manual_seed(2)
    gen = torch.Generator().manual_seed(0)
    # Saturated colour blocks on a mid-grey ramp: every one of the three changes shows in a statistic.
    image = (torch.arange(SIZE).float() * 2 + 60).expand(3, SIZE, SIZE).clone()
    image[0, :20, :20], image[2, 30:50, 10:40] = 250, 230
    image = (image + torch.rand(3, SIZE, SIZE, generator=gen) * 20).to(torch.uint8)
    labels = _labels(1, [[0, 0.1, 0.2, 0.3, 0.4]])[0]
    n = 2 * N  # a mixture of eight cases (each step on or off): its mean varies more than most
    device_images, _ = BatchAugment("light")(image.expand(n, -1, -1, -1).clone(), _labels(n, labels.tolist()))
    loader_images, _ = _loader("light", image, labels, n=n)

    def statistics(images: torch.Tensor) -> dict[str, torch.Tensor]:
        x = images.float()
        grey = x.mean(1)
        return {
            "brightness (mean)": grey.mean((1, 2)),
            "contrast (grey spread)": grey.flatten(1).std(1),
            # Contrast scales both spreads alike; saturation the channels' only.
            "saturation (channel over grey spread)": (x.max(1).values - x.min(1).values).mean((1, 2))
            / grey.flatten(1).std(1),
        }

    loader, device = statistics(loader_images), statistics(device_images)
    for name in loader:
        _close(loader[name], device[name], name)
    for images in (loader_images, device_images):  # each of the three steps and the flip skipped half the time
        assert abs((images == image).flatten(1).all(1).float().mean() - 1 / 16) < 0.025


def test_zoom_out_scale_distribution_matches_the_loader():
    torch.manual_seed(3)
    image = torch.full((3, SIZE, SIZE), 250, dtype=torch.uint8)
    labels = _labels(1, [[0, 0.0, 0.0, 1.0, 1.0]])[0]  # the object fills the picture
    _, loader_labels = _loader("none", image, labels, zoom_out=1.5)
    _, device_labels = BatchAugment("none", zoom_out=1.5)(
        image.expand(N, -1, -1, -1).clone(), _labels(N, labels.tolist())
    )
    scales = {}
    for name, rows in (("loader", loader_labels), ("device", device_labels)):
        width = rows[:, 0, 3] - rows[:, 0, 1]
        zoomed = width < 1 - 1e-6
        assert abs(zoomed.float().mean() - 0.5) < 4 * 0.5 / N**0.5, name
        scale = 1 / width[zoomed]  # the canvas side over the picture's: int(S r) / S, r ~ U(1, 1.5)
        assert scale.min() >= 1 and scale.max() <= 1.5 + 1e-6, name
        slack = (1 - width[zoomed]) + 1e-6  # where the picture sits on the canvas: uniform over the slack
        scales[name] = (
            scale,
            rows[zoomed, 0, 1] / slack,
            rows[zoomed, 0, 2] / (1 - (rows[zoomed, 0, 4] - rows[zoomed, 0, 2]) + 1e-6),
        )
    for i, what in enumerate(("zoom-out scale", "left offset share", "top offset share")):
        _close(scales["loader"][i], scales["device"][i], what)


def test_zoomed_boxes_follow_the_pixels():
    torch.manual_seed(4)
    image = torch.full((8, 3, SIZE, SIZE), 40, dtype=torch.uint8)
    image[:, :, 16:48, 8:40] = 250
    labels = _labels(8, [[0, 8 / SIZE, 16 / SIZE, 40 / SIZE, 48 / SIZE], [-1] * 5])
    out, rows = BatchAugment("flip", zoom_out=2.0)(image, labels)
    assert (rows[:, 1] == -1).all()  # padding stays padding
    for picture, row in zip(out, rows[:, 0], strict=True):
        mask = picture[0] > 145  # half-way between object and background
        ys, xs = mask.nonzero(as_tuple=True)
        x1, y1, x2, y2 = (row[1:] * SIZE).tolist()
        assert abs(xs.min() - x1) <= 1 and abs(xs.max() + 1 - x2) <= 1
        assert abs(ys.min() - y1) <= 1 and abs(ys.max() + 1 - y2) <= 1


def _coded_pictures(count: int) -> torch.Tensor:
    """Pictures whose pixels say where they come from: (picture id * 20, x, y)."""
    axis = torch.arange(SIZE, dtype=torch.uint8)
    images = torch.empty(count, 3, SIZE, SIZE, dtype=torch.uint8)
    images[:, 0] = (torch.arange(count, dtype=torch.uint8) * 20)[:, None, None]
    images[:, 1], images[:, 2] = axis[None, None, :], axis[None, :, None]
    return images


def _split(picture: torch.Tensor) -> tuple[int, int] | None:
    """The mosaic's split point read off its pixels: where the source (picture, shift) changes."""
    code = picture.long()
    shift_x = code[1] - torch.arange(SIZE)[None, :]
    shift_y = code[2] - torch.arange(SIZE)[:, None]
    source = code[0] * 10**6 + (shift_x + SIZE) * 10**3 + (shift_y + SIZE)
    row, column = (source[0] != source[0, 0]).nonzero(), (source[:, 0] != source[0, 0]).nonzero()
    return (int(row[0]), int(column[0])) if len(row) and len(column) else None


def test_mosaic_split_positions_match_the_loader(make_banana_dir):
    torch.manual_seed(5)
    data_dir = make_banana_dir(num_train=8, num_val=2, image_size=(SIZE, SIZE))
    dm = BananaDataModule(data_dir=str(data_dir), image_size=SIZE, mosaic=1.0, augment_on="loader")
    dm.setup("fit")
    dataset = dm.datasets["train"]
    dataset.images = _coded_pictures(len(dataset))
    loader = [_split(dataset[i % len(dataset)][0]) for i in range(N)]
    # The device path through the data module: batches of pictures 0-3, the other quadrants drawn from all 8.
    on_device = BananaDataModule(data_dir=str(data_dir), image_size=SIZE, mosaic=1.0, augment_on="device")
    on_device.setup("fit")
    on_device.datasets["train"].images = dataset.images
    on_device.trainer = SimpleNamespace(training=True)
    batch = (dataset.images[:4].repeat(N // 4, 1, 1, 1), dataset.labels[:4].repeat(N // 4, 1, 1))
    device_images, _ = on_device.on_after_batch_transfer(batch, 0)
    device = [_split(picture) for picture in device_images]
    top_right = device_images[:, 0, 0, -1].long() // 20  # the picture the top-right quadrant came from
    assert abs((top_right >= 4).float().mean() - 0.5) < 0.06  # from the whole split, not only the batch
    lo, hi = (int(f * SIZE) for f in MOSAIC_CENTER)
    for name, splits in (("loader", loader), ("device", device)):
        read = [s for s in splits if s is not None]
        assert len(read) > 0.9 * N, name  # a quadrant from the same picture and shift hides a split rarely
        assert all(lo <= x <= hi and lo <= y <= hi for x, y in read), name
    for axis in (0, 1):
        loader_axis, device_axis = ([s[axis] for s in splits if s is not None] for splits in (loader, device))
        _close(torch.tensor(loader_axis).float(), torch.tensor(device_axis).float(), f"mosaic split {'xy'[axis]}")


PALETTE = torch.tensor([[150 + 8 * k, 255 - 8 * k, 200] for k in range(12)], dtype=torch.uint8)


def _pool(images: torch.Tensor, labels: torch.Tensor):
    def draw(n: int):
        picks = torch.randint(len(images), (n,))
        return images[picks], labels[picks]

    return draw


def test_flipped_mosaic_boxes_follow_the_pixels_exactly():
    """Each box is all of its object's colour, and the pixel lines just outside it are not."""
    torch.manual_seed(6)
    gen = torch.Generator().manual_seed(0)
    count = 12
    images = (torch.rand(count, 3, SIZE, SIZE, generator=gen) * 100).to(torch.uint8)
    labels = torch.full((count, 2, 5), -1.0)
    for k in range(count):  # one object per picture, of its own colour (class k), pixel-aligned
        x1, y1 = (int(v) for v in torch.randint(0, SIZE - 30, (2,), generator=gen))
        w, h = (int(v) for v in torch.randint(8, 30, (2,), generator=gen))
        images[k, :, y1 : y1 + h, x1 : x1 + w] = PALETTE[k][:, None, None]
        labels[k, 0] = torch.tensor([k, x1 / SIZE, y1 / SIZE, (x1 + w) / SIZE, (y1 + h) / SIZE])
    boxes_seen = 0
    for _ in range(20):
        pool = _pool(images, labels) if _ % 2 else None  # the other quadrants from the "split", or the batch
        out, rows = BatchAugment("flip", mosaic=0.7)(images, labels, pool=pool)
        assert rows.shape == (count, 8, 5)
        for picture, picture_rows in zip(out, rows, strict=True):
            objects = picture_rows[picture_rows[:, 0] >= 0].tolist()
            for i, (cls, *box) in enumerate(objects):
                x1, y1, x2, y2 = (v * SIZE for v in box)
                assert all(abs(v - round(v)) < 1e-4 for v in (x1, y1, x2, y2))  # whole pixels: nothing resampled
                x1, y1, x2, y2 = (round(v) for v in (x1, y1, x2, y2))
                colour = (picture == PALETTE[int(cls)][:, None, None]).all(0)
                assert colour[y1:y2, x1:x2].all()
                for j, (other, *near) in enumerate(objects):  # a copy of the object beside it (same picture twice)
                    if j != i and other == cls:
                        a1, b1, a2, b2 = (round(v * SIZE) for v in near)
                        colour[b1:b2, a1:a2] = False
                outside = [colour[y1:y2, x1 - 1] if x1 else None, colour[y1:y2, x2] if x2 < SIZE else None]
                outside += [colour[y1 - 1, x1:x2] if y1 else None, colour[y2, x1:x2] if y2 < SIZE else None]
                assert all(line.float().mean() <= 0.5 for line in outside if line is not None)
                boxes_seen += 1
    assert boxes_seen > 200


def _module(tmp_path, make_banana_dir, **kwargs) -> BananaDataModule:
    data_dir = tmp_path / "data"
    if not data_dir.exists():
        make_banana_dir(num_train=8, num_val=2, objects_per_image=2)
    return BananaDataModule(data_dir=str(data_dir), batch_size=4, image_size=SIZE, **kwargs)


def test_device_placement_moves_augmentation_out_of_the_loader(tmp_path, make_banana_dir):
    dm = _module(tmp_path, make_banana_dir, augment="light", mosaic=0.5, zoom_out=1.5, augment_on="device")
    dm.setup("fit")
    train = dm.datasets["train"]
    assert train.transform is None and train.mosaic == 0 and dm.batch_augment is not None
    images, labels = next(iter(dm.train_dataloader()))
    assert labels.shape == (4, 2, 5)  # plain pictures leave the loader
    dm.trainer = SimpleNamespace(training=True)
    torch.manual_seed(0)
    out_images, out_labels = dm.on_after_batch_transfer((images, labels), 0)
    assert out_images.shape == images.shape and out_images.dtype == torch.uint8 and out_labels.shape == (4, 8, 5)
    dm.trainer = SimpleNamespace(training=False)  # validation batches pass untouched
    assert dm.on_after_batch_transfer((images, labels), 0)[1] is labels


def test_placement_auto_is_the_loader_on_a_cpu_and_ssd_stays_there(tmp_path, make_banana_dir):
    dm = _module(tmp_path, make_banana_dir, augment="light", mosaic=0.5)
    dm.setup("fit")
    assert dm.augment_placement() == "loader" and dm.datasets["train"].transform is not None
    assert dm.batch_augment is None
    dm = _module(tmp_path, make_banana_dir, augment="ssd")
    dm.trainer = SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device("cuda")))
    assert dm.augment_placement() == "loader"  # its IoU crop runs per picture only
    with pytest.raises(ConfigError, match=r"data\.augment_on=loader"):
        _module(tmp_path, make_banana_dir, augment="ssd", augment_on="device")
    with pytest.raises(ConfigError, match=r"data\.augment_on"):
        _module(tmp_path, make_banana_dir, augment_on="gpu")


def test_pictures_stay_on_the_gpu_when_augmentation_runs_there(tmp_path, make_banana_dir):
    gpu = SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device("cuda", 0)))
    dm = _module(tmp_path, make_banana_dir, augment="light", mosaic=0.5, zoom_out=1.5)  # augment_on=auto
    dm.trainer = gpu
    assert dm.augment_placement() == "device" and dm._cache_device() == torch.device("cuda", 0)
    dm = _module(tmp_path, make_banana_dir, augment="light", augment_on="loader")
    dm.trainer = gpu
    assert dm._cache_device() is None  # per-picture augmentation reads them on the CPU


@pytest.mark.slow
def test_a_run_augments_on_the_device(train_in_process):
    metrics, run_dir = train_in_process(
        "data.augment=light", "data.mosaic=0.5", "data.zoom_out=1.5", "data.augment_on=device"
    )
    assert torch.isfinite(torch.tensor(metrics["train/loss"]))
    assert "augment_on: device" in (run_dir / "config.yaml").read_text()
