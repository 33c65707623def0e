"""The one table of the plugin's trainers: each trainer is a Dice part and/or a CE part, with options.

A *part* builds one loss module from the dataset facts (:class:`LossContext`) and the options chosen in
the trainer name; it declares its options with their defaults and what each token means for it. A
*row* of :data:`TRAINER_TABLE` names a trainer and pairs one Dice part with one CE part (either may
be absent); its options are the union of its parts', and two parts are weighted 1:1.

Adding a loss is one loss class (in :mod:`nnunet_pmdice.losses`), one part here if it is a new kind of
part, and one row::

    Row("nnUNetTrainerMyDice", "my_dice", dice="my_dice", doc="My Dice (Someone 2025).")

Nothing is registered by importing another module: the table is plain data, read where it is used.

The token ``kd<x>`` sets the option ``dice_k`` of the Dice part, whose meaning depends on that part:
for TopK Dice it is the percentage of each class's *own* pixels kept (ranked by 1 - p), for Zhao's
Focal Dice the percentage of each class's *negatives* kept (ranked by p). :data:`DICE_PARTS` says so
in each part's option help, which is what a refused name lists.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, Mapping, Optional, Tuple

from torch import nn

from nnunet_pmdice.losses import (CompoundLoss, CrossEntropyTerm, DiceLoss, DilatedBalancedCETerm,
                                  FocalCrossEntropyTerm, LogDiceLoss, PMDiceLoss, TopKCrossEntropyTerm,
                                  TopKDiceLoss, WangFocalDiceLoss, ZhaoFocalDiceLoss)
from nnunet_pmdice.losses._checks import check_gamma, resolve_gammas

from .naming import OPTION_HELP


@dataclass(frozen=True)
class LossContext:
    """What a part may know about the dataset and the run."""

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
class Part:
    """One loss part: ``build(ctx, options)``, its options with defaults, what each option means for it."""

    build: Callable[[LossContext, Mapping[str, object]], nn.Module]
    defaults: Mapping[str, object]
    description: str
    #: option -> help text where this part gives a shared token its own meaning (else naming.OPTION_HELP)
    help: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class LossRecipe:
    """How to build one trainer's core loss (a row of the table made buildable)."""

    build: Callable[[LossContext, Dict[str, object]], nn.Module]
    defaults: Dict[str, object] = field(default_factory=dict)
    summary: str = ""
    help: Mapping[str, str] = field(default_factory=dict)

    @property
    def options(self) -> Tuple[str, ...]:
        return tuple(self.defaults)


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


def _dataset_dice_options(ctx: LossContext) -> Dict[str, object]:
    return dict(batch_dice=ctx.batch_dice, nonlin=ctx.nonlin, ddp=ctx.ddp)


def _dbce_term(ctx: LossContext, o) -> DilatedBalancedCETerm:
    if ctx.regions:
        raise ValueError("Dilated Balanced CE weights the classes of a label map; region datasets "
                         "(dataset.json 'regions_class_order') are not supported by the DBCE trainers")
    return DilatedBalancedCETerm(o["dilation"], num_classes=ctx.num_heads)


#: Dice parts of the paper's eq. 4 family (background included, epsilon 1e-6, squared denominator,
#: ``batch_dice`` from the plans, sigmoid on region datasets)
DICE_PARTS: Dict[str, Part] = {
    "pm_dice": Part(pm_dice_for, {"gamma": 1.0, "gamma_bg": None}, "PM Dice (paper eq. 5)"),
    "dice": Part(lambda ctx, o: DiceLoss(**_dataset_dice_options(ctx)), {}, "Dice (paper eq. 4)"),
    "log_dice": Part(lambda ctx, o: LogDiceLoss(gamma=o["log_gamma"], **_dataset_dice_options(ctx)),
                     {"log_gamma": 0.3}, "Logarithmic Dice (Wong et al. 2018)"),
    "focal_dice_wang": Part(lambda ctx, o: WangFocalDiceLoss(beta=o["focal_beta"], **_dataset_dice_options(ctx)),
                            {"focal_beta": 2.0}, "Focal Dice, Dice ** (1/beta) per class (Wang & Chung 2018)"),
    "focal_dice_zhao": Part(lambda ctx, o: ZhaoFocalDiceLoss(k=o["dice_k"], **_dataset_dice_options(ctx)),
                            {"dice_k": 10.0}, "Focal Dice, top-K% negatives per class (Zhao et al. 2020)",
                            help={"dice_k": "kd<x> (Zhao Focal Dice: percentage of each class's negatives "
                                            "kept, ranked by p; 0 < x <= 100)"}),
    "topk_dice": Part(lambda ctx, o: TopKDiceLoss(k=o["dice_k"], **_dataset_dice_options(ctx)),
                      {"dice_k": 10.0}, "TopK Dice, top-K% of each class's pixels (Hosseini 2024)",
                      help={"dice_k": "kd<x> (TopK Dice: percentage of each class's own pixels kept, "
                                      "ranked by 1 - p; 0 < x <= 100)"}),
}

#: CE parts (BCE on region datasets), reduced to the mean over the counted pixels
CE_PARTS: Dict[str, Part] = {
    "ce": Part(lambda ctx, o: CrossEntropyTerm(), {}, "CE (BCE for regions)"),
    "focal_ce": Part(lambda ctx, o: FocalCrossEntropyTerm(o["focal_gamma"]), {"focal_gamma": 2.0},
                     "Focal CE (Lin et al. 2017)"),
    "topk_ce": Part(lambda ctx, o: TopKCrossEntropyTerm(o["k"]), {"k": 10.0}, "TopK CE (nnU-Net TopKLoss)"),
    "dbce": Part(_dbce_term, {"dilation": 5}, "Dilated Balanced CE (Hosseini 2024)"),
}


@dataclass(frozen=True)
class Row:
    """One trainer: its class name, its loss kind (as logged), its Dice and CE parts, its docstring."""

    trainer: str
    kind: str
    dice: Optional[str] = None
    ce: Optional[str] = None
    doc: str = ""

    @property
    def loss_name(self) -> str:
        """The name of the loss alone, as :func:`~nnunet_pmdice.trainers.with_loss` takes it (``PMDice``)."""
        return self.trainer[len("nnUNetTrainer"):]


#: every trainer of the plugin, PM Dice first; the paper's comparison losses (Tables 1-3) and DBCE after
TRAINER_TABLE: Tuple[Row, ...] = (
    Row("nnUNetTrainerPMDice", "pm_dice", dice="pm_dice",
        doc="PM Dice (VM Dice on 3D data) alone, gamma = 1 for every class, background included."),
    Row("nnUNetTrainerCEPMDice", "ce_pm_dice", dice="pm_dice", ce="ce",
        doc="CE + PM Dice, weights 1:1 (BCE + PM Dice on region datasets)."),
    Row("nnUNetTrainerFocalCEPMDice", "focal_ce_pm_dice", dice="pm_dice", ce="focal_ce",
        doc="Focal CE (Lin et al., gamma 2; token ``fg<x>``) + PM Dice, weights 1:1."),
    Row("nnUNetTrainerTopKCEPMDice", "topk_ce_pm_dice", dice="pm_dice", ce="topk_ce",
        doc="TopK CE (nnU-Net's TopKLoss, k = 10%; token ``k<x>``) + PM Dice, weights 1:1."),
    Row("nnUNetTrainerDice", "dice", dice="dice",
        doc="Dice of the paper's eq. 4 (squared denominator, background included, epsilon 1e-6)."),
    Row("nnUNetTrainerLogDice", "log_dice", dice="log_dice",
        doc="Logarithmic Dice, (-ln Dice) ** gamma per class (Wong et al. 2018; gamma 0.3, token ``lg<x>``)."),
    Row("nnUNetTrainerFocalDiceWang", "focal_dice_wang", dice="focal_dice_wang",
        doc="Focal Dice, 1 - Dice ** (1 / beta) per class (Wang & Chung 2018; beta 2, token ``fb<x>``): "
            "row \"Focal Dice [40]\"."),
    Row("nnUNetTrainerFocalDiceZhao", "focal_dice_zhao", dice="focal_dice_zhao",
        doc="Focal Dice of Zhao et al. 2020, top K% of each class's negatives (k 10, token ``kd<x>``): "
            "row \"Focal Dice [41]\"."),
    Row("nnUNetTrainerCEDice", "ce_dice", dice="dice", ce="ce",
        doc="CE + Dice of eq. 4, weights 1:1 (BCE on region datasets)."),
    Row("nnUNetTrainerFocalCEDice", "focal_ce_dice", dice="dice", ce="focal_ce",
        doc="Focal CE (Lin et al., gamma 2, token ``fg<x>``) + Dice of eq. 4, weights 1:1."),
    Row("nnUNetTrainerTopKCEDice", "topk_ce_dice", dice="dice", ce="topk_ce",
        doc="TopK CE (nnU-Net's TopKLoss, k 10%, token ``k<x>``) + Dice of eq. 4, weights 1:1."),
    Row("nnUNetTrainerTopKDice", "topk_dice", dice="topk_dice",
        doc="TopK Dice (Hosseini 2024; k 10% of each class's own pixels, token ``kd<x>``)."),
    Row("nnUNetTrainerCETopKDice", "ce_topk_dice", dice="topk_dice", ce="ce",
        doc="CE + TopK Dice (token ``kd<x>``), weights 1:1."),
    Row("nnUNetTrainerTopKCETopKDice", "topk_ce_topk_dice", dice="topk_dice", ce="topk_ce",
        doc="TopK CE (token ``k<x>``) + TopK Dice (token ``kd<x>``), weights 1:1."),
    Row("nnUNetTrainerDBCE", "dbce", ce="dbce",
        doc="Dilated Balanced CE (Hosseini 2024; dilation radius 5, token ``d<n>``). Label datasets only."),
    Row("nnUNetTrainerDBCEDice", "dbce_dice", dice="dice", ce="dbce",
        doc="Dilated Balanced CE (token ``d<n>``) + Dice of eq. 4, weights 1:1. Label datasets only."),
)


def recipe_for(dice: Optional[str], ce: Optional[str]) -> LossRecipe:
    """The recipe pairing Dice part ``dice`` with CE part ``ce`` (either may be None).

    >>> recipe_for("topk_dice", "topk_ce").defaults
    {'dice_k': 10.0, 'k': 10.0}
    >>> recipe_for("pm_dice", "ce").summary
    'CE (BCE for regions) + PM Dice (paper eq. 5), weights 1:1'

    Raises:
        KeyError: a part that is not in :data:`DICE_PARTS` / :data:`CE_PARTS`.
        ValueError: neither part given, or two parts that give one option different defaults.
    """
    parts = [p for p in ((DICE_PARTS[dice] if dice else None), (CE_PARTS[ce] if ce else None)) if p is not None]
    if not parts:
        raise ValueError("a loss needs a Dice part, a CE part or both")
    defaults: Dict[str, object] = {}
    help_text: Dict[str, str] = {}
    for part in parts:
        for option, default in part.defaults.items():
            if option in defaults and defaults[option] != default:
                raise ValueError(f"parts {dice!r} and {ce!r} give option {option!r} different defaults")
            defaults[option] = default
        help_text.update(part.help)

    def build(ctx: LossContext, opts) -> nn.Module:
        dice_part = DICE_PARTS[dice].build(ctx, opts) if dice else None
        ce_part = CE_PARTS[ce].build(ctx, opts) if ce else None
        return compound_for(ctx, dice_part, ce_part)

    summary = " + ".join(part.description for part in reversed(parts))
    return LossRecipe(build, defaults, summary + (", weights 1:1" if len(parts) == 2 else ""), help_text)


def _check_table() -> None:
    for row in TRAINER_TABLE:
        for option in recipe_for(row.dice, row.ce).defaults:
            if option not in OPTION_HELP:
                raise ValueError(f"{row.trainer}: option {option!r} has no token in the name grammar")
    for what in ("trainer", "kind"):
        values = [getattr(r, what) for r in TRAINER_TABLE]
        if len(set(values)) != len(values):
            raise ValueError(f"TRAINER_TABLE: a {what} appears twice")


_check_table()

#: loss kind -> recipe, for every row of the table
RECIPES: Dict[str, LossRecipe] = {row.kind: recipe_for(row.dice, row.ce) for row in TRAINER_TABLE}
#: trainer class name -> row
ROWS: Dict[str, Row] = {row.trainer: row for row in TRAINER_TABLE}
