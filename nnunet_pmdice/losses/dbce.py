r"""Dilated Balanced Cross Entropy (Hosseini & Soleymani Baghshah, arXiv 2412.06045).

Balanced CE weights each pixel by the inverse frequency of its class. DBCE computes the balancing weights
from each class mask *dilated together with its surrounding pixels*: a small structure and a band of
background around it form one region, and every region weighs the same in the loss.

Our reading of the method (the paper's full text was not reachable; its abstract and a summary are, see
the README): for each sample :math:`b` and each foreground class :math:`c \ge 1` present,

.. math::

    R_{bc} = \operatorname{dilate}(\{i : y_{bi} = c\}, \text{ball of radius } r) \cap V_b, \qquad
    R_{b0} = V_b \setminus \textstyle\bigcup_{c \ge 1} R_{bc}

(:math:`V_b`: the counted pixels, i.e. not the ignore label). Each pixel takes the weight
:math:`w_{bi} = \sum_{c : i \in R_{bc}} 1 / |R_{bc}|` (the inverse area of every region it belongs to;
surrounding pixels are taken from the background region) and

.. math::

    \mathcal{L} = \frac{\sum_{b,i} w_{bi}\, \mathrm{CE}_{bi}}{\sum_{b,i} w_{bi}}
               = \frac{1}{|\mathcal{R}|} \sum_{(b,c) \in \mathcal{R}} \frac{1}{|R_{bc}|} \sum_{i \in R_{bc}} \mathrm{CE}_{bi}

the mean, over the non-empty regions :math:`\mathcal{R}`, of each region's mean CE. With ``dilation = 0``
the regions are the classes and this is balanced CE with inverse-frequency weights, exactly PyTorch's
``F.cross_entropy(logits, labels, weight=1 / class_count)`` for one image.

Choices where the text was silent: the structuring element is a ball in pixel / voxel units (the
summary: "typically a disk of variable radius"); the weights are computed per sample (per image); under
nnU-Net's deep supervision each output scale dilates by ``dilation`` pixels of its own resolution.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ._checks import check_number, prepare_inputs
from .ce import ce_map_of_checked


@lru_cache(maxsize=16)
def _ball(radius: int, ndim: int, device: torch.device) -> torch.Tensor:
    """The (1, 1, 2r+1, ...) 0/1 kernel of a ball of ``radius``, made once per device."""
    axes = torch.meshgrid(*[torch.arange(-radius, radius + 1, dtype=torch.float32)] * ndim, indexing="ij")
    return (sum(a * a for a in axes) <= radius * radius).float().to(device)[None, None]


def dilate(masks: torch.Tensor, radius: int) -> torch.Tensor:
    """Binary dilation of (B, K, *spatial) masks by a ball of ``radius`` pixels / voxels (2D or 3D). Returns bool."""
    if radius == 0:
        return masks.bool()
    B, K = masks.shape[:2]
    spatial = masks.shape[2:]
    conv = F.conv2d if len(spatial) == 2 else F.conv3d
    kernel = _ball(radius, len(spatial), masks.device)
    with torch.autocast(masks.device.type, enabled=False):
        hits = conv(masks.reshape(B * K, 1, *spatial).float(), kernel, padding=radius)
    return (hits > 0.5).reshape(B, K, *spatial)


def _check_dilation(dilation) -> int:
    if isinstance(dilation, bool) or not isinstance(dilation, int):
        raise TypeError(f"dilation must be an int (a radius in pixels / voxels), got {type(dilation).__name__} "
                        f"({dilation!r})")
    return int(check_number("dilation", dilation))


def region_weights(labels: torch.Tensor, valid: Optional[torch.Tensor], dilation: int, num_classes: int,
                   dtype: torch.dtype = torch.float32):
    """DBCE pixel weights (B, 1, *spatial) and the number of non-empty regions, for a label map (B, 1, *spatial).

    ``valid`` is a bool mask (B, 1, *spatial) of counted pixels or None. No gradient.
    """
    spatial_dims = tuple(range(2, labels.ndim))
    with torch.no_grad():
        classes = torch.arange(1, num_classes, device=labels.device).view(1, -1, *([1] * len(spatial_dims)))
        regions = dilate(labels == classes, dilation)
        if valid is not None:
            regions &= valid
        background = ~regions.any(1, keepdim=True)
        if valid is not None:
            background &= valid
        regions = torch.cat([background, regions], 1).to(dtype)
        area = regions.sum(spatial_dims, keepdim=True)
        weights = (regions / area.clamp_min(1.0)).sum(1, keepdim=True)
        return weights, (area > 0).sum()


def dilated_balanced_ce(ce_map: torch.Tensor, target: torch.Tensor, loss_mask: Optional[torch.Tensor],
                        dilation: int, num_classes: Optional[int] = None) -> torch.Tensor:
    """DBCE from a per-pixel CE map (B, 1, *spatial) and the label map / one-hot target that defines the regions.

    Raises:
        ValueError: a CE map of region (sigmoid) training, or a target whose shape does not match the map.
    """
    if ce_map.shape[1] != 1:
        raise ValueError(f"Dilated Balanced CE is defined for softmax (label) training with a CE map of shape "
                         f"(B, 1, *spatial); got {tuple(ce_map.shape)} (region / sigmoid training is not supported)")
    if target.ndim != ce_map.ndim or target.shape[0] != ce_map.shape[0] or target.shape[2:] != ce_map.shape[2:]:
        raise ValueError(f"target shape {tuple(target.shape)} does not match the CE map {tuple(ce_map.shape)}: "
                         f"expected (B, 1, *spatial) labels or (B, C, *spatial) one-hot")
    labels = target.long() if target.shape[1] == 1 else target.argmax(1, keepdim=True)
    if num_classes is None:
        num_classes = target.shape[1] if target.shape[1] > 1 else int(labels.max()) + 1
    valid = None if loss_mask is None else (loss_mask.reshape(labels.shape) > 0)
    weights, n_regions = region_weights(labels, valid, dilation, max(num_classes, 2), ce_map.dtype)
    value = (weights * ce_map).sum() / n_regions.clamp_min(1).to(ce_map.dtype)
    return torch.where(n_regions > 0, value, ce_map.sum() * 0.0)


class DilatedBalancedCETerm(nn.Module):
    """Dilated Balanced CE as a CE term of :class:`~nnunet_pmdice.losses.CompoundLoss` (formula: :mod:`.dbce`).

    Called as ``term(ce_map, loss_mask, target)``: the per-pixel CE map (B, 1, *spatial) of softmax
    training, the mask of counted pixels (or None) and the label map (B, 1, *spatial) or one-hot target
    (B, C, *spatial) whose classes define the regions.

    Args:
        dilation: ball radius in pixels / voxels, an int >= 0 (0: balanced CE).
        num_classes: number of classes C (label maps hold 0..C-1); None reads it from the target
            (one-hot: its channels; label map: its largest label + 1, which costs a device sync).

    Raises:
        TypeError, ValueError: ``dilation`` is not an int >= 0, ``num_classes`` not an int >= 2; in a
            call, no ``target``, or a CE map / target as :func:`dilated_balanced_ce` refuses.
    """

    name = "DBCE"

    def __init__(self, dilation: int = 5, num_classes: Optional[int] = None):
        super().__init__()
        self.dilation = _check_dilation(dilation)
        if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, int)
                                        or num_classes < 2):
            raise ValueError(f"num_classes must be an int >= 2 (background and one class) or None, got {num_classes!r}")
        self.num_classes = num_classes

    def extra_repr(self) -> str:
        return f"dilation={self.dilation}, num_classes={self.num_classes}"

    def forward(self, ce_map: torch.Tensor, loss_mask: Optional[torch.Tensor] = None,
                target: Optional[torch.Tensor] = None) -> torch.Tensor:
        if target is None:
            raise ValueError("Dilated Balanced CE builds its weights from the ground truth: call it as "
                             "term(ce_map, loss_mask, target) (CompoundLoss does)")
        return dilated_balanced_ce(ce_map, target, loss_mask, self.dilation, self.num_classes)


class DilatedBalancedCELoss(nn.Module):
    r"""Dilated Balanced CE on logits (paper arXiv 2412.06045; the formula and our reading are in :mod:`.dbce`).

    Args:
        dilation: ball radius in pixels / voxels (int >= 0, default 5; 0 is balanced CE).

    Shapes:
        logits (B, C, *spatial) raw network output (softmax); target label map (B, 1, *spatial) /
        (B, *spatial) or one-hot (B, C, *spatial); loss_mask optional (B, 1, *spatial), 1 where a pixel
        counts. Returns a scalar float32 (float64 for float64 input).

    Raises:
        TypeError, ValueError: ``dilation`` is not an int >= 0; in a call, the input errors of the
            Dice-family losses (:class:`~nnunet_pmdice.losses.DiceFamilyLoss`).

    Example:
        >>> import torch
        >>> import torch.nn.functional as F
        >>> from nnunet_pmdice.losses import DilatedBalancedCELoss
        >>> _ = torch.manual_seed(0)
        >>> logits, labels = torch.randn(1, 3, 8, 8), torch.randint(0, 3, (1, 8, 8))
        >>> balanced = F.cross_entropy(logits, labels, weight=1 / torch.bincount(labels.flatten()).float())
        >>> bool(torch.isclose(DilatedBalancedCELoss(dilation=0)(logits, labels), balanced))
        True
    """

    def __init__(self, dilation: int = 5):
        super().__init__()
        self.dilation = _check_dilation(dilation)

    def extra_repr(self) -> str:
        return f"dilation={self.dilation}"

    def forward(self, logits: torch.Tensor, target: torch.Tensor,
                loss_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        inputs = prepare_inputs(logits, target, loss_mask, "softmax")
        return dilated_balanced_ce(ce_map_of_checked(logits, inputs, "softmax"), inputs.target, inputs.mask,
                                   self.dilation, logits.shape[1])
