"""The one place where a trainer's loss is built: core loss, torch.compile, deep supervision, logging.

Each plugin trainer names a row of :mod:`.loss_table` (``loss_kind``); the row's recipe turns the
dataset facts nnU-Net knows (batch Dice from the plans, region or label training, ignore label, DDP,
number of output channels) and the options chosen in the trainer name into a core loss module.
Everything that nnU-Net's own ``_build_loss`` does around its loss happens here once, for every trainer
(also for nnU-Net's trainer variants and users' trainers given a loss with
:func:`~nnunet_pmdice.trainers.with_loss`):

- ``torch.compile`` of the core loss when nnU-Net would compile its own Dice (``_do_i_compile``:
  CUDA, ``nnUNet_compile`` not false);
- deep supervision with nnU-Net's wrapper (:class:`DeepSupervisionLoss`, which checks the target's
  values once per step, at full resolution, instead of at every output scale) and its weights: ``1/2**i``, the last scale 0 (1e-6 under DDP without
  compile, which otherwise complains about unused parameters), normalised to sum 1; a single output
  scale keeps weight 1 instead of normalising an all-zero vector to NaN; none when the trainer turns
  deep supervision off (``enable_deep_supervision = False``, as ``nnUNetTrainerNoDeepSupervision``);
- the chosen loss settings written to the training log.
"""
from __future__ import annotations

import numpy as np
import torch
from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
from torch import nn

from ..losses._checks import values_checked
from .loss_table import RECIPES, LossContext


def deep_supervision_weights(num_scales: int, ddp: bool = False, compiled: bool = False) -> np.ndarray:
    """nnU-Net's deep-supervision weights, guarded against the all-zero case of a single scale.

    >>> deep_supervision_weights(3).round(6).tolist()
    [0.666667, 0.333333, 0.0]
    >>> deep_supervision_weights(1).tolist()
    [1.0]

    Raises:
        ValueError: fewer than one output scale.
    """
    if num_scales < 1:
        raise ValueError(f"deep supervision needs at least one output scale, got {num_scales}")
    weights = np.array([1 / (2 ** i) for i in range(num_scales)])
    if num_scales > 1:
        weights[-1] = 1e-6 if (ddp and not compiled) else 0.0
    return weights / weights.sum()


class DeepSupervisionLoss(DeepSupervisionWrapper):
    """nnU-Net's ``DeepSupervisionWrapper`` (same weights, same sum), checking the target's values once per step.

    The loss runs on every output scale with a non-zero weight, as in nnU-Net. The first of them
    (nnU-Net's full resolution) checks the values of its target and mask as every loss call of this
    package does; the others run inside :func:`~nnunet_pmdice.losses._checks.values_checked`, since
    nnU-Net derives their targets from the full-resolution one by nearest-neighbour downsampling
    (``DownsampleSegForDSTransform``: no value the full-resolution target lacks). This saves a pass over
    each lower-scale target and a device synchronisation per scale; shapes are still checked at
    every scale. A bad label still fails with the loss's own message.

    Example:
        >>> import torch
        >>> from nnunet_pmdice.losses import PMDiceLoss
        >>> loss = DeepSupervisionLoss(PMDiceLoss(), deep_supervision_weights(2))
        >>> xs = [torch.randn(1, 2, 8, 8), torch.randn(1, 2, 4, 4)]
        >>> ts = [torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 4, 4)]
        >>> bool(loss(xs, ts) >= 0)
        True
        >>> loss(xs, [torch.full((1, 1, 8, 8), 2.0), ts[1]])
        Traceback (most recent call last):
        ...
        ValueError: target holds label 2 but the logits have C=2 channels: labels must be in 0..1 (map an ignore label to a loss_mask first)
    """

    def forward(self, *args):
        if not all(isinstance(a, (tuple, list)) for a in args):
            raise TypeError(f"deep supervision needs a list of outputs and a list of targets, got "
                            f"{[type(a).__name__ for a in args]}")
        weights = self.weight_factors if self.weight_factors is not None else (1,) * len(args[0])
        total = 0
        checked = False
        for i, inputs in enumerate(zip(*args)):
            if weights[i] == 0.0:
                continue
            if checked:
                with values_checked():
                    total = total + weights[i] * self.loss(*inputs)
            else:
                total = total + weights[i] * self.loss(*inputs)
                checked = True
        return total


def build_trainer_loss(trainer) -> nn.Module:
    """Builds ``trainer``'s loss from its recipe and name options; called by every plugin trainer's ``_build_loss``."""
    recipe = RECIPES[trainer.loss_kind]
    opts = {**recipe.defaults, **{k: v for k, v in trainer.chosen_options.items() if k in recipe.defaults}}
    ctx = LossContext.from_trainer(trainer)
    core = recipe.build(ctx, opts)
    compiled = bool(trainer._do_i_compile())
    loss = torch.compile(core) if compiled else core

    ds_weights = None
    if trainer.enable_deep_supervision:
        ds_weights = deep_supervision_weights(len(trainer._get_deep_supervision_scales()), ddp=trainer.is_ddp,
                                              compiled=compiled)
        loss = DeepSupervisionLoss(loss, ds_weights)

    base = getattr(trainer, "loss_base", None)
    lines = [f"Loss ({trainer.loss_kind}): {recipe.summary}",
             f"  trainer: {type(trainer).__name__}" + (f" = {base.__module__}.{base.__qualname__} with this loss"
                                                       if base is not None else ""),
             f"  options from the trainer name: {dict(trainer.chosen_options) or 'none (defaults)'}",
             f"  resolved options: {opts}",
             f"  dataset: batch_dice={ctx.batch_dice}, regions={ctx.regions}, ignore_label={ctx.ignore_label}, "
             f"ddp={ctx.ddp}, output channels={ctx.num_heads}"]
    # only a modulated Dice (PM Dice) has a gamma per channel; the plain-Dice baselines have none to log
    pm = next((m for m in core.modules() if getattr(m, "modulated", False)), None)
    if pm is not None:
        lines.append(f"  PM Dice gamma per output channel: {list(pm.gammas_for(ctx.num_heads))}")
    lines.append(f"  torch.compile: {compiled}; deep supervision weights: "
                 f"{None if ds_weights is None else [round(float(w), 6) for w in ds_weights]}")
    lines.append("  module: " + repr(core).replace("\n", "\n  "))
    trainer.print_to_log_file("\n".join(lines), also_print_to_console=True)
    return loss
