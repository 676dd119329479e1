"""Augmentation keeps boxes on their objects; warm-up schedules."""

from __future__ import annotations

import itertools

import pytest
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from tinyssd.augment import MEAN_FILL, DetectionAugment, build_augment
from tinyssd.errors import ConfigError
from tinyssd.schedules import warmup_cosine, warmup_multistep

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
    for _ in range(10):
        _, out = aug(image, labels)
        mirrored = labels.clone()
        mirrored[0, [1, 3]] = 1 - labels[0, [3, 1]]
        assert torch.allclose(out, labels) or torch.allclose(out, mirrored)


def test_unknown_augmentation_refused():
    assert build_augment("none", 256) is None
    with pytest.raises(ConfigError, match=r"data\.augment"):
        build_augment("mixup", 256)


def _lrs(scheduler, epochs):
    out = []
    for _ in range(epochs):
        out.append(scheduler.optimizer.param_groups[0]["lr"])
        scheduler.step()
    return out


def test_warmup_cosine_and_multistep():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    lrs = _lrs(warmup_cosine(opt, max_epochs=10, warmup_epochs=2, start_factor=0.1), 10)
    assert lrs[0] == pytest.approx(0.1) and lrs[1] == pytest.approx(0.55) and lrs[2] == pytest.approx(1.0)
    assert lrs[-1] < 0.05 and all(a >= b for a, b in itertools.pairwise(lrs[2:]))
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    assert _lrs(warmup_multistep(opt, milestones=[2, 4], gamma=0.1), 5) == pytest.approx([1, 1, 0.1, 0.1, 0.01])
    with pytest.raises(ConfigError):
        warmup_cosine(opt, max_epochs=3, warmup_epochs=3)
