"""Base classes of the plugin trainers: name options, training budget, loss swap."""
from __future__ import annotations

import copyreg
import math
from typing import Mapping

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer as _nnUNetTrainer

from .loss_builder import RECIPES, build_trainer_loss

BUDGET_OPTIONS = ("epochs", "iters")


class PluginTrainerMeta(type):
    """Metaclass of every plugin trainer: classes pickle *by name*.

    Trainer classes made from names with options (``nnUNetTrainerPMDice_g0.5``) are created on demand.
    Pickle would look such a class up by its qualified name, which it splits at the dots; reducing
    the class to ``trainer_by_name(name)`` makes every plugin trainer, with or without options,
    unpickle in any process where the package is installed.
    """


def trainer_by_name(name: str):
    """The plugin trainer class called ``name`` (with or without name options)."""
    from nnunet_pmdice import trainers
    return getattr(trainers, name)


copyreg.pickle(PluginTrainerMeta, lambda cls: (trainer_by_name, (cls.__name__,)))


class PluginTrainer(_nnUNetTrainer, metaclass=PluginTrainerMeta):
    """nnU-Net's trainer plus the budget options of the name grammar (``_<n>epochs``, ``_<n>iters``).

    On its own (as the base of ``nnUNetTrainer_<n>epochs_<m>iters``) it trains exactly as
    ``nnUNetTrainer``, nnU-Net's default loss included: the baseline row of a benchmark.
    """

    #: options accepted as name tokens (see :mod:`nnunet_pmdice.trainers.naming`)
    name_options = BUDGET_OPTIONS
    #: options chosen in the name of the class made from a name; empty on the named base classes
    chosen_options: Mapping[str, object] = {}

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        epochs = self.chosen_options.get("epochs")
        iters = self.chosen_options.get("iters")
        if epochs is not None:
            self.num_epochs = int(epochs)
        if iters is not None:
            self.num_iterations_per_epoch = int(iters)
            # nnU-Net's ratio of 250 training to 50 validation iterations
            self.num_val_iterations_per_epoch = max(1, math.ceil(int(iters) / 5))


class PluginLossTrainer(PluginTrainer):
    """A trainer that differs from ``nnUNetTrainer`` only in its loss, named by ``loss_kind``."""

    loss_kind: str = ""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.loss_kind:
            if cls.loss_kind not in RECIPES:
                raise TypeError(f"{cls.__name__}: unknown loss_kind {cls.loss_kind!r}")
            cls.name_options = RECIPES[cls.loss_kind].options + BUDGET_OPTIONS

    def _build_loss(self):
        return build_trainer_loss(self)
