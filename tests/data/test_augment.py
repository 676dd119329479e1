"""Augmentation keeps boxes on their objects."""

from __future__ import annotations

import pytest
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from tinyssd import BananaDataModule
from tinyssd.data.augment import MEAN_FILL, DetectionAugment, build_augment, mosaic
from tinyssd.errors import ConfigError

COLOUR = torch.tensor([250, 10, 200], dtype=torch.uint8)


def _picture(size=128):
    """Grey noise with one magenta rectangle; returns (image, labels)."""
    gen = torch.Generator().manual_seed(0)
    image = (torch.rand(3, size, size, generator=gen) * 60 + 60).to(torch.uint8)
    x1, y1, x2, y2 = 30, 40, 90, 100
    image[:, y1:y2, x1:x2] = COLOUR[:, None, None]
    labels = torch.tensor([[0, x1 / size, y1 / size, x2 / size, y2 / size], [-1, -1, -1, -1, -1]], dtype=torch.float32)
    return image, labels


def _is_object(pixels: torch.Tensor) -> torch.Tensor:
    return (pixels.float() - COLOUR.float()[:, None]).abs().max(dim=0).values < 12


def _check_box_encloses_object(image, labels):
    size = image.shape[-1]
    mask = _is_object(image.reshape(3, -1)).reshape(size, size)
    valid = labels[:, 0] >= 0
    if not mask.any():
        assert not valid.any()  # object cropped away: its row became padding
        return
    assert valid.sum() == 1
    ys, xs = mask.nonzero(as_tuple=True)
    x1, y1, x2, y2 = (labels[valid][0, 1:] * size).tolist()
    tol = 2.5  # resize blurs edges by a pixel or two
    assert x1 - tol <= xs.min() and xs.max() + 1 <= x2 + tol and y1 - tol <= ys.min() and ys.max() + 1 <= y2 + tol
    # ...and tightly: the box is mostly object.
    inside = mask[int(y1) + 2 : int(y2) - 2, int(x1) + 2 : int(x2) - 2]
    assert inside.float().mean() > 0.9


@pytest.mark.parametrize(
    "transform",
    [
        v2.RandomZoomOut(fill={tv_tensors.Image: MEAN_FILL, "others": 0}, side_range=(1.5, 3.0), p=1.0),
        v2.RandomIoUCrop(),
        v2.RandomHorizontalFlip(1.0),
    ],
    ids=["zoom_out", "iou_crop", "flip"],
)
def test_each_transform_keeps_the_box_on_the_object(transform):
    torch.manual_seed(0)
    image, labels = _picture()
    aug = DetectionAugment(v2.Compose([transform, v2.SanitizeBoundingBoxes(min_size=1)]), image_size=128)
    for _ in range(15):
        out_image, out_labels = aug(image, labels)
        assert out_image.shape == image.shape and out_image.dtype == torch.uint8 and out_labels.shape == labels.shape
        _check_box_encloses_object(out_image, out_labels)


def test_photometric_distortion_leaves_boxes_alone():
    torch.manual_seed(0)
    image, labels = _picture()
    aug = DetectionAugment(v2.RandomPhotometricDistort(p=1.0), image_size=128)
    changed = 0
    for _ in range(10):
        out_image, out_labels = aug(image, labels)
        torch.testing.assert_close(out_labels, labels)
        changed += int(not torch.equal(out_image, image))
    assert changed > 5


def test_ssd_pipeline_shapes_and_boxes():
    torch.manual_seed(1)
    aug = build_augment("ssd", 128)
    image, labels = _picture()
    for _ in range(20):
        out_image, out_labels = aug(image, labels)
        assert out_image.shape == (3, 128, 128) and out_labels.shape == (2, 5)
        valid = out_labels[:, 0] >= 0
        assert ((out_labels[valid, 1:] >= 0) & (out_labels[valid, 1:] <= 1)).all()
        assert (out_labels[valid, 3] > out_labels[valid, 1]).all()


def test_light_preset_keeps_boxes_up_to_a_mirror():
    torch.manual_seed(0)
    image, labels = _picture()
    aug = build_augment("light", 128)
    changed = 0
    for _ in range(10):
        out_image, out = aug(image, labels)
        mirrored = labels.clone()
        mirrored[0, [1, 3]] = 1 - labels[0, [3, 1]]
        assert torch.allclose(out, labels) or torch.allclose(out, mirrored)
        # Colours change but keep their hue: no channel swaps (magenta stays red > blue > green).
        r, g, b = out_image[:, 70, 64].int().tolist()
        assert r >= b > g
        changed += int(not torch.equal(out_image[:, 70, 64], COLOUR))
    assert changed >= 5


def _quad_pictures(size=100):
    """Four grey pictures, each with one magenta square at a different place."""
    places = [(5, 5, 25, 30), (60, 10, 90, 35), (10, 70, 40, 95), (70, 65, 95, 90)]
    images = torch.full((4, 3, size, size), 100, dtype=torch.uint8)
    labels = torch.full((4, 2, 5), -1.0)
    for i, (x1, y1, x2, y2) in enumerate(places):
        images[i, :, y1:y2, x1:x2] = COLOUR[:, None, None]
        labels[i, 0] = torch.tensor([0, x1 / size, y1 / size, x2 / size, y2 / size])
    return images, labels


@pytest.mark.parametrize("center", [(30, 30), (50, 50), (70, 40), (35, 70)])
def test_mosaic_keeps_every_object_whole_with_its_box(center):
    images, labels = _quad_pictures()
    gen = torch.Generator().manual_seed(0)
    for _ in range(10):
        image, out = mosaic(images, labels, center, generator=gen)
        assert image.shape == (3, 100, 100) and image.dtype == torch.uint8 and out.shape == (8, 5)
        valid = out[out[:, 0] >= 0]
        assert len(valid) == 4  # every quadrant is larger than its object: all four stay whole
        mask = _is_object(image.reshape(3, -1)).reshape(100, 100)
        covered = torch.zeros_like(mask)
        for x1, y1, x2, y2 in (valid[:, 1:] * 100).round().long().tolist():
            assert (x2 - x1, y2 - y1) in {(20, 25), (30, 25), (30, 25), (25, 25)}  # sizes unchanged
            assert mask[y1:y2, x1:x2].all()  # the box is all object...
            covered[y1:y2, x1:x2] = True
        assert not (mask & ~covered).any()  # ...and every object pixel is in a box


def test_mosaic_clips_or_drops_objects_that_do_not_fit():
    size = 100
    images = torch.full((4, 3, size, size), 100, dtype=torch.uint8)
    labels = torch.full((4, 2, 5), -1.0)
    # Image 0: two objects 80 px apart; a 40 px window can hold only one of them whole.
    labels[0, 0] = torch.tensor([0, 0.02, 0.40, 0.18, 0.56])
    labels[0, 1] = torch.tensor([0, 0.82, 0.40, 0.98, 0.56])
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        _, out = mosaic(images, labels, (40, 60), min_visible=0.4, generator=gen)
        valid = out[out[:, 0] >= 0]
        assert len(valid) == 1
        x1, _, x2, y2 = (valid[0, 1:] * size).tolist()
        assert x2 <= 40 + 1e-4 and y2 <= 60 + 1e-4
        assert abs((x2 - x1) - 16) < 1e-4  # the chosen object is whole, the other one dropped


def test_mosaic_datasets_pad_labels_and_stack(make_banana_dir):
    data_dir = make_banana_dir(num_train=8, num_val=2, objects_per_image=2, num_classes=1)
    dm = BananaDataModule(data_dir=str(data_dir), batch_size=8, image_size=64, augment="flip", mosaic=0.5)
    dm.setup("fit")
    torch.manual_seed(0)
    images, labels = next(iter(dm.train_dataloader()))
    assert images.shape == (8, 3, 64, 64) and labels.shape == (8, 8, 5)
    counts = (labels[..., 0] >= 0).sum(dim=1)
    assert (counts <= 8).all() and (counts > 2).any()  # some items are mosaics of four
    valid = labels[labels[..., 0] >= 0][:, 1:]
    assert ((valid >= 0) & (valid <= 1)).all() and (valid[:, 2:] > valid[:, :2]).all()
    # Validation is never augmented.
    _, val_labels = next(iter(dm.val_dataloader()))
    assert val_labels.shape[1] == 2
    with pytest.raises(ConfigError, match=r"data\.mosaic"):
        BananaDataModule(data_dir=str(data_dir), mosaic=1.5)


def test_unknown_augmentation_refused():
    assert build_augment("none", 256) is None
    with pytest.raises(ConfigError, match=r"data\.augment"):
        build_augment("mixup", 256)


@pytest.mark.parametrize("kind", ["none", "flip"])
def test_zoom_out_shrinks_about_half_of_the_objects_and_keeps_their_boxes(kind):
    torch.manual_seed(0)
    image, labels = _picture()
    aug = build_augment(kind, 128, zoom_out=2.0)
    side = (labels[0, 3] - labels[0, 1]).item()
    ratios = []
    for _ in range(40):
        out_image, out = aug(image, labels)
        _check_box_encloses_object(out_image, out)
        ratios.append((out[0, 3] - out[0, 1]).item() / side)
    shrunk = [r for r in ratios if r < 0.99]
    assert 10 <= len(shrunk) <= 30  # p = 0.5
    assert min(ratios) >= 0.5 - 0.02 and all(abs(r - 1) < 1e-4 for r in ratios if r >= 0.99)
    assert min(shrunk) < 0.7  # factors spread over [1, 2]


@pytest.mark.parametrize("factor", [0.5, 5.0, True, "big"])
def test_impossible_zoom_out_refused(factor, tmp_path):
    with pytest.raises(ConfigError, match=r"data\.zoom_out"):
        build_augment("light", 256, zoom_out=factor)
    with pytest.raises(ConfigError, match=r"data\.zoom_out"):
        BananaDataModule(data_dir=str(tmp_path), zoom_out=factor)
