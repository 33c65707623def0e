"""Argument and input validation shared by every loss of the package.

Every check raises ``ValueError`` / ``TypeError`` with a message that names the argument, what was
expected and what came, so that a wrong call fails on the first batch rather than silently training
on nonsense.

Cost: the shape checks read no data. The value checks of one loss call (:func:`prepare_inputs`)
read the target and the mask, never the logits: one reduction over the target for its range (two for a
float label map, which is also compared with its int64 conversion to find non-whole labels) and one
over a non-bool mask; a bool target or mask needs none. Their results are read back together with
**one** device synchronisation per call. Inside :func:`values_checked` they are skipped: the
deep-supervision wrapper (:class:`~nnunet_pmdice.trainers.loss_builder.DeepSupervisionLoss`) checks the full-resolution
target once per training step and calls the lower output scales, whose targets nnU-Net derives from it
by nearest-neighbour downsampling, inside it. A compiled loss does not run them (they are skipped while
``torch.compile`` traces it, where a data-dependent branch would break the graph): the trainers
compile the loss when nnU-Net compiles its own (CUDA, ``nnUNet_compile`` not false), so there only the
shape checks guard the inputs.
"""
from __future__ import annotations

import contextlib
import contextvars
import math
from numbers import Real
from typing import Dict, NamedTuple, Optional, Sequence, Tuple, Union

import torch

GammaArg = Union[float, int, Sequence[float], torch.Tensor]
NONLINS = ("softmax", "sigmoid")

#: True inside :func:`values_checked`: the caller has checked the values of the target and mask already
_VALUES_CHECKED = contextvars.ContextVar("nnunet_pmdice_values_checked", default=False)


@contextlib.contextmanager
def values_checked():
    """Inside this block the loss calls skip their value checks (the shape checks still run).

    For a caller that has checked the values of the same data already: the deep-supervision wrapper
    checks the full-resolution target and calls the loss on the lower scales, derived from it by
    nearest-neighbour downsampling (no value the full-resolution target lacks), inside this block.

    Example:
        >>> import torch
        >>> from nnunet_pmdice.losses import PMDiceLoss
        >>> bad = torch.full((1, 1, 4, 4), 7)
        >>> with values_checked():
        ...     _ = PMDiceLoss()(torch.randn(1, 2, 4, 4), torch.zeros(1, 1, 4, 4))  # checked by the caller
        >>> PMDiceLoss()(torch.randn(1, 2, 4, 4), bad)
        Traceback (most recent call last):
        ...
        ValueError: target holds label 7 but the logits have C=2 channels: labels must be in 0..1 (map an ignore label to a loss_mask first)
    """
    token = _VALUES_CHECKED.set(True)
    try:
        yield
    finally:
        _VALUES_CHECKED.reset(token)


def _scalar(value):
    """A 0-d tensor or array as its Python number; anything else unchanged."""
    if getattr(value, "ndim", None) == 0 and hasattr(value, "item"):
        return value.item()
    return value


def check_number(name: str, value, *, minimum: float = 0.0, strict: bool = False,
                 maximum: Optional[float] = None) -> float:
    """A finite real number >= ``minimum`` (> when ``strict``) and <= ``maximum``, as a float.

    A 0-d tensor or array counts as the number it holds.

    Raises:
        TypeError: ``value`` is not a real number (a bool is not one).
        ValueError: ``value`` is NaN, infinite or out of range.

    Example:
        >>> import torch
        >>> check_number("smooth", torch.tensor(0.5), strict=True)
        0.5
        >>> check_number("k", 150, maximum=100.0)
        Traceback (most recent call last):
        ...
        ValueError: k must be <= 100, got 150
    """
    value = _scalar(value)
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


def check_flag(name: str, value) -> bool:
    """A yes/no option: ``True`` / ``False`` (or 1 / 0, a numpy or 0-d tensor bool), as a bool.

    Raises:
        TypeError: anything else; ``bool("no")`` would silently be True.

    Example:
        >>> check_flag("batch_dice", 1)
        True
        >>> check_flag("batch_dice", "no")
        Traceback (most recent call last):
        ...
        TypeError: batch_dice must be True or False, got 'no'
    """
    value = _scalar(value)
    if (isinstance(value, (str, bytes)) or value is None or getattr(value, "ndim", 0) != 0
            or not any(value == v for v in (0, 1))):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def check_gamma(gamma: GammaArg, gamma_bg=None) -> Tuple[Union[float, Tuple[float, ...]], Optional[float]]:
    """Validates a focusing parameter: one number for every class, or one number per class.

    A 0-d tensor is one number; a 1-D tensor or array is one value per class.

    Raises:
        TypeError: a value is not a real number.
        ValueError: a value is negative or not finite, the sequence is empty, or a tensor has more
            than one dimension.

    Example:
        >>> import torch
        >>> check_gamma(torch.tensor(2.0), 1)
        (2.0, 1.0)
        >>> check_gamma([1, 2.5])
        ((1.0, 2.5), None)
    """
    gamma = _scalar(gamma)
    if hasattr(gamma, "ndim") and hasattr(gamma, "tolist"):  # a tensor or array of one value per class
        if gamma.ndim != 1:
            raise ValueError(f"gamma must be a number or a 1-D sequence with one value per class, got a tensor "
                             f"of shape {tuple(gamma.shape)}")
        gamma = gamma.tolist()
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
    """One gamma per output channel, ``gamma_bg`` overriding channel 0 (the background).

    Raises:
        ValueError: a per-class ``gamma`` does not have ``num_channels`` values, or ``gamma_bg`` is
            given in sigmoid mode.
    """
    if isinstance(gamma, tuple):
        if len(gamma) != num_channels:
            raise ValueError(f"gamma has {len(gamma)} value{'s' if len(gamma) != 1 else ''} (one per class) but "
                             f"the logits have C={num_channels} channels; give exactly {num_channels} values or "
                             f"a single number")
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

    Example:
        >>> gamma_groups((1.0, 2.0, 2.0))
        ((0, 1, 1.0), (1, 3, 2.0))
    """
    groups = []
    start = 0
    for c in range(1, len(gammas) + 1):
        if c == len(gammas) or gammas[c] != gammas[start]:
            groups.append((start, c, float(gammas[start])))
            start = c
    return tuple(groups)


def check_nonlin(nonlin: str) -> str:
    """``nonlin`` itself if it is ``"softmax"`` or ``"sigmoid"``.

    Raises:
        ValueError: any other value.
    """
    if nonlin not in NONLINS:
        raise ValueError(f"nonlin must be one of {NONLINS}, got {nonlin!r}")
    return nonlin


def check_logits(logits) -> None:
    """Logits must be a floating point tensor (B, C, X, Y) or (B, C, X, Y, Z) with no empty axis.

    Raises:
        TypeError: not a tensor, or not floating point.
        ValueError: another number of dimensions, or an axis of size 0 (an empty batch, no channel
            or an empty image).
    """
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"logits must be a torch.Tensor, got {type(logits).__name__}")
    if not logits.is_floating_point():
        raise TypeError(f"logits must be a floating point tensor (raw network output), got dtype {logits.dtype}")
    if logits.ndim not in (4, 5):
        raise ValueError(f"logits must have shape (B, C, X, Y) for 2D or (B, C, X, Y, Z) for 3D, "
                         f"got {logits.ndim} dimensions {tuple(logits.shape)}")
    if logits.numel() == 0:
        raise ValueError(f"logits have shape {tuple(logits.shape)}: the batch, channel and spatial sizes must all "
                         f"be >= 1 (an empty batch or image has no Dice)")


class LossInputs(NamedTuple):
    """The target and mask of one loss call, checked and in the layout the kernels take."""

    #: ``"labels"``: ``target`` is an int64 label map (B, 1, *spatial); ``"dense"``: (B, C, *spatial)
    kind: str
    target: torch.Tensor
    #: (B, 1, *spatial), bool or 0/1 in any dtype; None where every pixel counts
    mask: Optional[torch.Tensor]


def prepare_inputs(logits: torch.Tensor, target, loss_mask, nonlin: str) -> LossInputs:
    """Checks one loss call's logits, target and mask, and returns them in the kernels' layout.

    The target is an integer label map (B, 1, *spatial) or (B, *spatial), which may be stored as
    float (as nnU-Net does) or bool, or a dense (B, C, *spatial) one-hot / multi-hot / soft target
    with values in [0, 1]. The mask is (B, 1, *spatial) or (B, *spatial), bool or 0/1.

    Raises:
        TypeError: logits, target or mask of the wrong type (see :func:`check_logits`).
        ValueError: shapes that do not match; a label outside 0..C-1, or a float label that is not a
            whole number (2.5, NaN); a dense target with values outside [0, 1] or NaN; a mask holding
            anything but 0 and 1; a label map in sigmoid mode; softmax with C < 2.
    """
    check_logits(logits)
    kind, raw = _target_layout(logits, target, nonlin)
    mask = _mask_layout(logits, loss_mask)
    t = raw.to(torch.int64) if kind == "labels" else raw
    if not torch.compiler.is_compiling() and not _VALUES_CHECKED.get():
        _check_values(logits.shape[1], kind, raw, t, mask)
    return LossInputs(kind, t, mask)


def _target_layout(logits: torch.Tensor, target, nonlin: str) -> Tuple[str, torch.Tensor]:
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
    if target.is_complex():
        raise TypeError(f"target must hold real numbers, got dtype {target.dtype}")
    if target.shape[1] == C and (C > 1 or nonlin == "sigmoid"):
        return "dense", target
    if target.shape[1] != 1:
        raise ValueError(f"target has {target.shape[1]} channels; expected 1 (a label map) or C={C} (one-hot)")
    if nonlin == "sigmoid":
        raise ValueError(f"sigmoid (region) mode needs a one-hot / multi-hot target of shape (B, C={C}, *spatial), "
                         f"got a label map of shape {tuple(target.shape)}")
    if C < 2:
        raise ValueError("softmax mode needs at least 2 channels (background and one class), got C=1")
    return "labels", target


def _mask_layout(logits: torch.Tensor, loss_mask) -> Optional[torch.Tensor]:
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
    if loss_mask.is_complex():
        raise TypeError(f"loss_mask must be bool or hold 0 and 1, got dtype {loss_mask.dtype}")
    return loss_mask


def _check_values(C: int, kind: str, raw: torch.Tensor, t: torch.Tensor, mask: Optional[torch.Tensor]) -> None:
    """The value checks of :func:`prepare_inputs`: device scalars first, one read-back for all of them."""
    stats: Dict[str, torch.Tensor] = {}
    if raw.dtype != torch.bool:  # a bool label map is 0/1 < C, a bool one-hot is in [0, 1]
        if kind == "labels" and raw.is_floating_point():
            # int64 conversion truncates 2.5 to 2 and turns NaN into -2**63: compare it with the original
            stats["not_whole"] = (t.to(raw.dtype) != raw).any()
        stats["lo"], stats["hi"] = torch.aminmax(t)  # NaN propagates into both
    if mask is not None and mask.dtype != torch.bool:
        stats["bad_mask"] = mask.ne(0).logical_and_(mask.ne(1)).any()  # NaN is neither 0 nor 1
    if not stats:
        return
    # one host read-back for all the flags; MPS has no float64 (float32 there: exact for labels < 2**24)
    exact = torch.float32 if raw.device.type == "mps" else torch.float64
    values = dict(zip(stats, torch.stack([s.to(exact) for s in stats.values()]).tolist()))

    if values.get("not_whole"):
        bad = raw[t.to(raw.dtype) != raw].flatten()[0].item()
        raise ValueError(f"target is a label map stored as {raw.dtype} but holds {bad:g}, which is not a whole "
                         f"number: labels must be integers 0..{C - 1}")
    if kind == "labels" and "lo" in values:
        lo, hi = int(values["lo"]), int(values["hi"])
        if lo < 0 or hi >= C:
            bad = hi if hi >= C else lo
            raise ValueError(f"target holds label {bad} but the logits have C={C} channels: labels must be in "
                             f"0..{C - 1} (map an ignore label to a loss_mask first)")
    elif "lo" in values:
        lo, hi = values["lo"], values["hi"]
        if math.isnan(lo) or math.isnan(hi):
            raise ValueError(f"the one-hot / soft target (B, C={C}, *spatial) holds NaN; its values must be in [0, 1]")
        if lo < 0 or hi > 1:
            raise ValueError(f"the one-hot / soft target (B, C={C}, *spatial) must hold values in [0, 1], got values "
                             f"from {lo:g} to {hi:g} (a label map has shape (B, 1, *spatial))")
    if values.get("bad_mask"):
        bad = mask[mask.ne(0) & mask.ne(1)].flatten()[0].item()
        raise ValueError(f"loss_mask must hold only 0 and 1 (1 where a pixel counts, 0 where it is ignored), "
                         f"got {bad:g}; pass a bool or 0/1 tensor")
