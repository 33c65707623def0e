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
- backward reuses the forward's p**(gamma + 2) tensor as its one full-size buffer and takes the
  softmax backward in place in it (see ``LabelMapPMDiceSums``);
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


def _zeros_like_expanded(t: torch.Tensor) -> torch.Tensor:
    return torch.zeros((1,) * t.ndim, dtype=t.dtype, device=t.device).expand_as(t)


def _label_gammas(gammas: Sequence[float], labels: torch.Tensor, dtype) -> torch.Tensor | float:
    if all(g == gammas[0] for g in gammas):
        return float(gammas[0])
    return torch.tensor(gammas, dtype=dtype, device=labels.device)[labels]


class LabelMapPMDiceSums(torch.autograd.Function):
    """Softmax + integer label map. Returns (intersect, denom, gt_sum, ce_map).

    Backward, with p the softmax output and t the label of a pixel: every sum's derivative with
    respect to p is elementwise (m is constant), call it G. At the non-label channels
    G_c = k_c * p_c**(gamma_c + o - 1) with k_c = 2 * d(loss)/d(denom_c) (1 * ... for the linear
    denominator, o = 2 or 1), so p_c * G_c = k_c * p_c**(gamma_c + o): the very tensor the forward
    raised to that power for the denominator. The softmax backward dx = p * (G - s), s = sum_c p_c G_c,
    is then taken in place in that buffer: D = k * P, s = sum_c D + p_t G_t, D -= p * s, and the label
    channel is written with one scatter. The CE map's gradient, g_ce * (p - onehot), joins the same
    two steps. One full-size buffer besides the saved softmax output, no one-hot, no copy of p.
    """

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
                # (p * (G - s)) gives them an exact zero gradient without a separate mask pass.
                p.mul_(vmask)
                if ce is not None:
                    ce.mul_(vmask)
            p_t = p.gather(1, labels)
            # (scatter_ with a scalar value takes a slow path on CPU, ~5x slower than a source tensor)
            p.scatter_(1, labels, _zeros_like_expanded(p_t))

            groups = _groups_of(gammas)
            offset = 2.0 if squared else 1.0
            denom = torch.empty((B, C), dtype=cdt, device=p.device)
            powered = _powered(p, groups, offset)
            for c0, c1, g in groups:
                if powered is None:
                    denom[:, c0:c1] = sum_pow(p[:, c0:c1], g + offset, dims)
                else:
                    denom[:, c0:c1] = powered[:, c0:c1].sum(dims)

            g_t = _label_gammas(gammas, labels, cdt)
            m_t = _modulation_at_labels(p_t, g_t, vmask)
            inter_px = m_t * p_t
            den_px = torch.addcmul(m_t, inter_px, p_t) if squared else m_t + inter_px
            # per-class sums of the label-channel terms: scatter_add into (rows, C), rows summed after
            R = B * (lab_rows := _scatter_rows(labels[0].numel(), p.device))
            lab = labels.reshape(R, -1)
            zeros = torch.zeros((R, C), dtype=cdt, device=p.device)
            sums = torch.stack([zeros.scatter_add(1, lab, inter_px.view(R, -1)),
                                zeros.scatter_add(1, lab, den_px.view(R, -1)),
                                zeros.scatter_add(1, lab, vmask.view(R, -1)) if vmask is not None else
                                zeros.scatter_add(1, lab, torch.ones((1, 1), dtype=cdt, device=p.device)
                                                  .expand(R, lab.shape[1]))]).view(3, B, lab_rows, C).sum(2)
            intersect, gt_sum = sums[0], sums[2]
            denom.add_(sums[1])

        ctx.mark_non_differentiable(gt_sum)
        ctx.save_for_backward(labels, p, p_t, vmask)
        # Not through save_for_backward: backward consumes it in place, and a second backward
        # (retain_graph=True) finds None and recomputes it from p.
        ctx.powered = powered
        ctx.meta = (groups, squared, with_ce, logits.dtype, g_t)
        if ce is None:
            ce = torch.zeros((), dtype=cdt, device=p.device)
            ctx.mark_non_differentiable(ce)
        return intersect, denom, gt_sum, ce

    @staticmethod
    def backward(ctx, g_inter, g_denom, _g_gt, g_ce):
        labels, p, p_t, vmask = ctx.saved_tensors
        groups, squared, with_ce, in_dtype, g_t = ctx.meta
        B, C = p.shape[:2]
        with torch.autocast(p.device.type, enabled=False):
            zeros_bc = None
            if g_inter is None or g_denom is None:
                zeros_bc = torch.zeros((B, C), dtype=p.dtype, device=p.device)
            g_inter = zeros_bc if g_inter is None else g_inter.to(p.dtype)
            g_denom = zeros_bc if g_denom is None else g_denom.to(p.dtype)
            k = g_denom * 2.0 if squared else g_denom
            offset = 2.0 if squared else 1.0

            # D = k * p**(gamma + offset) at the non-label channels (0 at the label channel, where p = 0)
            D, ctx.powered = ctx.powered, None
            if D is None:
                D = _powered(p, groups, offset, force=True)
            D.mul_(k.reshape(B, C, *([1] * (p.ndim - 2))))

            # label channel: d intersect / d p = m, d denom / d p = 2 m p (squared) or m
            lab = labels.reshape(B, -1)
            m_t = _modulation_at_labels(p_t, g_t, vmask)
            gi = g_inter.gather(1, lab).view_as(p_t)
            gd = g_denom.gather(1, lab).view_as(p_t)
            G_t = (torch.addcmul(gi, gd, p_t, value=2.0) if squared else gi.add_(gd)).mul_(m_t)
            del gi, gd, m_t
            # w = -s (+ the CE gradient), s = sum_c p_c G_c
            w = D.sum(1, keepdim=True).addcmul_(p_t, G_t).neg_()
            gce = None
            if with_ce and g_ce is not None:
                gce = g_ce.to(p.dtype)
                if vmask is not None:
                    gce = gce * vmask
                w.add_(gce)
            D.addcmul_(p, w)
            dx_t = G_t.add_(w).mul_(p_t)
            if gce is not None:
                dx_t.sub_(gce)
            D.scatter_(1, labels, dx_t)
        return D.to(in_dtype), None, None, None, None, None


def _scatter_rows(n: int, device: torch.device) -> int:
    """Rows to split each sample's ``n`` label pixels into for ``scatter_add`` on the CPU.

    PyTorch's CPU scatter_add runs about 3x faster on rows of <= 16384 elements than on one long row
    per sample (measured: (2, 262144) -> 0.95 ms, the same as (32, 16384) -> 0.31 ms; (2, 2097152)
    -> 8.1 ms vs 2.6 ms). The row length is a power of two from 1024 to 16384 dividing ``n`` (nnU-Net's
    patch sizes are multiples of powers of two); otherwise one row. CUDA keeps one row per sample.
    """
    if device.type != "cpu" or n <= 16384:
        return 1
    for length in (16384, 8192, 4096, 2048, 1024):
        if n % length == 0:
            return n // length
    return 1


def _powered(p: torch.Tensor, groups: Groups, offset: float, force: bool = False) -> Optional[torch.Tensor]:
    """p**(gamma_group + offset) per channel group as one tensor, or None where every exponent is 1 or 2
    (their sums need no temporary and backward builds the tensor itself) unless ``force``."""
    if not force and all(g + offset in (1.0, 2.0) for _, _, g in groups):
        return None
    if len(groups) == 1:
        return powf(p, groups[0][2] + offset)
    out = torch.empty_like(p)
    for c0, c1, g in groups:
        out[:, c0:c1] = powf(p[:, c0:c1], g + offset)
    return out


def _modulation_at_labels(p_t: torch.Tensor, g_t, vmask: Optional[torch.Tensor]) -> torch.Tensor:
    """m at the label channel, (1 - p_t)**gamma_t, zero at ignored pixels. A new tensor."""
    q = 1.0 - p_t
    m_t = q if (isinstance(g_t, float) and g_t == 1.0) else (powf(q, g_t) if isinstance(g_t, float)
                                                            else q.pow_(g_t))
    if vmask is not None:
        m_t.mul_(vmask)
    return m_t


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
