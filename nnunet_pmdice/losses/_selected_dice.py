"""Dice over a per-class selection of pixels: the resampling Dice losses (TopK Dice, Zhao et al.'s Focal Dice).

Both losses compute the Dice of eq. 4 over a binary mask :math:`M_{ic}` that keeps, for each sample and
class, every pixel of one side of the ground truth and only the top K% of the other side ranked by
their error :math:`|y_{ic} - \\hat p_{ic}|` (:math:`\\hat p`: the prediction with no gradient):

.. math::

    D_{bc} = \\frac{2 \\sum_i M_{ic} y_{ic} p_{ic} + \\epsilon}{\\sum_i M_{ic} (y_{ic}^2 + p_{ic}^2) + \\epsilon}

The mask is a constant of the step, like PM Dice's modulating term (which is the soft counterpart:
``M`` in {0, 1} instead of :math:`|y - \\hat p|^\\gamma`). The sums are plain autograd in float32 (float64
for float64 input), with autocast off; the mask and the one-hot target are built under ``no_grad``.
"""
from __future__ import annotations

from typing import Optional

import torch

from ._checks import LossInputs, check_number
from .dice_family import DiceFamilyLoss


def keep_top_percent(errors: torch.Tensor, candidates: torch.Tensor, k: float) -> torch.Tensor:
    """Per (sample, class): the candidates whose error is among the top ``k`` percent of that pair's candidates.

    Args:
        errors: (B, C, *spatial) values in [0, 1].
        candidates: (B, C, *spatial) bool, the pixels that compete.
        k: percentage kept, 0 < k <= 100. A pair with n candidates keeps ``max(1, floor(n * k / 100))`` of
            them (the rounding of nnU-Net's ``TopKLoss``, never empty); ties at the threshold are all kept.

    Returns:
        (B, C, *spatial) bool, a subset of ``candidates``.
    """
    if k >= 100:
        return candidates
    B, C = errors.shape[:2]
    flat_err = errors.reshape(B, C, -1)
    flat_cand = candidates.reshape(B, C, -1)
    count = flat_cand.sum(-1)
    n_keep = torch.floor(count.double() * (k / 100.0)).long().clamp_min(1) * (count > 0)
    k_max = int(n_keep.max())
    if k_max == 0:
        return torch.zeros_like(candidates)
    # Errors lie in [0, 1], so -1 ranks every non-candidate last.
    scored = torch.where(flat_cand, flat_err, torch.full((), -1.0, dtype=flat_err.dtype, device=flat_err.device))
    top = torch.topk(scored, k_max, dim=-1, sorted=True).values
    threshold = top.gather(-1, (n_keep - 1).clamp_min(0).unsqueeze(-1))
    return (flat_cand & (flat_err >= threshold)).reshape(candidates.shape)


class SelectedDiceLoss(DiceFamilyLoss):
    """Base of the Dice losses over a selection of pixels: subclasses say which side is ranked.

    Args:
        k: percentage of the ranked side kept per sample and class (0 < k <= 100).
        *args, **options: the :class:`~nnunet_pmdice.losses.DiceOptions`. With ``batch_dice`` the
            ranking is still per sample (the paper ranks "for each image"); the selected sums are then
            added over the batch.

    Raises:
        TypeError, ValueError: ``k`` not a number in (0, 100], bad options; in a call, the input errors
            of :class:`DiceFamilyLoss`.
    """

    #: which side of the ground truth is ranked: "positives" (y = 1) or "negatives" (y = 0)
    ranked_side: str = ""

    def __init__(self, k: float = 10.0, *args, **options):
        super().__init__(*args, **options)
        self.k = check_number("k", k, strict=True, maximum=100.0)

    def extra_repr(self) -> str:
        return f"k={self.k:g} ({self.ranked_side} ranked), " + super().extra_repr()

    def selection(self, p_hat: torch.Tensor, y: torch.Tensor, valid: Optional[torch.Tensor]) -> torch.Tensor:
        """The mask M (B, C, *spatial), bool: the unranked side whole, the top k% of the ranked side.

        A pixel is a positive of class c where y_c > 0.5 (soft targets are split there).
        """
        positive = y > 0.5
        ranked = positive if self.ranked_side == "positives" else ~positive
        if valid is not None:
            ranked = ranked & (valid > 0)
        kept = keep_top_percent((y - p_hat).abs(), ranked, self.k)
        return kept | ~ranked

    def _sums(self, logits: torch.Tensor, inputs: LossInputs, with_ce: bool):
        """The Dice sums over the selected pixels (plain autograd); no shared CE map."""
        kind, t, mask = inputs
        dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
        with torch.autocast(logits.device.type, enabled=False):
            x = logits.to(dtype)
            p = torch.softmax(x, 1) if self.nonlin == "softmax" else torch.sigmoid(x)
            dims = tuple(range(2, p.ndim))
            with torch.no_grad():
                if kind == "labels":
                    y = torch.zeros_like(p).scatter_(1, t, 1.0)
                else:
                    y = t.to(dtype)
                valid = None if mask is None else mask.to(dtype)
                weight = self.selection(p.detach(), y, valid).to(dtype)
                if valid is not None:
                    weight.mul_(valid)
                y_weighted = y * weight
                gt = (y if valid is None else y * valid).sum(dims)
            inter = (p * y_weighted).sum(dims)
            if self.squared:
                denom = (p * p * weight).sum(dims) + (y_weighted * y).sum(dims)
            else:
                denom = (p * weight).sum(dims) + y_weighted.sum(dims)
        return inter, denom, gt, None
