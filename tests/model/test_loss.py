"""The multibox loss family."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tinyssd import MultiBoxLoss, multibox_prior, multibox_target
from tinyssd.errors import ConfigError
from tinyssd.model.loss import focal_loss, hard_negative_mask, smooth_l1


def _batch(seed=0, batch=3, classes=2):
    gen = torch.Generator().manual_seed(seed)
    anchors = multibox_prior(torch.zeros(1, 1, 6, 6), sizes=[0.2, 0.35], ratios=[1, 2, 0.5])
    num = anchors.shape[1]
    labels = torch.tensor([[[0, 0.1, 0.1, 0.4, 0.5]], [[1, 0.5, 0.4, 0.9, 0.8]], [[0, 0.3, 0.3, 0.6, 0.6]]])[:batch]
    offsets, mask, cls_t = multibox_target(anchors, labels)
    cls_preds = torch.randn(batch, num, classes + 1, generator=gen)
    bbox_preds = torch.randn(batch, 4 * num, generator=gen)
    return cls_preds, cls_t, bbox_preds, offsets, mask


def _chapter_loss(cls_preds, cls_labels, bbox_preds, bbox_labels, bbox_masks):
    """The chapter's calc_loss(...).mean(), written out independently."""
    b, _, c = cls_preds.shape
    cls = F.cross_entropy(cls_preds.reshape(-1, c), cls_labels.reshape(-1), reduction="none").reshape(b, -1).mean(1)
    bbox = F.l1_loss(bbox_preds * bbox_masks, bbox_labels * bbox_masks, reduction="none").mean(1)
    return (cls + bbox).mean()


def test_default_is_the_chapters_loss():
    args = _batch()
    out = MultiBoxLoss()(*args)
    torch.testing.assert_close(out["loss"], _chapter_loss(*args))
    torch.testing.assert_close(out["loss"], out["cls"] + out["bbox"])


def test_focal_gamma0_alpha1_is_cross_entropy():
    gen = torch.Generator().manual_seed(0)
    logits, target = torch.randn(50, 4, generator=gen), torch.randint(4, (50,), generator=gen)
    torch.testing.assert_close(
        focal_loss(logits, target, gamma=0, alpha=1), F.cross_entropy(logits, target, reduction="none")
    )
    args = _batch()
    torch.testing.assert_close(
        MultiBoxLoss(cls_loss="focal", gamma=0.0, alpha=1.0)(*args)["loss"], _chapter_loss(*args)
    )


def test_focal_down_weights_easy_examples():
    logits = torch.tensor([[5.0, 0.0], [0.2, 0.0]])
    target = torch.tensor([0, 0])
    ratio = focal_loss(logits, target, gamma=2) / F.cross_entropy(logits, target, reduction="none")
    assert ratio[0] < 0.01 < ratio[1]


def test_smooth_l1_quadratic_then_linear():
    sigma = 2.0
    x = torch.tensor([-0.2, 0.1, 0.24])  # |x| < 1/sigma^2 = 0.25
    torch.testing.assert_close(smooth_l1(x, sigma), (sigma * x) ** 2 / 2)
    y = torch.tensor([-1.0, 0.3, 2.0])
    torch.testing.assert_close(smooth_l1(y, sigma), y.abs() - 0.5 / sigma**2)
    z = torch.linspace(-2, 2, 41)
    assert (smooth_l1(z, 100.0) - z.abs()).abs().max() < 1e-4


def test_mining_keeps_positives_and_hardest_negatives():
    gen = torch.Generator().manual_seed(0)
    cls_loss = torch.rand(2, 20, generator=gen)
    target = torch.zeros(2, 20, dtype=torch.long)
    target[0, [1, 5]] = 1
    target[1, [0, 2, 4, 6, 8, 10, 12]] = 1  # 7 positives, 13 negatives: min(21, 13) = 13
    used = hard_negative_mask(cls_loss, target, ratio=3)
    assert used[target > 0].all()
    assert ((used & (target == 0)).sum(dim=1)).tolist() == [6, 13]
    neg0 = torch.where(target[0] == 0, cls_loss[0], torch.tensor(-1.0))
    assert set(neg0.topk(6).indices.tolist()) == set(((used[0]) & (target[0] == 0)).nonzero().squeeze(1).tolist())


def test_a_picture_with_no_objects_trains_its_hardest_false_alarms_under_mining():
    cls_loss = torch.arange(20, dtype=torch.float32)[None].repeat(2, 1)
    target = torch.zeros(2, 20, dtype=torch.long)
    target[1, 0] = 1
    used = hard_negative_mask(cls_loss, target, ratio=3)
    # No objects: the 3 hardest background anchors, as if it had one positive.
    assert used[0].nonzero().squeeze(1).tolist() == [17, 18, 19]
    cls_preds = torch.zeros(1, 20, 2, requires_grad=True)
    out = MultiBoxLoss(negative_mining_ratio=3)(
        cls_preds, target[:1], torch.zeros(1, 80), torch.zeros(1, 80), torch.zeros(1, 80)
    )
    out["loss"].backward()
    assert out["cls"] > 0 and cls_preds.grad.abs().sum() > 0


def test_mining_changes_only_the_classification_term():
    args = _batch()
    off = MultiBoxLoss()(*args)
    on = MultiBoxLoss(negative_mining_ratio=3)(*args)
    torch.testing.assert_close(on["bbox"], off["bbox"])
    assert not torch.isclose(on["cls"], off["cls"])


def test_weights_and_positive_normalisation():
    args = _batch()
    base = MultiBoxLoss()(*args)
    weighted = MultiBoxLoss(cls_weight=2.0, bbox_weight=0.5)(*args)
    torch.testing.assert_close(weighted["loss"], 2 * base["cls"] + 0.5 * base["bbox"])
    pos = MultiBoxLoss(normalize="positives")(*args)
    num_pos = (args[1] > 0).sum(1).float()
    a = args[1].shape[1]
    expected_bbox = (base["bbox"] * 0 + ((args[2] - args[3]) * args[4]).abs().sum(1) / num_pos).mean()
    torch.testing.assert_close(pos["bbox"], expected_bbox)
    assert pos["cls"] > base["cls"] * a / num_pos.max() * 0.99


def test_bad_options_refused():
    with pytest.raises(ConfigError, match="cls_loss"):
        MultiBoxLoss(cls_loss="hinge")
    with pytest.raises(ConfigError, match="normalize"):
        MultiBoxLoss(normalize="sum")


def _iou_case(pred_box: list[float], gt_box: list[float]):
    """One positive anchor whose offsets decode to ``pred_box`` (labelled ``gt_box``), one negative."""
    from tinyssd.model.anchors import encode_offsets

    anchors = torch.tensor([[[0.1, 0.1, 0.4, 0.4], [0.5, 0.5, 0.9, 0.9]]])
    bbox_preds = encode_offsets(anchors[0], torch.tensor([pred_box, [0.5, 0.5, 0.9, 0.9]])).reshape(1, -1)
    mask = torch.tensor([[1.0, 1, 1, 1, 0, 0, 0, 0]])
    bbox_targets = encode_offsets(anchors[0], torch.tensor([gt_box, [0.6, 0.6, 0.7, 0.7]])).reshape(1, -1) * mask
    return torch.zeros(1, 2, 2), torch.tensor([[1, 0]]), bbox_preds, bbox_targets, mask, anchors


@pytest.mark.parametrize(
    ("kind", "same_shape", "other_shape"),
    # pred (0.1,0.1,0.3,0.3) vs gt (0.1,0.1,0.5,0.5): IoU 1/4, the enclosing box is gt's, centre
    # distance^2 0.02 over diagonal^2 0.32, same aspect. pred (0.1,0.1,0.3,0.5): IoU 1/2, distance^2
    # 0.01, aspect 1:2 vs 1:1, v = 4/pi^2 (atan 1 - atan 0.5)^2, alpha = v / (1 - IoU + v).
    [("giou", 0.75, 0.5), ("diou", 0.8125, 0.53125), ("ciou", 0.8125, 0.534498)],
)
def test_iou_box_losses_on_hand_computed_boxes(kind, same_shape, other_shape):
    loss = MultiBoxLoss(bbox_loss=kind)
    case = _iou_case([0.1, 0.1, 0.3, 0.3], [0.1, 0.1, 0.5, 0.5])
    out = loss(*case[:5], anchors=case[5])
    # Only the positive anchor counts (the negative's labelled box is ignored), averaged over positives.
    assert out["bbox"].item() == pytest.approx(same_shape, abs=1e-5)
    case = _iou_case([0.1, 0.1, 0.3, 0.5], [0.1, 0.1, 0.5, 0.5])
    assert loss(*case[:5], anchors=case[5])["bbox"].item() == pytest.approx(other_shape, abs=1e-5)


def test_iou_loss_beside_the_offset_loss_adds_with_its_weight():
    case = _iou_case([0.1, 0.1, 0.3, 0.3], [0.1, 0.1, 0.5, 0.5])
    plain = MultiBoxLoss()(*case[:5], anchors=case[5])
    both = MultiBoxLoss(iou_loss="giou", iou_weight=2.0)(*case[:5], anchors=case[5])
    assert both["bbox"] == plain["bbox"] and both["iou"].item() == pytest.approx(0.75, abs=1e-5)
    assert both["loss"].item() == pytest.approx(plain["loss"].item() + 2.0 * 0.75, abs=1e-5)
    assert "iou" not in plain  # the chapter's loss is unchanged


def test_iou_loss_options_are_checked_and_wild_offsets_stay_finite():
    with pytest.raises(ConfigError, match=r"loss\.bbox_loss must be one of"):
        MultiBoxLoss(bbox_loss="iou")
    with pytest.raises(ConfigError, match="beside an offset loss"):
        MultiBoxLoss(bbox_loss="giou", iou_loss="ciou")
    with pytest.raises(ConfigError, match="needs the anchors"):
        MultiBoxLoss(bbox_loss="giou")(*_iou_case([0.1, 0.1, 0.3, 0.3], [0.1, 0.1, 0.5, 0.5])[:5])
    cls_p, cls_t, bbox_preds, bbox_targets, mask, anchors = _iou_case([0.1, 0.1, 0.3, 0.3], [0.1, 0.1, 0.5, 0.5])
    wild = (bbox_preds + 1e4).requires_grad_()  # exp(1e4 / 5) would be inf
    out = MultiBoxLoss(bbox_loss="ciou")(cls_p, cls_t, wild, bbox_targets, mask, anchors=anchors)
    out["loss"].backward()
    assert torch.isfinite(out["loss"]) and torch.isfinite(wild.grad).all()


def test_quality_target_is_the_iou_the_box_reaches_on_hand_computed_values():
    # The positive anchor's box (0.1,0.1,0.3,0.3) reaches IoU 1/4 with its object (0.1,0.1,0.5,0.5);
    # its logits [0, ln 3] give p = [1/4, 3/4]: -(1/4 ln 3/4 + 3/4 ln 1/4) = 1.111641. The negative
    # anchor (logits 0) keeps plain cross-entropy, ln 2; the chapter's mean over both anchors.
    cls_p, cls_t, bbox_preds, bbox_targets, mask, anchors = _iou_case([0.1, 0.1, 0.3, 0.3], [0.1, 0.1, 0.5, 0.5])
    cls_p = torch.tensor([[[0.0, 1.0986123], [0.0, 0.0]]], requires_grad=True)
    bbox_preds.requires_grad_()
    out = MultiBoxLoss(quality="iou")(cls_p, cls_t, bbox_preds, bbox_targets, mask, anchors=anchors)
    assert out["cls"].item() == pytest.approx((1.111641 + 0.693147) / 2, abs=1e-5)
    hard = MultiBoxLoss()(cls_p, cls_t, bbox_preds, bbox_targets, mask, anchors=anchors)
    assert hard["cls"].item() == pytest.approx((0.287682 + 0.693147) / 2, abs=1e-5)
    assert out["bbox"] == hard["bbox"]
    # The target follows the box: the classification term sends no gradient into the offsets.
    out["cls"].backward()
    assert bbox_preds.grad is None or not bbox_preds.grad.any()


def test_quality_option_is_checked():
    with pytest.raises(ConfigError, match=r"loss\.quality"):
        MultiBoxLoss(quality="centerness")
    with pytest.raises(ConfigError, match=r"loss\.quality"):
        MultiBoxLoss(cls_loss="focal", quality="iou")
    with pytest.raises(ConfigError, match="needs the anchors"):
        MultiBoxLoss(quality="iou")(*_iou_case([0.1, 0.1, 0.3, 0.3], [0.1, 0.1, 0.5, 0.5])[:5])
