"""Losses: pure PyTorch, no nnU-Net trainer code. Logits in, label map or one-hot target."""
from .ce import CrossEntropyTerm, FocalCrossEntropyTerm, TopKCrossEntropyTerm, cross_entropy_map
from .compound import CEPMDiceLoss, CompoundLoss, FocalCEPMDiceLoss, PMDiceBCELoss, TopKCEPMDiceLoss
from .dbce import DilatedBalancedCELoss, DilatedBalancedCETerm
from .dice import DiceLoss
from .focal_dice import WangFocalDiceLoss, ZhaoFocalDiceLoss
from .log_dice import LogDiceLoss
from .pm_dice import DiceFamilyLoss, PMDiceLoss, VMDiceLoss
from .topk_dice import TopKDiceLoss

__all__ = [
    "PMDiceLoss", "VMDiceLoss", "DiceFamilyLoss",
    "CompoundLoss", "CEPMDiceLoss", "FocalCEPMDiceLoss", "TopKCEPMDiceLoss", "PMDiceBCELoss",
    "CrossEntropyTerm", "TopKCrossEntropyTerm", "FocalCrossEntropyTerm", "cross_entropy_map",
    "DiceLoss", "LogDiceLoss", "WangFocalDiceLoss", "ZhaoFocalDiceLoss", "TopKDiceLoss",
    "DilatedBalancedCETerm", "DilatedBalancedCELoss",
]
