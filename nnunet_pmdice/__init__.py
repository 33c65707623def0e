"""nnU-Net v2 plugin: Pixel-wise Modulated (PM/VM) Dice loss and the paper's baseline losses as trainers.

Kept import-light on purpose: a start-up hook imports this package in every Python process of the
environment (see ``_autoregister``), so nothing heavy (torch, nnU-Net) is imported here.
"""
__version__ = "0.1.0"
