"""The chapter's metrics as torchmetrics classes."""

from __future__ import annotations

import pytest
import torch

from tinyssd import BBoxMAE, ClassError
from tinyssd.model.metrics import make_map_metric, to_pixel_targets


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


def test_precision_recall_at_threshold_hand_computed():
    from tinyssd.model.metrics import DetectionPrecisionRecall

    metric = DetectionPrecisionRecall(threshold=0.9, iou_threshold=0.5)
    targets = [
        {"boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]]), "labels": torch.tensor([0, 0])}
    ]
    preds = [
        {
            # hit, duplicate of the same object, miss, and one below the threshold (ignored)
            "boxes": torch.tensor(
                [[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 10.0, 10.0], [50.0, 50.0, 60.0, 60.0], [20.0, 20.0, 30.0, 30.0]]
            ),
            "scores": torch.tensor([0.95, 0.93, 0.92, 0.5]),
            "labels": torch.tensor([0, 0, 0, 0]),
        }
    ]
    metric.update(preds, targets)
    out = metric.compute()
    torch.testing.assert_close(out["precision"].float(), torch.tensor(1 / 3))
    torch.testing.assert_close(out["recall"].float(), torch.tensor(1 / 2))


def _metric_inputs():
    gen = torch.Generator().manual_seed(0)
    cls_preds = torch.randn(8, 30, 3, generator=gen)
    cls_labels = torch.randint(3, (8, 30), generator=gen)
    bbox_preds, bbox_labels = torch.randn(8, 120, generator=gen), torch.randn(8, 120, generator=gen)
    mask = (torch.rand(8, 120, generator=gen) > 0.7).float()
    targets, preds = [], []
    for _ in range(8):
        xy = torch.rand(2, 2, generator=gen) * 50
        gt = torch.cat([xy, xy + 20], dim=1)
        targets.append({"boxes": gt, "labels": torch.tensor([0, 1])})
        noise = torch.randn(3, 4, generator=gen) * 4
        preds.append(
            {
                "boxes": torch.cat([gt, gt[:1]]) + noise,
                "scores": torch.rand(3, generator=gen),
                "labels": torch.tensor([0, 1, 1]),
            }
        )
    return cls_preds, cls_labels, bbox_preds, bbox_labels, mask, preds, targets


def _compute_metrics(shard: slice):
    from tinyssd.model.metrics import DetectionPrecisionRecall

    cls_preds, cls_labels, bbox_preds, bbox_labels, mask, preds, targets = _metric_inputs()
    ce, mae, pr, mp = (
        ClassError(),
        BBoxMAE(),
        DetectionPrecisionRecall(threshold=0.3),
        make_map_metric(2),
    )
    ce.update(cls_preds[shard], cls_labels[shard])
    mae.update(bbox_preds[shard], bbox_labels[shard], mask[shard])
    pr.update(preds[shard], targets[shard])
    mp.update(preds[shard], targets[shard])
    result = mp.compute()
    return {
        "class_error": float(ce.compute()),
        "bbox_mae": float(mae.compute()),
        **{k: float(v) for k, v in pr.compute().items()},
        "map": float(result["map"]),
        "map_50": float(result["map_50"]),
    }


def _ddp_worker(rank: int, world: int, port: int, out_dir: str):
    import json
    import os

    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    values = _compute_metrics(slice(rank, None, world))  # each process sees half the data
    if rank == 0:
        with open(os.path.join(out_dir, "ddp.json"), "w") as f:
            json.dump(values, f)
    dist.destroy_process_group()


@pytest.mark.slow
def test_two_processes_equal_one(tmp_path):
    import json
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    ddp = json.loads((tmp_path / "ddp.json").read_text())
    single = _compute_metrics(slice(None))
    assert ddp.keys() == single.keys()
    for key in single:
        assert abs(ddp[key] - single[key]) < 1e-6, (key, ddp[key], single[key])
