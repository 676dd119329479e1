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


@pytest.mark.parametrize("hw", [(256, 256), (256, 320), (250, 333), (64, 64)])
def test_anchor_level_counts_add_up_to_the_anchors(hw):
    net = TinySSD(num_classes=1, sizes=[[0.2, 0.272, 0.14], [0.37, 0.447], [0.54, 0.619], [0.71, 0.79], [0.88, 0.961]])
    anchors, _, _ = net(torch.zeros(1, 3, *hw))
    counts = net.anchor_level_counts(*hw)
    assert sum(counts) == anchors.shape[1]
    # The finest scale: 5 anchors on each cell of an eight-times smaller map.
    assert counts[0] == (hw[0] // 8) * (hw[1] // 8) * 5 and counts[-1] == 4


@pytest.mark.parametrize("hw", [(256, 256), (128, 192), (250, 333)])
def test_fpn_neck_keeps_the_anchors_and_head_shapes(hw):
    torch.manual_seed(0)
    plain, fpn = TinySSD(num_classes=3), TinySSD(num_classes=3, neck="fpn")
    x = torch.rand(2, 3, *hw) * 255
    (a0, c0, b0), (a1, c1, b1) = plain(x), fpn(x)
    torch.testing.assert_close(a0, a1)
    assert c0.shape == c1.shape and b0.shape == b1.shape
    assert [h.weight.shape[0] for h in plain.cls_heads] == [h.weight.shape[0] for h in fpn.cls_heads]
    # Every head reads the FPN's fused maps (feature_channels wide), and they depend on the
    # coarser maps: a change confined to the top block moves the finest scale's predictions.
    assert all(h.weight.shape[1] == 128 for h in fpn.cls_heads)
    fpn.eval()
    with torch.no_grad():
        before = fpn(x)[1][:, : fpn.anchor_level_counts(*hw)[0]].clone()
        fpn.blocks[3][0].weight.add_(0.5)
        after = fpn(x)[1][:, : fpn.anchor_level_counts(*hw)[0]]
    assert not torch.allclose(before, after)


def test_the_chapters_network_is_unchanged_by_the_neck_option():
    # Sums of the outputs of TinySSD(num_classes=2) drawn from seed 0, measured before the neck
    # option existed: same parameters, same initial weights, same outputs.
    torch.manual_seed(0)
    net = TinySSD(num_classes=2)
    assert net.neck is None and not any(k.startswith("neck.") for k in net.state_dict())
    torch.manual_seed(1)
    _, cls_preds, bbox_preds = net(torch.rand(2, 3, 128, 96) * 255)
    assert cls_preds.double().sum().item() == pytest.approx(-1263.638656, rel=1e-5)
    assert bbox_preds.double().sum().item() == pytest.approx(-396.142514, rel=1e-4)


def test_unknown_neck_and_assigner_are_refused():
    with pytest.raises(ConfigError, match=r"model\.net\.neck='bifpn'"):
        TinySSD(num_classes=1, neck="bifpn")
    with pytest.raises(ConfigError, match=r"model\.assigner='hungarian'"):
        TinySSDModule(assigner="hungarian")
    with pytest.raises(ConfigError, match=r"model\.atss_topk must be"):
        TinySSDModule(assigner="atss", atss_topk=0)


def test_atss_module_labels_more_anchors_for_small_objects():
    labels = torch.tensor([[[0.0, 0.40, 0.40, 0.52, 0.52]]])  # a 31 px object on a 256 px input
    images = torch.zeros(1, 3, 256, 256, dtype=torch.uint8)
    counts = {}
    for assigner in ("max_iou", "atss"):
        module = TinySSDModule(assigner=assigner)
        out = module._shared_step((images, labels))
        counts[assigner] = int((out["cls_targets"] > 0).sum())
        assert torch.isfinite(out["loss"])
    assert counts["max_iou"] == 1 and counts["atss"] > 1


def test_deeper_heads_keep_the_output_shapes_and_add_the_hand_counted_weights():
    plain, deep = TinySSD(num_classes=3), TinySSD(num_classes=3, head_depth=2)
    x = torch.rand(2, 3, 128, 160) * 255
    (a0, c0, b0), (a1, c1, b1) = plain(x), deep(x)
    torch.testing.assert_close(a0, a1)
    assert c0.shape == c1.shape and b0.shape == b1.shape
    # Per scale, two heads of two 3x3 convs c -> c (9c^2 weights + c biases) each; the heads read
    # 64 channels (the base network's) on the finest scale and 128 on the four others.
    extra = sum(2 * 2 * (9 * c * c + c) for c in (64, 128, 128, 128, 128))
    count = lambda net: sum(p.numel() for p in net.parameters())  # noqa: E731
    assert count(deep) - count(plain) == extra == 2_509_056
    deep.eval()
    with torch.no_grad():
        before = deep(x)[1].clone()
        deep.cls_heads[0][0].weight.add_(0.5)  # the first hidden layer of the finest class head
        after = deep(x)[1]
    level0 = deep.anchor_level_counts(128, 160)[0]
    assert not torch.allclose(before[:, :level0], after[:, :level0])
    torch.testing.assert_close(before[:, level0:], after[:, level0:])
    for bad in (-1, 5, True, 1.5):
        with pytest.raises(ConfigError, match=r"model\.net\.head_depth"):
            TinySSD(num_classes=1, head_depth=bad)
