"""Pixel-wise (2D) / Voxel-wise (3D) Modulated Dice loss (Hosseini, arXiv 2506.15744, eq. 5)."""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import nn

from ._checks import (GammaArg, check_gamma, check_logits, check_nonlin, check_number, prepare_mask,
                      prepare_target, resolve_gammas)
from ._kernels import DensePMDiceSums, LabelMapPMDiceSums, TwoClassPMDiceSums


def _ddp_active() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


class DiceFamilyLoss(nn.Module):
    r"""Base of the Dice-type losses: the Dice options, the mean over present classes, the CE-map protocol.

    A subclass computes, per sample and class, the three sums ``intersect``, ``denom`` and ``gt_sum``
    and hands them to :meth:`_dice_loss`, which forms :math:`D_{bc} = (2 I_{bc} + \epsilon) / (S_{bc} + \epsilon)`
    (summed over the batch first with ``batch_dice``, gathered over ranks with ``ddp``) and returns the
    mean of :meth:`pair_loss` over the (sample, class) pairs whose class is present in the ground truth.
    ``pair_loss`` is ``1 - D`` for the Dice loss; class-level variants (logarithmic, focal Dice) override it.

    A compound loss asks its Dice part for ``(dice_value, ce_map)`` (:meth:`forward_with_ce_map`). The
    default computes the per-pixel cross entropy separately; losses that can share the softmax with the
    CE override it.

    Args (shared by every Dice-type loss of the package; the defaults are the paper's eq. 4):
        batch_dice: sum over the batch and the spatial axes together (one Dice per class for the whole
            batch, as nnU-Net's ``batch_dice``); "present" then means present anywhere in the batch.
        do_bg: include channel 0 in the mean. The paper includes the background.
        smooth: the paper's epsilon, added to numerator and denominator (default 1e-6). Must be > 0.
        squared: denominator ``sum (y**2 + p**2)`` (paper, V-Net) or ``sum (y + p)``.
        nonlin: ``"softmax"`` over C for label maps, ``"sigmoid"`` for nnU-Net region (multi-label)
            training with a one-hot / multi-hot target.
        ddp: with ``batch_dice``, gather the per-rank sums (with gradient) when torch.distributed is
            initialised, so every rank optimises the global batch Dice. Ignored when it is not.
    """

    nonlin: str = "softmax"

    def __init__(self, batch_dice: bool = False, do_bg: bool = True, smooth: float = 1e-6, squared: bool = True,
                 nonlin: str = "softmax", ddp: bool = False):
        super().__init__()
        self.nonlin = check_nonlin(nonlin)
        self.batch_dice = bool(batch_dice)
        self.do_bg = bool(do_bg)
        self.smooth = check_number("smooth", smooth, strict=True)
        self.squared = bool(squared)
        self.ddp = bool(ddp)

    def extra_repr(self) -> str:
        return (f"batch_dice={self.batch_dice}, do_bg={self.do_bg}, smooth={self.smooth:g}, squared={self.squared}, "
                f"nonlin={self.nonlin!r}, ddp={self.ddp}")

    def pair_loss(self, dice: torch.Tensor) -> torch.Tensor:
        """The loss of one (sample, class) pair from its Dice score: ``1 - D``."""
        return 1.0 - dice

    def _dice_loss(self, inter: torch.Tensor, denom: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
        if not self.do_bg:
            inter, denom, gt = inter[:, 1:], denom[:, 1:], gt[:, 1:]
        if self.batch_dice:
            inter, denom, gt = inter.sum(0), denom.sum(0), gt.sum(0)
            if self.ddp and _ddp_active():
                # Sum over the local batch first: ranks may hold different batch sizes.
                from nnunetv2.utilities.ddp_allgather import AllGatherGrad
                inter = AllGatherGrad.apply(inter).sum(0)
                denom = AllGatherGrad.apply(denom).sum(0)
                gt = AllGatherGrad.apply(gt).sum(0)
        dice = (2.0 * inter + self.smooth) / (denom + self.smooth)
        # Mean over present (sample, class) pairs without boolean indexing: no host sync and no
        # data-dependent shape, so the loss also traces cleanly under torch.compile.
        present = (gt > 0).to(dice.dtype)
        n_present = present.sum()
        mean_loss = (self.pair_loss(dice) * present).sum() / n_present.clamp_min(1.0)
        return torch.where(n_present > 0, mean_loss, dice.sum() * 0.0)

    def forward_with_ce_map(self, logits: torch.Tensor, target: torch.Tensor,
                            loss_mask: Optional[torch.Tensor] = None):
        from .ce import cross_entropy_map
        return self(logits, target, loss_mask), cross_entropy_map(logits, target, loss_mask, self.nonlin)


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

    Args:
        gamma: focusing parameter, one number for every class or a sequence with one value per
            channel (index 0 is the background in softmax mode). The paper uses 1 by default and sweeps
            0, 0.5, 1, 2, 5. Must be >= 0.
        gamma_bg: overrides the gamma of channel 0 (background); the paper uses gamma_FG=2,
            gamma_BG=1 on MSSEG. Softmax mode only.
        batch_dice, do_bg, smooth, squared, nonlin, ddp: the Dice options of :class:`DiceFamilyLoss`
            (defaults: the paper's, background included, epsilon 1e-6, squared denominator).

    Shapes:
        logits: raw network output (B, C, X, Y) or (B, C, X, Y, Z), any float dtype.
        target: integer label map (B, 1, *spatial) or (B, *spatial) (float storage accepted), or
            one-hot / multi-hot (B, C, *spatial).
        loss_mask: optional (B, 1, *spatial), 1 where a pixel counts and 0 where it counts in no sum
            (nnU-Net's ignore label).
        returns: a scalar float32 (float64 for float64 input). A batch with no present class
            gives 0 with a graph attached.

    Example:
        >>> import torch
        >>> from nnunet_pmdice.losses import PMDiceLoss
        >>> loss = PMDiceLoss(gamma=2.0, gamma_bg=1.0)
        >>> logits = torch.randn(2, 3, 32, 32, requires_grad=True)
        >>> target = torch.randint(0, 3, (2, 1, 32, 32))
        >>> value = loss(logits, target)
        >>> value.backward()
        >>> bool(0 <= value.item() <= 1)
        True
    """

    def __init__(self, gamma: GammaArg = 1.0, gamma_bg: Optional[float] = None, batch_dice: bool = False,
                 do_bg: bool = True, smooth: float = 1e-6, squared: bool = True, nonlin: str = "softmax",
                 ddp: bool = False):
        super().__init__(batch_dice=batch_dice, do_bg=do_bg, smooth=smooth, squared=squared, nonlin=nonlin, ddp=ddp)
        self.gamma, self.gamma_bg = check_gamma(gamma, gamma_bg)
        if self.gamma_bg is not None and self.nonlin != "softmax":
            raise ValueError("gamma_bg only has a meaning in softmax mode, where channel 0 is the background; "
                             "in sigmoid (region) mode give one gamma per channel instead")

    def extra_repr(self) -> str:
        return f"gamma={self.gamma}, gamma_bg={self.gamma_bg}, " + super().extra_repr()

    def gammas_for(self, num_channels: int) -> Tuple[float, ...]:
        """The gamma of each of ``num_channels`` output channels."""
        return resolve_gammas(self.gamma, self.gamma_bg, num_channels, self.nonlin)

    # -- the sums ---------------------------------------------------------------------------------
    def _sums(self, logits, target, loss_mask, with_ce: bool):
        check_logits(logits)
        kind, t = prepare_target(logits, target, self.nonlin)
        mask = prepare_mask(logits, loss_mask)
        gammas = self.gammas_for(logits.shape[1])
        if kind == "labels":
            fn = TwoClassPMDiceSums if logits.shape[1] == 2 else LabelMapPMDiceSums
            inter, denom, gt, ce = fn.apply(logits, t, mask, gammas, self.squared, with_ce)
            return inter, denom, gt, (ce if with_ce else None)
        inter, denom, gt = DensePMDiceSums.apply(logits, t, mask, gammas, self.squared, self.nonlin)
        return inter, denom, gt, None

    def forward(self, logits: torch.Tensor, target: torch.Tensor,
                loss_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        inter, denom, gt, _ = self._sums(logits, target, loss_mask, with_ce=False)
        return self._dice_loss(inter, denom, gt)

    def forward_with_ce_map(self, logits, target, loss_mask=None):
        """PM Dice and the per-pixel cross entropy from one shared log-softmax (label maps, softmax)."""
        if self.nonlin != "softmax":
            return super().forward_with_ce_map(logits, target, loss_mask)
        inter, denom, gt, ce = self._sums(logits, target, loss_mask, with_ce=True)
        if ce is None:  # dense target: no shared CE
            return self._dice_loss(inter, denom, gt), super().forward_with_ce_map(logits, target, loss_mask)[1]
        return self._dice_loss(inter, denom, gt), ce


VMDiceLoss = PMDiceLoss
