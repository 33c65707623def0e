"""The Dice loss of the paper's eq. 4: PM Dice with gamma 0 (no modulation), under its own name."""
from __future__ import annotations

from .pm_dice import PMDiceLoss


class DiceLoss(PMDiceLoss):
    r"""Dice loss of Hosseini, arXiv 2506.15744, eq. 4 (the paper's "Dice" row and the Dice part of its compounds).

    .. math::

        \mathcal{L} = 1 - \frac{1}{|P|} \sum_{(b,c) \in P}
            \frac{2 \sum_i y_{ic} p_{ic} + \epsilon}{\sum_i (y_{ic}^2 + p_{ic}^2) + \epsilon}

    Squared denominator (Milletari et al., V-Net, 2016), background included, :math:`\epsilon = 10^{-6}`,
    mean over the (sample, class) pairs :math:`P` whose class is present (the paper's "C is the number of
    classes which are present in the image including the background class"). This is
    :class:`PMDiceLoss` with ``gamma = 0`` (the modulating term is 1), and it is computed by the same
    fused kernels; it differs from nnU-Net's default Dice (``MemoryEfficientSoftDiceLoss``: linear
    denominator, background excluded, smooth 1e-5, mean over all classes, returns ``-dice``).

    Args:
        batch_dice, do_bg, smooth, squared, nonlin, ddp: the Dice options of
            :class:`~nnunet_pmdice.losses.DiceFamilyLoss`; the defaults are eq. 4.

    Shapes:
        logits (B, C, *spatial); target label map (B, 1, *spatial) / (B, *spatial) or one-hot
        (B, C, *spatial); loss_mask optional (B, 1, *spatial); returns a scalar.

    Example:
        >>> import torch
        >>> from nnunet_pmdice.losses import DiceLoss
        >>> logits = torch.tensor([[[[0.0, 0.0]], [[0.0, 0.0]]]])  # p = 0.5 everywhere, 2 classes
        >>> target = torch.tensor([[[[0, 1]]]])
        >>> round(DiceLoss()(logits, target).item(), 4)  # each class: 2*0.5 / (1 + 0.5) = 2/3
        0.3333
    """

    def __init__(self, batch_dice: bool = False, do_bg: bool = True, smooth: float = 1e-6, squared: bool = True,
                 nonlin: str = "softmax", ddp: bool = False):
        super().__init__(gamma=0.0, batch_dice=batch_dice, do_bg=do_bg, smooth=smooth, squared=squared,
                         nonlin=nonlin, ddp=ddp)

    def extra_repr(self) -> str:
        # gamma is fixed at 0; show only the Dice options
        return super(PMDiceLoss, self).extra_repr()
