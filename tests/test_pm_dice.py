"""PMDiceLoss: hand-computed values, the paper's defining properties, gradients, dtypes, bad input."""
from __future__ import annotations

import math

import pytest
import torch

from nnunet_pmdice.losses import PMDiceLoss, VMDiceLoss
from nnunet_pmdice.losses.reference import reference_pm_dice

EPS = 1e-6


def _logits_for_probs(p_fg):
    """Two-class logits (1, 2, *shape) whose softmax gives foreground probability ``p_fg``."""
    p = torch.as_tensor(p_fg, dtype=torch.float64)
    return torch.stack([torch.zeros_like(p), torch.log(p / (1 - p))])[None]


def _dice(inter, denom, eps=EPS):
    return (2 * inter + eps) / (denom + eps)


# Two pixels: pixel 0 is foreground predicted 0.75, pixel 1 is background predicted 0.5 (foreground prob).
P_FG = [[0.75, 0.5]]
LABELS = torch.tensor([[[[1, 0]]]])
X = _logits_for_probs(P_FG)
# gamma 1: class 1: y=[1,0], p=[.75,.5], m=|y-p|=[.25,.5]: I=.25*.75, D=.25*(1+.75^2)+.5*(.5^2)
#          class 0: y=[0,1], p=[.25,.5], m=[.25,.5]:       I=.5*.5,   D=.25*(.25^2)+.5*(1+.5^2)
D1 = _dice(0.1875, 0.25 * 1.5625 + 0.5 * 0.25)
D0 = _dice(0.25, 0.25 * 0.0625 + 0.5 * 1.25)
# gamma_fg=2: m1=[.25^2, .5^2]
D1_G2 = _dice(0.0625 * 0.75, 0.0625 * 1.5625 + 0.25 * 0.25)
# a second sample: both pixels background, predicted fg .25 and .5 -> class 1 absent there
X2 = torch.cat([X, _logits_for_probs([[0.25, 0.5]])])
T2 = torch.tensor([[[[1, 0]]], [[[0, 0]]]])
# sample 1, class 0: y=[1,1], p0=[.75,.5], m=[.25,.5]: I=.25*.75+.5*.5, D=.25*1.5625+.5*1.25
D0_S1 = _dice(0.1875 + 0.25, 0.25 * 1.5625 + 0.5 * 1.25)
# batch Dice: class 1 sums over both samples (sample 1 adds m*p^2 = .25*.0625 + .5*.25 to D)
D1_B = _dice(0.1875, 0.25 * 1.5625 + 0.5 * 0.25 + 0.25 * 0.0625 + 0.5 * 0.25)
D0_B = _dice(0.25 + 0.1875 + 0.25, 0.25 * 0.0625 + 0.5 * 1.25 + 0.25 * 1.5625 + 0.5 * 1.25)
# one channel, sigmoid: p=[.75,.5], y=[1,0] -> exactly the "class 1" term above
X_SIGMOID = torch.log(torch.tensor([[[[0.75 / 0.25, 1.0]]]], dtype=torch.float64))
Y_SIGMOID = torch.tensor([[[[1.0, 0.0]]]], dtype=torch.float64)

#: (options, logits, target, loss_mask, expected value), every value computed by hand above / inline
HAND_COMPUTED = {
    "gamma-1": (dict(gamma=1.0), X, LABELS, None, 1 - (D0 + D1) / 2),
    "gamma-2-gamma-bg-1": (dict(gamma=2.0, gamma_bg=1.0), X, LABELS, None, 1 - (D0 + D1_G2) / 2),
    "per-class-gamma": (dict(gamma=[1.0, 2.0]), X, LABELS, None, 1 - (D0 + D1_G2) / 2),
    # m = 1: class 1: I=.75, D=(1+.5625)+.25 ; class 0: I=.5, D=.0625+(1+.25)
    "gamma-0-is-eq4-dice": (dict(gamma=0.0), X, LABELS, None,
                            1 - (_dice(0.5, 0.0625 + 1.25) + _dice(0.75, 1.5625 + 0.25)) / 2),
    # squared=False: D = sum m*(y+p); do_bg=False keeps class 1 only
    "linear-denominator-no-background": (dict(gamma=1.0, squared=False, do_bg=False), X, LABELS, None,
                                         1 - _dice(0.1875, 0.25 * 1.75 + 0.5 * 0.5)),
    "absent-class-excluded": (dict(gamma=1.0), X2, T2, None, 1 - (D1 + D0 + D0_S1) / 3),
    "batch-dice": (dict(gamma=1.0, batch_dice=True), X2, T2, None, 1 - (D0_B + D1_B) / 2),
    # masking pixel 1 leaves only pixel 0: class 1 I=.1875, D=.25*1.5625; class 0 absent among counted pixels
    "loss-mask": (dict(gamma=1.0), X, LABELS, torch.tensor([[[[1.0, 0.0]]]]), 1 - _dice(0.1875, 0.25 * 1.5625)),
    "3d-vm-dice": (dict(gamma=1.0), X.unsqueeze(-1), LABELS.unsqueeze(-1), None, 1 - (D0 + D1) / 2),
    "sigmoid-mode": (dict(gamma=1.0, nonlin="sigmoid"), X_SIGMOID, Y_SIGMOID, None, 1 - D1),
}


@pytest.mark.parametrize("kw, x, t, mask, expected", list(HAND_COMPUTED.values()), ids=list(HAND_COMPUTED))
def test_hand_computed(kw, x, t, mask, expected):
    loss = PMDiceLoss(**kw)(x, t, mask)
    assert loss.item() == pytest.approx(expected, abs=1e-12)
    assert loss.dtype == torch.float64


def test_vm_dice_is_pm_dice():
    assert VMDiceLoss is PMDiceLoss


def test_one_hot_target_equals_label_map():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 6, 7, dtype=torch.float64)
    t = torch.randint(0, 3, (2, 1, 6, 7))
    onehot = torch.zeros_like(x).scatter_(1, t, 1.0)
    for kw in (dict(gamma=1.0), dict(gamma=[0.5, 1.0, 2.0], batch_dice=True)):
        assert PMDiceLoss(**kw)(x, onehot).item() == pytest.approx(PMDiceLoss(**kw)(x, t).item(), abs=1e-12)
        assert PMDiceLoss(**kw)(x, t[:, 0]).item() == pytest.approx(PMDiceLoss(**kw)(x, t).item(), abs=1e-15)


def _eq4_dice(logits, target, smooth=EPS):
    """Eq. 4 of the paper written from scratch: 1 - mean over present classes of (2 sum yp + e)/(sum y^2+p^2 + e)."""
    p = torch.softmax(logits, 1)
    y = torch.zeros_like(p).scatter_(1, target, 1.0)
    axes = tuple(range(2, p.ndim))
    dice = (2 * (y * p).sum(axes) + smooth) / ((y * y + p * p).sum(axes) + smooth)
    present = y.sum(axes) > 0
    return 1 - dice[present].mean()


@pytest.mark.parametrize("shape", [(2, 3, 9, 8), (2, 4, 5, 6, 7)])
def test_gamma_zero_equals_plain_squared_dice(shape):
    torch.manual_seed(1)
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    t = torch.randint(0, shape[1], (shape[0], 1) + shape[2:])
    a = PMDiceLoss(gamma=0.0)(x, t)
    b = _eq4_dice(x, t)
    assert a.item() == pytest.approx(b.item(), abs=1e-14)
    ga, = torch.autograd.grad(a, x)
    gb, = torch.autograd.grad(b, x)
    torch.testing.assert_close(ga, gb, rtol=1e-10, atol=1e-14)


def test_no_gradient_through_modulating_term():
    """The fused gradient equals autograd with p-hat detached, and differs from letting it flow through m."""
    torch.manual_seed(2)
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64, requires_grad=True)
    t = torch.randint(0, 3, (2, 1, 8, 8))
    g_fused, = torch.autograd.grad(PMDiceLoss(gamma=2.0)(x, t), x)
    g_detached, = torch.autograd.grad(reference_pm_dice(x, t, gamma=2.0), x)
    g_through, = torch.autograd.grad(reference_pm_dice(x, t, gamma=2.0, detach_modulation=False), x)
    torch.testing.assert_close(g_fused, g_detached, rtol=1e-9, atol=1e-14)
    assert (g_fused - g_through).abs().max() > 1e-3


OPTIONS = [
    dict(gamma=1.0),
    dict(gamma=2.0, gamma_bg=1.0),
    dict(gamma=0.5, batch_dice=True),
    dict(gamma=[0.0, 1.0, 5.0], do_bg=False),
    dict(gamma=1.5, squared=False, batch_dice=True),
    dict(gamma=3.0, smooth=1e-3),
    dict(gamma=0.0),
    dict(gamma=0.0, squared=False, batch_dice=True),
    dict(gamma=1.0, squared=False),
]


def _assert_matches_reference(x, t, kw, mask=None, grad_atol=1e-7):
    """PMDiceLoss(**kw) and the plain autograd reference agree in value (2e-6) and logit gradient
    (rtol 1e-4, atol ``grad_atol``); returns the fused gradient."""
    a = PMDiceLoss(**kw)(x, t, mask)
    b = reference_pm_dice(x, t, loss_mask=mask, **kw)
    assert a.item() == pytest.approx(b.item(), abs=2e-6)
    ga, = torch.autograd.grad(a, x)
    gb, = torch.autograd.grad(b, x)
    torch.testing.assert_close(ga, gb, rtol=1e-4, atol=grad_atol)
    return ga


# the same options for two channels (background + one class), which take the two-class kernel
OPTIONS_2 = [dict(kw, gamma=kw["gamma"][1:]) if isinstance(kw["gamma"], list) else kw for kw in OPTIONS]


@pytest.mark.parametrize("C, kw", [(3, kw) for kw in OPTIONS] + [(2, kw) for kw in OPTIONS_2])
@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("masked", [False, True])
def test_matches_reference_float32(C, kw, ndim, masked):
    torch.manual_seed(3)
    spatial = (17, 19) if ndim == 2 else (6, 9, 11)
    x = (3 * torch.randn(3, C, *spatial)).requires_grad_()
    t = torch.randint(0, C, (3, 1, *spatial))
    mask = (torch.rand(3, 1, *spatial) > 0.25).float() if masked else None
    ga = _assert_matches_reference(x, t, kw, mask)
    if masked:
        assert torch.all(ga.masked_select(mask == 0) == 0), "ignored pixels must get no gradient"


@pytest.mark.parametrize("kw", [dict(gamma=1.0), dict(gamma=2.0, gamma_bg=1.0, batch_dice=True)])
@pytest.mark.parametrize("masked", [False, True])
def test_large_images_split_into_scatter_rows_match_reference(kw, masked):
    """Samples of more than 16384 pixels are summed in several rows per sample (a CPU speed-up)."""
    from nnunet_pmdice.losses._kernels import _scatter_rows
    spatial = (128, 160)                                 # 20480 pixels: 5 rows of 4096
    assert _scatter_rows(128 * 160, torch.device("cpu")) == 5
    assert _scatter_rows(96 * 201, torch.device("cpu")) == 1   # no power-of-two row length: one row
    torch.manual_seed(4)
    x = (3 * torch.randn(2, 3, *spatial)).requires_grad_()
    t = torch.randint(0, 3, (2, 1, *spatial))
    t[1] = 0                                             # a sample with only background
    mask = (torch.rand(2, 1, *spatial) > 0.25).float() if masked else None
    _assert_matches_reference(x, t, kw, mask, grad_atol=1e-8)


@pytest.mark.parametrize("kw", [dict(gamma=1.0), dict(gamma=[0.5, 2.0, 1.0], batch_dice=True)])
def test_sigmoid_matches_reference(kw):
    torch.manual_seed(4)
    x = (2 * torch.randn(2, 3, 10, 12)).requires_grad_()
    y = (torch.rand(2, 3, 10, 12) > 0.7).float()
    _assert_matches_reference(x, y, dict(kw, nonlin="sigmoid"))


@pytest.mark.parametrize("gamma", [0.0, 0.5, 1.0, 2.0, 5.0, [1.0, 2.0, 0.5]])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("size", [(6, 5), (128, 130)])  # the second: rows long enough for per-row dot products
def test_region_bool_targets_match_reference(gamma, masked, size):
    """nnU-Net's region targets are bool: the dense kernel's 0/1 shortcut (y**2 = y), its gamma-0 path without
    a modulating term and its dot products agree with the reference on every setting."""
    torch.manual_seed(21)
    x = (2 * torch.randn(2, 3, *size)).requires_grad_()
    y = torch.rand(2, 3, *size) > 0.6
    mask = (torch.rand(2, 1, *size) > 0.2) if masked else None
    for squared in (True, False):
        _assert_matches_reference(x, y, dict(gamma=gamma, nonlin="sigmoid", squared=squared), mask)


@pytest.mark.parametrize("target_dtype", [torch.bool, torch.float32, torch.float64])
def test_dense_backward_twice_and_the_callers_target_untouched(target_dtype):
    """The dense kernel writes its gradient into its own float copy of the target: a second backward
    (retain_graph) gives the same gradient, and a float target passed in is never written."""
    torch.manual_seed(22)
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    y = (torch.rand(2, 3, 8, 8) > 0.5).to(target_dtype)
    y_before = y.clone()
    value = PMDiceLoss(gamma=2.0, nonlin="sigmoid")(x, y)
    g1, = torch.autograd.grad(value, x, retain_graph=True)
    g2, = torch.autograd.grad(value, x)
    assert torch.equal(g1, g2) and torch.equal(y, y_before)
    ref, = torch.autograd.grad(reference_pm_dice(x, y_before.float(), gamma=2.0, nonlin="sigmoid"), x)
    torch.testing.assert_close(g1, ref, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("kernel", ["LabelMapPMDiceSums", "TwoClassPMDiceSums"])
def test_confident_background_keeps_float32_precision(kernel):
    """A large, confidently predicted background keeps its small denominator terms in float32.

    Background pixels are predicted with p = 1 (exactly, in float32), so their own terms vanish and the
    background denominator is the non-label sum over the 400 foreground pixels (~10.8). Taking it as
    (sum over all 65536 pixels) - (label terms) in float32 would be off by ~4e-4 relative; the general
    kernel zeroes the label positions before reducing, the two-class one sums by label with a matrix
    product.
    """
    from nnunet_pmdice.losses import _kernels
    sums = getattr(_kernels, kernel)
    torch.manual_seed(5)
    t = torch.zeros(2, 1, 256, 256, dtype=torch.long)
    t[:, :, 100:120, 100:120] = 1
    fg = t.bool()[:, 0]
    x = torch.zeros(2, 2, 256, 256)
    x[:, 0][~fg] = 30.0
    x[:, 1][fg] = float(torch.log(torch.tensor(0.7 / 0.3))) + 0.1 * torch.randn(int(fg.sum()))
    for g in (1.0, 2.0):
        _, denom32, _, _ = sums.apply(x, t, None, (g, g), True, False)
        _, denom64, _, _ = sums.apply(x.double(), t, None, (g, g), True, False)
        torch.testing.assert_close(denom32.double(), denom64, rtol=1e-5, atol=0)
        ref = reference_pm_dice(x.double(), t, gamma=g)
        assert PMDiceLoss(gamma=g)(x, t).item() == pytest.approx(ref.item(), rel=1e-5)


def _central_difference_grad(f, x0, h=1e-6):
    grad = torch.zeros_like(x0)
    flat = x0.detach().clone().view(-1)
    for i in range(flat.numel()):
        orig = flat[i].item()
        flat[i] = orig + h
        up = f(flat.view_as(x0)).item()
        flat[i] = orig - h
        down = f(flat.view_as(x0)).item()
        flat[i] = orig
        grad.view(-1)[i] = (up - down) / (2 * h)
    return grad


STOP_GRADIENT_CASES = [
    dict(shape=(2, 3, 4, 5), kw=dict(gamma=1.0), masked=True),
    dict(shape=(2, 3, 3, 4, 3), kw=dict(gamma=[2.0, 0.5, 1.0], batch_dice=True), masked=False),
    dict(shape=(2, 2, 4, 4), kw=dict(gamma=2.0, gamma_bg=1.0, squared=False, do_bg=False), masked=False),
    dict(shape=(2, 3, 4, 5), kw=dict(gamma=1.5, nonlin="sigmoid"), masked=True),
    # nnU-Net's region targets are bool (the dense kernel's y**2 = y shortcut)
    dict(shape=(2, 3, 4, 5), kw=dict(gamma=1.5, nonlin="sigmoid"), masked=True, bool_target=True),
    dict(shape=(2, 3, 3, 4, 3), kw=dict(gamma=[0.0, 2.0, 5.0], nonlin="sigmoid", squared=False, batch_dice=True),
         masked=False, bool_target=True),
]


def _case_inputs(case, seed=6):
    torch.manual_seed(seed)
    B, C, *sp = case["shape"]
    x = torch.randn(B, C, *sp, dtype=torch.float64, requires_grad=True)
    if case["kw"].get("nonlin") == "sigmoid":
        t = torch.rand(B, C, *sp) > 0.5
        t = t if case.get("bool_target") else t.double()
    else:
        t = torch.randint(0, C, (B, 1, *sp))
    mask = (torch.rand(B, 1, *sp) > 0.3).double() if case["masked"] else None
    return x, t, mask


@pytest.mark.parametrize("case", STOP_GRADIENT_CASES)
def test_backward_is_the_derivative_with_modulation_frozen(case):
    """float64 finite differences of eq. 5 with p-hat frozen at x0 == the fused analytic gradient at x0.

    (``gradcheck`` on the loss itself cannot pass for gamma > 0: its finite differences also move
    the modulating term, which by the paper's definition carries no gradient.)
    """
    x, t, mask = _case_inputs(case)
    kw = case["kw"]
    analytic, = torch.autograd.grad(PMDiceLoss(**kw)(x, t, mask), x)
    numeric = _central_difference_grad(
        lambda inp: reference_pm_dice(inp, t, loss_mask=mask, modulation_from=x, **kw), x.detach())
    torch.testing.assert_close(analytic, numeric, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("case", [
    dict(shape=(2, 3, 4, 5), kw=dict(gamma=0.0), masked=True),
    dict(shape=(2, 3, 3, 4, 3), kw=dict(gamma=0.0, batch_dice=True, squared=False), masked=False),
    dict(shape=(2, 3, 4, 5), kw=dict(gamma=0.0, nonlin="sigmoid"), masked=True),
])
def test_gradcheck_float64_where_the_modulation_is_constant(case):
    x, t, mask = _case_inputs(case)
    loss = PMDiceLoss(**case["kw"])
    assert torch.autograd.gradcheck(lambda inp: loss(inp, t, mask), (x,), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("C", [2, 3])
def test_gradcheck_ce_map_shared_softmax(C):
    """The CE map returned by the fused kernel (shared log-softmax; a shared sigmoid with two channels)
    has an exact gradient, the ignore label entering as a mask."""
    from nnunet_pmdice.losses import CEPMDiceLoss
    torch.manual_seed(7)
    x = torch.randn(2, C, 4, 5, dtype=torch.float64, requires_grad=True)
    t = torch.randint(0, C + 1, (2, 1, 4, 5)).double()  # label C is the ignore label
    loss = CEPMDiceLoss(gamma=0.0, ignore_label=C)
    assert torch.autograd.gradcheck(lambda inp: loss(inp, t), (x,), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("kw", [dict(gamma=0.0), dict(gamma=1.0), dict(gamma=2.0), dict(gamma=2.0, gamma_bg=1.0),
                                dict(gamma=1.0, gamma_bg=2.0)])
@pytest.mark.parametrize("C", [2, 3])
def test_double_backward_with_retain_graph_is_consistent(kw, C):
    """A second backward rebuilds the buffer the first one consumed (the gamma-0 path has none in forward),
    and the first leaves the saved tensors unchanged (the two-class kernel reads its saved e in place of
    e**1)."""
    torch.manual_seed(8)
    x = torch.randn(2, C, 8, 8, requires_grad=True)
    t = torch.randint(0, C, (2, 1, 8, 8))
    loss = PMDiceLoss(**kw)(x, t)
    g1, = torch.autograd.grad(loss, x, retain_graph=True)
    g2, = torch.autograd.grad(loss, x)
    torch.testing.assert_close(g1, g2)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("C", [2, 3])
def test_half_precision_input_gives_finite_float32(dtype, C):
    torch.manual_seed(9)
    x = (4 * torch.randn(2, C, 32, 32)).to(dtype).requires_grad_()
    t = torch.randint(0, C, (2, 1, 32, 32))
    loss = PMDiceLoss(gamma=2.0, gamma_bg=1.0, batch_dice=True)(x, t)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert x.grad.dtype == dtype and torch.isfinite(x.grad.float()).all()
    ref = reference_pm_dice(x.detach().float(), t, gamma=2.0, gamma_bg=1.0, batch_dice=True)
    assert loss.item() == pytest.approx(ref.item(), abs=1e-5)


def test_under_cpu_autocast():
    torch.manual_seed(10)
    conv = torch.nn.Conv2d(3, 3, 1)
    inp = torch.randn(2, 3, 16, 16)
    t = torch.randint(0, 3, (2, 1, 16, 16))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = conv(inp)
        assert out.dtype == torch.bfloat16
        loss = PMDiceLoss()(out, t)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(conv.weight.grad).all()


def test_no_present_class_returns_zero_with_graph():
    x = torch.randn(1, 2, 4, 4, requires_grad=True)
    t = torch.zeros(1, 1, 4, 4, dtype=torch.long)
    loss = PMDiceLoss(do_bg=False)(x, t)  # only background present, and it is dropped
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.count_nonzero(x.grad) == 0
    all_masked = PMDiceLoss()(x, t, loss_mask=torch.zeros(1, 1, 4, 4))
    assert all_masked.item() == 0.0 and all_masked.requires_grad


@pytest.mark.parametrize("C", [2, 3])
def test_torch_compile_traces_the_fused_function(C):
    torch.manual_seed(11)
    x = torch.randn(2, C, 16, 16, requires_grad=True)
    t = torch.randint(0, C, (2, 1, 16, 16))
    loss = PMDiceLoss(gamma=2.0, gamma_bg=1.0)
    compiled = torch.compile(loss, backend="aot_eager", fullgraph=False)
    a = compiled(x, t)
    ga, = torch.autograd.grad(a, x)
    b = loss(x, t)
    gb, = torch.autograd.grad(b, x)
    assert a.item() == pytest.approx(b.item(), abs=1e-6)
    torch.testing.assert_close(ga, gb, rtol=1e-5, atol=1e-7)


# -- bad input --------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, message", [
    (dict(gamma=-1.0), "gamma must be >= 0"),
    (dict(gamma=float("nan")), "gamma must be a finite number"),
    (dict(gamma=[1.0, -0.5]), r"gamma\[1\] must be >= 0"),
    (dict(gamma=[]), "non-empty"),
    (dict(gamma_bg=-2), "gamma_bg must be >= 0"),
    (dict(nonlin="relu"), "nonlin must be one of"),
    (dict(smooth=0.0), "smooth must be > 0"),
    (dict(gamma_bg=1.0, nonlin="sigmoid"), "gamma_bg only has a meaning in softmax mode"),
])
def test_bad_arguments_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PMDiceLoss(**kwargs)


def test_bad_argument_types_raise():
    with pytest.raises(TypeError, match="gamma must be a real number"):
        PMDiceLoss(gamma="2")


@pytest.mark.parametrize("logits, target, loss_kw, err, message", [
    (torch.randn(2, 3, 8), torch.zeros(2, 1, 8), {}, ValueError, "logits must have shape"),
    (torch.randn(2, 3, 4, 4, 4, 4), torch.zeros(2, 1, 4, 4, 4, 4), {}, ValueError, "logits must have shape"),
    (torch.randint(0, 2, (2, 3, 4, 4)), torch.zeros(2, 1, 4, 4), {}, TypeError, "floating point"),
    (torch.randn(2, 3, 4, 4), torch.zeros(2, 1, 4, 5), {}, ValueError, "does not match logits shape"),
    (torch.randn(2, 3, 4, 4), torch.zeros(3, 1, 4, 4), {}, ValueError, "does not match logits shape"),
    (torch.randn(2, 3, 4, 4), torch.full((2, 1, 4, 4), 3), {}, ValueError, "holds label 3 .* C=3"),
    (torch.randn(2, 3, 4, 4), torch.full((2, 1, 4, 4), -1), {}, ValueError, "holds label -1"),
    (torch.randn(2, 3, 4, 4), torch.zeros(2, 2, 4, 4), {}, ValueError, "target has 2 channels"),
    (torch.randn(2, 3, 4, 4), torch.zeros(2, 1, 4, 4), dict(gamma=[1.0, 2.0]), ValueError, "gamma has 2 values"),
    (torch.randn(2, 3, 4, 4), torch.zeros(2, 1, 4, 4), dict(nonlin="sigmoid"), ValueError, "sigmoid .* needs a one-hot"),
    (torch.randn(2, 1, 4, 4), torch.zeros(2, 1, 4, 4, dtype=torch.long), {}, ValueError, "at least 2 channels"),
    (torch.randn(2, 3, 4, 4), [[0]], {}, TypeError, "target must be a torch.Tensor"),
])
def test_bad_inputs_raise(logits, target, loss_kw, err, message):
    with pytest.raises(err, match=message):
        PMDiceLoss(**loss_kw)(logits, target)


def test_bad_loss_mask_raises():
    with pytest.raises(ValueError, match="loss_mask must have shape"):
        PMDiceLoss()(torch.randn(2, 3, 4, 4), torch.zeros(2, 1, 4, 4), loss_mask=torch.ones(2, 3, 4, 4))


@pytest.mark.parametrize("bad", [2.0, -1.0, 255.0, 0.5, float("nan")])
@pytest.mark.parametrize("C", [2, 3])
def test_non_binary_loss_mask_raises(bad, C):
    """A mask value other than 0/1 used to weight pixels and gave values outside [0, 1] (1.109 seen)."""
    x = torch.zeros(1, C, 2, 2)
    mask = torch.ones(1, 1, 2, 2)
    mask[..., 0, 0] = bad
    with pytest.raises(ValueError, match="loss_mask must hold only 0 and 1"):
        PMDiceLoss()(x, torch.zeros(1, 1, 2, 2), mask)
    onehot = torch.zeros(1, C, 2, 2)
    onehot[:, 0] = 1
    with pytest.raises(ValueError, match="loss_mask must hold only 0 and 1"):
        PMDiceLoss()(x, onehot, mask)


def test_binary_loss_masks_of_every_dtype_are_accepted():
    x, t = torch.randn(2, 3, 4, 4), torch.randint(0, 3, (2, 1, 4, 4))
    mask = torch.rand(2, 1, 4, 4) > 0.3
    expected = PMDiceLoss()(x, t, mask).item()
    for m in (mask.float(), mask.long(), mask.half(), mask[:, 0]):
        assert PMDiceLoss()(x, t, m).item() == pytest.approx(expected, abs=1e-7)


@pytest.mark.parametrize("bad, shown", [(2.5, "2.5"), (-0.5, "-0.5"), (0.999, "0.999"), (float("nan"), "nan"),
                                        (float("inf"), "inf")])
@pytest.mark.parametrize("C", [2, 3])
def test_non_integer_float_labels_raise(bad, shown, C):
    """A float label map was truncated to int64: 2.5 -> 2, -0.5 -> 0, NaN -> -2**63 ("label -9223372036854775808")."""
    t = torch.zeros(1, 1, 2, 2)
    t[..., 1, 1] = bad
    with pytest.raises(ValueError, match=f"holds {shown}, which is not a whole number: labels must be integers "
                                         f"0..{C - 1}"):
        PMDiceLoss()(torch.zeros(1, C, 2, 2), t)


@pytest.mark.parametrize("bad", [2.0, -1.0, 1.5])
def test_one_hot_target_outside_unit_interval_raises(bad):
    y = torch.zeros(1, 3, 2, 2)
    y[:, 0] = 1
    y[0, 1, 0, 0] = bad
    with pytest.raises(ValueError, match=r"must hold values in \[0, 1\]"):
        PMDiceLoss()(torch.zeros(1, 3, 2, 2), y)
    with pytest.raises(ValueError, match=r"must hold values in \[0, 1\]"):
        PMDiceLoss(nonlin="sigmoid")(torch.zeros(1, 3, 2, 2), y)
    y[0, 1, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="holds NaN"):
        PMDiceLoss(nonlin="sigmoid")(torch.zeros(1, 3, 2, 2), y)


@pytest.mark.parametrize("nonlin", ["softmax", "sigmoid"])
def test_soft_targets_in_unit_interval_are_a_feature(nonlin):
    """Soft targets (label smoothing, partial-volume maps) enter the sums as they are, as in eq. 5's reference."""
    torch.manual_seed(15)
    x = torch.randn(2, 3, 6, 7, dtype=torch.float64, requires_grad=True)
    y = torch.softmax(torch.randn(2, 3, 6, 7, dtype=torch.float64), 1)
    _assert_matches_reference(x, y, dict(gamma=2.0, nonlin=nonlin))


@pytest.mark.parametrize("shape", [(0, 3, 4, 4), (2, 3, 0, 4), (2, 3, 4, 4, 0), (2, 0, 4, 4)])
def test_empty_batch_or_image_raises(shape):
    logits = torch.zeros(shape)
    with pytest.raises(ValueError, match=r"the batch, channel and spatial sizes must all be >= 1"):
        PMDiceLoss()(logits, torch.zeros(shape[0], 1, *shape[2:]))


def test_zero_dim_tensor_gamma_is_a_number_and_one_dim_tensor_is_per_class():
    x, t = torch.randn(2, 3, 5, 5), torch.randint(0, 3, (2, 1, 5, 5))
    assert PMDiceLoss(gamma=torch.tensor(2.0))(x, t).item() == PMDiceLoss(gamma=2.0)(x, t).item()
    assert PMDiceLoss(gamma=torch.tensor(2.0)).gammas_for(3) == (2.0, 2.0, 2.0)
    assert PMDiceLoss(gamma=torch.tensor([1.0, 2.0, 3.0])).gammas_for(3) == (1.0, 2.0, 3.0)
    with pytest.raises(ValueError, match=r"gamma has 1 value \(one per class\)"):
        PMDiceLoss(gamma=[2.0])(x, t)
    with pytest.raises(ValueError, match=r"1-D sequence with one value per class, got a tensor of shape \(2, 2\)"):
        PMDiceLoss(gamma=torch.ones(2, 2))


@pytest.mark.parametrize("C", [2, 3])
@pytest.mark.parametrize("bad", [float("inf"), float("nan")])
@pytest.mark.parametrize("channel", [0, 1])
def test_nan_or_plus_inf_logit_gives_nan_on_every_path(C, bad, channel):
    """NaN in, NaN out: +inf or NaN at one pixel makes value and gradient NaN with two channels (the
    two-class kernel used to take the limit and return a finite value) as with three."""
    torch.manual_seed(16)
    x = torch.randn(2, C, 4, 4)
    x[1, channel, 2, 3] = bad
    x.requires_grad_()
    t = torch.randint(0, C, (2, 1, 4, 4))
    from nnunet_pmdice.losses import CEPMDiceLoss
    for loss in (PMDiceLoss(gamma=2.0), PMDiceLoss(gamma=0.0, batch_dice=True), CEPMDiceLoss()):
        value = loss(x, t)
        assert torch.isnan(value), type(loss).__name__
        grad, = torch.autograd.grad(value, x)
        assert torch.isnan(grad).any()
    assert torch.isnan(torch.softmax(x.detach(), 1)[1, :, 2, 3]).all()  # what the rule follows


@pytest.mark.parametrize("C", [2, 3])
def test_minus_inf_logit_is_probability_zero_on_every_path(C):
    torch.manual_seed(17)
    x = torch.randn(2, C, 4, 4, dtype=torch.float64)
    t = torch.randint(1, C, (2, 1, 4, 4))  # the -inf channel 0 is never the label: CE stays finite
    x[1, 0, 2, 3] = -float("inf")
    x.requires_grad_()
    value = PMDiceLoss(gamma=2.0)(x, t)
    assert torch.isfinite(value)
    assert value.item() == pytest.approx(reference_pm_dice(x, t, gamma=2.0).item(), abs=1e-12)
    grad, = torch.autograd.grad(value, x)
    assert torch.isfinite(grad).all()


def test_value_is_in_unit_interval_and_decreases_when_prediction_improves():
    torch.manual_seed(12)
    t = torch.randint(0, 3, (2, 1, 16, 16))
    onehot = torch.zeros(2, 3, 16, 16).scatter_(1, t, 1.0)
    noise = torch.randn(2, 3, 16, 16)
    values = [PMDiceLoss(gamma=1.0)(s * onehot + noise, t).item() for s in (0.0, 2.0, 6.0)]
    assert all(0 <= v <= 1 for v in values)
    assert values[0] > values[1] > values[2]
    assert math.isfinite(values[2])


@pytest.mark.parametrize("wrapper", ["nnunet", "plugin"])
@pytest.mark.parametrize("C", [2, 3])
def test_deep_supervision_list_matches_reference_per_scale(C, wrapper):
    """nnU-Net's DeepSupervisionWrapper and the trainers' DeepSupervisionLoss around the fused loss == the
    weighted reference at every scale."""
    from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
    from nnunet_pmdice.trainers.loss_builder import DeepSupervisionLoss, deep_supervision_weights
    DeepSupervisionWrapper = DeepSupervisionWrapper if wrapper == "nnunet" else DeepSupervisionLoss
    torch.manual_seed(13)
    sizes = [(32, 32), (16, 16), (8, 8), (4, 4)]
    xs = [torch.randn(2, C, *s, requires_grad=True) for s in sizes]
    t0 = torch.randint(0, C, (2, 1, 32, 32)).float()
    ts = [torch.nn.functional.interpolate(t0, size=s, mode="nearest") for s in sizes]
    w = deep_supervision_weights(len(sizes))
    kw = dict(gamma=[1.0] + [2.0] * (C - 1), batch_dice=True)
    ours = DeepSupervisionWrapper(PMDiceLoss(**kw), w)(xs, ts)
    ref = sum(float(wi) * reference_pm_dice(x, t.long(), **kw) for wi, x, t in zip(w, xs, ts) if wi != 0)
    assert ours.item() == pytest.approx(ref.item(), abs=2e-6)
    g_ours = torch.autograd.grad(ours, xs[:-1])
    g_ref = torch.autograd.grad(ref, xs[:-1])
    for a, b in zip(g_ours, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-8)


def test_deep_supervision_checks_the_target_values_once_per_step(monkeypatch):
    """The trainers' wrapper checks the full-resolution target (a bad label there still fails with the loss's
    message) and runs the lower scales, derived from it, without a value check of their own."""
    from nnunet_pmdice.losses import CEPMDiceLoss, _checks
    from nnunet_pmdice.trainers.loss_builder import DeepSupervisionLoss, deep_supervision_weights
    torch.manual_seed(14)
    sizes = [(16, 16), (8, 8), (4, 4)]
    xs = [torch.randn(2, 3, *s, requires_grad=True) for s in sizes]
    t0 = torch.randint(0, 3, (2, 1, 16, 16)).to(torch.int16)
    ts = [torch.nn.functional.interpolate(t0.float(), size=s, mode="nearest-exact").to(torch.int16) for s in sizes]
    calls = []
    real = _checks._check_values
    monkeypatch.setattr(_checks, "_check_values", lambda *a: calls.append(a[3].shape) or real(*a))
    for loss in (PMDiceLoss(gamma=2.0, gamma_bg=1.0), CEPMDiceLoss(gamma=1.0)):
        calls.clear()
        DeepSupervisionLoss(loss, deep_supervision_weights(3, ddp=True))(xs, ts).backward()
        assert calls == [torch.Size([2, 1, 16, 16])]  # three scales with a weight, one check
    bad = t0.clone()
    bad[0, 0, 3, 3] = 5
    with pytest.raises(ValueError, match="target holds label 5 but the logits have C=3"):
        DeepSupervisionLoss(PMDiceLoss(), deep_supervision_weights(3))(xs, [bad] + ts[1:])
    # outside the wrapper every call checks its own target again
    calls.clear()
    PMDiceLoss()(xs[1], ts[1])
    assert len(calls) == 1


# -- the two-class kernel ----------------------------------------------------------------------------
TWO_CLASS_CASES = [((1.0, 1.0), True), ((0.0, 0.0), True), ((1.0, 2.0), True), ((0.5, 0.5), False),
                   ((2.0, 0.0), False), ((3.0, 1.5), True)]


@pytest.mark.parametrize("gammas, squared", TWO_CLASS_CASES)
@pytest.mark.parametrize("with_ce", [False, True])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("shape", [(3, 2, 5, 7), (2, 2, 3, 4, 5)])
def test_two_class_kernel_equals_general_kernel(gammas, squared, with_ce, masked, shape):
    """With two channels the sigmoid-of-difference kernel gives the general kernel's sums, CE map and
    logit gradient (float64, random incoming gradients for every output)."""
    from nnunet_pmdice.losses._kernels import LabelMapPMDiceSums, TwoClassPMDiceSums
    torch.manual_seed(14)
    x = (3 * torch.randn(*shape, dtype=torch.float64)).requires_grad_()
    t = torch.randint(0, 2, (shape[0], 1, *shape[2:]))
    mask = (torch.rand(shape[0], 1, *shape[2:]) > 0.3).double() if masked else None
    w = torch.randn(2, shape[0], 2, dtype=torch.float64)
    w_ce = torch.rand(shape[0], 1, *shape[2:], dtype=torch.float64)
    results = []
    for fn in (TwoClassPMDiceSums, LabelMapPMDiceSums):
        inter, denom, gt, ce = fn.apply(x, t, mask, gammas, squared, with_ce)
        objective = (w[0] * inter).sum() + (w[1] * denom).sum() + ((w_ce * ce).sum() if with_ce else 0.0)
        results.append((inter, denom, gt, ce, *torch.autograd.grad(objective, x)))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    if masked:
        assert torch.all(results[0][-1].masked_select(mask.expand_as(x) == 0) == 0)


def test_two_channel_loss_takes_the_two_class_kernel():
    x = torch.randn(2, 2, 8, 8, requires_grad=True)
    t = torch.randint(0, 2, (2, 1, 8, 8))
    inter, *_ = PMDiceLoss().dice_sums(x, t)
    assert type(inter.grad_fn).__name__ == "TwoClassPMDiceSumsBackward"
    inter3, *_ = PMDiceLoss().dice_sums(torch.randn(2, 3, 8, 8, requires_grad=True), t)
    assert type(inter3.grad_fn).__name__ == "LabelMapPMDiceSumsBackward"
