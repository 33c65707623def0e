"""Trainers for the paper's comparison losses (Tables 1-3) and Dilated Balanced CE.

Each is a row of :data:`~.loss_table.TRAINER_TABLE` and differs from ``nnUNetTrainer`` only in its loss
(built by :mod:`.loss_builder`, deep supervision and ``batch_dice`` as nnU-Net's). The paper's "CE" row
is nnU-Net's own ``nnUNetTrainerCELoss`` (see docs/trainers.md); the PM Dice rows are in
:mod:`nnunet_pmdice.trainers`. Options go into the name, e.g. ``nnUNetTrainerTopKCETopKDice_k5_kd20_50epochs``.
"""
from __future__ import annotations

from .named import BASELINE_TRAINERS

__all__ = [cls.__name__ for cls in BASELINE_TRAINERS]
globals().update({cls.__name__: cls for cls in BASELINE_TRAINERS})
