"""The Dice loss of the paper's eq. 4: the Dice family with no modulation, under its own name."""
from __future__ import annotations

from .dice_family import DiceFamilyLoss


class DiceLoss(DiceFamilyLoss):
    r"""Dice loss of Hosseini, arXiv 2506.15744, eq. 4 (the paper's "Dice" row and the Dice part of its compounds).

    .. math::

        \mathcal{L} = 1 - \frac{1}{|P|} \sum_{(b,c) \in P}
            \frac{2 \sum_i y_{ic} p_{ic} + \epsilon}{\sum_i (y_{ic}^2 + p_{ic}^2) + \epsilon}

    Squared denominator (Milletari et al., V-Net, 2016), background included, :math:`\epsilon = 10^{-6}`,
    mean over the (sample, class) pairs :math:`P` whose class is present (the paper's "C is the number of
    classes which are present in the image including the background class"). It is computed by the
    fused kernels of the family with no modulating term, so it equals :class:`PMDiceLoss` with
    ``gamma = 0``; it differs from nnU-Net's default Dice (``MemoryEfficientSoftDiceLoss``: linear
    denominator, background excluded, smooth 1e-5, mean over all classes, returns ``-dice``).

    Args:
        *args, **options: the :class:`~nnunet_pmdice.losses.DiceOptions` (``batch_dice``, ``do_bg``,
            ``smooth``, ``squared``, ``nonlin``, ``ddp``); the defaults are eq. 4.

    Shapes, non-finite logits, Raises: as :class:`~nnunet_pmdice.losses.DiceFamilyLoss`.

    Example:
        >>> import torch
        >>> from nnunet_pmdice.losses import DiceLoss
        >>> logits = torch.tensor([[[[0.0, 0.0]], [[0.0, 0.0]]]])  # p = 0.5 everywhere, 2 classes
        >>> target = torch.tensor([[[[0, 1]]]])
        >>> round(DiceLoss()(logits, target).item(), 4)  # each class: 2*0.5 / (1 + 0.5) = 2/3
        0.3333
        >>> DiceLoss()(logits, torch.tensor([[[[0.0, 2.5]]]]))
        Traceback (most recent call last):
        ...
        ValueError: target is a label map stored as torch.float32 but holds 2.5, which is not a whole number: labels must be integers 0..1
    """
