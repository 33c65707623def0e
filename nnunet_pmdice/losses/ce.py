"""Cross-entropy terms of the compound losses, as reductions of a per-pixel CE map.

A compound loss computes the per-pixel cross entropy once (shared with the Dice part's log-softmax
where the Dice part can, see ``PMDiceLoss.forward_with_ce_map``) and hands it to one of these terms:

- :class:`CrossEntropyTerm` (paper eq. 1): the mean over counted pixels, as nnU-Net's
  ``RobustCrossEntropyLoss`` with ``ignore_index``.
- :class:`TopKCrossEntropyTerm` (paper eq. 2, Pohlen et al. 2017): the mean of the k% largest
  values, with nnU-Net's ``TopKLoss`` semantics (ranked over the whole batch; ignored pixels hold 0
  and still count in the number of pixels).
- :class:`FocalCrossEntropyTerm` (paper eq. 3, Lin et al. 2017): ``(1 - p_t)**gamma * CE`` averaged
  over counted pixels, with the gradient through the modulating factor as in Lin et al.

Every term is called as ``term(ce_map, loss_mask=None, target=None)``: ``target`` is the prepared
target of the compound loss (the label map with the ignore label replaced, or the one-hot / region
tensor without the ignore channel). The terms above do not need it; a term that weights pixels by the
ground truth (:class:`nnunet_pmdice.losses.DilatedBalancedCETerm`) does.

In region (sigmoid) mode the map is the element-wise binary cross entropy (B, C, *spatial) and the
same reductions apply per element; with an ignore mask the mean is over counted elements (nnU-Net's
``DC_and_BCE_loss`` divides the masked sum by the number of counted *pixels*, which scales its BCE by
the number of regions; the mean here does not).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ._checks import LossInputs, check_nonlin, check_number, prepare_inputs


def cross_entropy_map(logits: torch.Tensor, target: torch.Tensor, loss_mask: Optional[torch.Tensor] = None,
                      nonlin: str = "softmax") -> torch.Tensor:
    """Per-pixel CE (B, 1, *spatial) for softmax, per-element BCE (B, C, *spatial) for sigmoid; 0 where masked.

    Targets and masks as the Dice-family losses take them (label map, or one-hot / soft in [0, 1]).

    Raises:
        TypeError, ValueError: an unknown ``nonlin`` and the input errors of the Dice-family losses
            (:func:`nnunet_pmdice.losses._checks.prepare_inputs`).

    Example:
        >>> import math, torch
        >>> ce = cross_entropy_map(torch.zeros(1, 2, 1, 2), torch.tensor([[[[0, 1]]]]))
        >>> [round(v, 4) for v in ce.flatten().tolist()] == [round(math.log(2), 4)] * 2
        True
    """
    return ce_map_of_checked(logits, prepare_inputs(logits, target, loss_mask, check_nonlin(nonlin)), nonlin)


def ce_map_of_checked(logits: torch.Tensor, inputs: LossInputs, nonlin: str) -> torch.Tensor:
    """:func:`cross_entropy_map` of inputs that :func:`~nnunet_pmdice.losses._checks.prepare_inputs` has checked."""
    kind, t, mask = inputs
    x = logits.float() if logits.dtype != torch.float64 else logits
    if nonlin == "sigmoid":
        ce = F.binary_cross_entropy_with_logits(x, t.to(x.dtype), reduction="none")
    elif kind == "labels":
        ce = F.cross_entropy(x, t[:, 0], reduction="none").unsqueeze(1)
    else:
        ce = -(t.to(x.dtype) * torch.log_softmax(x, 1)).sum(1, keepdim=True)
    if mask is not None:
        ce = ce * mask.to(ce.dtype)
    return ce


def _counted(ce_map: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
    if mask is None:
        return torch.tensor(float(ce_map.numel()), dtype=ce_map.dtype, device=ce_map.device)
    return mask.to(ce_map.dtype).sum() * (ce_map.numel() // mask.numel())


class CrossEntropyTerm(nn.Module):
    """Mean cross entropy over counted pixels (0 when every pixel is ignored, as nnU-Net skips it)."""

    name = "CE"

    def forward(self, ce_map: torch.Tensor, loss_mask: Optional[torch.Tensor] = None,
                target: Optional[torch.Tensor] = None) -> torch.Tensor:
        return ce_map.sum() / _counted(ce_map, loss_mask).clamp_min(1.0)


class TopKCrossEntropyTerm(nn.Module):
    """Mean of the ``k`` percent largest per-pixel CE values (nnU-Net's ``TopKLoss``, default k=10).

    Raises:
        TypeError, ValueError: ``k`` is not a number in (0, 100].
    """

    name = "TopKCE"

    def __init__(self, k: float = 10.0):
        super().__init__()
        self.k = check_number("k", k, minimum=0.0, strict=True, maximum=100.0)

    def extra_repr(self) -> str:
        return f"k={self.k:g}"

    def forward(self, ce_map: torch.Tensor, loss_mask: Optional[torch.Tensor] = None,
                target: Optional[torch.Tensor] = None) -> torch.Tensor:
        n = ce_map.numel()
        # nnU-Net's int(n * k / 100) is 0 on tiny inputs, and the mean of nothing is NaN.
        keep = max(1, int(n * self.k / 100))
        return torch.topk(ce_map.reshape(-1), keep, sorted=False)[0].mean()


class FocalCrossEntropyTerm(nn.Module):
    """Focal loss of Lin et al. (2017), ``-(1 - p_t)**gamma * log(p_t)`` (paper eq. 3; default gamma 2).

    Raises:
        TypeError, ValueError: ``gamma`` is not a number >= 0.
    """

    name = "FocalCE"

    def __init__(self, gamma: float = 2.0):
        super().__init__()
        self.gamma = check_number("focal gamma", gamma)

    def extra_repr(self) -> str:
        return f"gamma={self.gamma:g}"

    def forward(self, ce_map: torch.Tensor, loss_mask: Optional[torch.Tensor] = None,
                target: Optional[torch.Tensor] = None) -> torch.Tensor:
        if self.gamma == 0:
            focal = ce_map
        else:
            # 1 - p_t = -expm1(-ce) keeps precision for confident pixels; the clamp keeps the
            # derivative of x**gamma finite at 0 when gamma < 1.
            one_minus_pt = (-torch.expm1(-ce_map)).clamp_min(1e-12)
            focal = one_minus_pt.pow(self.gamma) * ce_map
        return focal.sum() / _counted(ce_map, loss_mask).clamp_min(1.0)
