"""Compound losses: a Dice-type term plus a cross-entropy-type term, with nnU-Net's ignore label.

``CompoundLoss`` is the one implementation; the named classes only choose its parts and defaults.
The target conventions are nnU-Net's:

- label datasets (softmax): target (B, 1, *spatial) label map, possibly holding ``ignore_label``;
  ignored pixels count in no sum of either term (as ``DC_and_CE_loss``).
- region datasets (``regions=True``, sigmoid): target (B, R, *spatial) one-hot regions, and with
  ``ignore_label`` set, one more last channel that is 1 on ignored pixels (as ``DC_and_BCE_loss``).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ._checks import GammaArg, check_flag, check_number
from .ce import CrossEntropyTerm, FocalCrossEntropyTerm, TopKCrossEntropyTerm
from .dice_family import DiceFamilyLoss
from .pm_dice import PMDiceLoss


class CompoundLoss(nn.Module):
    """``weight_dice * dice(logits, target) + weight_ce * ce_term(ce_map)``.

    Args:
        dice: a Dice-family loss (``DiceFamilyLoss``) or None for a CE-only loss.
        ce_term: a reduction of the per-pixel CE map (``CrossEntropyTerm`` & co.) or None; called as
            ``ce_term(ce_map, loss_mask, target)`` with the target after the ignore label is split off.
        weight_dice, weight_ce: weights of the two parts (>= 0; they need not sum to 1).
        ignore_label: nnU-Net's ignore label (an int for label datasets; any non-None value switches
            on the extra mask channel for region datasets), or None.
        regions: region (multi-label, sigmoid) training.

    Raises:
        TypeError, ValueError: no part at all, a ``dice`` that is not a Dice-family loss, a negative
            weight, a Dice part whose ``nonlin`` does not fit ``regions``; in a call, an ignore label
            with a target that is not a label map, and the input errors of the parts.
    """

    def __init__(self, dice: Optional[DiceFamilyLoss], ce_term: Optional[nn.Module], weight_dice: float = 1.0,
                 weight_ce: float = 1.0, ignore_label: Optional[int] = None, regions: bool = False):
        super().__init__()
        if dice is None and ce_term is None:
            raise ValueError("a compound loss needs a Dice part, a CE part or both")
        if dice is not None and not isinstance(dice, DiceFamilyLoss):
            raise TypeError(f"dice must be a DiceFamilyLoss (e.g. PMDiceLoss), got {type(dice).__name__}")
        self.dice = dice
        self.ce_term = ce_term
        self.weight_dice = check_number("weight_dice", weight_dice) if dice is not None else 0.0
        self.weight_ce = check_number("weight_ce", weight_ce) if ce_term is not None else 0.0
        self.ignore_label = ignore_label
        self.regions = check_flag("regions", regions)
        if dice is not None and (dice.nonlin == "sigmoid") != self.regions:
            raise ValueError(f"the Dice part uses nonlin={dice.nonlin!r} but regions={self.regions}: region "
                             f"training needs nonlin='sigmoid', label training nonlin='softmax'")

    def extra_repr(self) -> str:
        return (f"weight_dice={self.weight_dice:g}, weight_ce={self.weight_ce:g}, ignore_label={self.ignore_label}, "
                f"regions={self.regions}")

    def _split_ignore(self, target: torch.Tensor):
        if self.ignore_label is None:
            return target, None
        if self.regions:
            ign = target[:, -1:]
            mask = ~ign if ign.dtype == torch.bool else (ign == 0)
            return target[:, :-1], mask
        if target.ndim >= 2 and target.shape[1] != 1:
            raise ValueError("the ignore label needs a label-map target of shape (B, 1, *spatial), "
                             f"got {tuple(target.shape)}")
        mask = target != self.ignore_label
        return torch.where(mask, target, torch.zeros((), dtype=target.dtype, device=target.device)), mask

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        from .ce import cross_entropy_map
        target, mask = self._split_ignore(target)
        use_dice = self.dice is not None and self.weight_dice != 0
        use_ce = self.ce_term is not None and self.weight_ce != 0
        if use_dice and use_ce:
            dice_value, ce_map = self.dice.forward_with_ce_map(logits, target, mask)
            return self.weight_dice * dice_value + self.weight_ce * self.ce_term(ce_map, mask, target)
        if use_dice:
            return self.weight_dice * self.dice(logits, target, mask)
        if use_ce:
            ce_map = cross_entropy_map(logits, target, mask, "sigmoid" if self.regions else "softmax")
            return self.weight_ce * self.ce_term(ce_map, mask, target)
        return logits.sum() * 0.0


class _PMCompound(CompoundLoss):
    """PM Dice + ``ce_term``. ``gamma``, ``gamma_bg`` as :class:`PMDiceLoss`; the other Dice options
    (``batch_dice``, ``do_bg``, ``smooth``, ``squared``, ``ddp``) by keyword, ``nonlin`` follows ``regions``."""

    def __init__(self, ce_term, gamma: GammaArg = 1.0, gamma_bg: Optional[float] = None, *,
                 weight_ce: float = 1.0, weight_dice: float = 1.0, ignore_label: Optional[int] = None,
                 regions: bool = False, **options):
        if "nonlin" in options:
            raise TypeError(f"{type(self).__name__} sets nonlin from regions (regions=True: sigmoid); "
                            f"do not pass nonlin")
        dice = PMDiceLoss(gamma, gamma_bg, nonlin="sigmoid" if regions else "softmax", **options)
        super().__init__(dice, ce_term, weight_dice=weight_dice, weight_ce=weight_ce, ignore_label=ignore_label,
                         regions=regions)


class CEPMDiceLoss(_PMCompound):
    """CE + PM Dice (paper Tables 1-3, "CE + PM Dice"). In region mode the CE part is BCE.

    Example:
        >>> import torch
        >>> from nnunet_pmdice.losses import CEPMDiceLoss
        >>> _ = torch.manual_seed(0)
        >>> loss = CEPMDiceLoss(gamma=1.0, ignore_label=3)
        >>> float(loss(torch.randn(2, 3, 16, 16), torch.randint(0, 4, (2, 1, 16, 16)))) > 0
        True
    """

    def __init__(self, *args, **kwargs):
        super().__init__(CrossEntropyTerm(), *args, **kwargs)


class FocalCEPMDiceLoss(_PMCompound):
    """Focal CE + PM Dice (paper Tables 1-3). ``focal_gamma`` is Lin et al.'s gamma (default 2)."""

    def __init__(self, *args, focal_gamma: float = 2.0, **kwargs):
        super().__init__(FocalCrossEntropyTerm(focal_gamma), *args, **kwargs)


class TopKCEPMDiceLoss(_PMCompound):
    """TopK CE + PM Dice. ``k`` is the percentage of pixels kept (nnU-Net's TopKLoss default, 10)."""

    def __init__(self, *args, k: float = 10.0, **kwargs):
        super().__init__(TopKCrossEntropyTerm(k), *args, **kwargs)


class PMDiceBCELoss(CEPMDiceLoss):
    """BCE + PM Dice (sigmoid) for nnU-Net region training, the pairing of nnU-Net's ``DC_and_BCE_loss``."""

    def __init__(self, *args, **kwargs):
        kwargs["regions"] = True
        super().__init__(*args, **kwargs)
