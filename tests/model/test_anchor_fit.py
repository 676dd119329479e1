"""Anchors against boxes: the best anchor of each object, reachable recall, k-means and the fit."""

from __future__ import annotations

import pytest
import torch
from torchvision.ops import box_iou

from tinyssd.model.anchor_fit import best_anchor_iou, fit_anchors, kmeans_shapes, reachable_recall, shape_iou
from tinyssd.model.net import CHAPTER_RATIOS, CHAPTER_SIZES, TinySSD, feature_map_shapes

DENSE_SIZES = [[0.1, 0.16, 0.22], [0.28, 0.34, 0.4], [0.46, 0.54, 0.62], [0.68, 0.76, 0.84], [0.88, 0.94, 1.0]]
DENSE_RATIOS = [[1, 2, 0.5, 3]] * 5


def random_boxes(count: int, seed: int, low: float = 0.05, high: float = 0.7) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    wh = low + (high - low) * torch.rand(count, 2, generator=gen)
    centre = wh / 2 + (1 - wh) * torch.rand(count, 2, generator=gen)
    return torch.cat((centre - wh / 2, centre + wh / 2), dim=1)


@pytest.mark.parametrize(
    ("sizes", "ratios", "side"), [(CHAPTER_SIZES, CHAPTER_RATIOS, 256), (DENSE_SIZES, DENSE_RATIOS, 320)]
)
def test_best_anchor_iou_equals_every_anchor_of_the_network(sizes, ratios, side):
    """One cell per scale suffices: the same best IoU as comparing every anchor the network lays out."""
    net = TinySSD(num_classes=1, sizes=sizes, ratios=ratios).eval()
    with torch.no_grad():
        anchors, _, _ = net(torch.zeros(1, 3, side, side))
    boxes = random_boxes(300, seed=side)
    best, scale = best_anchor_iou(boxes, sizes, ratios, feature_map_shapes(side, side))
    brute = box_iou(boxes, anchors[0])
    torch.testing.assert_close(best, brute.max(dim=1).values, atol=1e-5, rtol=0)
    # The scale named is the one holding the best anchor.
    bounds = torch.tensor(net.anchor_level_counts(side, side)).cumsum(0)
    expected_scale = torch.searchsorted(bounds, brute.argmax(dim=1), right=True)
    agree = (expected_scale == scale) | (brute.max(dim=1).values - best).abs().lt(1e-6)
    assert bool(agree.all())


def test_feature_map_shapes_match_the_network():
    net = TinySSD(num_classes=1)
    maps, _, _ = net.predict_heads(torch.zeros(1, 3, 200, 136))
    assert feature_map_shapes(200, 136) == [tuple(f.shape[-2:]) for f in maps]


def test_reachable_recall_by_size_bucket_hand_computed():
    # A 20 px square centred on the 256 px canvas: the nearest cell centre of the 32x32 grid is 4 px
    # away in x and y, and the chapter's smallest anchor there (0.2 * 256 = 51.2 px square) holds
    # the box whole: IoU 400 / 51.2^2 = 0.153, unreachable (no anchor is smaller). A box equal to
    # the last scale's 0.88 anchor (one cell, centred) is reached at IoU 1.
    half = 10 / 256
    boxes = torch.tensor([[0.5 - half, 0.5 - half, 0.5 + half, 0.5 + half], [0.06, 0.06, 0.94, 0.94]])
    best, scale = best_anchor_iou(boxes, CHAPTER_SIZES, CHAPTER_RATIOS, feature_map_shapes(256, 256))
    assert best[0].item() == pytest.approx(400 / 51.2**2, abs=1e-5) and scale[0] == 0
    assert best[1].item() == pytest.approx(1.0, abs=1e-5) and scale[1] == 4
    rows = reachable_recall(boxes, best, 256)
    assert rows["small"] == {
        "objects": 1,
        "reachable": 0,
        "recall": 0.0,
        "mean_best_iou": pytest.approx(float(best[0])),
    }
    assert rows["large"]["objects"] == 1 and rows["large"]["recall"] == 1.0
    assert rows["medium"] == {"objects": 0, "reachable": 0, "recall": None, "mean_best_iou": None}
    assert rows["all"]["recall"] == 0.5


def test_shape_iou_and_kmeans_on_two_clusters():
    assert shape_iou(torch.tensor([[2.0, 1.0]]), torch.tensor([[1.0, 2.0]])).item() == pytest.approx(1 / 3)
    gen = torch.Generator().manual_seed(0)
    small = torch.tensor([0.1, 0.05]) * (1 + 0.05 * torch.randn(50, 2, generator=gen))
    large = torch.tensor([0.4, 0.6]) * (1 + 0.05 * torch.randn(50, 2, generator=gen))
    centres = kmeans_shapes(torch.cat((large, small)), 2)
    torch.testing.assert_close(centres[0], small.mean(dim=0))
    torch.testing.assert_close(centres[1], large.mean(dim=0))


def test_fit_reaches_at_least_the_chapters_recall_and_is_deterministic():
    # Small, flat objects (wide 3:1 and tall 1:3) that the chapter's anchors fit badly.
    gen = torch.Generator().manual_seed(1)
    side = 0.04 + 0.08 * torch.rand(400, 1, generator=gen)
    flip = torch.rand(400, 1, generator=gen) < 0.5
    wh = torch.where(flip, torch.cat((side * 1.7, side / 1.7), 1), torch.cat((side / 1.7, side * 1.7), 1))
    centre = wh / 2 + (1 - wh) * torch.rand(400, 2, generator=gen)
    boxes = torch.cat((centre - wh / 2, centre + wh / 2), dim=1)
    grids = feature_map_shapes(256, 256)
    chapter, _ = best_anchor_iou(boxes, CHAPTER_SIZES, CHAPTER_RATIOS, grids)
    fit = fit_anchors(boxes, grids, generations=60, starts=[(CHAPTER_SIZES, CHAPTER_RATIOS)])
    again = fit_anchors(boxes, grids, generations=60, starts=[(CHAPTER_SIZES, CHAPTER_RATIOS)])
    assert (fit.sizes, fit.ratios) == (again.sizes, again.ratios)
    assert [len(s) for s in fit.sizes] == [2] * 5 and [len(r) for r in fit.ratios] == [3] * 5
    fitted, _ = best_anchor_iou(boxes, fit.sizes, fit.ratios, grids)
    assert float((fitted >= 0.5).float().mean()) == pytest.approx(fit.recall)
    assert fit.recall >= float((chapter >= 0.5).float().mean()) + 0.3  # the chapter reaches few of these
    # The fitted net is a valid TinySSD.
    TinySSD(num_classes=2, sizes=fit.sizes, ratios=fit.ratios)


def test_fit_with_fewer_boxes_than_sizes():
    boxes = torch.tensor([[0.1, 0.1, 0.3, 0.2], [0.5, 0.5, 0.9, 0.9]])
    fit = fit_anchors(boxes, feature_map_shapes(128, 128), generations=5)
    assert [len(s) for s in fit.sizes] == [2] * 5 and fit.recall == pytest.approx(1.0)
