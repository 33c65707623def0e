"""Trainers for the paper's comparison losses (Tables 1-3) and Dilated Balanced CE.

Each differs from ``nnUNetTrainer`` only in its loss (built by :mod:`.loss_builder`, deep supervision
and ``batch_dice`` as nnU-Net's). The paper's "CE" row is nnU-Net's own ``nnUNetTrainerCELoss`` (see
the README); the PM Dice rows are in :mod:`nnunet_pmdice.trainers`. Options go into the name, e.g.
``nnUNetTrainerTopKCETopKDice_k5_kd20_50epochs``.
"""
from __future__ import annotations

from . import baseline_recipes  # noqa: F401  (registers the loss recipes)
from .base import PluginLossTrainer


class nnUNetTrainerDice(PluginLossTrainer):
    """Dice of the paper's eq. 4 (squared denominator, background included, epsilon 1e-6)."""

    loss_kind = "dice"


class nnUNetTrainerLogDice(PluginLossTrainer):
    """Logarithmic Dice, (-ln Dice) ** gamma per class (Wong et al. 2018; gamma 0.3, token ``lg<x>``)."""

    loss_kind = "log_dice"


class nnUNetTrainerFocalDiceWang(PluginLossTrainer):
    """Focal Dice, 1 - Dice ** (1 / beta) per class (Wang & Chung 2018; beta 2, token ``fb<x>``): row "Focal Dice [40]"."""

    loss_kind = "focal_dice_wang"


class nnUNetTrainerFocalDiceZhao(PluginLossTrainer):
    """Focal Dice of Zhao et al. 2020, top K% of each class's negatives (k 10, token ``kd<x>``): row "Focal Dice [41]"."""

    loss_kind = "focal_dice_zhao"


class nnUNetTrainerCEDice(PluginLossTrainer):
    """CE + Dice of eq. 4, weights 1:1 (BCE on region datasets)."""

    loss_kind = "ce_dice"


class nnUNetTrainerFocalCEDice(PluginLossTrainer):
    """Focal CE (Lin et al., gamma 2, token ``fg<x>``) + Dice of eq. 4, weights 1:1."""

    loss_kind = "focal_ce_dice"


class nnUNetTrainerTopKCEDice(PluginLossTrainer):
    """TopK CE (nnU-Net's TopKLoss, k 10%, token ``k<x>``) + Dice of eq. 4, weights 1:1."""

    loss_kind = "topk_ce_dice"


class nnUNetTrainerTopKDice(PluginLossTrainer):
    """TopK Dice (Hosseini 2024; k 10% of each class's pixels, token ``kd<x>``)."""

    loss_kind = "topk_dice"


class nnUNetTrainerCETopKDice(PluginLossTrainer):
    """CE + TopK Dice (token ``kd<x>``), weights 1:1."""

    loss_kind = "ce_topk_dice"


class nnUNetTrainerTopKCETopKDice(PluginLossTrainer):
    """TopK CE (token ``k<x>``) + TopK Dice (token ``kd<x>``), weights 1:1."""

    loss_kind = "topk_ce_topk_dice"


class nnUNetTrainerDBCE(PluginLossTrainer):
    """Dilated Balanced CE (Hosseini 2024; dilation radius 5, token ``d<n>``). Label datasets only."""

    loss_kind = "dbce"


class nnUNetTrainerDBCEDice(PluginLossTrainer):
    """Dilated Balanced CE (token ``d<n>``) + Dice of eq. 4, weights 1:1. Label datasets only."""

    loss_kind = "dbce_dice"


__all__ = ["nnUNetTrainerDice", "nnUNetTrainerLogDice", "nnUNetTrainerFocalDiceWang", "nnUNetTrainerFocalDiceZhao",
           "nnUNetTrainerCEDice", "nnUNetTrainerFocalCEDice", "nnUNetTrainerTopKCEDice", "nnUNetTrainerTopKDice",
           "nnUNetTrainerCETopKDice", "nnUNetTrainerTopKCETopKDice", "nnUNetTrainerDBCE", "nnUNetTrainerDBCEDice"]

BASELINE_TRAINERS = (nnUNetTrainerDice, nnUNetTrainerLogDice, nnUNetTrainerFocalDiceWang, nnUNetTrainerFocalDiceZhao,
                     nnUNetTrainerCEDice, nnUNetTrainerFocalCEDice, nnUNetTrainerTopKCEDice, nnUNetTrainerTopKDice,
                     nnUNetTrainerCETopKDice, nnUNetTrainerTopKCETopKDice, nnUNetTrainerDBCE, nnUNetTrainerDBCEDice)
