"""Compound losses: CE / Focal CE / TopK CE + PM Dice, against nnU-Net's own pieces."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from nnunetv2.training.loss.robust_ce_loss import RobustCrossEntropyLoss, TopKLoss

from nnunet_pmdice.losses import (CEPMDiceLoss, CompoundLoss, CrossEntropyTerm, FocalCEPMDiceLoss,
                                  FocalCrossEntropyTerm, PMDiceBCELoss, PMDiceLoss, TopKCEPMDiceLoss,
                                  TopKCrossEntropyTerm, cross_entropy_map)
from nnunet_pmdice.losses.reference import reference_pm_dice


def _data(seed=0, C=3, ignore=None, shape=(2, 12, 14)):
    torch.manual_seed(seed)
    x = (2 * torch.randn(shape[0], C, *shape[1:])).requires_grad_()
    hi = C + (1 if ignore is not None else 0)
    t = torch.randint(0, hi, (shape[0], 1, *shape[1:])).float()  # nnU-Net hands float label maps
    return x, t


@pytest.mark.parametrize("C", [2, 3])
def test_ce_pm_dice_equals_nnunet_ce_plus_reference_pm_dice(C):
    x, t = _data(C=C)
    ours = CEPMDiceLoss(gamma=2.0, gamma_bg=1.0, batch_dice=True)(x, t)
    expected = RobustCrossEntropyLoss()(x, t) + reference_pm_dice(x, t.long(), gamma=2.0, gamma_bg=1.0,
                                                                  batch_dice=True)
    assert ours.item() == pytest.approx(expected.item(), abs=1e-5)
    g1, = torch.autograd.grad(ours, x)
    g2, = torch.autograd.grad(expected, x)
    torch.testing.assert_close(g1, g2, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("C", [2, 3])
def test_ignore_label_matches_nnunet_ce_and_masked_dice(C):
    x, t = _data(seed=1, C=C, ignore=C)
    ours = CEPMDiceLoss(gamma=1.0, ignore_label=C)(x, t)
    mask = (t != C).float()
    ce = RobustCrossEntropyLoss(ignore_index=C)(x, t)
    dice = reference_pm_dice(x, torch.where(t == C, 0, t).long(), gamma=1.0, loss_mask=mask)
    assert ours.item() == pytest.approx((ce + dice).item(), abs=1e-5)
    g1, = torch.autograd.grad(ours, x)
    g2, = torch.autograd.grad(ce + dice, x)
    torch.testing.assert_close(g1, g2, rtol=1e-4, atol=1e-7)
    assert torch.all(g1.masked_select((t == C).expand_as(g1)) == 0)


def test_everything_ignored_gives_zero_ce_and_no_nan():
    x, _ = _data(seed=2)
    t = torch.full((2, 1, 12, 14), 3.0)
    value = CEPMDiceLoss(ignore_label=3)(x, t)
    assert value.item() == 0.0
    value.backward()
    assert torch.isfinite(x.grad).all()


def test_topk_term_equals_nnunet_topkloss():
    for ignore in (None, 3):
        x, t = _data(seed=3, ignore=ignore)
        kwargs = {} if ignore is None else {"ignore_index": ignore}
        expected = TopKLoss(k=10, **kwargs)(x, t)
        mask = None if ignore is None else (t != ignore)
        t_clean = t if ignore is None else torch.where(t == ignore, 0, t)
        ce_map = cross_entropy_map(x, t_clean, mask)
        assert TopKCrossEntropyTerm(10)(ce_map, mask).item() == pytest.approx(expected.item(), abs=1e-6)
    whole = TopKCEPMDiceLoss(k=10, weight_dice=0.0)(x, torch.where(t == 3, 0, t))
    assert whole.item() == pytest.approx(TopKLoss(k=10)(x, torch.where(t == 3, 0, t)).item(), abs=1e-6)


def test_topk_never_empty_on_tiny_input():
    x = torch.randn(1, 2, 2, 2, requires_grad=True)
    value = TopKCrossEntropyTerm(k=1)(cross_entropy_map(x, torch.zeros(1, 1, 2, 2)), None)
    assert torch.isfinite(value)


def test_focal_gamma_zero_is_ce_and_focal_down_weights_easy_pixels():
    x, t = _data(seed=4)
    ce_map = cross_entropy_map(x, t)
    assert FocalCrossEntropyTerm(0.0)(ce_map).item() == pytest.approx(CrossEntropyTerm()(ce_map).item(), abs=1e-7)
    focal = FocalCrossEntropyTerm(2.0)(ce_map)
    p_t = torch.exp(-ce_map)
    assert focal.item() == pytest.approx(((1 - p_t) ** 2 * ce_map).mean().item(), rel=1e-5)
    assert focal.item() < CrossEntropyTerm()(ce_map).item()
    g, = torch.autograd.grad(FocalCEPMDiceLoss(focal_gamma=0.5)(x, t), x)
    assert torch.isfinite(g).all()


@pytest.mark.parametrize("C", [2, 3])
def test_shared_softmax_ce_map_equals_separate_cross_entropy(C):
    x, t = _data(seed=5, C=C)
    dice_value, ce_map = PMDiceLoss(gamma=1.0).forward_with_ce_map(x, t)
    torch.testing.assert_close(ce_map, F.cross_entropy(x, t[:, 0].long(), reduction="none").unsqueeze(1),
                               rtol=1e-5, atol=1e-6)
    assert dice_value.item() == pytest.approx(PMDiceLoss(gamma=1.0)(x, t).item(), abs=1e-7)


def test_weights_and_zero_weights():
    x, t = _data(seed=6)
    dice = PMDiceLoss(gamma=1.0)(x, t)
    ce = RobustCrossEntropyLoss()(x, t)
    assert CEPMDiceLoss(weight_ce=0.3, weight_dice=2.0)(x, t).item() == pytest.approx(
        (0.3 * ce + 2.0 * dice).item(), abs=1e-5)
    assert CEPMDiceLoss(weight_ce=0.0)(x, t).item() == pytest.approx(dice.item(), abs=1e-7)
    assert CEPMDiceLoss(weight_dice=0.0)(x, t).item() == pytest.approx(ce.item(), abs=1e-6)


def test_region_mode_bce_plus_pm_dice_with_ignore_channel():
    torch.manual_seed(7)
    x = torch.randn(2, 3, 10, 10, requires_grad=True)
    regions = torch.rand(2, 3, 10, 10) > 0.6
    ignore = torch.rand(2, 1, 10, 10) > 0.8
    target = torch.cat([regions, ignore], 1)  # nnU-Net appends the ignore channel last
    value = PMDiceBCELoss(gamma=[1.0, 2.0, 1.0], ignore_label=4)(x, target)
    mask = (~ignore).float()
    bce = (F.binary_cross_entropy_with_logits(x, regions.float(), reduction="none") * mask).sum() / (mask.sum() * 3)
    dice = reference_pm_dice(x, regions.float(), gamma=[1.0, 2.0, 1.0], nonlin="sigmoid", loss_mask=mask)
    assert value.item() == pytest.approx((bce + dice).item(), abs=1e-5)
    value.backward()
    assert torch.all(x.grad.masked_select(ignore.expand_as(x)) == 0)


def test_compound_rejects_mismatched_parts():
    with pytest.raises(ValueError, match="regions"):
        CompoundLoss(PMDiceLoss(nonlin="softmax"), CrossEntropyTerm(), regions=True)
    with pytest.raises(TypeError, match="DiceFamilyLoss"):
        CompoundLoss(torch.nn.MSELoss(), None)
    with pytest.raises(ValueError, match="needs a Dice part"):
        CompoundLoss(None, None)
    with pytest.raises(ValueError, match="weight_ce must be >= 0"):
        CEPMDiceLoss(weight_ce=-1)
    with pytest.raises(ValueError, match="k must be <= 100"):
        TopKCEPMDiceLoss(k=150)
    with pytest.raises(ValueError, match="ignore label needs a label-map"):
        CEPMDiceLoss(ignore_label=3)(torch.randn(1, 3, 4, 4), torch.zeros(1, 3, 4, 4))
