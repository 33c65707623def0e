"""Loss recipes of the paper's comparison losses (Tables 1-3) and Dilated Balanced CE.

Every recipe pairs one Dice part and/or one CE part, each with its own name options and defaults; the
recipe's options are the union. The Dice parts are the paper's eq. 4 family (background included,
epsilon 1e-6, squared denominator, ``batch_dice`` from the plans, sigmoid on region datasets); the CE
parts reduce the per-pixel CE (BCE on region datasets) and are weighted 1:1 with the Dice part, as the
PM Dice compounds are. Importing this module registers the recipes with :mod:`.loss_builder`.
"""
from __future__ import annotations

from typing import Callable, Dict, Optional, Tuple

from torch import nn

from nnunet_pmdice.losses import (CrossEntropyTerm, DiceLoss, DilatedBalancedCETerm, FocalCrossEntropyTerm,
                                  LogDiceLoss, TopKCrossEntropyTerm, TopKDiceLoss, WangFocalDiceLoss,
                                  ZhaoFocalDiceLoss)

from .loss_builder import LossContext, LossRecipe, compound_for, register_recipe

Part = Tuple[Callable[[LossContext, Dict[str, object]], nn.Module], Dict[str, object], str]


def _dataset_dice_options(ctx: LossContext) -> Dict[str, object]:
    return dict(batch_dice=ctx.batch_dice, nonlin=ctx.nonlin, ddp=ctx.ddp)


def _dbce_term(ctx: LossContext, o) -> DilatedBalancedCETerm:
    if ctx.regions:
        raise ValueError("Dilated Balanced CE weights the classes of a label map; region datasets "
                         "(dataset.json 'regions_class_order') are not supported by the DBCE trainers")
    return DilatedBalancedCETerm(o["dilation"], num_classes=ctx.num_heads)


#: Dice parts: (build, name options with defaults, description)
DICE_PARTS: Dict[str, Part] = {
    "dice": (lambda ctx, o: DiceLoss(**_dataset_dice_options(ctx)), {},
             "Dice (paper eq. 4)"),
    "log_dice": (lambda ctx, o: LogDiceLoss(gamma=o["log_gamma"], **_dataset_dice_options(ctx)),
                 {"log_gamma": 0.3}, "Logarithmic Dice (Wong et al. 2018)"),
    "focal_dice_wang": (lambda ctx, o: WangFocalDiceLoss(beta=o["focal_beta"], **_dataset_dice_options(ctx)),
                        {"focal_beta": 2.0}, "Focal Dice, Dice ** (1/beta) per class (Wang & Chung 2018)"),
    "focal_dice_zhao": (lambda ctx, o: ZhaoFocalDiceLoss(k=o["dice_k"], **_dataset_dice_options(ctx)),
                        {"dice_k": 10.0}, "Focal Dice, top-K% negatives per class (Zhao et al. 2020)"),
    "topk_dice": (lambda ctx, o: TopKDiceLoss(k=o["dice_k"], **_dataset_dice_options(ctx)),
                  {"dice_k": 10.0}, "TopK Dice, top-K% of each class's pixels (Hosseini 2024)"),
}

#: CE parts: (build, name options with defaults, description)
CE_PARTS: Dict[str, Part] = {
    "ce": (lambda ctx, o: CrossEntropyTerm(), {}, "CE (BCE for regions)"),
    "focal_ce": (lambda ctx, o: FocalCrossEntropyTerm(o["focal_gamma"]), {"focal_gamma": 2.0},
                 "Focal CE (Lin et al. 2017)"),
    "topk_ce": (lambda ctx, o: TopKCrossEntropyTerm(o["k"]), {"k": 10.0}, "TopK CE (nnU-Net TopKLoss)"),
    "dbce": (_dbce_term, {"dilation": 5}, "Dilated Balanced CE (Hosseini 2024)"),
}

#: loss kind -> (Dice part, CE part); one entry per trainer of :mod:`.baselines`
BASELINE_KINDS: Dict[str, Tuple[Optional[str], Optional[str]]] = {
    "dice": ("dice", None),
    "log_dice": ("log_dice", None),
    "focal_dice_wang": ("focal_dice_wang", None),
    "focal_dice_zhao": ("focal_dice_zhao", None),
    "ce_dice": ("dice", "ce"),
    "focal_ce_dice": ("dice", "focal_ce"),
    "topk_ce_dice": ("dice", "topk_ce"),
    "topk_dice": ("topk_dice", None),
    "ce_topk_dice": ("topk_dice", "ce"),
    "topk_ce_topk_dice": ("topk_dice", "topk_ce"),
    "dbce": (None, "dbce"),
    "dbce_dice": ("dice", "dbce"),
}


def recipe_for(dice: Optional[str], ce: Optional[str]) -> LossRecipe:
    """The recipe pairing Dice part ``dice`` with CE part ``ce`` (either may be None)."""
    parts = [p for p in (DICE_PARTS.get(dice), CE_PARTS.get(ce)) if p is not None]
    defaults: Dict[str, object] = {}
    for _, part_defaults, _ in parts:
        defaults.update(part_defaults)

    def build(ctx: LossContext, opts) -> nn.Module:
        dice_part = DICE_PARTS[dice][0](ctx, opts) if dice else None
        ce_part = CE_PARTS[ce][0](ctx, opts) if ce else None
        return compound_for(ctx, dice_part, ce_part)

    summary = " + ".join(description for _, _, description in reversed(parts))
    return LossRecipe(build, defaults, summary + (", weights 1:1" if len(parts) == 2 else ""))


for _kind, (_dice, _ce) in BASELINE_KINDS.items():
    register_recipe(_kind, recipe_for(_dice, _ce))
