"""Argument and input validation shared by every loss of the package.

Every check raises ``ValueError`` / ``TypeError`` with a message that names the argument, what was
expected and what came, so that a wrong call fails on the first batch rather than silently training
on nonsense.
"""
from __future__ import annotations

import math
from numbers import Real
from typing import Optional, Sequence, Tuple, Union

import torch

GammaArg = Union[float, int, Sequence[float]]
NONLINS = ("softmax", "sigmoid")


def check_number(name: str, value, *, minimum: float = 0.0, strict: bool = False,
                 maximum: Optional[float] = None) -> float:
    """A finite real number >= ``minimum`` (> when ``strict``) and <= ``maximum``."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} ({value!r})")
    value = float(value)
    if math.isnan(value) or math.isinf(value):
        raise ValueError(f"{name} must be a finite number, got {value}")
    if value < minimum or (strict and value == minimum):
        raise ValueError(f"{name} must be {'>' if strict else '>='} {minimum:g}, got {value:g}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be <= {maximum:g}, got {value:g}")
    return value


def check_gamma(gamma: GammaArg, gamma_bg=None) -> Tuple[Union[float, Tuple[float, ...]], Optional[float]]:
    """Validates a focusing parameter: one number for every class, or one number per class."""
    if isinstance(gamma, torch.Tensor):
        gamma = gamma.detach().cpu().flatten().tolist()
    if isinstance(gamma, (list, tuple)):
        if len(gamma) == 0:
            raise ValueError("gamma must be a number or a non-empty sequence with one value per class, got []")
        gamma = tuple(check_number(f"gamma[{i}]", g) for i, g in enumerate(gamma))
    else:
        gamma = check_number("gamma", gamma)
    if gamma_bg is not None:
        gamma_bg = check_number("gamma_bg", gamma_bg)
    return gamma, gamma_bg


def resolve_gammas(gamma, gamma_bg, num_channels: int, nonlin: str) -> Tuple[float, ...]:
    """One gamma per output channel, ``gamma_bg`` overriding channel 0 (the background)."""
    if isinstance(gamma, tuple):
        if len(gamma) != num_channels:
            raise ValueError(f"gamma has {len(gamma)} values (one per class) but the logits have C={num_channels} "
                             f"channels; give exactly {num_channels} values or a single number")
        gammas = list(gamma)
    else:
        gammas = [gamma] * num_channels
    if gamma_bg is not None:
        if nonlin != "softmax":
            raise ValueError("gamma_bg only has a meaning in softmax mode, where channel 0 is the background; "
                             "in sigmoid (region) mode give one gamma per channel instead")
        gammas[0] = gamma_bg
    return tuple(gammas)


def gamma_groups(gammas: Sequence[float]) -> Tuple[Tuple[int, int, float], ...]:
    """Contiguous runs of channels that share a gamma, as (start, stop, gamma).

    The kernels raise whole channel slices to one power at a time, so a per-class gamma with a
    lower background value costs two strided passes instead of a tensor-exponent ``pow``.
    """
    groups = []
    start = 0
    for c in range(1, len(gammas) + 1):
        if c == len(gammas) or gammas[c] != gammas[start]:
            groups.append((start, c, float(gammas[start])))
            start = c
    return tuple(groups)


def check_nonlin(nonlin: str) -> str:
    if nonlin not in NONLINS:
        raise ValueError(f"nonlin must be one of {NONLINS}, got {nonlin!r}")
    return nonlin


def check_logits(logits) -> None:
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"logits must be a torch.Tensor, got {type(logits).__name__}")
    if not logits.is_floating_point():
        raise TypeError(f"logits must be a floating point tensor (raw network output), got dtype {logits.dtype}")
    if logits.ndim not in (4, 5):
        raise ValueError(f"logits must have shape (B, C, X, Y) for 2D or (B, C, X, Y, Z) for 3D, "
                         f"got {logits.ndim} dimensions {tuple(logits.shape)}")


def prepare_target(logits: torch.Tensor, target, nonlin: str, *, check_values: bool = True):
    """Returns ``("labels", labels)`` with an int64 map (B, 1, *spatial) or ``("dense", y)`` with (B, C, *spatial).

    Accepts an integer label map (B, 1, *spatial) or (B, *spatial), which may be stored as float as
    nnU-Net does, or a one-hot / multi-hot tensor (B, C, *spatial).
    """
    if not isinstance(target, torch.Tensor):
        raise TypeError(f"target must be a torch.Tensor, got {type(target).__name__}")
    B, C = logits.shape[:2]
    spatial = tuple(logits.shape[2:])
    if target.ndim == logits.ndim - 1:
        target = target.unsqueeze(1)
    if target.ndim != logits.ndim:
        raise ValueError(f"target must be a label map (B, 1, *spatial) / (B, *spatial) or a one-hot tensor "
                         f"(B, C, *spatial) matching logits {tuple(logits.shape)}, got shape {tuple(target.shape)}")
    if target.shape[0] != B or tuple(target.shape[2:]) != spatial:
        raise ValueError(f"target shape {tuple(target.shape)} does not match logits shape {tuple(logits.shape)}: "
                         f"batch size and spatial size {spatial} must be equal")
    if target.shape[1] == C and (C > 1 or nonlin == "sigmoid"):
        return "dense", target
    if target.shape[1] != 1:
        raise ValueError(f"target has {target.shape[1]} channels; expected 1 (a label map) or C={C} (one-hot)")
    if nonlin == "sigmoid":
        raise ValueError(f"sigmoid (region) mode needs a one-hot / multi-hot target of shape (B, C={C}, *spatial), "
                         f"got a label map of shape {tuple(target.shape)}")
    if C < 2:
        raise ValueError("softmax mode needs at least 2 channels (background and one class), got C=1")
    if target.is_floating_point() or target.dtype == torch.bool:
        labels = target.long()
    else:
        labels = target.to(torch.int64)
    if check_values and not torch.compiler.is_compiling():
        lo, hi = torch.aminmax(labels)
        lo, hi = int(lo), int(hi)
        if lo < 0 or hi >= C:
            bad = hi if hi >= C else lo
            raise ValueError(f"target holds label {bad} but the logits have C={C} channels: labels must be in "
                             f"0..{C - 1} (map an ignore label to a loss_mask first)")
    return "labels", labels


def prepare_mask(logits: torch.Tensor, loss_mask):
    """A (B, 1, *spatial) mask in the compute dtype, or None."""
    if loss_mask is None:
        return None
    if not isinstance(loss_mask, torch.Tensor):
        raise TypeError(f"loss_mask must be a torch.Tensor or None, got {type(loss_mask).__name__}")
    if loss_mask.ndim == logits.ndim - 1:
        loss_mask = loss_mask.unsqueeze(1)
    expected = (logits.shape[0], 1, *logits.shape[2:])
    if tuple(loss_mask.shape) != expected:
        raise ValueError(f"loss_mask must have shape {expected} (1 where a pixel counts, 0 where it is ignored), "
                         f"got {tuple(loss_mask.shape)}")
    return loss_mask
