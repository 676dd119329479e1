"""The chapter's metrics as torchmetrics classes."""

from __future__ import annotations

import torch

from tinyssd import BBoxMAE, ClassError
from tinyssd.metrics import make_map_metric, to_pixel_targets


def test_class_error_hand_computed():
    metric = ClassError()
    preds = torch.tensor([[[2.0, 1.0], [0.0, 1.0], [3.0, 0.0]]])  # argmax 0, 1, 0
    metric.update(preds, torch.tensor([[0, 0, 0]]))
    metric.update(torch.tensor([[[0.0, 5.0]]]), torch.tensor([[1]]))
    torch.testing.assert_close(metric.compute().float(), torch.tensor(1 / 4))


def test_bbox_mae_is_masked_mean_over_all_offsets():
    metric = BBoxMAE()
    preds = torch.tensor([[1.0, 2.0, 3.0, 4.0, 10.0, 10.0, 10.0, 10.0]])
    labels = torch.tensor([[0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0]])
    metric.update(preds, labels, mask)
    torch.testing.assert_close(metric.compute().float(), torch.tensor(10 / 8))


def test_map_perfect_and_disjoint():
    labels = torch.tensor([[[0, 0.1, 0.1, 0.5, 0.5]], [[0, 0.5, 0.5, 0.9, 0.8]]])
    targets = to_pixel_targets(labels, 100, 100)
    perfect = [{"boxes": t["boxes"], "scores": torch.tensor([0.9]), "labels": t["labels"]} for t in targets]
    metric = make_map_metric(1)
    metric.update(perfect, targets)
    assert metric.compute()["map"].item() == 1.0
    disjoint = [
        {"boxes": torch.tensor([[0.0, 90.0, 5.0, 99.0]]), "scores": torch.tensor([0.9]), "labels": torch.tensor([0])}
    ] * 2
    metric = make_map_metric(1)
    metric.update(disjoint, targets)
    assert metric.compute()["map"].item() == 0.0


def test_pixel_targets_drop_padding():
    labels = torch.tensor([[[0, 0.1, 0.2, 0.3, 0.4], [-1, -1, -1, -1, -1]]])
    (t,) = to_pixel_targets(labels, 200, 100)
    torch.testing.assert_close(t["boxes"], torch.tensor([[20.0, 20.0, 60.0, 40.0]]))
    assert t["labels"].tolist() == [0]
