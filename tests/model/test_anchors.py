"""Anchors: generation, labeling and detection, against the chapter's golden values."""

from __future__ import annotations

import pytest
import torch

from tinyssd import (
    decode_offsets,
    encode_offsets,
    multibox_detection,
    multibox_detection_per_image,
    multibox_prior,
    multibox_target,
)

GOLD_ANCHORS = torch.tensor(
    [
        [0, 0.1, 0.2, 0.3],
        [0.15, 0.2, 0.4, 0.4],
        [0.63, 0.05, 0.88, 0.98],
        [0.66, 0.45, 0.8, 0.8],
        [0.57, 0.3, 0.92, 0.9],
    ]
)
GOLD_GT = torch.tensor([[0, 0.1, 0.08, 0.52, 0.92], [1, 0.55, 0.2, 0.9, 0.88]])


def test_prior_shape_and_chapter_example():
    anchors = multibox_prior(torch.zeros(1, 3, 561, 728), sizes=[0.75, 0.5, 0.25], ratios=[1, 2, 0.5])
    assert anchors.shape == (1, 561 * 728 * 5, 4)
    # The anchor-box section's printed example: boxes[250, 250, 0].
    first = anchors.reshape(561, 728, 5, 4)[250, 250, 0]
    torch.testing.assert_close(first, torch.tensor([0.0551, 0.0715, 0.6331, 0.8215]), atol=1e-4, rtol=0)


def test_prior_square_anchor_centred_on_cell():
    anchors = multibox_prior(torch.zeros(1, 1, 2, 2), sizes=[0.5], ratios=[1.0])[0]
    torch.testing.assert_close(anchors[0], torch.tensor([0.0, 0.0, 0.5, 0.5]))
    torch.testing.assert_close(anchors[3], torch.tensor([0.5, 0.5, 1.0, 1.0]))


def test_target_golden_values():
    offsets, mask, classes = multibox_target(GOLD_ANCHORS[None], GOLD_GT[None])
    assert classes.tolist() == [[0, 1, 2, 0, 2]]
    assert mask.tolist() == [[0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1, 1]]
    expected = torch.tensor(
        [[0, 0, 0, 0, 1.4, 10, 2.594, 7.1754, -1.2, 0.2688, 1.6824, -1.5655, 0, 0, 0, 0, -0.5714, -1, 0, 0.6258]]
    )
    torch.testing.assert_close(offsets, expected, atol=1e-4, rtol=0)


def test_target_ignores_padding_rows():
    padded = torch.cat([GOLD_GT, torch.full((3, 5), -1.0)])[None]
    a = multibox_target(GOLD_ANCHORS[None], GOLD_GT[None])
    b = multibox_target(GOLD_ANCHORS[None], padded)
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y)


def test_target_all_padding_gives_background():
    offsets, mask, classes = multibox_target(GOLD_ANCHORS[None], torch.full((1, 2, 5), -1.0))
    assert classes.sum() == 0 and mask.sum() == 0 and offsets.abs().sum() == 0


def test_target_batch_equals_per_image():
    gen = torch.Generator().manual_seed(0)
    anchors = multibox_prior(torch.zeros(1, 1, 8, 8), sizes=[0.2, 0.3], ratios=[1, 2, 0.5])
    labels = torch.full((4, 3, 5), -1.0)
    for i, count in enumerate([1, 3, 2, 0]):
        for k in range(count):
            xy = torch.rand(2, generator=gen) * 0.6
            wh = 0.1 + torch.rand(2, generator=gen) * 0.3
            labels[i, k] = torch.tensor([k % 2, xy[0], xy[1], xy[0] + wh[0], xy[1] + wh[1]])
    batched = multibox_target(anchors, labels)
    for i in range(4):
        single = multibox_target(anchors, labels[i : i + 1])
        for x, y in zip(batched, single, strict=True):
            torch.testing.assert_close(x[i : i + 1], y)


def test_target_several_objects_each_claims_an_anchor():
    anchors = multibox_prior(torch.zeros(1, 1, 4, 4), sizes=[0.25], ratios=[1.0])
    # Three small objects, each best matched by a different anchor.
    labels = torch.tensor([[[0, 0.0, 0.0, 0.2, 0.2], [1, 0.5, 0.5, 0.75, 0.75], [2, 0.8, 0.0, 1.0, 0.25]]])
    _, mask, classes = multibox_target(anchors, labels)
    assert sorted(classes[classes > 0].tolist()) == [1, 2, 3]
    assert classes[0, 0] == 1 and classes[0, 10] == 2 and classes[0, 3] == 3
    assert mask.reshape(1, -1, 4)[..., 0].sum() == (classes > 0).sum()


def test_encode_decode_round_trip():
    gen = torch.Generator().manual_seed(1)
    anchors = multibox_prior(torch.zeros(1, 1, 4, 4), sizes=[0.3, 0.5], ratios=[1, 2])[0]
    boxes = anchors + 0.05 * torch.randn(anchors.shape, generator=gen)
    boxes = torch.cat([boxes[:, :2], boxes[:, :2] + (boxes[:, 2:] - boxes[:, :2]).abs() + 0.01], dim=1)
    torch.testing.assert_close(
        decode_offsets(anchors, encode_offsets(anchors, boxes, eps=0.0)), boxes, atol=1e-5, rtol=0
    )


def _gold_detection_inputs():
    anchors = torch.tensor(
        [[0.1, 0.08, 0.52, 0.92], [0.08, 0.2, 0.56, 0.95], [0.15, 0.3, 0.62, 0.91], [0.55, 0.2, 0.9, 0.88]]
    )
    probs = torch.tensor([[0, 0, 0, 0], [0.9, 0.8, 0.7, 0.1], [0.1, 0.2, 0.3, 0.9]])
    return probs[None], torch.zeros(1, 16), anchors[None]


def test_detection_golden_values():
    out = multibox_detection(*_gold_detection_inputs(), nms_threshold=0.5)
    expected = torch.tensor(
        [
            [0, 0.9, 0.1, 0.08, 0.52, 0.92],
            [1, 0.9, 0.55, 0.2, 0.9, 0.88],
            [-1, 0.8, 0.08, 0.2, 0.56, 0.95],
            [-1, 0.7, 0.15, 0.3, 0.62, 0.91],
        ]
    )
    torch.testing.assert_close(out[0], expected)


def test_detection_below_pos_threshold_is_background():
    probs, offsets, anchors = _gold_detection_inputs()
    out = multibox_detection(probs, offsets, anchors, pos_threshold=0.95)
    assert (out[0, :, 0] == -1).all()
    torch.testing.assert_close(out[0, :2, 1], torch.tensor([0.1, 0.1]))


def _random_detection_inputs(batch=3, num_classes=2, seed=0):
    gen = torch.Generator().manual_seed(seed)
    anchors = multibox_prior(torch.zeros(1, 1, 6, 6), sizes=[0.2, 0.35], ratios=[1, 2, 0.5])
    num = anchors.shape[1]
    probs = torch.softmax(3 * torch.randn(batch, num_classes + 1, num, generator=gen), dim=1)
    offsets = 0.5 * torch.randn(batch, 4 * num, generator=gen)
    return probs, offsets, anchors


def test_detection_batch_equals_per_image():
    probs, offsets, anchors = _random_detection_inputs()
    batched = multibox_detection(probs, offsets, anchors)
    for i in range(probs.shape[0]):
        torch.testing.assert_close(
            batched[i : i + 1], multibox_detection(probs[i : i + 1], offsets[i : i + 1], anchors)
        )


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_per_image_form_equals_foreground_rows(seed):
    probs, offsets, anchors = _random_detection_inputs(seed=seed)
    full = multibox_detection(probs, offsets, anchors, nms_threshold=0.4)
    per_image = multibox_detection_per_image(probs, offsets, anchors, nms_threshold=0.4, max_detections=None)
    for rows, dets in zip(full, per_image, strict=True):
        fg = rows[rows[:, 0] >= 0]
        torch.testing.assert_close(dets["scores"], fg[:, 1])
        torch.testing.assert_close(dets["labels"], fg[:, 0].long())
        torch.testing.assert_close(dets["boxes"], fg[:, 2:])


def test_per_image_form_caps_detections():
    probs, offsets, anchors = _random_detection_inputs()
    dets = multibox_detection_per_image(probs, offsets, anchors, max_detections=5)
    assert all(len(d["scores"]) <= 5 for d in dets)
    assert all(bool((d["scores"][:-1] >= d["scores"][1:]).all()) for d in dets)


# ---------------------------------------------------------------- ATSS assignment


def _grid(cells: int, size: float) -> torch.Tensor:
    """One square anchor of side ``size`` on each cell of a ``cells`` x ``cells`` grid, row-major."""
    return multibox_prior(torch.zeros(1, 1, cells, cells), sizes=[size], ratios=[1.0])[0]


# Level 0: 4x4 cells of 0.25 squares (anchors 0-15); level 1: 2x2 cells of 0.5 squares (16-19).
TWO_LEVELS = torch.cat((_grid(4, 0.25), _grid(2, 0.5)))
TWO_LEVEL_COUNTS = [16, 4]


def _atss(labels: torch.Tensor, level_topk=(4, 1)) -> torch.Tensor:
    _, _, classes = multibox_target(
        TWO_LEVELS, labels, assigner="atss", level_counts=TWO_LEVEL_COUNTS, level_topk=list(level_topk)
    )
    return classes


def test_atss_hand_computed_threshold_picks_the_matching_level():
    # Object [0, 0, 0.5, 0.5]: candidates are level 0's four cells around (0.25, 0.25) (IoU 0.25
    # each) and level 1's first cell (IoU 1). Mean 0.4, unbiased std sqrt((4 * 0.15^2 + 0.6^2) / 4)
    # = 0.335, threshold 0.735: only the level-1 anchor is positive.
    classes = _atss(torch.tensor([[[1.0, 0.0, 0.0, 0.5, 0.5]]]))
    assert classes[0].nonzero().flatten().tolist() == [16]
    assert classes[0, 16].item() == 2


def test_atss_small_object_gets_the_fine_level():
    # Object [0.5, 0.5, 0.75, 0.75] is cell 10 of level 0 (IoU 1). Level 0 candidates (topk 4 by
    # centre distance; the object centre is a cell centre): cell 10 and three neighbours at
    # distance 0.25 (IoU 0 each); level 1: cell 19 (IoU 0.0625 / 0.25 = 0.25).
    # IoUs [1, 0, 0, 0, 0.25]: mean 0.25, std sqrt((0.75^2 + 3 * 0.25^2 + 0) / 4) = 0.433,
    # threshold 0.683: cell 10 only.
    classes = _atss(torch.tensor([[[0.0, 0.5, 0.5, 0.75, 0.75]]]))
    assert classes[0].nonzero().flatten().tolist() == [10]


def test_atss_needs_the_anchor_centre_inside_the_object():
    # A thin object whose centre is (0.25, 0.25) but which does not cover the nearest cells'
    # centres (0.125 / 0.375): level 1's anchor (centre 0.25, 0.25) is inside it and wins.
    classes = _atss(torch.tensor([[[0.0, 0.2, 0.0, 0.3, 0.5]]]), level_topk=(4, 1))
    positives = classes[0].nonzero().flatten().tolist()
    assert positives == [16]
    # Moved so that no candidate centre lies inside it: no positive at all.
    classes = _atss(torch.tensor([[[0.0, 0.01, 0.0, 0.1, 0.1]]]), level_topk=(1, 1))
    assert classes[0].nonzero().numel() == 0


def test_atss_anchor_claimed_twice_takes_the_larger_iou():
    # Two objects on the same level-1 cell: [0, 0, 0.5, 0.5] (IoU 1 with anchor 16) and
    # [0, 0, 0.45, 0.5] (IoU 0.9). Both make anchor 16 positive; it takes the first (class 0).
    labels = torch.tensor([[[0.0, 0.0, 0.0, 0.5, 0.5], [1.0, 0.0, 0.0, 0.45, 0.5]]])
    classes = _atss(labels)
    assert classes[0, 16].item() == 1


def test_atss_ignores_padding_and_ignored_objects_and_is_batched():
    one = torch.tensor([[1.0, 0.0, 0.0, 0.5, 0.5], [-1.0, -1.0, -1.0, -1.0, -1.0]])
    ignored = torch.tensor([[-3.0, 0.0, 0.0, 0.5, 0.5], [-1.0, -1.0, -1.0, -1.0, -1.0]])
    none = torch.full((2, 5), -1.0)
    offsets, mask, classes = multibox_target(
        TWO_LEVELS, torch.stack((one, ignored, none)), assigner="atss", level_counts=TWO_LEVEL_COUNTS, level_topk=[4, 1]
    )
    assert classes[0].nonzero().flatten().tolist() == [16]
    assert classes[1:].sum() == 0 and mask[1:].sum() == 0
    # The positive anchor's offsets are the chapter's encoding of its object (exact fit: zeros).
    torch.testing.assert_close(offsets[0].reshape(-1, 4)[16], torch.zeros(4), atol=1e-4, rtol=0)


def _atss_reference(anchors, labels, level_counts, level_topk):
    """ATSS for one image, object by object, as the paper's pseudo-code reads."""
    from torchvision.ops import box_iou

    assigned = torch.full((anchors.shape[0],), -1)
    best = torch.full((anchors.shape[0],), -1.0)
    centres = (anchors[:, :2] + anchors[:, 2:]) / 2
    for g, row in enumerate(labels):
        if row[0] < 0:
            continue
        box = row[1:]
        iou = box_iou(anchors, box[None])[:, 0]
        distance = ((centres - (box[:2] + box[2:]) / 2) ** 2).sum(dim=1).sqrt()
        candidates, start = [], 0
        for count, k in zip(level_counts, level_topk, strict=True):
            order = distance[start : start + count].argsort()[: min(k, count)] + start
            candidates += order.tolist()
            start += count
        values = iou[candidates]
        threshold = values.mean() + values.std()
        for a in candidates:
            inside = bool((centres[a] > box[:2]).all() and (centres[a] < box[2:]).all())
            if iou[a] >= threshold and inside and iou[a] > best[a]:
                assigned[a], best[a] = g, iou[a]
    return assigned


def test_atss_matches_an_object_by_object_reference():
    from tinyssd import TinySSD

    net = TinySSD(num_classes=3, sizes=[[0.2, 0.272, 0.14], [0.37, 0.447], [0.54, 0.619], [0.71, 0.79], [0.88, 0.961]])
    anchors = net(torch.zeros(1, 3, 128, 160))[0][0]
    counts = net.anchor_level_counts(128, 160)
    topk = [9 * a for a in net.anchors_per_location]
    generator = torch.Generator().manual_seed(0)
    xy = torch.rand(4, 3, 2, generator=generator) * 0.7
    wh = torch.rand(4, 3, 2, generator=generator) * 0.3 + 0.05
    labels = torch.cat((torch.randint(0, 3, (4, 3, 1), generator=generator).float(), xy, xy + wh), dim=-1)
    labels[1, 2] = -1.0  # padding
    labels[3] = -1.0  # no objects
    _, _, classes = multibox_target(anchors, labels, assigner="atss", level_counts=counts, level_topk=topk)
    for i in range(4):
        expected = _atss_reference(anchors, labels[i], counts, topk)
        expected_classes = torch.where(expected >= 0, labels[i, expected.clamp(min=0), 0].long() + 1, 0)
        assert torch.equal(classes[i], expected_classes), i
    assert (classes[:3] > 0).sum(dim=1).min() > 0


def test_unknown_assigner_and_missing_levels_are_refused():
    with pytest.raises(ValueError, match="unknown assigner"):
        multibox_target(TWO_LEVELS, torch.full((1, 1, 5), -1.0), assigner="hungarian")
    with pytest.raises(ValueError, match="level_counts"):
        multibox_target(TWO_LEVELS, torch.full((1, 1, 5), -1.0), assigner="atss")
