"""Pixel-wise (2D) / Voxel-wise (3D) Modulated Dice loss (Hosseini, arXiv 2506.15744, eq. 5)."""
from __future__ import annotations

from typing import Optional, Tuple

from ._checks import GammaArg, check_gamma, resolve_gammas
from .dice_family import DiceFamilyLoss


class PMDiceLoss(DiceFamilyLoss):
    r"""Pixel-wise Modulated Dice loss; on 3D input it is the paper's VM Dice (``VMDiceLoss`` is this class).

    .. math::

        \mathcal{L} = 1 - \frac{1}{|P|} \sum_{(b,c) \in P}
            \frac{2 \sum_i m_{ic} y_{ic} p_{ic} + \epsilon}{\sum_i m_{ic} (y_{ic}^2 + p_{ic}^2) + \epsilon},
        \qquad m_{ic} = |y_{ic} - \hat p_{ic}|^{\gamma_c}

    where :math:`\hat p` is the prediction with no gradient (the paper: "Without this key condition
    the performance would drop") and :math:`P` holds the (sample, class) pairs whose class is present
    in that sample's ground truth (the paper's "C is the number of classes which are present in the
    image including the background class"). ``gamma = 0`` gives exactly the Dice loss of eq. 4.

    The one Dice-family loss with :attr:`~DiceFamilyLoss.modulated` set: the fused kernels of the
    family (see :mod:`.dice_family`) with :math:`\gamma_c` from :meth:`gammas_for`.

    Args:
        gamma: focusing parameter, one number (a 0-d tensor counts as one) for every class, or a
            sequence / 1-D tensor with one value per channel (index 0 is the background in softmax
            mode). The paper uses 1 by default and sweeps 0, 0.5, 1, 2, 5. Must be >= 0.
        gamma_bg: overrides the gamma of channel 0 (background); the paper uses gamma_FG=2,
            gamma_BG=1 on MSSEG. Softmax mode only.
        *args, **options: the :class:`DiceOptions` (``batch_dice``, ``do_bg``, ``smooth``, ``squared``,
            ``nonlin``, ``ddp``; defaults: the paper's, background included, epsilon 1e-6, squared
            denominator).

    Shapes, non-finite logits: as :class:`DiceFamilyLoss`.

    Raises:
        TypeError: a gamma that is not a number (or sequence of numbers); bad input types in a call.
        ValueError: a negative or non-finite gamma, ``gamma_bg`` in sigmoid mode, bad options (see
            :class:`DiceOptions`); in a call, a per-class gamma whose length is not C and the input
            errors of :class:`DiceFamilyLoss`.

    Example:
        >>> import torch
        >>> from nnunet_pmdice.losses import PMDiceLoss
        >>> _ = torch.manual_seed(0)
        >>> loss = PMDiceLoss(gamma=2.0, gamma_bg=1.0)
        >>> logits = torch.randn(2, 3, 32, 32, requires_grad=True)
        >>> target = torch.randint(0, 3, (2, 1, 32, 32))
        >>> value = loss(logits, target)
        >>> value.backward()
        >>> bool(0 <= value.item() <= 1)
        True
        >>> loss.modulated, loss.gammas_for(3)
        (True, (1.0, 2.0, 2.0))
        >>> loss(logits, target, loss_mask=torch.full((2, 1, 32, 32), 2.0))
        Traceback (most recent call last):
        ...
        ValueError: loss_mask must hold only 0 and 1 (1 where a pixel counts, 0 where it is ignored), got 2; pass a bool or 0/1 tensor
    """

    modulated = True

    def __init__(self, gamma: GammaArg = 1.0, gamma_bg: Optional[float] = None, *args, **options):
        super().__init__(*args, **options)
        self.gamma, self.gamma_bg = check_gamma(gamma, gamma_bg)
        if self.gamma_bg is not None and self.nonlin != "softmax":
            raise ValueError("gamma_bg only has a meaning in softmax mode, where channel 0 is the background; "
                             "in sigmoid (region) mode give one gamma per channel instead")

    def extra_repr(self) -> str:
        return f"gamma={self.gamma}, gamma_bg={self.gamma_bg}, " + super().extra_repr()

    def gammas_for(self, num_channels: int) -> Tuple[float, ...]:
        """The gamma of each of ``num_channels`` output channels.

        Raises:
            ValueError: a per-class gamma does not have ``num_channels`` values.
        """
        return resolve_gammas(self.gamma, self.gamma_bg, num_channels, self.nonlin)


VMDiceLoss = PMDiceLoss
