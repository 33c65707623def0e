"""Fused forward/backward of the modulated Dice sums.

Each function returns, per sample and channel, the three sums the (PM) Dice needs:

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
- the denominator is one sum over a full-size tensor holding p**(gamma + 2) at the non-label channels and
  the label channel's own term written over it with one scatter (for gamma 0 no tensor at all: the
  sum of p**2 over every pixel plus the label count). Subtracting the label terms from a sum over
  everything would cancel catastrophically in float32 once the background is predicted with confidence;
- backward reuses that tensor as its one full-size buffer and takes the softmax backward in place in
  it (see ``LabelMapPMDiceSums``);
- with a CE map requested, log-softmax is computed once and exponentiated in place, so CE and Dice
  share one pass over the logits;
- with two channels (``TwoClassPMDiceSums``) the softmax is a sigmoid of the logit difference and every
  term depends on one number per pixel, so the whole computation runs on half-size tensors: no
  gather, no scatter, the per-class sums from one batched matrix product. On the CPU this takes PM
  Dice from about 2x to about the cost of nnU-Net's Dice on binary tasks.

Sums are accumulated in float32 (float64 for float64 input, which gradcheck uses) whatever the
logits' dtype, because fp16 sums overflow under autocast.
"""
from __future__ import annotations


from typing import Dict, Optional, Tuple

import torch

Groups = Tuple[Tuple[int, int, float], ...]


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


#: Largest exponent that :func:`powf` builds from multiplications (see :data:`_CHAINS`). The paper's
#: gammas (0 to 5) plus the denominator's offset 2 stay far below; larger exponents take one ``pow``.
_MAX_MULTIPLIED_EXPONENT = 16


#: Elements per block of the CPU's blocked steps (:func:`_pow_inplace`, :func:`_mul_sqrt_`; 1 MiB of float32)
_POW_BLOCK = 1 << 18


def _shortest_chains(limit: int) -> Dict[int, Tuple[str, ...]]:
    """For each integer exponent 2..limit, the shortest sequence of one-pass steps building ``t ** e`` in one buffer.

    The first step makes the buffer (``"sq"``: t * t, exponent 2; ``"cube"``: aten's fast ``t ** 3``);
    each further step works in place in it: ``"sq"`` squares it (x2), ``"cube"`` cubes it (x3), ``"t"``
    multiplies by t (+1). Each step is one pass over the tensor, and there is one allocation in all
    (exponentiation by squaring needs a temporary per squaring): 5 -> sq, sq, t; 7 -> sq, cube, t.

    >>> _shortest_chains(8)[7], _shortest_chains(8)[8]
    (('sq', 'cube', 't'), ('sq', 'sq', 'sq'))
    """
    chains = {2: ("sq",), 3: ("cube",)}
    frontier = [2, 3]
    while frontier:
        nxt = []
        for e in frontier:
            for step, f in (("sq", e * 2), ("cube", e * 3), ("t", e + 1)):
                if f <= limit and f not in chains:
                    chains[f] = chains[e] + (step,)
                    nxt.append(f)
        frontier = nxt
    return chains


#: The step sequences of :func:`powf` for integer exponents (found once, breadth first: fewest passes)
_CHAINS = _shortest_chains(_MAX_MULTIPLIED_EXPONENT)


def sqrt(t: torch.Tensor) -> torch.Tensor:
    """``t ** 0.5`` for t >= 0 as a new tensor.

    On the CPU as ``1 / rsqrt(t)``: PyTorch's vectorised CPU ``sqrt`` (and ``pow(t, 0.5)``) takes a slow
    path on zeros, about 4x the time of the whole pass when a quarter of the elements are 0 (ignored
    pixels, underflowed probabilities); ``rsqrt`` does not, and ``1 / rsqrt(0) = 1 / inf = 0`` exactly.
    Relative error about 1e-7 (two roundings). Elsewhere ``torch.sqrt``.

    Example:
        >>> import torch
        >>> t = torch.tensor([0.0, 0.25, 4.0])
        >>> sqrt(t).tolist()
        [0.0, 0.5, 2.0]
    """
    return _pow_into(torch.empty_like(t), t, 0.5)


def _built_from_steps(e: float) -> bool:
    """Whether :func:`_pow_into` builds ``t ** e`` from one-pass steps (0.5, integers and half-integers up to
    ``_MAX_MULTIPLIED_EXPONENT``) rather than with a transcendental ``pow``."""
    return e == 0.5 or ((2 * e).is_integer() and 1 <= e <= _MAX_MULTIPLIED_EXPONENT)


def _pow_into(dst: torch.Tensor, t: torch.Tensor, e: float) -> torch.Tensor:
    """``t ** e`` (t >= 0) written into ``dst``: the one place the steps of :func:`powf` are carried out.

    ``dst`` may be ``t`` itself for 0, 0.5 and the integer exponents whose steps (:data:`_CHAINS`) never
    read t again after the first (see :func:`_pow_inplace`).
    """
    e = float(e)
    if e == 0:
        return dst.fill_(1.0)
    if e == 1:
        return dst.copy_(t)
    if e == 0.5:
        return torch.rsqrt(t, out=dst).reciprocal_() if t.device.type == "cpu" else torch.sqrt(t, out=dst)
    if not _built_from_steps(e):
        return dst.copy_(t.pow(e))
    if not e.is_integer():  # half-integer: t ** (e - 0.5) times the root
        return _mul_sqrt_(_pow_into(dst, t, e - 0.5), t)
    first = True
    for step in _CHAINS[int(e)]:
        if step == "sq":
            torch.mul(t, t, out=dst) if first else dst.mul_(dst)
        elif step == "cube":
            torch.pow(t, 3, out=dst) if first else dst.pow_(3)  # aten's fast path for 3: x * x * x
        else:
            dst.mul_(t)
        first = False
    return dst


def _mul_sqrt_(dst: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``dst *= sqrt(t)`` (t >= 0) in place. On the CPU as a division by ``rsqrt`` (see :func:`sqrt`), block by
    block through one temporary of :data:`_POW_BLOCK` elements: a full-size temporary of ``rsqrt(t)`` would
    raise the loss's peak memory by a whole tensor (at the benchmark's shapes, 1.08x -> 1.25x of nnU-Net's).

    Example:
        >>> import torch
        >>> t = torch.rand(2, 3, 200_000, dtype=torch.float64)
        >>> d = t[:, 1:].clone()
        >>> bool(torch.allclose(_mul_sqrt_(d, t[:, 1:]), t[:, 1:] ** 1.5, rtol=1e-14))
        True
    """
    if t.device.type != "cpu":
        return dst.mul_(t.sqrt())
    if dst.numel() <= _POW_BLOCK:
        return dst.div_(torch.rsqrt(t))
    if not (dst.is_contiguous() and t.is_contiguous()):  # a channel group's view: contiguous per sample
        for d, s in zip(dst.unbind(0), t.unbind(0)):
            _mul_sqrt_(d, s)
        return dst
    tmp = torch.empty(_POW_BLOCK, dtype=t.dtype)
    for d, s in zip(dst.view(-1).split(_POW_BLOCK), t.view(-1).split(_POW_BLOCK)):
        d.div_(torch.rsqrt(s, out=tmp[:s.numel()]))
    return dst


def powf(t: torch.Tensor, e: float) -> torch.Tensor:
    """``t ** e`` for t >= 0 as a new tensor, taking the cheap route for the exponents PM Dice uses.

    ``torch.pow`` with a general exponent costs a transcendental per element; integer exponents up to
    ``_MAX_MULTIPLIED_EXPONENT`` are built in one buffer from one-pass steps (:data:`_CHAINS`), and
    half-integer ones as ``t ** (e - 0.5) / rsqrt(t)`` (a CPU ``sqrt`` is slow on zeros, see
    :func:`sqrt`; ``x / rsqrt(0) = x / inf = 0``); :func:`_pow_into` carries the steps out.

    Example:
        >>> import torch
        >>> t = torch.tensor([0.0, 0.5, 2.0], dtype=torch.float64)
        >>> [bool(torch.equal(powf(t, e), t ** e)) for e in (0, 1, 2, 5, 7, 16)]
        [True, True, True, True, True, True]
        >>> bool(torch.allclose(powf(t, 2.5), t ** 2.5)), bool(torch.allclose(powf(t, 17.0), t ** 17))
        (True, True)
    """
    e = float(e)
    if e == 0:
        return torch.ones_like(t)
    if e == 1:
        return t.clone()
    if _built_from_steps(e):
        return _pow_into(torch.empty_like(t), t, e)
    return t.pow(e)


def _ce_output(ctx, ce: Optional[torch.Tensor], dtype, device) -> torch.Tensor:
    """The CE-map output of a label-map function: the map, or a non-differentiable 0 when none was asked."""
    if ce is None:
        ce = torch.zeros((), dtype=dtype, device=device)
        ctx.mark_non_differentiable(ce)
    return ce


class LabelMapPMDiceSums(torch.autograd.Function):
    """Softmax + integer label map. Returns (intersect, denom, gt_sum, ce_map).

    Backward, with p the softmax output and t the label of a pixel: every sum's derivative with
    respect to p is elementwise (m is constant), call it G. At the non-label channels
    G_c = k_c * p_c**(gamma_c + o - 1) with k_c = 2 * d(loss)/d(denom_c) (1 * ... for the linear
    denominator, o = 2 or 1), so p_c * G_c = k_c * p_c**(gamma_c + o): the very tensor the forward
    raised to that power for the denominator. The softmax backward dx = p * (G - s), s = sum_c p_c G_c,
    is then taken in place in that buffer: D = k * P, the label channel's p_t G_t written into it with
    one scatter, then D -= p * sum_c D. The CE map's gradient, g_ce * (p - onehot), joins as -g_ce in
    the scattered label term. One full-size buffer besides the saved softmax output, no one-hot, no
    copy of p.
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
            groups = _groups_of(gammas)
            offset = 2.0 if squared else 1.0
            # gamma 0 everywhere: m = 1 (the mask where there is one), so the denominator is the sum of
            # p**offset over every pixel plus the label count, and no label-channel term needs replacing
            plain = len(groups) == 1 and groups[0][2] == 0.0
            m_t = None if plain else _modulation_at_labels(p_t, groups, labels, vmask)
            inter_px = p_t if plain else m_t * p_t

            # per-class sums of the label-channel terms: scatter_add into (rows, C), rows summed after
            R = B * (lab_rows := _scatter_rows(labels[0].numel(), p.device))
            lab = labels.reshape(R, -1)
            zeros = torch.zeros((R, C), dtype=cdt, device=p.device)
            counted = (vmask.view(R, -1) if vmask is not None else
                       torch.ones((1, 1), dtype=cdt, device=p.device).expand(R, lab.shape[1]))
            intersect = zeros.scatter_add(1, lab, inter_px.view(R, -1))
            gt_sum = zeros.scatter_add(1, lab, counted)
            if lab_rows > 1:
                intersect, gt_sum = torch.stack([intersect, gt_sum]).view(2, B, lab_rows, C).sum(2).unbind(0)
            if plain:
                powered = None
                # (the sum of squares as a squared norm: no p**2 tensor)
                denom = (torch.linalg.vector_norm(p, 2, dim=dims).square() if squared else p.sum(dims)).add_(gt_sum)
            else:
                # p**(gamma + offset) at every position, then the label channel's own denominator term
                # written over it: one sum gives the denominator, and the label-channel terms are never
                # subtracted from a sum over everything (that would cancel catastrophically in float32
                # once the background is predicted with confidence)
                powered = _powered(p, groups, offset)
                # m_t is kept for backward where recomputing it costs powers and blends (1/C of the
                # logits' size); then the term m_t (1 + p_t**2) is built in inter_px's buffer, else in
                # m_t's (for gamma 1 backward applies m_t for free)
                keep_m = not (len(groups) == 1 and groups[0][2] == 1.0)
                if keep_m:
                    den_px = inter_px.mul_(p_t).add_(m_t) if squared else inter_px.add_(m_t)
                else:
                    den_px = m_t.addcmul_(inter_px, p_t) if squared else m_t.add_(inter_px)
                    m_t = None
                powered.scatter_(1, labels, den_px)
                del den_px
                denom = powered.sum(dims)
            del inter_px

        ctx.mark_non_differentiable(gt_sum)
        ctx.save_for_backward(labels, p, p_t, vmask, m_t)
        # Not through save_for_backward: backward consumes it in place, and a second backward
        # (retain_graph=True) finds None and recomputes it from p.
        ctx.powered = powered
        ctx.meta = (groups, squared, with_ce, logits.dtype)
        return intersect, denom, gt_sum, _ce_output(ctx, ce, cdt, p.device)

    @staticmethod
    def backward(ctx, g_inter, g_denom, _g_gt, g_ce):
        labels, p, p_t, vmask, m_t = ctx.saved_tensors
        groups, squared, with_ce, in_dtype = ctx.meta
        B, C = p.shape[:2]
        with torch.autocast(p.device.type, enabled=False):
            zeros_bc = None
            if g_inter is None or g_denom is None:
                zeros_bc = torch.zeros((B, C), dtype=p.dtype, device=p.device)
            g_inter = zeros_bc if g_inter is None else g_inter.to(p.dtype)
            g_denom = zeros_bc if g_denom is None else g_denom.to(p.dtype)
            k = g_denom * 2.0 if squared else g_denom
            offset = 2.0 if squared else 1.0

            # D = k * p**(gamma + offset) = p * G at the non-label channels; the label channel is written below
            D, ctx.powered = ctx.powered, None
            if D is None:
                D = _powered(p, groups, offset)
            D.mul_(k.reshape(B, C, *([1] * (p.ndim - 2))))

            # label channel: d intersect / d p = m, d denom / d p = 2 m p (squared) or m
            lab = labels.reshape(B, -1)
            gi = g_inter.gather(1, lab).view_as(p_t)
            gd = g_denom.gather(1, lab).view_as(p_t)
            G_t = gi.addcmul_(gd, p_t, value=2.0) if squared else gi.add_(gd)
            if m_t is not None:
                G_t.mul_(m_t)  # zero at ignored pixels already
            else:
                _modulate_(G_t, p_t, groups, labels, vmask)
            # D_t = p_t G_t, minus the CE map's g_ce: its gradient g_ce (p - onehot) then comes out of the
            # softmax backward below with no separate term
            D_t = G_t.mul_(p_t)
            if with_ce and g_ce is not None:
                gce = g_ce.to(p.dtype)
                D_t.sub_(gce if vmask is None else gce * vmask)
            D.scatter_(1, labels, D_t)
            del gi, G_t, D_t
            # dx = p * (G - s), s = sum_c p_c G_c, as D - p * sum_c D_c
            w = torch.sum(D, 1, keepdim=True, out=gd).neg_()
            D.addcmul_(p, w)
        return D.to(in_dtype), None, None, None, None, None


class TwoClassPMDiceSums(torch.autograd.Function):
    """Softmax + label map with two channels (background and one class). Same outputs as
    :class:`LabelMapPMDiceSums`, computed on half-size tensors without a gather or a scatter.

    With two channels the softmax is a sigmoid of the logit difference, and every term of eq. 5 is a
    function of one number per pixel, e = |y_1 - p_1| = 1 - p_t, the probability of the channel that is
    not the label: at the label channel m_t = e**gamma_t and p_t = 1 - e; at the other channel y = 0 and
    p = e, so its denominator term is e**(gamma_o + 2). The forward pass writes these three per-pixel
    rows and takes every per-class sum with one batched matrix product against the label indicator
    rows [y_0, y_1]: a skinny GEMM that streams the rows once and, unlike a difference of sums, never
    cancels.

    Backward: with E_c = e**gamma_c (constant), p_t = 1 - e and z = x_t - x_o, dp_t/dz = p_t e and
        dL/dz = p_t e * sum_c E_c (alpha_c y_c - kappa_c r)
    where alpha_c = g_I[c] + 2 g_D[c], kappa_c = 2 g_D[c], r = e (squared denominator) or
    kappa_c = g_D[c], r = 1 (linear), g_I / g_D the incoming gradients of the sums. The logit gradient
    is +dL/dz on channel 1 and -dL/dz on channel 0 for a foreground pixel, the opposite for a
    background one. Ignored pixels have e = 0, hence an exact zero gradient.
    """

    @staticmethod
    def forward(ctx, logits: torch.Tensor, labels: torch.Tensor, valid: Optional[torch.Tensor],
                gammas: Tuple[float, ...], squared: bool, with_ce: bool):
        cdt = _compute_dtype(logits)
        B = logits.shape[0]
        with torch.autocast(logits.device.type, enabled=False):
            x = logits.to(cdt)
            x0, x1 = x[:, 0:1], x[:, 1:2]
            s = x1 - x0                                    # (B, 1, *spatial): z for class 1
            # As torch.softmax: a pixel whose larger logit is +inf or NaN gets NaN, not the limit (x1 - x0
            # alone would turn x1 = +inf into p = 1 where the general kernel gives NaN). max * 0 (the add's
            # alpha 0: one pass, no product tensor) is exactly 0 for finite logits, so finite input keeps
            # bit-identical values.
            s.add_(torch.maximum(x0, x1), alpha=0.0)
            del x, x0, x1
            n = s[0].numel()
            # y rows: [y_0, y_1] (times the mask), the right-hand side of the sums' matrix product
            Y = torch.empty((B, 2, n), dtype=cdt, device=s.device)
            y1 = Y[:, 1].view_as(s)
            y1.copy_(labels)
            ce = torch.nn.functional.binary_cross_entropy_with_logits(s, y1, reduction="none") if with_ce else None
            e = torch.sigmoid_(s).sub_(y1).abs_()          # e = |y_1 - p_1| = 1 - p_t
            torch.sub(1.0, y1, out=Y[:, 0].view_as(s))
            vmask = None if valid is None else valid.to(cdt)
            if vmask is not None:
                Y.mul_(vmask.view(B, 1, n))
                e.mul_(vmask)
                if ce is not None:
                    ce.mul_(vmask)
            g0, g1 = (float(g) for g in gammas)
            # rows: m_t p_t (intersect), m_t (1 + p_t**2) or m_t (1 + p_t) (label-channel denominator
            # term), m_o e**2 or m_o e (the other channel's denominator term, m_o = e**gamma_o)
            V = torch.empty((B, 3, n), dtype=cdt, device=s.device)
            inter_r, den_r, other_r = V.unbind(1)
            ef = e.view(B, n)
            if g0 == g1:
                # e**gamma in other_r's own row (no temporary): it becomes m_o e**2 there last
                m_t = m_o = ef if g0 == 1.0 else _pow_into(other_r, ef, g0)
            else:  # m_t = e**gamma_t, m_o = e**gamma_o: both powers, then swapped where y = 1
                # as lerp(E_0, E_1, y_1) and lerp(E_1, E_0, y_1): one pass each, exact for 0/1 weights;
                # masked pixels (y = 0 in Y) take E_0, E_1 and add nothing to the sums
                y1f = Y[:, 1]
                E0 = ef if g0 == 1.0 else _pow_into(inter_r, ef, g0)
                E1 = _pow_into(other_r, ef, g1)
                m_t = torch.lerp(E0, E1, y1f, out=den_r)
                m_o = torch.lerp(E1, E0, y1f, out=other_r)  # elementwise: other_r may be read and written
                del y1f, E0, E1
            torch.addcmul(m_t, m_t, ef, value=-1.0, out=inter_r)            # m_t (1 - e) = m_t p_t
            if m_t is den_r:                                                 # m_t (1 + p_t)
                den_r.add_(inter_r)
            else:
                torch.add(m_t, inter_r, out=den_r)
            if squared:
                den_r.addcmul_(inter_r, ef, value=-1.0)                      # m_t (1 + p_t**2)
            if m_o is not other_r:
                torch.mul(m_o, ef, out=other_r)
            else:
                other_r.mul_(ef)
            if squared:
                other_r.mul_(ef)
            del m_t, m_o
            S = torch.bmm(V, Y.transpose(1, 2))                              # (B, 3, 2): rows x label
            del V, inter_r, den_r, other_r
            intersect = S[:, 0]
            # class c: its label-channel terms where y = c, its other-channel terms where y != c
            denom = S[:, 1] + S[:, 2].flip(1)
            gt_sum = Y.sum(2)
        ctx.mark_non_differentiable(gt_sum)
        # y_1 for backward as the float row of Y (converting the int64 map again would cost a pass and
        # a buffer; Y is no larger than the rows freed above, so the peak is unchanged)
        ctx.save_for_backward(y1, e)
        ctx.meta = (g0, g1, squared, with_ce, logits.dtype, tuple(logits.shape))
        return intersect, denom, gt_sum, _ce_output(ctx, ce, cdt, e.device)

    @staticmethod
    def backward(ctx, g_inter, g_denom, _g_gt, g_ce):
        # Written straight into the two halves of the logit gradient: on the CPU a fresh full-size
        # temporary costs more (page faults) than the arithmetic done in it.
        y, e = ctx.saved_tensors
        g0, g1, squared, with_ce, in_dtype, shape = ctx.meta
        B = shape[0]
        cdt = e.dtype
        with torch.autocast(e.device.type, enabled=False):
            zeros_bc = torch.zeros((B, 2), dtype=cdt, device=e.device)
            gi = zeros_bc if g_inter is None else g_inter.to(cdt)
            gd = zeros_bc if g_denom is None else g_denom.to(cdt)
            bshape = (B,) + (1,) * (e.ndim - 1)
            alpha = (gi + 2.0 * gd).view(B, 2, *bshape[1:])
            kappa = (2.0 * gd if squared else gd).view(B, 2, *bshape[1:])
            a0, a1, k0, k1 = alpha[:, 0], alpha[:, 1], kappa[:, 0], kappa[:, 1]
            dx = torch.empty(shape, dtype=cdt, device=e.device)
            d0, d1 = dx[:, 0:1], dx[:, 1:2]
            if g0 == g1:
                # G = alpha_t - (k0 + k1) r; channel 0 gets -sigma G e**(gamma + 1) p_t, sigma = 2 y - 1
                H = d0
                if squared:
                    torch.addcmul(a0, e, -(k0 + k1), out=H)
                else:
                    H.copy_((a0 - k0 - k1).expand_as(H))
                H.addcmul_(y, a1 - a0)                       # G
                H.addcmul_(y, H, value=-2.0)                 # -sigma G
                if g0 == 1.0:
                    H.mul_(e).mul_(e)
                elif g0 != 0.0:
                    H.mul_(_pow_into(d1, e, g0 + 1.0))  # in d1, free until the last step (no temporary)
                else:
                    H.mul_(e)
            else:
                # channel 1 gets sigma G e p_t with G = alpha_t E_t - r K, K = sum_c kappa_c E_c,
                # E_c = e**gamma_c: r K - alpha_0 E_0 where y = 0, alpha_1 E_1 - r K where y = 1, taken
                # as a lerp with the 0/1 label as weight (exact)
                H = d1
                E0 = e if g0 == 1.0 else _pow_into(d1, e, g0)  # in d1 until it is read the last time
                E1 = powf(e, g1)
                rK = torch.mul(E0, k0, out=d0).addcmul_(E1, k1)  # d0: free until the last step
                if squared:
                    rK.mul_(e)
                torch.addcmul(rK, E0, a0, value=-1.0, out=H)  # elementwise: H may be E0's own buffer
                H.lerp_(E1.mul_(a1).sub_(rK), y).mul_(e)
                del E0, E1, rK
            H.addcmul_(H, e, value=-1.0)                     # * p_t = 1 - e
            if with_ce and g_ce is not None:
                # d(-log p_t)/dz = -e: channel 1 gets -sigma g_ce e, channel 0 +sigma g_ce e
                t = g_ce.to(cdt) * e
                sign = 2.0 if H is d0 else -2.0
                H.addcmul_(y, t, value=sign).sub_(t, alpha=sign / 2.0)
            torch.neg(H, out=d1 if H is d0 else d0)
        return dx.to(in_dtype), None, None, None, None, None


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


def _powered(p: torch.Tensor, groups: Groups, offset: float) -> torch.Tensor:
    """p**(gamma_group + offset) per channel group as one new tensor."""
    if len(groups) == 1:
        return powf(p, groups[0][2] + offset)
    out = torch.empty_like(p)
    for c0, c1, g in groups:
        _pow_into(out[:, c0:c1], p[:, c0:c1], g + offset)
    return out


def _modulation_at_labels(p_t: torch.Tensor, groups: Groups, labels: torch.Tensor,
                          vmask: Optional[torch.Tensor]) -> torch.Tensor:
    """m at the label channel, (1 - p_t)**gamma_t, zero at ignored pixels. A new tensor.

    One gamma: one power. Several channel groups (``gamma_bg``, a per-class list): each group's power
    of the label-channel tensor, blended in where the pixel's label lies in that group (``lerp`` with
    0/1 weights: exact). The weight of the group starting at channel c0 is ``clamp(t - (c0 - 1), 0, 1)``
    of the label map converted to float once: exactly [t >= c0] for whole labels, and on the CPU far
    cheaper than a comparison of the int64 map and a bool-to-float conversion (or ``torch.where``,
    ``masked_fill_``). A per-pixel exponent would cost a transcendental per element instead of a few
    multiplications.
    """
    q = 1.0 - p_t
    g = float(groups[0][2])
    if len(groups) == 1:
        m_t = q if g == 1.0 else powf(q, g)
    else:
        # (two groups and gamma 1 first, as gamma_bg 1: q itself, read by the one power below before the
        # lerp writes it)
        m_t = q if (g == 1.0 and len(groups) == 2) else powf(q, g)
        m_g = torch.empty_like(q)
        t = labels.to(q.dtype)
        w = None
        last = len(groups) - 1
        for i, (c0, _c1, g) in enumerate(groups[1:], 1):  # contiguous groups in channel order: later ones override
            _pow_into(m_g, q, float(g))
            # the last weight is written over the float label map itself (not read after it), the others
            # into one buffer
            if i == last:
                w = t if c0 == 1 else t.sub_(c0 - 1.0)  # (gamma_bg: the weight is clamp(t, 0, 1))
            else:
                w = torch.sub(t, c0 - 1.0, out=torch.empty_like(q) if w is None else w)
            m_t.lerp_(m_g, w.clamp_(0.0, 1.0))
        del q, m_g, t, w
    if vmask is not None:
        m_t.mul_(vmask)
    return m_t


def _modulate_(G: torch.Tensor, p_t: torch.Tensor, groups: Groups, labels: torch.Tensor,
               vmask: Optional[torch.Tensor]) -> torch.Tensor:
    """``G *= m_t`` in place (m_t as :func:`_modulation_at_labels`), without a temporary for gamma 0 and 1."""
    g = float(groups[0][2])
    if len(groups) == 1 and g == 1.0:
        G.addcmul_(G, p_t, value=-1.0)  # G (1 - p_t)
    elif not (len(groups) == 1 and g == 0.0):
        G.mul_(_modulation_at_labels(p_t, groups, labels, None))
    if vmask is not None:
        G.mul_(vmask)
    return G


class DensePMDiceSums(torch.autograd.Function):
    """Softmax or sigmoid + dense (one-hot, multi-hot or soft) target. Returns (intersect, denom, gt_sum).

    Each per-(sample, channel) sum is a dot product over the pixels (:func:`_pixel_dots`: no
    elementwise product is materialised); the modulating term m is computed once in
    forward, turned into m * p in place after its own dot product, and computed again in backward
    rather than kept. With a bool target (nnU-Net's region targets) y**2 = y, which saves a product.
    """

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
            y_sq = yv if (y.dtype == torch.bool or not squared) else yv * yv  # y**2 = y for a 0/1 target
            if m is None:  # gamma 0 and every pixel counts: the plain Dice sums
                intersect = _pixel_dots(p, yv)
                denom = (_pixel_dots(p, p) if squared else p.sum(dims)) + y_sq.sum(dims)
            else:
                label_term = _pixel_dots(m, y_sq)  # m y**2 (squared) or m y (linear)
                mp = m.mul_(p)
                del m
                intersect = _pixel_dots(mp, yv)
                denom = (_pixel_dots(mp, p) if squared else mp.sum(dims)) + label_term
                del mp
            gt_sum = (yv if vmask is None else yv * vmask).sum(dims)
        ctx.mark_non_differentiable(gt_sum)
        ctx.save_for_backward(p, y, vmask)
        # The float copy of the target (a bool region target's, say) is handed to backward outside
        # save_for_backward: backward turns it into its gradient buffer, and a second backward
        # (retain_graph=True) finds None and converts the target again. A float target of the compute dtype
        # is the caller's own tensor (no copy) and is never written.
        ctx.yv = yv if yv is not y else None
        ctx.state = dict(groups=_groups_of(gammas), squared=squared, nonlin=nonlin, in_dtype=logits.dtype)
        return intersect, denom, gt_sum

    @staticmethod
    def backward(ctx, g_inter, g_denom, _g_gt):
        p, y, vmask = ctx.saved_tensors
        st = ctx.state
        with torch.autocast(p.device.type, enabled=False):
            yv, ctx.yv = ctx.yv, None
            if yv is None:
                yv = y.to(p.dtype)
            own = yv is not y  # a copy of ours: its buffer can take the gradient
            shape = p.shape[:2] + (1,) * (p.ndim - 2)
            gi = (torch.zeros(shape, dtype=p.dtype, device=p.device) if g_inter is None
                  else g_inter.to(p.dtype).reshape(shape))
            gd = (torch.zeros(shape, dtype=p.dtype, device=p.device) if g_denom is None
                  else g_denom.to(p.dtype).reshape(shape))
            m = _dense_modulation(p, yv, vmask, st["groups"])
            # G = m (g_I y + 2 g_D p) (squared) or m (g_I y + g_D), in y's float copy where it is ours
            G = yv.mul_(gi) if own else torch.mul(yv, gi)
            if st["squared"]:
                G.addcmul_(p, 2.0 * gd)
            else:
                G.add_(gd)
            if m is not None:
                G.mul_(m)
                del m
            if st["nonlin"] == "softmax":
                # softmax backward, dx = p * (G - sum_c p_c G_c), in G's own buffer (public ops only: the
                # channel sum as C multiply-adds on channel slices, cheaper on the CPU than a reduction
                # over the short channel axis)
                s = G[:, 0] * p[:, 0]
                for c in range(1, G.shape[1]):
                    s.addcmul_(G[:, c], p[:, c])
                dx = G.sub_(s.unsqueeze(1)).mul_(p)
            else:
                dx = G.mul_(p)                     # sigmoid backward: G p (1 - p)
                dx.addcmul_(dx, p, value=-1.0)
        return dx.to(st["in_dtype"]), None, None, None, None, None


def _pixel_dots(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``(a * b).sum`` over the spatial axes, (B, C, *spatial) -> (B, C), without materialising ``a * b``.

    On the CPU, one ``torch.dot`` per (sample, channel) row: it streams both rows once (BLAS), where a
    product-then-sum writes and reads a temporary of the full size and a batched matrix product of
    1 x n by n x 1 blocks runs about 3x slower. Short rows (and other devices) take the product and sum.
    """
    B, C = a.shape[:2]
    a2, b2 = a.reshape(B * C, -1), b.reshape(B * C, -1)
    if a2.shape[1] < 16384 or a.device.type != "cpu":  # short rows: one call beats a Python loop of calls
        return (a2 * b2).sum(1).view(B, C)
    return torch.stack([torch.dot(a2[i], b2[i]) for i in range(B * C)]).view(B, C)


def _dense_modulation(p, yv, vmask, groups: Groups) -> Optional[torch.Tensor]:
    """m = |y - p|**gamma_c (times the mask), or None where it is 1 everywhere (gamma 0, no mask)."""
    if all(g == 0.0 for _, _, g in groups):
        return None if vmask is None else vmask.expand_as(p).to(p.dtype, copy=True)
    m = (p - yv).abs_()
    if len(groups) == 1:
        _pow_inplace(m, groups[0][2])
    else:
        for c0, c1, g in groups:
            _pow_inplace(m[:, c0:c1], g)
    if vmask is not None:
        m.mul_(vmask)
    return m


def _pow_inplace(t: torch.Tensor, e: float) -> torch.Tensor:
    """``t ** e`` for t >= 0 in ``t``'s own buffer (a view is written through), with no full-size temporary.

    Squarings and cubes (2, 3, 4, 6, 8, 9, ...) and the square root in place (:func:`_pow_into` with ``t``
    as its own destination). An exponent whose cheap steps read the original t again (5 = 4 + 1, the
    half-integers) runs them block by block on the CPU (:data:`_POW_BLOCK` elements), through one
    block-sized temporary: a full-size temporary costs more memory than the benchmark's target allows, and
    ``pow_`` a transcendental per element (at 12x4x256x256: 8.1 ms, the blocked steps 0.9 ms). Elsewhere,
    and for exponents not built from steps, ``pow_``: one pass on an accelerator.

    Example:
        >>> import torch
        >>> t = torch.rand(3, 2, 300_000, dtype=torch.float64)
        >>> expected = t[:, 1:] ** 5
        >>> out = _pow_inplace(t[:, 1:], 5)
        >>> bool(torch.allclose(out, expected, rtol=1e-14)), out.data_ptr() == t[:, 1:].data_ptr()
        (True, True)
        >>> bool(torch.allclose(t[:, 1:], expected, rtol=1e-14))
        True
        >>> expected = t ** 2.5
        >>> bool(torch.allclose(_pow_inplace(t, 2.5), expected, rtol=1e-14))
        True
    """
    e = float(e)
    if e == 1:
        return t
    chain = _CHAINS.get(int(e)) if e.is_integer() else None
    if e in (0.0, 0.5) or (chain is not None and "t" not in chain):
        return _pow_into(t, t, e)
    if t.device.type != "cpu" or not _built_from_steps(e) or t.ndim == 0:
        return t.pow_(e)
    if not t.is_contiguous():  # a channel group's view: each sample's slice of it is contiguous
        if t.ndim == 1 or t[0].numel() < 8192:  # (small slices: a few calls per slice cost more than pow_)
            return t.pow_(e)
        for sub in t.unbind(0):
            _pow_inplace(sub, e)
        return t
    flat = t.view(-1)
    tmp = torch.empty(min(_POW_BLOCK, flat.numel()), dtype=t.dtype)
    for block in flat.split(_POW_BLOCK):
        out = tmp[:block.numel()]
        if chain is not None and chain[-1] == "t":  # the last step multiplies by t: write it into t itself
            block.mul_(_pow_into(out, block, e - 1))
        else:
            block.copy_(_pow_into(out, block, e))
    return t


_GROUP_CACHE: dict = {}


def _groups_of(gammas: Tuple[float, ...]) -> Groups:
    groups = _GROUP_CACHE.get(gammas)
    if groups is None:
        from ._checks import gamma_groups
        groups = _GROUP_CACHE.setdefault(gammas, gamma_groups(gammas))
    return groups
