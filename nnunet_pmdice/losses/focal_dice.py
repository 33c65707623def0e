"""The two "Focal Dice" losses of the paper's tables: class-level (Wang & Chung / Prencipe) and Zhao et al.'s."""
from __future__ import annotations

import torch

from ._checks import check_number
from ._selected_dice import SelectedDiceLoss
from .dice import DiceLoss


class FocalDiceWangLoss(DiceLoss):
    r"""Focal Dice loss with a class-level focusing power (paper row "Focal Dice [40]").

    .. math::

        \mathcal{L} = 1 - \frac{1}{|P|} \sum_{(b,c) \in P} D_{bc}^{1/\beta},
        \qquad D_{bc} = \frac{2 \sum_i y_{ic} p_{ic} + \epsilon}{\sum_i (y_{ic}^2 + p_{ic}^2) + \epsilon}

    Wang & Chung, "Focal dice loss and image dilation for brain tumor segmentation", DLMIA 2018: each
    class's Dice score is raised to :math:`1/\beta` (:math:`\beta \ge 1`), which raises the share of
    classes with a low Dice in the gradient (:math:`d D^{1/\beta} / dD` grows as D falls). The PM Dice
    paper cites it as "the root squared version of Dice score of each class" ([39], so
    :math:`\beta = 2` is the default) and its table row uses the improved version of Prencipe et al.,
    "Focal Dice loss-based V-Net for liver segments classification", Applied Sciences 12(7), 2022 ([40]),
    whose text was not reachable here; this class implements Wang & Chung's published form with its
    exponent exposed. The Dice is the paper's eq. 4 (computed by the fused kernels of
    :class:`DiceLoss`), averaged over present (sample, class) pairs. ``beta = 1`` is exactly
    :class:`DiceLoss`. ``D > 0`` always (epsilon > 0), so the power and its gradient are finite.

    Args:
        beta: focusing parameter, > 0 (default 2; values below 1 turn the focus to the easy classes).
        *args, **options: the :class:`~nnunet_pmdice.losses.DiceOptions`, as :class:`DiceLoss`.

    Shapes, non-finite logits: as :class:`DiceLoss`. ``WangFocalDiceLoss`` is this class (its former name).

    Raises:
        TypeError, ValueError: ``beta`` not a number > 0, bad options; in a call, the input errors of
            :class:`~nnunet_pmdice.losses.DiceFamilyLoss`.

    Example:
        >>> import torch
        >>> from nnunet_pmdice.losses import FocalDiceWangLoss
        >>> logits = torch.zeros(1, 2, 1, 2)  # p = 0.5: D = 2/3 for both classes
        >>> round(FocalDiceWangLoss(beta=2.0)(logits, torch.tensor([[[[0, 1]]]])).item(), 4)  # 1 - sqrt(2/3)
        0.1835
    """

    def __init__(self, beta: float = 2.0, *args, **options):
        super().__init__(*args, **options)
        self.beta = check_number("beta", beta, strict=True)

    def extra_repr(self) -> str:
        return f"beta={self.beta:g}, " + super().extra_repr()

    def pair_loss(self, dice: torch.Tensor) -> torch.Tensor:
        return 1.0 - dice.pow(1.0 / self.beta)


class FocalDiceZhaoLoss(SelectedDiceLoss):
    r"""Focal Dice loss of Zhao et al.: only the hardest K% of each class's negatives count (paper row "Focal Dice [41]").

    .. math::

        \mathcal{L} = 1 - \frac{1}{|P|} \sum_{(b,c) \in P}
            \frac{2 \sum_i M_{ic} y_{ic} p_{ic} + \epsilon}{\sum_i M_{ic} (y_{ic}^2 + p_{ic}^2) + \epsilon},
        \qquad M_{ic} = \begin{cases} 1 & y_{ic} = 1 \\
            [\, \hat p_{ic} \text{ is in the top } K\% \text{ of the class's negatives} \,] & y_{ic} = 0 \end{cases}

    Zhao, Qian, Zhang, Li, Wei, Liu & Pan, "Rethinking Dice loss for medical image segmentation", ICDM
    2020, as described in the PM Dice paper (arXiv 2506.15744): "true negatives are ranked based on their
    error values and the ones that are not in top K% are ignored"; it "focuses on false positives and
    true negatives with low confidence". Our reading, the mirror image of :class:`TopKDiceLoss`: for each
    sample and class, the pixels outside the class are ranked by their error :math:`\hat p_{ic}` (no
    gradient) and only the top K% stay in the class's Dice sums (the easy, confidently rejected pixels
    drop out of the denominator); every pixel of the class stays. The Dice is the paper's eq. 4, averaged
    over present (sample, class) pairs; ``k = 100`` is exactly :class:`DiceLoss`.

    Args:
        k: percentage of each class's negatives kept, 0 < k <= 100. The default, 10 (nnU-Net's
            ``TopKLoss`` default), is ours: the ICDM text with the published value was not reachable.
            Trainer token ``kd<x>``.
        *args, **options: the :class:`~nnunet_pmdice.losses.DiceOptions`, as :class:`DiceLoss`;
            negatives are ranked per sample.

    Shapes, non-finite logits: as :class:`DiceLoss`. ``ZhaoFocalDiceLoss`` is this class (its former name).

    Raises:
        TypeError, ValueError: ``k`` not a number in (0, 100], bad options; in a call, the input errors
            of :class:`~nnunet_pmdice.losses.DiceFamilyLoss`.

    Example:
        >>> import torch
        >>> from nnunet_pmdice.losses import FocalDiceZhaoLoss
        >>> _ = torch.manual_seed(0)
        >>> logits = torch.randn(2, 3, 16, 16, requires_grad=True)
        >>> value = FocalDiceZhaoLoss(k=20)(logits, torch.randint(0, 3, (2, 1, 16, 16)))
        >>> value.backward()
        >>> bool(torch.isfinite(logits.grad).all())
        True
    """

    ranked_side = "negatives"


#: former names, kept: the word order of the trainers (``nnUNetTrainerFocalDiceWang``) is the package's
WangFocalDiceLoss = FocalDiceWangLoss
ZhaoFocalDiceLoss = FocalDiceZhaoLoss
