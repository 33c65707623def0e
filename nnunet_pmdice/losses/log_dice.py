"""Logarithmic Dice loss: the Dice part of the exponential logarithmic loss of Wong et al. (MICCAI 2018)."""
from __future__ import annotations

import torch

from ._checks import check_number
from .dice import DiceLoss

#: below this -ln(D) is held constant: d/dx x**gamma is infinite at 0 for gamma < 1
_MIN_NEG_LOG_DICE = 1e-8


class LogDiceLoss(DiceLoss):
    r"""Logarithmic Dice loss (paper row "Logarithmic Dice [38]").

    .. math::

        \mathcal{L} = \frac{1}{|P|} \sum_{(b,c) \in P} \left(-\ln D_{bc}\right)^{\gamma},
        \qquad D_{bc} = \frac{2 \sum_i y_{ic} p_{ic} + \epsilon}{\sum_i (y_{ic}^2 + p_{ic}^2) + \epsilon}

    Wong, Moradi, Tang & Syeda-Mahmood, "3D segmentation with exponential logarithmic loss for highly
    unbalanced object sizes", MICCAI 2018: :math:`L_{Dice} = E[(-\ln Dice_i)^{\gamma_{Dice}}]` over the
    labels, with :math:`\gamma_{Dice} = 0.3` as published (their best setting). The PM Dice paper
    describes it as "replacing the Dice score of each class with its logarithmic form to increase the
    effect of classes with lower Dice scores". The per-class Dice is the paper's eq. 4 (squared
    denominator, background included, epsilon 1e-6 as the paper sets for every Dice-based loss; Wong
    et al. used a linear denominator and epsilon 1: ``squared=False, smooth=1`` gives their form), and
    the mean runs over present (sample, class) pairs as in :class:`DiceLoss`. Only the Dice part of the
    exponential logarithmic loss is this loss; its weighted CE part is not included.

    ``-ln D`` is held at 1e-8 from below, so the gradient stays finite when a class reaches D = 1 (the
    derivative of :math:`x^\gamma`, :math:`\gamma < 1`, is infinite at 0); ``D <= 1`` always holds for the
    squared denominator.

    Args:
        gamma: the exponent :math:`\gamma_{Dice}` (> 0; default 0.3). ``gamma = 1`` is the mean of
            :math:`-\ln D`. Also readable as ``log_gamma`` (the trainer option's name). It is not PM
            Dice's modulation exponent: the sums are unmodulated (:meth:`gammas_for` gives 0).
        *args, **options: the :class:`~nnunet_pmdice.losses.DiceOptions`, as :class:`DiceLoss`.

    Shapes, non-finite logits: as :class:`DiceLoss`.

    Raises:
        TypeError, ValueError: ``gamma`` not a number > 0, bad options; in a call, the input errors of
            :class:`~nnunet_pmdice.losses.DiceFamilyLoss`.

    Example:
        >>> import math, torch
        >>> from nnunet_pmdice.losses import LogDiceLoss
        >>> logits = torch.zeros(1, 2, 1, 2)  # p = 0.5 everywhere: D = 2/3 for both classes
        >>> value = LogDiceLoss(gamma=1.0)(logits, torch.tensor([[[[0, 1]]]]))
        >>> round(value.item(), 4) == round(-math.log(2 / 3), 4)
        True
    """

    def __init__(self, gamma: float = 0.3, *args, **options):
        super().__init__(*args, **options)
        self.gamma = check_number("gamma", gamma, strict=True)

    @property
    def log_gamma(self) -> float:
        """``gamma``, under the name of the trainer option ``lg<x>``."""
        return self.gamma

    def extra_repr(self) -> str:
        return f"gamma={self.gamma:g}, " + super().extra_repr()

    def pair_loss(self, dice: torch.Tensor) -> torch.Tensor:
        return (-torch.log(dice)).clamp_min(_MIN_NEG_LOG_DICE).pow(self.gamma)
