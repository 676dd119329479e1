"""The error breakdown: each cause on a hand-made picture, the dAPs computed by hand, everything fixed = AP 1."""

from __future__ import annotations

import pytest
import torch

from tinyssd.model.error_analysis import ERROR_TYPES, average_precision, error_breakdown

HALF = 51 / 101  # COCO's 101-point AP of one hit out of two objects, ranked first: recalls 0-0.5 at precision 1


def _picture(boxes, scores, labels, gt_boxes, gt_labels):
    detections = {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "scores": torch.tensor(scores, dtype=torch.float32),
        "labels": torch.tensor(labels, dtype=torch.long),
    }
    targets = {"boxes": torch.tensor(gt_boxes, dtype=torch.float32).reshape(-1, 4), "labels": torch.tensor(gt_labels)}
    return detections, targets


def test_average_precision_is_cocos_101_point_interpolation():
    assert average_precision(torch.tensor([0.9, 0.8]), torch.tensor([True, False]), 2) == pytest.approx(HALF)
    assert average_precision(torch.tensor([0.9, 0.8]), torch.tensor([False, True]), 2) == pytest.approx(HALF / 2)
    assert average_precision(torch.tensor([0.9, 0.8]), torch.tensor([True, True]), 2) == pytest.approx(1.0)
    assert average_precision(torch.tensor([]), torch.tensor([], dtype=torch.bool), 3) == 0.0
    assert average_precision(torch.tensor([0.5]), torch.tensor([False]), 0) != average_precision(
        torch.tensor([0.5]), torch.tensor([False]), 0
    )  # NaN: no objects, no AP


def test_each_cause_is_counted_once_on_a_hand_made_picture():
    a = [0, 0, 10, 10]
    detections, targets = _picture(
        boxes=[a, a, a, [0, 0, 10, 3], [0, 0, 10, 3], [50, 50, 60, 60]],
        scores=[0.9, 0.8, 0.7, 0.6, 0.5, 0.4],
        # correct, classification (class 1 on a class-0 object), duplicate, localisation (IoU 0.3),
        # both (class 1, IoU 0.3), background
        labels=[0, 1, 0, 0, 1, 0],
        gt_boxes=[a, [100, 100, 110, 110]],  # the second object: missed
        gt_labels=[0, 0],
    )
    result = error_breakdown([detections], [targets], ["a", "b"])
    assert result["counts"] == dict.fromkeys(ERROR_TYPES, 1)
    assert result["per_class"]["a"]["counts"]["duplicate"] == 1 and result["per_class"]["b"]["counts"]["both"] == 1
    assert result["map_50_all_fixed"] == pytest.approx(1.0)


def test_dap_is_the_ap_gained_by_fixing_one_cause():
    a, b = [0, 0, 10, 10], [100, 100, 110, 110]
    # A background detection ranked above the one correct detection; the second object missed.
    detections, targets = _picture([[50, 50, 60, 60], a], [0.9, 0.8], [0, 0], [a, b], [0, 0])
    result = error_breakdown([detections], [targets], ["a"])
    assert result["map_50"] == pytest.approx(HALF / 2)
    assert result["dap"]["background"] == pytest.approx(HALF - HALF / 2)  # the correct one ranks first
    assert result["dap"]["missed"] == pytest.approx(0.5 - HALF / 2)  # one object: precision 0.5 at every recall
    assert result["dap"]["localisation"] == result["dap"]["duplicate"] == 0.0
    assert result["map_50_all_fixed"] == pytest.approx(1.0)


def test_a_fixed_localisation_error_finds_its_object_unless_a_better_detection_has():
    a, b = [0, 0, 10, 10], [100, 100, 110, 110]
    loose = [100, 100, 110, 103]  # IoU 0.3 with b
    detections, targets = _picture([a, loose], [0.9, 0.8], [0, 0], [a, b], [0, 0])
    result = error_breakdown([detections], [targets], ["a"])
    assert result["counts"]["localisation"] == 1 and result["counts"]["missed"] == 0  # b is pointed at
    assert result["map_50"] == pytest.approx(HALF) and result["dap"]["localisation"] == pytest.approx(1 - HALF)
    # The same loose box on an object a better detection already found: fixing it removes it.
    detections, targets = _picture([a, [0, 0, 10, 3]], [0.9, 0.8], [0, 0], [a], [0])
    result = error_breakdown([detections], [targets], ["a"])
    assert result["counts"]["localisation"] == 1 and result["dap"]["localisation"] == pytest.approx(0.0)


def test_a_classification_fix_moves_the_detection_to_its_objects_class():
    a = [0, 0, 10, 10]
    detections, targets = _picture([a], [0.9], [1], [a], [0])  # an "a" object called "b"
    result = error_breakdown([detections], [targets], ["a", "b"])
    assert result["counts"]["classification"] == 1 and result["counts"]["missed"] == 0
    assert result["per_class"]["a"]["ap_50"] == 0.0 and result["map_50"] == 0.0  # "b" has no objects: no AP
    assert result["dap"]["classification"] == pytest.approx(1.0)


def test_pictures_without_objects_or_detections():
    empty, targets = _picture([], [], [], [], [])
    detections, _ = _picture([[0, 0, 5, 5]], [0.5], [0], [], [])
    result = error_breakdown([empty, detections], [targets, targets], ["a"])
    assert result["counts"]["background"] == 1 and result["map_50"] is None  # no objects: no AP


def test_the_worst_errors_are_the_highest_scoring_false_positives_and_the_largest_misses():
    from tinyssd.model.error_analysis import worst_errors
    from tinyssd.plots import error_gallery

    a, small, large = [0, 0, 10, 10], [100, 100, 104, 104], [40, 40, 80, 80]
    detections, targets = _picture(
        [a, [50, 0, 60, 10], [0, 0, 10, 3]], [0.9, 0.8, 0.3], [0, 0, 0], [a, small, large], [0, 0, 0]
    )
    worst = worst_errors([detections], [targets], count=2)
    assert [(e["cause"], e.get("score")) for e in worst] == [
        ("background", pytest.approx(0.8)),
        ("localisation", pytest.approx(0.3)),
        ("missed", None),
        ("missed", None),
    ]
    assert worst[1]["object_box"] == a and [e["box"] for e in worst[2:]] == [large, small]
    picture = torch.zeros(3, 120, 120, dtype=torch.uint8)
    grid = error_gallery({0: picture}, [{**e, "label": "a"} for e in worst], tile=64)
    assert grid.dtype == torch.uint8 and grid.shape[0] == 3 and grid.shape[2] == 4 * 64 + 5 * 4
