"""TinySSD shapes, anchor counts and anchor caching."""

from __future__ import annotations

import pytest
import torch

from tinyssd import ConfigError, TinySSD, TinySSDModule


def test_chapter_shapes_5444_anchors():
    net = TinySSD(num_classes=1)
    anchors, cls_preds, bbox_preds = net(torch.zeros(2, 3, 256, 256))
    assert anchors.shape == (1, 5444, 4)
    assert cls_preds.shape == (2, 5444, 2)
    assert bbox_preds.shape == (2, 5444 * 4)


def test_anchors_cached_per_input_size():
    net = TinySSD(num_classes=1).eval()
    with torch.no_grad():
        a1, _, _ = net(torch.zeros(1, 3, 256, 256))
        a2, _, _ = net(torch.zeros(1, 3, 256, 256))
        a3, _, _ = net(torch.zeros(1, 3, 128, 128))
    assert a1 is a2
    assert a3.shape == (1, (16**2 + 8**2 + 4**2 + 2**2 + 1) * 4, 4)


def test_custom_sizes_ratios_anchor_count_and_heads():
    sizes = [[0.1, 0.2, 0.3]] * 5
    ratios = [[1, 2, 0.5, 3]] * 5
    net = TinySSD(num_classes=3, sizes=sizes, ratios=ratios)
    anchors, cls_preds, bbox_preds = net(torch.zeros(1, 3, 256, 256))
    per_cell = 3 + 4 - 1
    assert anchors.shape[1] == (32**2 + 16**2 + 8**2 + 4**2 + 1) * per_cell
    assert cls_preds.shape == (1, anchors.shape[1], 4)
    assert bbox_preds.shape == (1, anchors.shape[1] * 4)


def test_mismatched_anchor_config_is_refused():
    with pytest.raises(ConfigError, match=r"model\.net\.sizes has 4 scales"):
        TinySSD(sizes=[[0.2]] * 4)
    with pytest.raises(ConfigError, match="positive"):
        TinySSD(ratios=[[1, -2]] * 5)


def test_channels_last_matches_contiguous():
    torch.manual_seed(0)
    net = TinySSD(num_classes=1).eval()
    x = torch.rand(2, 3, 128, 128)
    with torch.no_grad():
        ref = net(x)
        net_cl = net.to(memory_format=torch.channels_last)
        out = net_cl(x.contiguous(memory_format=torch.channels_last))
    for r, o in zip(ref[1:], out[1:], strict=True):
        torch.testing.assert_close(r, o, atol=1e-4, rtol=1e-4)


def test_module_feeds_the_chapters_pixel_range():
    from tinyssd import TinySSDModule

    images = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    chapter = TinySSDModule(channels_last=False)  # input_scale=255: read_image(...).float()
    torch.testing.assert_close(chapter.prepare_images(images), images.float())
    torch.testing.assert_close(chapter.prepare_images(images.float() / 255), images.float())
    unit = TinySSDModule(channels_last=False, input_scale=1.0)
    torch.testing.assert_close(unit.prepare_images(images), images.float() / 255)
    assert unit.prepare_images(images.float() / 255).max() <= 1.0


def test_compiled_module_keeps_the_plain_checkpoint_keys():
    """``model.compile=true`` compiles the forward in place: checkpoints stay interchangeable."""
    plain = TinySSDModule(channels_last=False)
    compiled = TinySSDModule(channels_last=False, compile=True)
    assert list(compiled.state_dict()) == list(plain.state_dict())
    assert compiled.net._compiled_call_impl is not None and plain.net._compiled_call_impl is None
