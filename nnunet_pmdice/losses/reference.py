"""PM Dice written the obvious way with autograd: the reference the fused kernels are tested against.

Not meant for training: it builds a one-hot target and keeps every intermediate alive for backward,
which is exactly what :class:`nnunet_pmdice.losses.PMDiceLoss` avoids. ``scripts/bench_loss.py`` times
it as the "before".
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch

from .dice_family import DiceOptions


def reference_pm_dice(logits: torch.Tensor, target: torch.Tensor, gamma: Union[float, Sequence[float]] = 1.0,
                      gamma_bg: Optional[float] = None, batch_dice: bool = False, do_bg: bool = True,
                      smooth: float = DiceOptions.smooth, squared: bool = True, nonlin: str = "softmax",
                      loss_mask: Optional[torch.Tensor] = None, detach_modulation: bool = True,
                      modulation_from: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Eq. 5 of the paper, literally.

    ``detach_modulation=False`` lets gradient flow through m (the variant the paper warns against).
    ``modulation_from`` computes p-hat (and so m) from other logits: with it frozen at a point x0, the
    loss is a smooth function whose derivative at x0 is exactly the stop-gradient derivative, which
    the tests check the fused backward against by finite differences.
    """
    C = logits.shape[1]
    dt = torch.float64 if logits.dtype == torch.float64 else torch.float32
    x = logits.to(dt)
    p = torch.softmax(x, 1) if nonlin == "softmax" else torch.sigmoid(x)
    if target.ndim == logits.ndim - 1:
        target = target.unsqueeze(1)
    if target.shape[1] == 1 and C > 1:
        y = torch.zeros_like(p).scatter_(1, target.long(), 1.0)
    else:
        y = target.to(dt)
    gam = [float(g) for g in gamma] if isinstance(gamma, (list, tuple)) else [float(gamma)] * C
    if gamma_bg is not None:
        gam[0] = float(gamma_bg)
    g = torch.tensor(gam, dtype=dt).view(1, C, *([1] * (p.ndim - 2)))
    if modulation_from is not None:
        xm = modulation_from.detach().to(dt)
        p_hat = torch.softmax(xm, 1) if nonlin == "softmax" else torch.sigmoid(xm)
    else:
        p_hat = p.detach() if detach_modulation else p
    m = (y - p_hat).abs() ** g
    if loss_mask is not None:
        mask = loss_mask.to(dt)
        if mask.ndim == p.ndim - 1:
            mask = mask.unsqueeze(1)
        m = m * mask
        y_count = y * mask
    else:
        y_count = y
    axes = tuple(range(2, p.ndim))
    inter = (m * y * p).sum(axes)
    denom = (m * (y * y + p * p)).sum(axes) if squared else (m * (y + p)).sum(axes)
    gt = y_count.sum(axes)
    if not do_bg:
        inter, denom, gt = inter[:, 1:], denom[:, 1:], gt[:, 1:]
    if batch_dice:
        inter, denom, gt = inter.sum(0), denom.sum(0), gt.sum(0)
    dice = (2 * inter + smooth) / (denom + smooth)
    present = gt > 0
    if not present.any():
        return dice.sum() * 0
    return 1 - dice[present].mean()
