"""The one place where a trainer's loss is built: core loss, torch.compile, deep supervision, logging.

Each plugin trainer names a *recipe* (``loss_kind``); a recipe turns the dataset facts nnU-Net knows
(batch Dice from the plans, region or label training, ignore label, DDP, number of output channels)
and the options chosen in the trainer name into a core loss module. Everything that nnU-Net's own
``_build_loss`` does around its loss happens here once, for every trainer:

- ``torch.compile`` of the core loss when nnU-Net would compile its own Dice (``_do_i_compile``:
  CUDA, ``nnUNet_compile`` not false);
- deep-supervision weights exactly as nnU-Net: ``1/2**i``, the last scale 0 (1e-6 under DDP without
  compile, which otherwise complains about unused parameters), normalised to sum 1; a single output
  scale keeps weight 1 instead of normalising an all-zero vector to NaN;
- the chosen loss settings written to the training log.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, Optional, Tuple

import numpy as np
import torch
from torch import nn

from nnunet_pmdice.losses import (CompoundLoss, CrossEntropyTerm, FocalCrossEntropyTerm, PMDiceLoss,
                                  TopKCrossEntropyTerm)
from nnunet_pmdice.losses._checks import check_gamma, resolve_gammas


@dataclass(frozen=True)
class LossContext:
    """What a recipe may know about the dataset and the run."""

    batch_dice: bool
    regions: bool
    ignore_label: Optional[int]
    ddp: bool
    num_heads: int

    @classmethod
    def from_trainer(cls, trainer) -> "LossContext":
        lm = trainer.label_manager
        return cls(batch_dice=bool(trainer.configuration_manager.batch_dice), regions=bool(lm.has_regions),
                   ignore_label=lm.ignore_label, ddp=bool(trainer.is_ddp), num_heads=int(lm.num_segmentation_heads))

    @property
    def nonlin(self) -> str:
        return "sigmoid" if self.regions else "softmax"


@dataclass(frozen=True)
class LossRecipe:
    """How to build one trainer family's core loss."""

    build: Callable[[LossContext, Dict[str, object]], nn.Module]
    defaults: Dict[str, object] = field(default_factory=dict)
    summary: str = ""

    @property
    def options(self) -> Tuple[str, ...]:
        return tuple(self.defaults)


RECIPES: Dict[str, LossRecipe] = {}


def register_recipe(kind: str, recipe: LossRecipe) -> None:
    if kind in RECIPES:
        raise ValueError(f"loss recipe {kind!r} is registered twice")
    RECIPES[kind] = recipe


def deep_supervision_weights(num_scales: int, ddp: bool = False, compiled: bool = False) -> np.ndarray:
    """nnU-Net's deep-supervision weights, guarded against the all-zero case of a single scale."""
    if num_scales < 1:
        raise ValueError(f"deep supervision needs at least one output scale, got {num_scales}")
    weights = np.array([1 / (2 ** i) for i in range(num_scales)])
    if num_scales > 1:
        weights[-1] = 1e-6 if (ddp and not compiled) else 0.0
    return weights / weights.sum()


# -- PM Dice recipes -------------------------------------------------------------------------------
def pm_dice_for(ctx: LossContext, opts) -> PMDiceLoss:
    """The paper's PM Dice (background included, epsilon 1e-6, squared denominator) for this dataset."""
    gamma, gamma_bg = check_gamma(opts["gamma"], opts.get("gamma_bg"))
    # Resolve now so that a per-class gamma of the wrong length fails when training starts, naming
    # the number of output channels of this dataset, rather than on the first batch.
    resolve_gammas(gamma, gamma_bg, ctx.num_heads, ctx.nonlin)
    return PMDiceLoss(gamma=gamma, gamma_bg=gamma_bg, batch_dice=ctx.batch_dice, do_bg=True,
                      squared=True, nonlin=ctx.nonlin, ddp=ctx.ddp)


def compound_for(ctx: LossContext, dice, ce_term) -> CompoundLoss:
    """Dice part + CE part with weights 1:1 and the dataset's ignore label / region handling."""
    return CompoundLoss(dice, ce_term, weight_dice=1.0, weight_ce=1.0, ignore_label=ctx.ignore_label,
                        regions=ctx.regions)


_PM_DEFAULTS = {"gamma": 1.0, "gamma_bg": None}
register_recipe("pm_dice", LossRecipe(
    lambda ctx, o: compound_for(ctx, pm_dice_for(ctx, o), None),
    dict(_PM_DEFAULTS), "PM Dice (paper eq. 5)"))
register_recipe("ce_pm_dice", LossRecipe(
    lambda ctx, o: compound_for(ctx, pm_dice_for(ctx, o), CrossEntropyTerm()),
    dict(_PM_DEFAULTS), "CE (BCE for regions) + PM Dice, weights 1:1"))
register_recipe("focal_ce_pm_dice", LossRecipe(
    lambda ctx, o: compound_for(ctx, pm_dice_for(ctx, o), FocalCrossEntropyTerm(o["focal_gamma"])),
    {**_PM_DEFAULTS, "focal_gamma": 2.0}, "Focal CE (Lin et al.) + PM Dice, weights 1:1"))
register_recipe("topk_ce_pm_dice", LossRecipe(
    lambda ctx, o: compound_for(ctx, pm_dice_for(ctx, o), TopKCrossEntropyTerm(o["k"])),
    {**_PM_DEFAULTS, "k": 10.0}, "TopK CE (nnU-Net TopKLoss) + PM Dice, weights 1:1"))


def build_trainer_loss(trainer) -> nn.Module:
    """Builds ``trainer``'s loss from its recipe and name options; called by every plugin trainer's ``_build_loss``."""
    from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper

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
        loss = DeepSupervisionWrapper(loss, ds_weights)

    lines = [f"Loss ({trainer.loss_kind}): {recipe.summary}",
             f"  options from the trainer name: {dict(trainer.chosen_options) or 'none (defaults)'}",
             f"  resolved options: {opts}",
             f"  dataset: batch_dice={ctx.batch_dice}, regions={ctx.regions}, ignore_label={ctx.ignore_label}, "
             f"ddp={ctx.ddp}, output channels={ctx.num_heads}"]
    # exactly PM Dice: the Dice-family baselines subclass it with gamma 0, where a gamma line would mislead
    pm = next((m for m in core.modules() if getattr(m, "modulated", False)), None)
    if pm is not None:
        lines.append(f"  PM Dice gamma per output channel: {list(pm.gammas_for(ctx.num_heads))}")
    lines.append(f"  torch.compile: {compiled}; deep supervision weights: "
                 f"{None if ds_weights is None else [round(float(w), 6) for w in ds_weights]}")
    lines.append("  module: " + repr(core).replace("\n", "\n  "))
    trainer.print_to_log_file("\n".join(lines), also_print_to_console=True)
    return loss
