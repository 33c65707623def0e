"""The paper's comparison losses and Dilated Balanced CE: hand-computed values, gradients, defining properties.

The hand example (one image, two classes, four pixels in a row):

    labels      y  = [0,   0,   1,   1  ]
    class 1     p1 = [0.1, 0.2, 0.6, 0.9]      (class 0: p0 = 1 - p1 = [0.9, 0.8, 0.4, 0.1])

Dice of eq. 4 (squared denominator, epsilon 1e-6):
    class 1: I = 0.6 + 0.9 = 1.5, S = 2 + (0.01 + 0.04 + 0.36 + 0.81) = 3.22
    class 0: I = 0.9 + 0.8 = 1.7, S = 2 + (0.81 + 0.64 + 0.16 + 0.01) = 3.62
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from nnunet_pmdice.losses import (CEPMDiceLoss, CompoundLoss, CrossEntropyTerm, DiceFamilyLoss, DiceLoss,
                                  DiceOptions, DilatedBalancedCELoss, DilatedBalancedCETerm, FocalCrossEntropyTerm,
                                  FocalDiceWangLoss, FocalDiceZhaoLoss, LogDiceLoss, PMDiceBCELoss, PMDiceLoss,
                                  TopKCrossEntropyTerm, TopKDiceLoss, WangFocalDiceLoss, ZhaoFocalDiceLoss,
                                  cross_entropy_map)
from nnunet_pmdice.losses._selected_dice import keep_top_percent
from nnunet_pmdice.losses.dbce import dilate

EPS = 1e-6
P1 = [0.1, 0.2, 0.6, 0.9]
LABELS = torch.tensor([0, 0, 1, 1]).view(1, 1, 1, 4)


def _dice(inter, denom):
    return (2 * inter + EPS) / (denom + EPS)


D1 = _dice(1.5, 3.22)
D0 = _dice(1.7, 3.62)


def _logits(p1=P1, dtype=torch.float64):
    """Two-class logits (0, logit(p1)) whose softmax gives class 1 the probabilities ``p1``."""
    p = torch.tensor(p1, dtype=dtype)
    return torch.stack([torch.zeros_like(p), torch.log(p / (1 - p))]).view(1, 2, 1, len(p1)).requires_grad_()


def _random(seed=0, B=2, C=3, shape=(10, 12), dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = (2 * torch.randn(B, C, *shape, generator=g, dtype=dtype)).requires_grad_()
    return x, torch.randint(0, C, (B, 1, *shape), generator=g)


DICE_LOSSES = [DiceLoss, LogDiceLoss, WangFocalDiceLoss, ZhaoFocalDiceLoss, TopKDiceLoss]


# -- hand-computed values ---------------------------------------------------------------------------
@pytest.mark.parametrize("loss, expected", [
    (DiceLoss(), 1 - (D0 + D1) / 2),
    (LogDiceLoss(gamma=1.0), (-math.log(D0) - math.log(D1)) / 2),
    (LogDiceLoss(), ((-math.log(D0)) ** 0.3 + (-math.log(D1)) ** 0.3) / 2),  # Wong et al.'s gamma 0.3
    (WangFocalDiceLoss(), 1 - (math.sqrt(D0) + math.sqrt(D1)) / 2),  # beta 2: "root squared" Dice
    (WangFocalDiceLoss(beta=4.0), 1 - (D0 ** 0.25 + D1 ** 0.25) / 2),
    # TopK Dice, k 50: each class keeps its harder positive: class 1 pixel 2 (error 0.4), class 0 pixel 1 (0.2)
    (TopKDiceLoss(k=50), 1 - (_dice(0.8, 1 + 0.64 + 0.16 + 0.01) + _dice(0.6, 1 + 0.01 + 0.04 + 0.36)) / 2),
    # Zhao's Focal Dice, k 50: each class keeps its harder negative: class 1 pixel 1 (p1 0.2), class 0 pixel 2 (p0 0.4)
    (ZhaoFocalDiceLoss(k=50), 1 - (_dice(1.7, 2 + 0.81 + 0.64 + 0.16) + _dice(1.5, 2 + 0.04 + 0.36 + 0.81)) / 2),
    (ZhaoFocalDiceLoss(k=50, do_bg=False), 1 - _dice(1.5, 2 + 0.04 + 0.36 + 0.81)),
], ids=["dice", "log-dice-g1", "log-dice-g0.3", "wang-b2", "wang-b4", "topk-k50", "zhao-k50", "zhao-k50-nobg"])
def test_hand_computed_values(loss, expected):
    assert loss(_logits(), LABELS).item() == pytest.approx(expected, abs=1e-12)


def test_topk_rounding_keeps_at_least_one_and_floor_of_k_percent():
    errors = torch.tensor([0.5, 0.1, 0.9, 0.3, 0.7, 0.2]).view(1, 1, 6)
    cand = torch.tensor([True, True, True, True, True, False]).view(1, 1, 6)
    assert keep_top_percent(errors, cand, 10).flatten().tolist() == [False, False, True, False, False, False]
    assert keep_top_percent(errors, cand, 40).flatten().tolist() == [False, False, True, False, True, False]
    assert keep_top_percent(errors, cand, 100).flatten().tolist() == cand.flatten().tolist()
    assert not keep_top_percent(errors, torch.zeros_like(cand), 10).any()


def test_batch_dice_sums_selected_pixels_over_the_batch():
    x, t = torch.cat([_logits()] * 2).detach(), torch.cat([LABELS, 1 - LABELS])
    # class 1 keeps pixel 2 of sample 0 (error 0.4 > 0.1) and pixel 0 of sample 1 (its labels are mirrored:
    # positives 0, 1 with errors 0.9, 0.8); all negatives stay: sample 0 pixels 0, 1, sample 1 pixels 2, 3
    inter1 = 0.6 + 0.1
    denom1 = (0.01 + 0.04 + 1 + 0.36) + (1 + 0.01 + 0.36 + 0.81)
    value = TopKDiceLoss(k=50, batch_dice=True, do_bg=False)(x, t)
    assert value.item() == pytest.approx(1 - _dice(inter1, denom1), abs=1e-12)


# -- defining properties -------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs", [{}, {"batch_dice": True}, {"do_bg": False}])
def test_selection_dice_with_k_100_is_the_dice_of_eq4(kwargs):
    x, t = _random(1)
    dice = DiceLoss(**kwargs)(x, t)
    dice_grad, = torch.autograd.grad(dice, x)
    for cls in (TopKDiceLoss, ZhaoFocalDiceLoss):
        value = cls(k=100, **kwargs)(x, t)
        assert value.item() == pytest.approx(dice.item(), abs=1e-12)
        torch.testing.assert_close(torch.autograd.grad(value, x)[0], dice_grad)


def test_dice_is_pm_dice_with_gamma_0_and_the_class_level_variants_reduce_to_it():
    x, t = _random(2)
    dice = DiceLoss()(x, t).item()
    assert dice == pytest.approx(PMDiceLoss(gamma=0.0)(x, t).item(), abs=1e-15)
    assert WangFocalDiceLoss(beta=1.0)(x, t).item() == pytest.approx(dice, abs=1e-12)


def test_wang_focal_dice_shifts_the_gradient_to_the_class_with_the_lower_dice():
    dice = torch.tensor([0.9, 0.3], dtype=torch.float64, requires_grad=True)
    for beta, ratio in ((1.0, 1.0), (2.0, math.sqrt(0.9 / 0.3)), (4.0, (0.9 / 0.3) ** 0.75)):
        grad, = torch.autograd.grad(WangFocalDiceLoss(beta=beta).pair_loss(dice).sum(), dice)
        assert (grad[1] / grad[0]).item() == pytest.approx(ratio, rel=1e-12)


def test_log_dice_grows_faster_than_dice_for_poor_classes():
    dice = torch.tensor([0.9, 0.3], dtype=torch.float64)
    log_terms = LogDiceLoss(gamma=1.0).pair_loss(dice)
    # -ln D over 1 - D: 1.054 for D = 0.9, 1.720 for D = 0.3
    ratios = (log_terms / (1 - dice)).tolist()
    assert ratios[1] > ratios[0] > 1


def test_zhao_focal_dice_ignores_the_easy_true_negatives():
    loss = ZhaoFocalDiceLoss(k=50, do_bg=False)  # class 1 keeps one of its two negatives: the harder one
    x = _logits()
    value = loss(x, LABELS)
    grad, = torch.autograd.grad(value, x)
    assert torch.all(grad[..., 0] == 0), "the easy negative (p1 = 0.1) must not reach the loss"
    assert torch.all(grad[..., 1] != 0), "the hard negative (p1 = 0.2) is in the loss"
    easier = _logits([0.01, 0.2, 0.6, 0.9])
    assert loss(easier, LABELS).item() == value.item()  # whatever the easy negative's value
    assert DiceLoss(do_bg=False)(easier, LABELS).item() != DiceLoss(do_bg=False)(x, LABELS).item()


def test_topk_dice_ignores_the_easy_true_positives():
    loss = TopKDiceLoss(k=50, do_bg=False)
    x = _logits()
    grad, = torch.autograd.grad(loss(x, LABELS), x)
    assert torch.all(grad[..., 3] == 0), "the easy positive (p1 = 0.9) must not reach the loss"
    assert torch.all(grad[..., 2] != 0)
    assert loss(_logits([0.1, 0.2, 0.6, 0.99]), LABELS).item() == pytest.approx(loss(x, LABELS).item(), abs=1e-15)


def test_one_hot_and_label_map_targets_agree():
    x, t = _random(3)
    onehot = torch.zeros_like(x).scatter_(1, t, 1.0)
    for cls in DICE_LOSSES:
        assert cls()(x, onehot).item() == pytest.approx(cls()(x, t).item(), abs=1e-12), cls.__name__
    assert DilatedBalancedCELoss(2)(x, onehot).item() == pytest.approx(DilatedBalancedCELoss(2)(x, t).item(), abs=1e-12)


@pytest.mark.parametrize("loss", [DiceLoss(), LogDiceLoss(), WangFocalDiceLoss(), ZhaoFocalDiceLoss(k=50),
                                  TopKDiceLoss(k=50)], ids=lambda m: type(m).__name__)
def test_loss_mask_equals_removing_the_pixels(loss):
    x, t = _random(4, B=1, shape=(6, 8))
    mask = torch.ones(1, 1, 6, 8)
    mask[..., 6:] = 0
    masked = loss(x, t, mask)
    cropped = loss(x[..., :6], t[..., :6])
    assert masked.item() == pytest.approx(cropped.item(), abs=1e-12)
    grad, = torch.autograd.grad(masked, x)
    assert torch.all(grad[..., 6:] == 0)


def test_sigmoid_region_mode():
    x, _ = _random(5, C=2)
    y = (torch.rand(x.shape, generator=torch.Generator().manual_seed(5)) > 0.6).double()
    for cls in (TopKDiceLoss, ZhaoFocalDiceLoss):
        value = cls(k=100, nonlin="sigmoid")(x, y)
        assert value.item() == pytest.approx(DiceLoss(nonlin="sigmoid")(x, y).item(), abs=1e-12)


# -- gradients --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("loss", [DiceLoss(), LogDiceLoss(), WangFocalDiceLoss(), ZhaoFocalDiceLoss(k=30),
                                  TopKDiceLoss(k=30, batch_dice=True), DilatedBalancedCELoss(1)],
                         ids=lambda m: type(m).__name__)
def test_gradcheck(loss):
    x, t = _random(6, B=2, C=3, shape=(4, 5))
    assert torch.autograd.gradcheck(lambda inp: loss(inp, t), (x,), eps=1e-6, atol=1e-6, fast_mode=True)


@pytest.mark.parametrize("loss", [DiceLoss(), LogDiceLoss(), WangFocalDiceLoss(), ZhaoFocalDiceLoss(k=30),
                                  TopKDiceLoss(k=30), DilatedBalancedCELoss(2)], ids=lambda m: type(m).__name__)
def test_gradients_finite_for_confident_and_perfect_predictions(loss):
    _, t = _random(7, B=2, C=3, shape=(8, 8), dtype=torch.float32)
    perfect = (60 * F.one_hot(t[:, 0], 3).permute(0, 3, 1, 2).float() - 30).requires_grad_()
    wrong = (60 * F.one_hot((t[:, 0] + 1) % 3, 3).permute(0, 3, 1, 2).float() - 30).requires_grad_()
    for x in (perfect, wrong):
        value = loss(x, t)
        grad, = torch.autograd.grad(value, x)
        assert torch.isfinite(value) and torch.isfinite(grad).all()


@pytest.mark.parametrize("cls", DICE_LOSSES + [DilatedBalancedCELoss])
def test_half_precision_input_is_summed_in_float32(cls):
    x, t = _random(8, dtype=torch.float32)
    value = cls()(x.bfloat16(), t)
    assert value.dtype == torch.float32
    assert value.item() == pytest.approx(cls()(x, t).item(), abs=0.05)


# -- Dilated Balanced CE --------------------------------------------------------------------------------
def test_dbce_with_zero_dilation_is_balanced_ce():
    x, t = _random(9, B=1, C=4)
    labels = t[:, 0]
    weight = 1.0 / torch.bincount(labels.flatten(), minlength=4).double()
    expected = F.cross_entropy(x, labels, weight=weight)
    value = DilatedBalancedCELoss(dilation=0)(x, t)
    assert value.item() == pytest.approx(expected.item(), abs=1e-12)
    torch.testing.assert_close(torch.autograd.grad(value, x)[0], torch.autograd.grad(expected, x)[0])


def test_dbce_hand_values_on_a_ce_map():
    ce = torch.arange(9, dtype=torch.float64).view(1, 1, 3, 3) ** 2
    centre = torch.zeros(1, 1, 3, 3)
    centre[..., 1, 1] = 1
    # dilation 1 (a plus): region {1, 3, 4, 5, 7} -> mean 100 / 5; background corners {0, 2, 6, 8} -> 104 / 4
    assert DilatedBalancedCETerm(1, 2)(ce, None, centre).item() == pytest.approx((20 + 26) / 2)
    # dilation 0: the class {4} -> 16; background -> 188 / 8
    assert DilatedBalancedCETerm(0, 2)(ce, None, centre).item() == pytest.approx((16 + 23.5) / 2)
    # one row, classes 1 and 2 with overlapping dilated regions: {0, 1} and {1, 2, 3}; background {4}
    line = torch.tensor([1, 0, 2, 0, 0]).view(1, 1, 1, 5)
    ce_line = torch.tensor([1.0, 2, 3, 4, 5], dtype=torch.float64).view(1, 1, 1, 5)
    assert DilatedBalancedCETerm(1, 3)(ce_line, None, line).item() == pytest.approx((1.5 + 3 + 5) / 3)
    # a masked pixel belongs to no region: without pixel 3, class 2's region is {1, 2}
    mask = torch.tensor([1, 1, 1, 0, 1]).view(1, 1, 1, 5)
    assert DilatedBalancedCETerm(1, 3)(ce_line * mask, mask, line).item() == pytest.approx((1.5 + 2.5 + 5) / 3)


def test_dbce_weights_are_per_sample_and_mean_over_regions():
    ce = torch.ones(2, 1, 4, 4, dtype=torch.float64)
    ce[1] = 3.0
    t = torch.zeros(2, 1, 4, 4)
    t[0, 0, 0, 0] = 1  # sample 0: two regions with mean CE 1; sample 1: one region (background) with CE 3
    assert DilatedBalancedCETerm(1, 2)(ce, None, t).item() == pytest.approx((1 + 1 + 3) / 3)


def test_dilation_uses_a_ball():
    point = torch.zeros(1, 1, 7, 7, 7)
    point[..., 3, 3, 3] = 1
    assert [int(dilate(point, r).sum()) for r in (0, 1, 2)] == [1, 7, 33]
    disk = torch.zeros(1, 1, 7, 7)
    disk[..., 3, 3] = 1
    assert int(dilate(disk, 2).sum()) == 13


def test_dbce_in_a_compound_loss_with_the_ignore_label():
    x, t = _random(10, B=2, C=3)
    t = t.float()
    t[:, :, :2] = 3  # ignore label
    value = CompoundLoss(DiceLoss(), DilatedBalancedCETerm(1, 3), ignore_label=3)(x, t)
    mask = (t != 3).double()
    clean = torch.where(t == 3, 0, t)
    expected = DiceLoss()(x, clean, mask) + DilatedBalancedCELoss(1)(x, clean, mask)
    assert value.item() == pytest.approx(expected.item(), abs=1e-12)
    grad, = torch.autograd.grad(value, x)
    assert torch.all(grad[:, :, :2] == 0)
    everything_ignored = CompoundLoss(None, DilatedBalancedCETerm(1, 3), ignore_label=3)(x, torch.full_like(t, 3))
    assert everything_ignored.item() == 0.0


# -- the CE terms the compounds reuse ---------------------------------------------------------------------
def test_focal_ce_with_gamma_0_is_ce_and_hand_values():
    ce = torch.tensor([math.log(2), math.log(4), 0.0, math.log(10)]).view(1, 1, 2, 2)  # p_t = 1/2, 1/4, 1, 1/10
    assert FocalCrossEntropyTerm(0.0)(ce).item() == pytest.approx(CrossEntropyTerm()(ce).item(), abs=1e-7)
    expected = (0.25 * math.log(2) + 0.5625 * math.log(4) + 0.81 * math.log(10)) / 4
    assert FocalCrossEntropyTerm(2.0)(ce).item() == pytest.approx(expected, rel=1e-6)
    assert TopKCrossEntropyTerm(50)(ce).item() == pytest.approx((math.log(4) + math.log(10)) / 2, rel=1e-6)


def test_ce_map_of_the_hand_example():
    ce = cross_entropy_map(_logits(), LABELS)
    expected = [-math.log(0.9), -math.log(0.8), -math.log(0.6), -math.log(0.9)]
    torch.testing.assert_close(ce.flatten(), torch.tensor(expected, dtype=torch.float64))


# -- bad arguments ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("make, error, message", [
    (lambda: TopKDiceLoss(k=0), ValueError, "k must be > 0"),
    (lambda: ZhaoFocalDiceLoss(k=150), ValueError, "k must be <= 100"),
    (lambda: TopKDiceLoss(k="10"), TypeError, "k must be a real number"),
    (lambda: LogDiceLoss(gamma=0), ValueError, "gamma must be > 0"),
    (lambda: WangFocalDiceLoss(beta=-1), ValueError, "beta must be > 0"),
    (lambda: DiceLoss(smooth=0), ValueError, "smooth must be > 0"),
    (lambda: DiceLoss(nonlin="relu"), ValueError, "nonlin must be one of"),
    (lambda: DilatedBalancedCELoss(-1), ValueError, "dilation must be >= 0"),
    (lambda: DilatedBalancedCELoss(1.5), TypeError, "dilation must be an int"),
    (lambda: DilatedBalancedCETerm(2, num_classes=1), ValueError, "num_classes must be an int >= 2"),
])
def test_bad_arguments_raise(make, error, message):
    with pytest.raises(error, match=message):
        make()


def test_bad_inputs_raise():
    x, t = _random(11)
    with pytest.raises(ValueError, match="target holds label 7 but the logits have C=3"):
        TopKDiceLoss()(x, t + 5)
    with pytest.raises(ValueError, match="does not match logits"):
        ZhaoFocalDiceLoss()(x, t[..., :4])
    with pytest.raises(ValueError, match="loss_mask must have shape"):
        TopKDiceLoss()(x, t, torch.ones(2, 1, 3, 3))
    with pytest.raises(TypeError, match="floating point"):
        LogDiceLoss()(x.long(), t)
    ce = cross_entropy_map(x, t)
    with pytest.raises(ValueError, match="builds its weights from the ground truth"):
        DilatedBalancedCETerm(1)(ce, None)
    with pytest.raises(ValueError, match="region / sigmoid training is not supported"):
        DilatedBalancedCETerm(1)(cross_entropy_map(x, torch.zeros_like(x), nonlin="sigmoid"), None, t)
    with pytest.raises(ValueError, match="does not match the CE map"):
        DilatedBalancedCETerm(1)(ce, None, t[..., :4])


# -- the Dice family --------------------------------------------------------------------------------------
def test_each_loss_keeps_its_own_parameter_and_the_shared_options():
    assert LogDiceLoss(gamma=0.5).gamma == 0.5 and LogDiceLoss(gamma=0.5).log_gamma == 0.5
    assert not issubclass(DiceLoss, PMDiceLoss) and not hasattr(DiceLoss(), "gamma")
    for cls in DICE_LOSSES + [PMDiceLoss]:
        loss = cls()
        assert isinstance(loss, DiceFamilyLoss) and loss.options == DiceOptions(), cls.__name__
        assert loss.smooth == 1e-6 and loss.do_bg and loss.squared and loss.nonlin == "softmax"
        assert loss.modulated == (cls is PMDiceLoss), cls.__name__
    assert DiceLoss().gammas_for(3) == (0.0, 0.0, 0.0)
    assert repr(DiceLoss()) == "DiceLoss(" + DiceOptions().describe() + ")"
    assert repr(LogDiceLoss()).startswith("LogDiceLoss(gamma=0.3, batch_dice=False")


def test_former_names_and_positional_options_still_work():
    assert WangFocalDiceLoss is FocalDiceWangLoss and ZhaoFocalDiceLoss is FocalDiceZhaoLoss
    # the Dice options follow each loss's own arguments, in the order of DiceOptions
    assert PMDiceLoss(2.0, None, True).batch_dice
    assert LogDiceLoss(0.5, False, False).options == DiceOptions(do_bg=False)
    assert TopKDiceLoss(20, True, False, 1e-3).options == DiceOptions(batch_dice=True, do_bg=False, smooth=1e-3)
    compound = CEPMDiceLoss(2.0, 1.0, batch_dice=True, squared=False, regions=False)
    assert compound.dice.options == DiceOptions(batch_dice=True, squared=False)
    assert PMDiceBCELoss(gamma=1.0).dice.nonlin == "sigmoid"


def test_misspelt_or_misplaced_options_name_the_loss():
    with pytest.raises(TypeError, match=r"LogDiceLoss\(\) got an unexpected keyword argument 'smoth'"):
        LogDiceLoss(smoth=1.0)
    with pytest.raises(TypeError, match="sets nonlin from regions"):
        CEPMDiceLoss(nonlin="sigmoid")


@pytest.mark.parametrize("make, message", [
    (lambda: DiceLoss(batch_dice="no"), "batch_dice must be True or False, got 'no'"),
    (lambda: PMDiceLoss(do_bg=None), "do_bg must be True or False, got None"),
    (lambda: TopKDiceLoss(ddp=2), "ddp must be True or False, got 2"),
    (lambda: CEPMDiceLoss(regions="yes"), "regions must be True or False"),
    (lambda: DiceLoss(do_bg=np.array([1, 0])), r"do_bg must be True or False, got array\(\[1, 0\]\)"),
    (lambda: DiceLoss(squared=torch.tensor([True, False])), "squared must be True or False, got tensor"),
])
def test_flags_refuse_what_bool_would_silently_accept(make, message):
    with pytest.raises(TypeError, match=message):
        make()
    assert DiceLoss(batch_dice=1, squared=torch.tensor(False)).options == DiceOptions(batch_dice=True, squared=False)


# -- input checks on every loss -------------------------------------------------------------------------
CHECKED = DICE_LOSSES + [PMDiceLoss, DilatedBalancedCELoss]


@pytest.mark.parametrize("make", CHECKED + [lambda: cross_entropy_map], ids=lambda c: getattr(c, "__name__", "ce"))
def test_every_loss_refuses_bad_masks_labels_and_empty_input(make):
    x, t = _random(12)
    loss = make()
    mask = torch.ones(2, 1, 10, 12)
    mask[0, 0, 0, 0] = 2.0
    with pytest.raises(ValueError, match="loss_mask must hold only 0 and 1"):
        loss(x, t, mask)
    t_float = t.double()
    t_float[1, 0, 3, 3] = 1.5
    with pytest.raises(ValueError, match="holds 1.5, which is not a whole number"):
        loss(x, t_float, None)
    with pytest.raises(ValueError, match="must all be >= 1"):
        loss(x[:0], t[:0], None)
    onehot = torch.zeros_like(x).scatter_(1, t, 1.0)
    onehot[0, 0, 0, 0] = 3.0
    with pytest.raises(ValueError, match=r"must hold values in \[0, 1\]"):
        loss(x, onehot, None)


class _CountChecks:
    def __init__(self, monkeypatch):
        from nnunet_pmdice.losses import _checks
        self.calls = 0
        original = _checks._check_values

        def counted(*args):
            self.calls += 1
            return original(*args)
        monkeypatch.setattr(_checks, "_check_values", counted)


@pytest.mark.parametrize("make", [
    lambda: CEPMDiceLoss(ignore_label=3), lambda: CompoundLoss(TopKDiceLoss(), CrossEntropyTerm(), ignore_label=3),
    lambda: CompoundLoss(DiceLoss(), DilatedBalancedCETerm(2, 3), ignore_label=3),
    lambda: CompoundLoss(None, CrossEntropyTerm(), ignore_label=3), lambda: DilatedBalancedCELoss(2),
], ids=["ce-pm-dice", "ce-topk-dice", "dbce-dice", "ce-only", "dbce"])
def test_value_checks_run_once_per_call(make, monkeypatch):
    """The value checks (one pass over target and mask, one device read-back) run once per call, also
    where a compound computes its CE map apart from the Dice sums."""
    x, t = _random(13)
    counter = _CountChecks(monkeypatch)
    make()(x, t.double())
    assert counter.calls == 1
