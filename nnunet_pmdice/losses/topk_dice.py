"""TopK Dice loss (Hosseini, BMVC 2024): per class, only the hardest K% of the class's own pixels count."""
from __future__ import annotations

from ._selected_dice import SelectedDiceLoss


class TopKDiceLoss(SelectedDiceLoss):
    r"""TopK Dice loss (paper rows "TopK Dice [42]", "CE + TopK Dice [42]", "TopK CE + TopK Dice [42]").

    .. math::

        \mathcal{L} = 1 - \frac{1}{|P|} \sum_{(b,c) \in P}
            \frac{2 \sum_i M_{ic} y_{ic} p_{ic} + \epsilon}{\sum_i M_{ic} (y_{ic}^2 + p_{ic}^2) + \epsilon},
        \qquad M_{ic} = \begin{cases} 1 & y_{ic} = 0 \\
            [\, 1 - \hat p_{ic} \text{ is in the top } K\% \text{ of the class's pixels} \,] & y_{ic} = 1 \end{cases}

    S. M. Hosseini, "TopK Dice loss for medical image segmentation", BMVC 2024, as summarised in the
    PM Dice paper (arXiv 2506.15744, sec. 1-2): "false negatives and true positives are ranked based on
    their error values and the ones that are not in top K% are ignored"; "for each class the binary mask
    is constructed in a way so that false negatives and true positives with low errors are
    under-sampled". Our reading: for each sample and class, the pixels of that class (the ground-truth
    positives, which are the true positives and false negatives of a soft prediction) are ranked by
    :math:`1 - \hat p_{ic}` (no gradient) and only the top K% stay in the class's Dice sums; every pixel
    outside the class stays. The Dice is the paper's eq. 4 (squared denominator, background included,
    epsilon 1e-6), averaged over present (sample, class) pairs. ``k = 100`` is exactly :class:`DiceLoss`.

    The BMVC text was not reachable here, so K's default is not the published one: 10, nnU-Net's
    ``TopKLoss`` default. Choose it with ``k`` (trainer token ``kd<x>``).

    Args:
        k: percentage of each class's pixels kept, 0 < k <= 100 (default 10).
        *args, **options: the :class:`~nnunet_pmdice.losses.DiceOptions`, as :class:`DiceLoss`; the
            ranking is per sample.

    Shapes, non-finite logits: as :class:`DiceLoss`.

    Raises:
        TypeError, ValueError: ``k`` not a number in (0, 100], bad options; in a call, the input errors
            of :class:`~nnunet_pmdice.losses.DiceFamilyLoss`.

    Example:
        >>> import torch
        >>> from nnunet_pmdice.losses import DiceLoss, TopKDiceLoss
        >>> _ = torch.manual_seed(0)
        >>> logits, target = torch.randn(2, 3, 16, 16), torch.randint(0, 3, (2, 1, 16, 16))
        >>> bool(torch.isclose(TopKDiceLoss(k=100)(logits, target), DiceLoss()(logits, target), atol=1e-6))
        True
    """

    ranked_side = "positives"
