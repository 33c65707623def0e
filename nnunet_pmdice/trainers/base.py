"""Base classes of the plugin trainers: name options, training budget, loss swap, pickling by name."""
from __future__ import annotations

import contextlib
import copyreg
import io
import math
from typing import Dict, Mapping

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer as _nnUNetTrainer

from .loss_builder import build_trainer_loss
from .loss_table import RECIPES
from .naming import BUDGET_OPTIONS

#: module that holds (or makes on demand) every class of the plugin
HOME_MODULE = "nnunet_pmdice.trainers"

# classes defined outside the package on top of a plugin trainer (``class T(with_loss(...))`` in a user's
# module), by name: the latest definition of each name, so that they unpickle to the same class here
_EXTERNAL: Dict[str, type] = {}


class PluginTrainerMeta(type):
    """Metaclass of every plugin trainer: classes pickle *by name*.

    Trainer classes made from names with options (``nnUNetTrainerPMDice_g0.5``) are created on demand.
    Pickle would look such a class up by its qualified name, which it splits at the dots; reducing
    the class to ``trainer_by_name(name)`` makes every plugin trainer, with or without options,
    unpickle in any process where the package is installed. A class a user defines on top of one (in
    a module of an ``nnUNet_extTrainer`` folder, which nnU-Net imports and then forgets) is found again
    the way nnU-Net finds it: by name, through nnU-Net's trainer lookup.
    """

    def __init__(cls, name, bases, namespace, **kwargs):
        super().__init__(name, bases, namespace, **kwargs)
        if namespace.get("__module__") != HOME_MODULE and not namespace.get("__module__", "").startswith(
                HOME_MODULE + "."):
            _EXTERNAL[name] = cls


def trainer_by_name(name: str):
    """The trainer class called ``name``: a plugin trainer (with or without name options), a class defined
    on top of one in this process, or else whatever nnU-Net's own trainer lookup finds under that name.

    Raises:
        AttributeError: no trainer of that name is known here or to nnU-Net.
    """
    from nnunet_pmdice import trainers
    from nnunet_pmdice.trainers.compose import _COMPOSED
    try:
        return getattr(trainers, name)
    except AttributeError:
        if name in _EXTERNAL:
            return _EXTERNAL[name]
        if name in _COMPOSED:  # with_loss(..., name=...) in this process
            return _COMPOSED[name]
    return find_with_nnunet(name)


def find_with_nnunet(name: str) -> type:
    """nnU-Net's trainer lookup (its own trainers, then the ``nnUNet_extTrainer`` folders), without its prints.

    Raises:
        AttributeError: nnU-Net finds no trainer of that name.
    """
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            return recursive_find_trainer_class_by_name(name)
        except (RuntimeError, AssertionError) as e:
            raise AttributeError(f"nnU-Net cannot find trainer {name!r}: {str(e).splitlines()[0]}") from None


copyreg.pickle(PluginTrainerMeta, lambda cls: (trainer_by_name, (cls.__name__,)))


class PluginTrainer(_nnUNetTrainer, metaclass=PluginTrainerMeta):
    """nnU-Net's trainer plus the budget options of the name grammar (``_<n>epochs``, ``_<n>iters``).

    On its own (as the base of ``nnUNetTrainer_<n>epochs_<m>iters``) it trains exactly as
    ``nnUNetTrainer``, nnU-Net's default loss included: the baseline row of a benchmark.
    """

    #: options accepted as name tokens (see :mod:`nnunet_pmdice.trainers.naming`)
    name_options = BUDGET_OPTIONS
    #: option -> help text where the trainer's loss gives a token its own meaning
    option_help: Mapping[str, str] = {}
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
    """A trainer whose loss is a row of :mod:`.loss_table`, named by ``loss_kind``; everything else is its
    other base's (``nnUNetTrainer``, or any trainer given a loss by :func:`~nnunet_pmdice.trainers.with_loss`)."""

    loss_kind: str = ""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.loss_kind and "loss_kind" in vars(cls):
            if cls.loss_kind not in RECIPES:
                raise TypeError(f"{cls.__name__}: unknown loss_kind {cls.loss_kind!r}")
            cls.name_options = RECIPES[cls.loss_kind].options + BUDGET_OPTIONS
            cls.option_help = dict(RECIPES[cls.loss_kind].help)

    def _build_loss(self):
        return build_trainer_loss(self)
