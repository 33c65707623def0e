"""The module nnU-Net imports from ``nnUNet_extTrainer``: a re-export of :mod:`nnunet_pmdice.trainers`.

nnU-Net imports every module of an external trainer folder as a top-level module and removes it from
``sys.modules`` afterwards, so nothing may be defined here: classes defined in this file could not be
pickled. Names with options (``nnUNetTrainerPMDice_g2_bg1``) and other trainers with a loss of the
package (``nnUNetTrainerNoMirroring.PMDice_g2_bg1``, ``MyTrainer.CEPMDice``) are resolved by the
package's module-level ``__getattr__``.
"""
from nnunet_pmdice import trainers as _trainers
from nnunet_pmdice.trainers import *  # noqa: F401,F403


def __getattr__(name):
    return getattr(_trainers, name)
