"""explain's numbers: anchors per scale as the network lays them out, labelling flags, offsets, predictions."""

from __future__ import annotations

import pytest
import torch

from tinyssd import TinySSDModule
from tinyssd.model.explain_figures import figures
from tinyssd.model.explanation import cell_anchor_indices, explain
from tinyssd.model.net import TinySSD

SMALL = [[0.2, 0.272, 0.14], [0.37, 0.447], [0.54, 0.619], [0.71, 0.79], [0.88, 0.961]]
DENSE = [[0.1, 0.16, 0.22], [0.28, 0.34, 0.4], [0.46, 0.54, 0.62], [0.68, 0.76, 0.84], [0.88, 0.94, 1.0]]


@pytest.mark.parametrize(
    ("sizes", "ratios", "side"),
    [(None, None, 256), (SMALL, [[1, 2, 0.5]] * 5, 256), (DENSE, [[1, 2, 0.5, 3]] * 5, 320)],
)
def test_drawn_anchors_per_scale_are_the_networks(sizes, ratios, side):
    net = TinySSD(num_classes=1) if sizes is None else TinySSD(num_classes=1, sizes=sizes, ratios=ratios)
    image = torch.zeros(3, side, side, dtype=torch.uint8)
    expl = explain(image, net, point=(0.3, 0.7))
    with torch.no_grad():
        anchors, _, _ = net.eval()(image[None].float())
    assert torch.equal(expl.anchors, anchors[0])
    assert expl.level_counts == net.anchor_level_counts(side, side)
    assert [len(a) for a in expl.cell_anchors] == net.anchors_per_location
    # Each scale's drawn anchors share one centre: that of the cell holding the point.
    for boxes, (h, w) in zip(expl.cell_anchors, expl.grids, strict=True):
        centres = (boxes[:, :2] + boxes[:, 2:]) / 2
        expected = torch.tensor([(int(0.3 * w) + 0.5) / w, (int(0.7 * h) + 0.5) / h])
        torch.testing.assert_close(centres, expected.expand_as(centres))
    picture = figures(expl, ["banana"])["anchors.png"]
    assert picture.dtype == torch.uint8 and picture.shape[0] == 3


def test_cell_indices_walk_the_scales_in_order():
    indices = cell_anchor_indices([(2, 2), (1, 1)], [3, 2], (0.9, 0.1))
    assert indices[0].tolist() == [3, 4, 5]  # the top-right cell of the 2x2 grid, its 3 anchors
    assert indices[1].tolist() == [12, 13]  # after the 12 anchors of the first scale


def test_an_object_smaller_than_every_anchor_is_flagged():
    # A 3x3 px object on the 256 px canvas against anchors of 36 px and more; a 60 px one beside it.
    net = TinySSD(num_classes=2, sizes=SMALL, ratios=[[1, 2, 0.5]] * 5)
    tiny = [0, 100 / 256, 100 / 256, 103 / 256, 103 / 256]
    fine = [1, 0.6, 0.6, 0.6 + 60 / 256, 0.6 + 60 / 256]
    expl = explain(torch.zeros(3, 256, 256, dtype=torch.uint8), net, torch.tensor([tiny, fine]), assigner="atss")
    chapter, atss = expl.labelling["max_iou"], expl.labelling["atss"]
    assert chapter[0].best_iou < 0.01 and chapter[0].below_threshold and len(chapter[0].anchors) == 1
    assert atss[0].unlabelled and not atss[1].unlabelled and not chapter[1].below_threshold
    assert all(v >= 0.5 for v in chapter[1].iou) and min(chapter[1].scale) >= 0
    # The offsets shown belong to the first object with a positive anchor (ATSS: the second), and decode back.
    assert expl.offsets["object"] == 1
    torch.testing.assert_close(torch.tensor(expl.offsets["decoded"]), torch.tensor(fine[1:]), atol=1e-5, rtol=0)
    pictures = figures(expl, ["tiny", "fine"])
    assert set(pictures) == {"anchors.png", "labelling.png", "offsets.png"}
    labelling = pictures["labelling.png"]  # the tiny object is drawn in red in both panels
    red = (labelling[0] == 255) & (labelling[1] == 0) & (labelling[2] == 0)
    half = labelling.shape[-1] // 2
    assert red[:, :half].any() and red[:, half:].any()


def test_a_model_adds_scores_per_scale_and_its_own_detections():
    torch.manual_seed(0)
    module = TinySSDModule(
        net={"_target_": "tinyssd.model.net.TinySSD", "num_classes": 2}, class_names=["a", "b"],
        image_size=128, channels_last=False, display_threshold=0.0,
    )  # fmt: skip
    image = torch.randint(0, 255, (3, 128, 128), dtype=torch.uint8)
    expl = explain(image, module.net, module=module)
    assert [tuple(m.shape) for m in expl.heatmaps] == expl.grids
    (expected,) = module.detect(image[None])
    torch.testing.assert_close(expl.after_nms["boxes"], expected["boxes"])
    assert len(expl.before_nms["scores"]) == 50 and bool((expl.before_nms["scores"].diff() <= 0).all())
    assert {"scores.png", "nms.png"} <= set(figures(expl, ["a", "b"]))
