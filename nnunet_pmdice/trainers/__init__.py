"""nnU-Net trainers of the plugin. ``nnUNetv2_train ID CONFIG FOLD -tr <name>`` finds each of them.

Named trainers (each differs from ``nnUNetTrainer`` only in the loss):

- ``nnUNetTrainerPMDice``: PM Dice (VM Dice on 3D), gamma 1 for every class (the paper's default);
- ``nnUNetTrainerCEPMDice``: CE + PM Dice (BCE + PM Dice on region datasets);
- ``nnUNetTrainerFocalCEPMDice``: Focal CE (gamma 2) + PM Dice;
- ``nnUNetTrainerTopKCEPMDice``: TopK CE (k = 10%) + PM Dice.

The paper's comparison losses and Dilated Balanced CE are in :mod:`.baselines` (``nnUNetTrainerDice``,
``nnUNetTrainerTopKDice``, ``nnUNetTrainerDBCE``, ...); its "CE" row is nnU-Net's own ``nnUNetTrainerCELoss``,
which accepts the budget options here (``nnUNetTrainerCELoss_50epochs``), as ``nnUNetTrainer`` does.

Options go into the name (see :mod:`.naming`): ``nnUNetTrainerPMDice_g2_bg1`` is gamma_FG = 2,
gamma_BG = 1 (the paper's MSSEG setting), ``nnUNetTrainerPMDice_g1-1-2-2`` one gamma per channel,
``nnUNetTrainerPMDice_50epochs`` a shorter budget. Classes for such names are made on first use by
this module's ``__getattr__`` and cached, so the same name always gives the same class.
"""
from __future__ import annotations

import threading
from typing import Dict

from nnunetv2.training.nnUNetTrainer.variants.loss.nnUNetTrainerCELoss import nnUNetTrainerCELoss as _nnUNetCELoss

from .base import PluginLossTrainer, PluginTrainer, PluginTrainerMeta, trainer_by_name
from .baselines import BASELINE_TRAINERS
from .baselines import *  # noqa: F401,F403
from .naming import TrainerNameError, parse_options


class nnUNetTrainerPMDice(PluginLossTrainer):
    """PM Dice (VM Dice on 3D data) alone, gamma = 1 for every class, background included."""

    loss_kind = "pm_dice"


class nnUNetTrainerCEPMDice(PluginLossTrainer):
    """CE + PM Dice, weights 1:1 (BCE + PM Dice on region datasets)."""

    loss_kind = "ce_pm_dice"


class nnUNetTrainerFocalCEPMDice(PluginLossTrainer):
    """Focal CE (Lin et al., gamma 2; token ``fg<x>``) + PM Dice, weights 1:1."""

    loss_kind = "focal_ce_pm_dice"


class nnUNetTrainerTopKCEPMDice(PluginLossTrainer):
    """TopK CE (nnU-Net's TopKLoss, k = 10%; token ``k<x>``) + PM Dice, weights 1:1."""

    loss_kind = "topk_ce_pm_dice"


class _BudgetCELoss(PluginTrainer, _nnUNetCELoss):
    """nnU-Net's ``nnUNetTrainerCELoss`` (its loss and everything else) with the budget options of the name grammar."""


#: nnU-Net's own trainers that accept the budget options (``nnUNetTrainer_<n>epochs``); their plain names
#: stay nnU-Net's: this module never defines them
NNUNET_BASES: Dict[str, type] = {"nnUNetTrainer": PluginTrainer, "nnUNetTrainerCELoss": _BudgetCELoss}

#: base names that accept name options
BASE_TRAINERS: Dict[str, type] = dict(NNUNET_BASES)
for _cls in (nnUNetTrainerPMDice, nnUNetTrainerCEPMDice, nnUNetTrainerFocalCEPMDice, nnUNetTrainerTopKCEPMDice,
             *BASELINE_TRAINERS):
    BASE_TRAINERS[_cls.__name__] = _cls

__all__ = [n for n in BASE_TRAINERS if n not in NNUNET_BASES] + ["TrainerNameError", "trainer_class_for_name"]

_MADE: Dict[str, type] = {}
_LOCK = threading.Lock()


def trainer_class_for_name(name: str) -> type:
    """The trainer class for ``name``: a named trainer, or one made (once) from a base name plus options.

    Raises ``AttributeError`` for a name whose base is not a plugin trainer (so ``hasattr`` in
    nnU-Net's lookup says no) and :class:`TrainerNameError` for a plugin name whose options are wrong.
    """
    base_name = name.split("_", 1)[0]
    base = BASE_TRAINERS.get(base_name)
    if base is None:
        raise AttributeError(f"module {__name__!r} has no trainer {name!r}")
    if name == base_name:
        if base_name in NNUNET_BASES:
            raise AttributeError(f"{name} is nnU-Net's own trainer; it is not defined here")
        return base
    with _LOCK:
        cls = _MADE.get(name)
        if cls is None:
            options = parse_options(name, base_name, base.name_options)
            cls = PluginTrainerMeta(name, (base,), {
                "__module__": __name__, "__qualname__": name, "chosen_options": options,
                "__doc__": f"{base_name} with options {options} (made from the trainer name)."})
            _MADE[name] = cls
    return cls


def __getattr__(name: str):
    if not name.startswith("nnUNetTrainer"):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return trainer_class_for_name(name)
