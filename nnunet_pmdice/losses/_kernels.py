"""Fused forward/backward of the modulated Dice sums.

Both functions return, per sample and channel, the three sums the (PM) Dice needs:

    intersect[b, c] = sum_i m_ic * y_ic * p_ic
    denom[b, c]     = sum_i m_ic * (y_ic**2 + p_ic**2)      (squared=True, V-Net form)
                    = sum_i m_ic * (y_ic + p_ic)            (squared=False)
    gt_sum[b, c]    = sum_i y_ic                            (no gradient; decides which classes are present)

with m_ic = |y_ic - p_ic| ** gamma_c treated as a constant. Because m carries no gradient, the
derivative of each sum with respect to p is elementwise, so the backward pass is written in closed
form instead of letting autograd record (and keep alive) every intermediate of the obvious
implementation. Everything downstream (smoothing, batch Dice, the DDP gather, the mean over present
classes) is ordinary autograd on (B, C) tensors.

Why the label-map path looks the way it does (memory traffic is what costs, on CPU and GPU):
- no one-hot tensor is built: for a label map, y is 1 at exactly one channel per pixel, so the
  label-channel terms are gathered ((B, 1, *spatial), 1/C of the full size) and the rest of the
  channels see y = 0, where m = p**gamma and the denominator term is p**(gamma + 2);
- the label positions of the softmax output are zeroed in place before the big reduction, so the
  non-label sum is taken directly. Subtracting the label terms from a sum over everything would
  cancel catastrophically in float32 once the background is predicted with confidence;
- the softmax output is the only full-size tensor kept for backward; the label values are put back
  into it in place right before the softmax backward;
- with a CE map requested, log-softmax is computed once and exponentiated in place, so CE and Dice
  share one pass over the logits.

Sums are accumulated in float32 (float64 for float64 input, which gradcheck uses) whatever the
logits' dtype, because fp16 sums overflow under autocast.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch

Groups = Tuple[Tuple[int, int, float], ...]


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def powf(t: torch.Tensor, e: float) -> torch.Tensor:
    """``t ** e`` for t >= 0 as a new tensor, taking the cheap route for the exponents PM Dice uses.

    ``torch.pow`` with a general exponent costs a transcendental per element; integer and
    half-integer exponents are built from multiplications and one square root instead.
    """
    if e == 0:
        return torch.ones_like(t)
    if e == 1:
        return t.clone()
    if e == 2:
        return t * t
    if e == 3:
        return t.pow(3)  # aten has a fast path for 3
    if e == 0.5:
        return t.sqrt()
    if float(e).is_integer() and e <= 16:
        n, base, out = int(e), t, None
        while n:  # exponentiation by squaring
            if n & 1:
                out = base.clone() if out is None else out.mul_(base)
            n >>= 1
            if n:
                base = base * base
        return out
    if float(2 * e).is_integer() and e <= 16:
        return powf(t, e - 0.5).mul_(t.sqrt())
    return t.pow(e)


def sum_pow(t: torch.Tensor, e: float, dims: Sequence[int]) -> torch.Tensor:
    """``(t ** e).sum(dims)`` for t >= 0, without materialising ``t ** e`` where that can be avoided."""
    if e == 1:
        return t.sum(dims)
    if e == 2:
        return torch.linalg.vector_norm(t, 2, dim=dims).square()
    if e == 4:
        return torch.linalg.vector_norm(t * t, 2, dim=dims).square()
    return powf(t, e).sum(dims)


def _group_sums(p: torch.Tensor, groups: Groups, offset: float, dims, out: torch.Tensor) -> None:
    for c0, c1, g in groups:
        out[:, c0:c1] = sum_pow(p[:, c0:c1], g + offset, dims)


def _fill_group_powers(p: torch.Tensor, groups: Groups, offset: float, coef: torch.Tensor,
                       out: torch.Tensor) -> None:
    """out[:, group] = coef[:, group] * p[:, group] ** (gamma_group + offset), written in place."""
    tail = (1,) * (p.ndim - 2)
    for c0, c1, g in groups:
        e = g + offset
        c = coef[:, c0:c1].reshape(coef.shape[0], c1 - c0, *tail)
        ps, os_ = p[:, c0:c1], out[:, c0:c1]
        if e == 0:
            os_.copy_(c.expand_as(os_))
        elif e == 1:
            torch.mul(ps, c, out=os_)
        elif e == 2:
            torch.mul(ps, c, out=os_)
            os_.mul_(ps)
        else:
            torch.mul(powf(ps, e), c, out=os_)


def _label_gammas(gammas: Sequence[float], labels: torch.Tensor, dtype) -> torch.Tensor | float:
    if all(g == gammas[0] for g in gammas):
        return float(gammas[0])
    return torch.tensor(gammas, dtype=dtype, device=labels.device)[labels]


def _pow_small(t: torch.Tensor, g) -> torch.Tensor:
    return powf(t, g) if isinstance(g, float) else t.pow(g)


class LabelMapPMDiceSums(torch.autograd.Function):
    """Softmax + integer label map. Returns (intersect, denom, gt_sum, ce_map)."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, labels: torch.Tensor, valid: Optional[torch.Tensor],
                gammas: Tuple[float, ...], squared: bool, with_ce: bool):
        cdt = _compute_dtype(logits)
        with torch.autocast(logits.device.type, enabled=False):
            x = logits.to(cdt)
            if with_ce:
                p = torch.log_softmax(x, 1)
                ce = p.gather(1, labels).neg_()
                p.exp_()
            else:
                p = torch.softmax(x, 1)
                ce = None
            del x
            B, C = p.shape[:2]
            dims = tuple(range(2, p.ndim))
            vmask = None if valid is None else valid.to(cdt)
            if vmask is not None:
                # Ignored pixels get p = 0: they then add nothing to any sum, and the softmax backward
                # (p * (G - <p, G>)) gives them an exact zero gradient without a separate mask pass.
                p.mul_(vmask)
                if ce is not None:
                    ce.mul_(vmask)
            p_t = p.gather(1, labels)
            p.scatter_(1, labels, 0.0)

            groups = _groups_of(gammas)
            denom = torch.empty((B, C), dtype=cdt, device=p.device)
            _group_sums(p, groups, 2.0 if squared else 1.0, dims, denom)

            g_t = _label_gammas(gammas, labels, cdt)
            m_t = _pow_small(1.0 - p_t, g_t)
            if vmask is not None:
                m_t.mul_(vmask)
            inter_px = m_t * p_t
            den_px = m_t * (1.0 + p_t * p_t) if squared else m_t * (1.0 + p_t)
            lab = labels.view(B, -1)
            zeros = torch.zeros((B, C), dtype=cdt, device=p.device)
            intersect = zeros.scatter_add(1, lab, inter_px.view(B, -1))
            denom.scatter_add_(1, lab, den_px.view(B, -1))
            if vmask is None:
                gt_sum = zeros.scatter_add(1, lab, torch.ones((1, 1), dtype=cdt, device=p.device).expand(B, lab.shape[1]))
            else:
                gt_sum = zeros.scatter_add(1, lab, vmask.reshape(B, -1))

        ctx.mark_non_differentiable(gt_sum)
        ctx.state = dict(p=p, restored=False, groups=groups, squared=squared, in_dtype=logits.dtype,
                         has_ce=with_ce)
        ctx.save_for_backward(labels, p_t, m_t, vmask)
        if ce is None:
            ce = torch.zeros((), dtype=cdt, device=p.device)
            ctx.mark_non_differentiable(ce)
        return intersect, denom, gt_sum, ce

    @staticmethod
    def backward(ctx, g_inter, g_denom, _g_gt, g_ce):
        labels, p_t, m_t, vmask = ctx.saved_tensors
        st = ctx.state
        p = st["p"]
        squared = st["squared"]
        B = p.shape[0]
        with torch.autocast(p.device.type, enabled=False):
            if g_inter is None:
                g_inter = torch.zeros((B, p.shape[1]), dtype=p.dtype, device=p.device)
            if g_denom is None:
                g_denom = torch.zeros_like(g_inter)
            g_inter = g_inter.to(p.dtype)
            g_denom = g_denom.to(p.dtype)
            # Non-label positions: d denom / d p = 2 * m * p = 2 p**(gamma+1) (squared), m = p**gamma (linear).
            if st["restored"]:  # a second backward (retain_graph): p already holds the label values again
                p.scatter_(1, labels, 0.0)
            G = torch.empty_like(p)
            coef = g_denom * 2.0 if squared else g_denom
            _fill_group_powers(p, st["groups"], 1.0 if squared else 0.0, coef, G)
            # Label positions: d intersect / d p = m, d denom / d p = 2 m p (squared) or m.
            lab = labels.view(B, -1)
            gi = g_inter.gather(1, lab).view_as(p_t)
            gd = g_denom.gather(1, lab).view_as(p_t)
            G_t = m_t * (gi + gd * (2.0 * p_t if squared else 1.0))
            G.scatter_(1, labels, G_t)
            p.scatter_(1, labels, p_t)
            st["restored"] = True
            dx = torch._softmax_backward_data(G, p, 1, p.dtype)
            del G
            if st["has_ce"] and g_ce is not None:
                gce = g_ce.to(p.dtype)
                if vmask is not None:
                    gce = gce * vmask
                # d ce / d x = p - onehot(label)
                dx.addcmul_(p, gce)
                dx.scatter_add_(1, labels, -gce)
        return dx.to(st["in_dtype"]), None, None, None, None, None


class DensePMDiceSums(torch.autograd.Function):
    """Softmax or sigmoid + dense (one-hot, multi-hot or soft) target. Returns (intersect, denom, gt_sum)."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, y: torch.Tensor, valid: Optional[torch.Tensor],
                gammas: Tuple[float, ...], squared: bool, nonlin: str):
        cdt = _compute_dtype(logits)
        with torch.autocast(logits.device.type, enabled=False):
            x = logits.to(cdt)
            p = torch.softmax(x, 1) if nonlin == "softmax" else torch.sigmoid(x)
            del x
            yv = y.to(cdt)
            vmask = None if valid is None else valid.to(cdt)
            dims = tuple(range(2, p.ndim))
            m = _dense_modulation(p, yv, vmask, _groups_of(gammas))
            mp = m * p
            intersect = (mp * yv).sum(dims)
            if squared:
                denom = (mp * p).sum(dims) + (m * yv * yv).sum(dims)
            else:
                denom = mp.sum(dims) + (m * yv).sum(dims)
            gt_sum = (yv if vmask is None else yv * vmask).sum(dims)
        ctx.mark_non_differentiable(gt_sum)
        ctx.save_for_backward(p, yv, vmask)
        ctx.state = dict(groups=_groups_of(gammas), squared=squared, nonlin=nonlin, in_dtype=logits.dtype)
        return intersect, denom, gt_sum

    @staticmethod
    def backward(ctx, g_inter, g_denom, _g_gt):
        p, yv, vmask = ctx.saved_tensors
        st = ctx.state
        with torch.autocast(p.device.type, enabled=False):
            shape = p.shape[:2] + (1,) * (p.ndim - 2)
            gi = (torch.zeros(shape, dtype=p.dtype, device=p.device) if g_inter is None
                  else g_inter.to(p.dtype).reshape(shape))
            gd = (torch.zeros(shape, dtype=p.dtype, device=p.device) if g_denom is None
                  else g_denom.to(p.dtype).reshape(shape))
            m = _dense_modulation(p, yv, vmask, st["groups"])
            if st["squared"]:
                G = m * (gi * yv + 2.0 * gd * p)
            else:
                G = m * (gi * yv + gd)
            del m
            if st["nonlin"] == "softmax":
                dx = torch._softmax_backward_data(G, p, 1, p.dtype)
            else:
                dx = G.mul_(p).mul_(1.0 - p)
        return dx.to(st["in_dtype"]), None, None, None, None, None


def _dense_modulation(p, yv, vmask, groups: Groups) -> torch.Tensor:
    m = (p - yv).abs_()
    for c0, c1, g in groups:
        if g != 1:
            m[:, c0:c1] = powf(m[:, c0:c1], g)
    if vmask is not None:
        m.mul_(vmask)
    return m


_GROUP_CACHE: dict = {}


def _groups_of(gammas: Tuple[float, ...]) -> Groups:
    groups = _GROUP_CACHE.get(gammas)
    if groups is None:
        from ._checks import gamma_groups
        groups = _GROUP_CACHE.setdefault(gammas, gamma_groups(gammas))
    return groups
