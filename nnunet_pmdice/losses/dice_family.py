r"""The Dice family: the shared options, the reduction of the Dice sums to one value, the fused sums.

Every Dice-type loss of the package is three steps, and a subclass changes one of them:

1. **the sums** per sample and class (:meth:`DiceFamilyLoss._sums`)

   .. math::

       I_{bc} = \sum_i m_{ic} y_{ic} p_{ic}, \qquad
       S_{bc} = \sum_i m_{ic} (y_{ic}^2 + p_{ic}^2) \;\text{or}\; \sum_i m_{ic} (y_{ic} + p_{ic}), \qquad
       G_{bc} = \sum_i y_{ic}

   from the fused kernels (:mod:`._kernels`). The modulating term :math:`m_{ic} = |y_{ic} - \hat p_{ic}|^{\gamma_c}`
   (:math:`\hat p`: the prediction without gradient) is the one capability that PM Dice turns on
   (:attr:`DiceFamilyLoss.modulated`, :meth:`DiceFamilyLoss.gammas_for`); for every other loss
   :math:`\gamma_c = 0`, so :math:`m = 1`. The resampling Dice losses (:mod:`._selected_dice`) replace
   the sums with sums over a selection of pixels;
2. **the Dice of a (sample, class) pair**, :math:`D_{bc} = (2 I_{bc} + \epsilon) / (S_{bc} + \epsilon)`,
   summed over the batch first with ``batch_dice`` and gathered over ranks with ``ddp``;
3. **the loss of a pair** (:meth:`DiceFamilyLoss.pair_loss`, ``1 - D``; the logarithmic and focal
   Dice override it), averaged over the pairs whose class is present in the ground truth.

The options of steps 1-2 are one :class:`DiceOptions` object; its defaults are the paper's eq. 4 and
are written only there.
"""
from __future__ import annotations

import dataclasses
import operator
from typing import Optional, Tuple

import torch
from torch import nn

from ._checks import LossInputs, check_flag, check_nonlin, check_number, prepare_inputs
from ._kernels import DensePMDiceSums, LabelMapPMDiceSums, TwoClassPMDiceSums


def _ddp_active() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


@dataclasses.dataclass(frozen=True)
class DiceOptions:
    """The options every Dice-type loss of the package shares; the defaults are the paper's eq. 4.

    Every Dice-family constructor takes these, by keyword or (after its own arguments) in this order.

    Attributes:
        batch_dice: sum over the batch and the spatial axes together (one Dice per class for the whole
            batch, as nnU-Net's ``batch_dice``); "present" then means present anywhere in the batch.
        do_bg: include channel 0 in the mean. The paper includes the background.
        smooth: the paper's epsilon, added to numerator and denominator. Must be > 0.
        squared: denominator ``sum (y**2 + p**2)`` (paper, V-Net) or ``sum (y + p)``.
        nonlin: ``"softmax"`` over C for label maps, ``"sigmoid"`` for nnU-Net region (multi-label)
            training with a one-hot / multi-hot target.
        ddp: with ``batch_dice``, gather the per-rank sums (with gradient) when torch.distributed is
            initialised, so every rank optimises the global batch Dice. Ignored when it is not.

    Raises:
        TypeError: ``smooth`` is not a real number, a flag is not True / False.
        ValueError: ``smooth`` is not > 0 or not finite, or ``nonlin`` is unknown.

    Example:
        >>> DiceOptions()
        DiceOptions(batch_dice=False, do_bg=True, smooth=1e-06, squared=True, nonlin='softmax', ddp=False)
        >>> DiceOptions(smooth=0)
        Traceback (most recent call last):
        ...
        ValueError: smooth must be > 0, got 0
    """

    batch_dice: bool = False
    do_bg: bool = True
    smooth: float = 1e-6
    squared: bool = True
    nonlin: str = "softmax"
    ddp: bool = False

    def __post_init__(self):
        set_ = object.__setattr__.__get__(self)  # frozen: normalise the fields once, here
        set_("nonlin", check_nonlin(self.nonlin))
        set_("smooth", check_number("smooth", self.smooth, strict=True))
        for name in ("batch_dice", "do_bg", "squared", "ddp"):
            set_(name, check_flag(name, getattr(self, name)))

    def describe(self) -> str:
        return (f"batch_dice={self.batch_dice}, do_bg={self.do_bg}, smooth={self.smooth:g}, squared={self.squared}, "
                f"nonlin={self.nonlin!r}, ddp={self.ddp}")


_OPTION_NAMES = tuple(f.name for f in dataclasses.fields(DiceOptions))


class DiceFamilyLoss(nn.Module):
    r"""Base of the Dice-type losses: the :class:`DiceOptions`, the fused sums, the mean over present classes.

    Called as ``loss(logits, target, loss_mask=None)``; on its own (and as :class:`~nnunet_pmdice.losses.DiceLoss`)
    it is the Dice loss of the paper's eq. 4. The three steps and where a subclass changes them are in
    :mod:`.dice_family`.

    A compound loss asks its Dice part for ``(dice_value, ce_map)`` (:meth:`forward_with_ce_map`): the
    label-map kernels compute the per-pixel cross entropy from the Dice's own log-softmax; for the other
    paths it is computed separately from the same checked inputs.

    Args:
        *args, **options: the :class:`DiceOptions` (``batch_dice``, ``do_bg``, ``smooth``, ``squared``,
            ``nonlin``, ``ddp``), each also readable as an attribute of the loss.

    Attributes:
        modulated: True for the losses whose sums carry PM Dice's modulating term (then
            :meth:`gammas_for` gives its exponent per channel). The trainers log the gammas of the
            modulated loss they find this way.

    Shapes:
        logits: raw network output (B, C, X, Y) or (B, C, X, Y, Z), any float dtype.
        target: integer label map (B, 1, *spatial) or (B, *spatial) (float or bool storage accepted,
            values whole and in 0..C-1), or one-hot / multi-hot / soft (B, C, *spatial) with values in
            [0, 1] (soft targets are a feature: y enters the sums as it is).
        loss_mask: optional (B, 1, *spatial) or (B, *spatial), bool or 0/1: 1 where a pixel counts and
            0 where it counts in no sum (nnU-Net's ignore label).
        returns: a scalar float32 (float64 for float64 input). A batch with no present class gives 0
            with a graph attached.

    Non-finite logits: NaN in, NaN out, on every path. In softmax mode a pixel with a NaN or ``+inf``
    logit has no softmax (``torch.softmax`` gives NaN), so the value and the gradient are NaN (the two-
    channel kernel reproduces this rather than taking the limit); ``-inf`` is probability 0 and stays
    finite. In sigmoid mode ``±inf`` are probabilities 0 and 1 and only NaN gives NaN. nnU-Net's
    gradient scaler then skips the step.

    Raises:
        TypeError, ValueError: in the constructor, bad options (see :class:`DiceOptions`); in a call,
            bad logits, target or mask (see :func:`nnunet_pmdice.losses._checks.prepare_inputs`: shape
            mismatches, labels outside 0..C-1 or not whole, a one-hot target outside [0, 1], a mask
            that is not 0/1, an empty batch or image). The value checks cost one pass over the target
            and the mask and one device synchronisation per call.
    """

    modulated: bool = False

    def __init__(self, *args, **options):
        super().__init__()
        try:
            self.options = DiceOptions(*args, **options)
        except TypeError as err:  # a misspelt option: name the loss, not the options class
            raise TypeError(str(err).replace("DiceOptions.__init__()", f"{type(self).__name__}()")) from None

    def extra_repr(self) -> str:
        return self.options.describe()

    def gammas_for(self, num_channels: int) -> Tuple[float, ...]:
        r"""The exponent :math:`\gamma_c` of each output channel's modulating term; all 0 (no modulation)
        unless the loss is :attr:`modulated`."""
        return (0.0,) * num_channels

    def pair_loss(self, dice: torch.Tensor) -> torch.Tensor:
        """The loss of one (sample, class) pair from its Dice score: ``1 - D``."""
        return 1.0 - dice

    # -- step 1: the sums ----------------------------------------------------------------------------
    def dice_sums(self, logits: torch.Tensor, target: torch.Tensor, loss_mask: Optional[torch.Tensor] = None):
        """The per-(sample, class) sums ``(intersect, denom, gt_sum)``, each (B, C), before any reduction.

        Raises:
            TypeError, ValueError: as the call of the loss.
        """
        return self._sums(logits, prepare_inputs(logits, target, loss_mask, self.nonlin), with_ce=False)[:3]

    def _sums(self, logits: torch.Tensor, inputs: LossInputs, with_ce: bool):
        """``(intersect, denom, gt_sum, ce_map or None)`` from checked inputs."""
        gammas = self.gammas_for(logits.shape[1])
        if inputs.kind == "labels":
            kernel = TwoClassPMDiceSums if logits.shape[1] == 2 else LabelMapPMDiceSums
            inter, denom, gt, ce = kernel.apply(logits, inputs.target, inputs.mask, gammas, self.squared, with_ce)
            return inter, denom, gt, (ce if with_ce else None)
        inter, denom, gt = DensePMDiceSums.apply(logits, inputs.target, inputs.mask, gammas, self.squared,
                                                 self.nonlin)
        return inter, denom, gt, None

    # -- steps 2 and 3: Dice per pair, mean over present pairs -------------------------------------------
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
        # data-dependent shape, so the loss also traces cleanly under torch.compile. With no present pair
        # every weight is 0, so the value is 0 with a (zero) gradient attached.
        present = (gt > 0).to(dice.dtype)
        return torch.dot(self.pair_loss(dice).flatten(), present.flatten()) / present.sum().clamp_min(1.0)

    def forward(self, logits: torch.Tensor, target: torch.Tensor,
                loss_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        inputs = prepare_inputs(logits, target, loss_mask, self.nonlin)
        inter, denom, gt, _ = self._sums(logits, inputs, with_ce=False)
        return self._dice_loss(inter, denom, gt)

    def forward_with_ce_map(self, logits: torch.Tensor, target: torch.Tensor,
                            loss_mask: Optional[torch.Tensor] = None):
        """``(loss value, per-pixel CE map)``; see :func:`nnunet_pmdice.losses.cross_entropy_map` for the map.

        Raises:
            TypeError, ValueError: as the call of the loss (the inputs are checked once for both).
        """
        from .ce import ce_map_of_checked
        inputs = prepare_inputs(logits, target, loss_mask, self.nonlin)
        inter, denom, gt, ce = self._sums(logits, inputs, with_ce=True)
        if ce is None:
            ce = ce_map_of_checked(logits, inputs, self.nonlin)
        return self._dice_loss(inter, denom, gt), ce


for _name in _OPTION_NAMES:
    setattr(DiceFamilyLoss, _name, property(operator.attrgetter(f"options.{_name}"),
                                            doc=f"``{_name}`` of the loss's :class:`DiceOptions` (read-only)."))
del _name
