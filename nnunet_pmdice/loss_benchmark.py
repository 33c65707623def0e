"""The loss-cost benchmark under its earlier import path; it lives in :mod:`nnunet_pmdice.benchmark.loss_cost`."""
from .benchmark.loss_cost import *  # noqa: F401,F403
from .benchmark.loss_cost import add_arguments, main, run  # noqa: F401
