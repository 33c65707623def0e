"""Losses: pure PyTorch, no nnU-Net trainer code. Logits in, label map or one-hot target.

Reference: docs/losses.md.
"""
from .ce import CrossEntropyTerm, FocalCrossEntropyTerm, TopKCrossEntropyTerm, cross_entropy_map
from .compound import CEPMDiceLoss, CompoundLoss, FocalCEPMDiceLoss, PMDiceBCELoss, TopKCEPMDiceLoss
from .dbce import DilatedBalancedCELoss, DilatedBalancedCETerm
from .dice import DiceLoss
from .dice_family import DiceFamilyLoss, DiceOptions
from .focal_dice import FocalDiceWangLoss, FocalDiceZhaoLoss, WangFocalDiceLoss, ZhaoFocalDiceLoss
from .log_dice import LogDiceLoss
from .pm_dice import PMDiceLoss, VMDiceLoss
from .topk_dice import TopKDiceLoss

__all__ = [
    "PMDiceLoss", "VMDiceLoss", "DiceFamilyLoss", "DiceOptions",
    "CompoundLoss", "CEPMDiceLoss", "FocalCEPMDiceLoss", "TopKCEPMDiceLoss", "PMDiceBCELoss",
    "CrossEntropyTerm", "TopKCrossEntropyTerm", "FocalCrossEntropyTerm", "cross_entropy_map",
    "DiceLoss", "LogDiceLoss", "FocalDiceWangLoss", "FocalDiceZhaoLoss", "TopKDiceLoss",
    "WangFocalDiceLoss", "ZhaoFocalDiceLoss",
    "DilatedBalancedCETerm", "DilatedBalancedCELoss",
]
