"""The named trainer classes, one per row of :data:`~.loss_table.TRAINER_TABLE`.

Each differs from ``nnUNetTrainer`` only in its loss (built by :mod:`.loss_builder`). The classes are
made from the table, so a new row is a new trainer; they live in :mod:`nnunet_pmdice.trainers`, where
nnU-Net's lookup and pickle find them.
"""
from __future__ import annotations

from typing import Dict, Tuple

from .base import HOME_MODULE, PluginLossTrainer, PluginTrainerMeta
from .loss_table import TRAINER_TABLE


def _make(row) -> type:
    return PluginTrainerMeta(row.trainer, (PluginLossTrainer,), {
        "__module__": HOME_MODULE, "__qualname__": row.trainer, "__doc__": row.doc, "loss_kind": row.kind})


#: trainer class name -> class, in table order
NAMED_TRAINERS: Dict[str, type] = {row.trainer: _make(row) for row in TRAINER_TABLE}
#: the trainers whose Dice part is PM Dice
PM_DICE_TRAINERS: Tuple[type, ...] = tuple(NAMED_TRAINERS[r.trainer] for r in TRAINER_TABLE if r.dice == "pm_dice")
#: the paper's comparison losses (Tables 1-3) and Dilated Balanced CE
BASELINE_TRAINERS: Tuple[type, ...] = tuple(NAMED_TRAINERS[r.trainer] for r in TRAINER_TABLE
                                            if r.dice != "pm_dice")
