"""Any nnU-Net trainer with any loss of the plugin: :func:`with_loss` and the ``<trainer>.<loss>`` names.

``nnUNetv2_train ID CONFIG FOLD -tr nnUNetTrainerNoMirroring.PMDice_g2_bg1`` trains nnU-Net's
``nnUNetTrainerNoMirroring`` with PM Dice (gamma_FG 2, gamma_BG 1): everything of the base trainer
(augmentation, sampling, optimiser, schedule, network, deep supervision on or off), and the loss built
where every plugin trainer builds it (:mod:`.loss_builder`). The part before the first ``.`` is any
trainer nnU-Net finds (its own, or one in a folder of ``nnUNet_extTrainer``); the part after it is a
loss of :data:`~.loss_table.TRAINER_TABLE` (the trainer name without ``nnUNetTrainer``) with its
name options and the budget options. nnU-Net names its output folder after the whole name, so the
loss and its options are recorded with the run.

The first ``.`` followed by a letter separates the two (a ``.`` inside an option is a decimal point,
followed by a digit: ``nnUNetTrainerNoMirroring.PMDice_g0.5``).

Why ``.`` and not ``__``: nnU-Net splits its output folder names ``<trainer>__<plans>__<configuration>``
at ``__`` (``nnUNetv2_find_best_configuration``, model export, paths read back into their parts), so a
``__`` inside a trainer name breaks them. A Python class name never holds a ``.``, so the first ``.``
separates base and loss unambiguously, also for bases with ``_`` in their names
(``nnUNetTrainer_probabilisticOversampling_033.CEPMDice``).

In Python, :func:`with_loss` makes the same class from a trainer class; a trainer module in an
``nnUNet_extTrainer`` folder can name it::

    class MyTrainerPMDice(with_loss(MyTrainer, "PMDice_g2_bg1")):
        pass
"""
from __future__ import annotations

import threading
from typing import Dict, Mapping, Optional, Tuple

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer as _nnUNetTrainer

from .base import HOME_MODULE, PluginLossTrainer, PluginTrainer, PluginTrainerMeta, find_with_nnunet
from .loss_table import ROWS, TRAINER_TABLE
from .named import NAMED_TRAINERS
from .naming import TrainerNameError, check_name_form, parse_options, split_composed

#: separates the base trainer from the loss in a trainer name
LOSS_SEPARATOR = "."
_PREFIX = "nnUNetTrainer"

_COMPOSED: Dict[str, type] = {}
_LOCK = threading.RLock()


def loss_names() -> Tuple[str, ...]:
    """The losses :func:`with_loss` takes, one per row of the table.

    >>> loss_names()[:4]
    ('PMDice', 'CEPMDice', 'FocalCEPMDice', 'TopKCEPMDice')
    """
    return tuple(row.loss_name for row in TRAINER_TABLE)


def parse_loss(loss: str) -> Tuple[type, Mapping[str, object], str]:
    """``"PMDice_g2_bg1"`` -> (the plugin trainer of that loss, its options from the tokens, the loss's name).

    >>> cls, options, name = parse_loss("TopKCETopKDice_k5_kd20")
    >>> cls.__name__, dict(options), name
    ('nnUNetTrainerTopKCETopKDice', {'k': 5.0, 'dice_k': 20.0}, 'TopKCETopKDice')

    Raises:
        TrainerNameError: an unknown loss (the message lists the losses) or options its trainer refuses.
    """
    if not isinstance(loss, str):
        raise TypeError(f"loss must be a str such as 'PMDice_g2_bg1', got {type(loss).__name__}")
    spec = loss[len(_PREFIX):] if loss.startswith(_PREFIX) else loss
    loss_name = spec.split("_", 1)[0]
    row = ROWS.get(_PREFIX + loss_name)
    if row is None:
        raise TrainerNameError(f"unknown loss {loss_name!r} in {loss!r}; the losses are: {', '.join(loss_names())} "
                               f"(each with the name options of its trainer, e.g. 'PMDice_g2_bg1')")
    loss_cls = NAMED_TRAINERS[row.trainer]
    options = parse_options(spec, loss_name, loss_cls.name_options, loss_cls.option_help) if spec != loss_name \
        else {}
    return loss_cls, options, loss_name


def check_base(base: type, loss: str) -> None:
    """Refuses a base trainer whose loss the plugin's loss cannot replace without changing its meaning.

    Raises:
        TrainerNameError: ``base`` is not an nnU-Net trainer class, already trains a plugin loss, builds
            its own loss (overrides ``_build_loss``, as nnU-Net's loss variants do: giving it another
            loss would silently drop its own), or has a metaclass the plugin's classes cannot combine with.
    """
    if not isinstance(base, type) or not issubclass(base, _nnUNetTrainer):
        raise TrainerNameError(f"with_loss: the base must be an nnU-Net trainer class (a subclass of "
                               f"nnUNetTrainer), got {base!r}")
    if issubclass(base, PluginLossTrainer):
        raise TrainerNameError(f"{base.__name__} already trains the plugin loss {base.loss_kind!r}; give the loss "
                               f"{loss!r} to a trainer without one")
    if base is _nnUNetTrainer or (issubclass(base, PluginTrainer) and not issubclass(base, PluginLossTrainer)
                                  and base.__mro__[1] is PluginTrainer):
        raise TrainerNameError(f"{base.__name__} with {loss!r} is the trainer nnUNetTrainer{loss}: use that name, "
                               f"so that each run has one name")
    owner = next(c for c in base.__mro__ if "_build_loss" in vars(c))
    if owner is not _nnUNetTrainer and not issubclass(owner, PluginTrainer):
        raise TrainerNameError(
            f"{base.__name__} builds its own loss ({owner.__module__}.{owner.__qualname__}._build_loss); giving it "
            f"the loss {loss!r} would silently drop that loss. Give the loss to a trainer that keeps "
            f"nnUNetTrainer's _build_loss (e.g. the class {base.__name__} derives from, with your other changes)")
    if not issubclass(PluginTrainerMeta, type(base)):
        raise TrainerNameError(f"{base.__name__} has the metaclass {type(base).__name__}; the plugin's trainers "
                               f"(metaclass PluginTrainerMeta, for pickling by name) cannot be combined with it")


def with_loss(base: type, loss: str, name: Optional[str] = None) -> type:
    """``base`` (any nnU-Net trainer class) trained with a loss of the plugin: a new trainer class.

    Args:
        base: the trainer class, e.g. nnU-Net's ``nnUNetTrainerNoMirroring`` or your own subclass of
            ``nnUNetTrainer``. It keeps everything but its loss: augmentation, sampling, optimiser,
            schedule, network, deep supervision (on or off, as ``base`` sets it).
        loss: a loss of :func:`loss_names` with its name options and budget options, e.g.
            ``"PMDice_g2_bg1"``, ``"TopKCETopKDice_k5_kd20_50epochs"``.
        name: the class name, which nnU-Net also gives the output folder; default
            ``"<base>.<loss>"``, the name under which ``nnUNetv2_train -tr`` finds the same class.

    The class pickles by name, is found by nnU-Net in every process (DDP children, nnUNetv2_predict)
    under ``"<base>.<loss>"`` when nnU-Net finds ``base``, and logs its loss settings at start-up. A
    class given its own ``name`` is known only in the process that made it (and pickles there); for
    training and prediction from the command line use the default name, or define the class in a module
    of an ``nnUNet_extTrainer`` folder.

    >>> from nnunetv2.training.nnUNetTrainer.variants.data_augmentation.nnUNetTrainerNoMirroring import (
    ...     nnUNetTrainerNoMirroring)
    >>> cls = with_loss(nnUNetTrainerNoMirroring, "PMDice_g2_bg1")
    >>> cls.__name__, dict(cls.chosen_options), cls.loss_kind
    ('nnUNetTrainerNoMirroring.PMDice_g2_bg1', {'gamma': 2.0, 'gamma_bg': 1.0}, 'pm_dice')
    >>> with_loss(nnUNetTrainerNoMirroring, "PMDice_g2_bg1") is cls
    True

    Raises:
        TrainerNameError: an unknown loss or option, a name too long for nnU-Net's output folder, or a
            base whose loss cannot be replaced (see :func:`check_base`).
    """
    loss_cls, options, loss_name = parse_loss(loss)
    check_base(base, loss_name)
    spec = loss[len(_PREFIX):] if loss.startswith(_PREFIX) else loss
    name = name or f"{base.__name__}{LOSS_SEPARATOR}{spec}"
    check_name_form(name)
    with _LOCK:
        cls = _COMPOSED.get(name)
        if cls is not None and cls.loss_base is base and dict(cls.chosen_options) == dict(options) \
                and cls.loss_kind == loss_cls.loss_kind:
            return cls
        try:
            cls = PluginTrainerMeta(name, (loss_cls, base), {
                "__module__": HOME_MODULE, "__qualname__": name, "chosen_options": dict(options), "loss_base": base,
                "__doc__": f"{base.__name__} ({base.__module__}) trained with {loss_name} "
                           f"({loss_cls.__doc__.strip()}), options {dict(options)}."})
        except TypeError as e:
            raise TrainerNameError(f"{base.__name__} cannot be combined with the loss {loss_name!r}: {e}") from None
        _COMPOSED[name] = cls
    return cls


def class_for_composed_name(name: str) -> type:
    """The class of a ``<trainer>.<loss>`` name; the base trainer found by nnU-Net's own lookup.

    Raises:
        TrainerNameError: the name is too long or malformed, nnU-Net finds no trainer called ``<trainer>``,
            or the loss part or base is refused (see :func:`with_loss`).
    """
    check_name_form(name)
    with _LOCK:
        if name in _COMPOSED:
            return _COMPOSED[name]
    parts = split_composed(name)
    if parts is None:
        raise TrainerNameError(f"trainer name {name!r}: expected <trainer>.<loss>, e.g. "
                               f"nnUNetTrainerNoMirroring.PMDice_g2_bg1")
    base_name, spec = parts
    parse_loss(spec)  # an unknown loss is refused before nnU-Net searches for the base
    if base_name == "nnUNetTrainer":
        raise TrainerNameError(f"trainer name {name!r}: nnUNetTrainer with {spec!r} is the trainer "
                               f"nnUNetTrainer{spec}: use that name, so that each run has one name")
    from nnunet_pmdice import trainers
    if base_name.split("_", 1)[0] in trainers.BASE_TRAINERS and base_name.split("_", 1)[0] not in \
            trainers.NNUNET_BASES:
        raise TrainerNameError(f"trainer name {name!r}: {base_name} already trains a plugin loss")
    try:
        base = find_with_nnunet(base_name)
    except AttributeError as e:
        raise TrainerNameError(f"trainer name {name!r}: {e} (searched nnU-Net's trainers and the folders of "
                               f"nnUNet_extTrainer)") from None
    try:
        return with_loss(base, spec, name=name)
    except TrainerNameError as e:
        raise TrainerNameError(f"trainer name {name!r}: {e}") from None
