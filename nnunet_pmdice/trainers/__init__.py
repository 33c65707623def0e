"""nnU-Net trainers of the plugin. ``nnUNetv2_train ID CONFIG FOLD -tr <name>`` finds each of them.

Named trainers, one per row of :data:`.loss_table.TRAINER_TABLE` (each differs from ``nnUNetTrainer``
only in the loss):

- ``nnUNetTrainerPMDice``: PM Dice (VM Dice on 3D), gamma 1 for every class (the paper's default);
- ``nnUNetTrainerCEPMDice``: CE + PM Dice (BCE + PM Dice on region datasets);
- ``nnUNetTrainerFocalCEPMDice``: Focal CE (gamma 2) + PM Dice;
- ``nnUNetTrainerTopKCEPMDice``: TopK CE (k = 10%) + PM Dice;
- the paper's comparison losses and Dilated Balanced CE (:mod:`.baselines`: ``nnUNetTrainerDice``,
  ``nnUNetTrainerTopKDice``, ``nnUNetTrainerDBCE``, ...). The paper's "CE" row is nnU-Net's own
  ``nnUNetTrainerCELoss``, which accepts the budget options here (``nnUNetTrainerCELoss_50epochs``), as
  ``nnUNetTrainer`` does.

Options go into the name (see :mod:`.naming`): ``nnUNetTrainerPMDice_g2_bg1`` is gamma_FG = 2,
gamma_BG = 1 (the paper's MSSEG setting), ``nnUNetTrainerPMDice_g1-1-2-2`` one gamma per channel,
``nnUNetTrainerPMDice_50epochs`` a shorter budget. Any other trainer gets a loss of the plugin with
``<trainer>.<loss>`` (``nnUNetTrainerNoMirroring.PMDice_g2_bg1``) or :func:`with_loss` (see
:mod:`.compose`). Classes for such names are made on first use by this module's ``__getattr__`` and
cached, so the same name always gives the same class.
"""
from __future__ import annotations

import threading
from typing import Dict

from nnunetv2.training.nnUNetTrainer.variants.loss.nnUNetTrainerCELoss import nnUNetTrainerCELoss as _nnUNetCELoss

from .base import HOME_MODULE, PluginLossTrainer, PluginTrainer, PluginTrainerMeta, find_with_nnunet, trainer_by_name
from .compose import LOSS_SEPARATOR, class_for_composed_name, loss_names, with_loss
from .named import BASELINE_TRAINERS, NAMED_TRAINERS, PM_DICE_TRAINERS
from .naming import TrainerNameError, check_name_form, parse_options, split_composed, trainer_budget, with_budget

globals().update(NAMED_TRAINERS)


class _BudgetCELoss(PluginTrainer, _nnUNetCELoss):
    """nnU-Net's ``nnUNetTrainerCELoss`` (its loss and everything else) with the budget options of the name grammar."""


#: nnU-Net's own trainers that accept the budget options (``nnUNetTrainer_<n>epochs``); their plain names
#: stay nnU-Net's: this module never defines them
NNUNET_BASES: Dict[str, type] = {"nnUNetTrainer": PluginTrainer, "nnUNetTrainerCELoss": _BudgetCELoss}

#: base names that accept name options
BASE_TRAINERS: Dict[str, type] = {**NNUNET_BASES, **NAMED_TRAINERS}

__all__ = list(NAMED_TRAINERS) + ["TrainerNameError", "trainer_class_for_name", "check_trainer_name", "with_loss",
                                  "loss_names", "trainer_budget", "with_budget"]

_MADE: Dict[str, type] = {}
_LOCK = threading.Lock()


def trainer_class_for_name(name: str) -> type:
    """The trainer class for ``name``: a named trainer, one made (once) from a base name plus options, or
    another trainer with a loss of the plugin (``<trainer>.<loss>``, see :mod:`.compose`).

    >>> trainer_class_for_name("nnUNetTrainerPMDice_g2_bg1").chosen_options
    {'gamma': 2.0, 'gamma_bg': 1.0}

    Raises:
        AttributeError: a name whose base is not a plugin trainer (so ``hasattr`` in nnU-Net's lookup
            says no).
        TrainerNameError: a plugin name whose options are wrong, too long a name, or a ``<trainer>.<loss>``
            name that cannot be made (see :func:`with_loss`).
    """
    if split_composed(name):
        return class_for_composed_name(name)
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
            options = parse_options(name, base_name, base.name_options, base.option_help)
            cls = PluginTrainerMeta(name, (base,), {
                "__module__": HOME_MODULE, "__qualname__": name, "chosen_options": options,
                "__doc__": f"{base_name} with options {options} (made from the trainer name)."})
            _MADE[name] = cls
    return cls


def check_trainer_name(name: str) -> type:
    """The class ``nnUNetv2_train -tr name`` will train, found the way nnU-Net finds it; fails fast, before any
    training, on a name nnU-Net will not find or whose options are wrong.

    Plugin names (``nnUNetTrainerPMDice_g2``, ``<trainer>.<loss>``) are read by the name grammar; any other
    name goes through nnU-Net's own lookup first (its shipped ``nnUNetTrainer_1epoch`` or
    ``nnUNetTrainer_probabilisticOversampling_033`` are nnU-Net's), then, for names on ``nnUNetTrainer`` or
    ``nnUNetTrainerCELoss``, through the budget tokens of the grammar.

    Raises:
        TrainerNameError: a name too long, with characters a folder name cannot have, or a plugin name whose
            options are wrong (the message lists what is accepted).
        ValueError: a name nnU-Net cannot find.
    """
    check_name_form(name)
    if split_composed(name) or (name.split("_", 1)[0] in BASE_TRAINERS and name.split("_", 1)[0] not in NNUNET_BASES):
        return trainer_class_for_name(name)
    try:
        return find_with_nnunet(name)
    except AttributeError as e:
        if name.split("_", 1)[0] in NNUNET_BASES and name not in NNUNET_BASES:
            return trainer_class_for_name(name)  # raises the grammar's error for a wrong budget token
        raise ValueError(str(e)) from None


def __getattr__(name: str):
    if name.startswith("__") or not (name.startswith("nnUNetTrainer") or split_composed(name)):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return trainer_class_for_name(name)
