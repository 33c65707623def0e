"""Losses: pure PyTorch, no nnU-Net trainer code. Logits in, label map or one-hot target."""
from .ce import CrossEntropyTerm, FocalCrossEntropyTerm, TopKCrossEntropyTerm, cross_entropy_map
from .compound import CEPMDiceLoss, CompoundLoss, FocalCEPMDiceLoss, PMDiceBCELoss, TopKCEPMDiceLoss
from .pm_dice import DiceFamilyLoss, PMDiceLoss, VMDiceLoss

__all__ = [
    "PMDiceLoss", "VMDiceLoss", "DiceFamilyLoss",
    "CompoundLoss", "CEPMDiceLoss", "FocalCEPMDiceLoss", "TopKCEPMDiceLoss", "PMDiceBCELoss",
    "CrossEntropyTerm", "TopKCrossEntropyTerm", "FocalCrossEntropyTerm", "cross_entropy_map",
]
