"""The trainer-name grammar: options chosen in the ``-tr`` name, recorded in nnU-Net's output folder.

A name is a base trainer name followed by ``_``-separated option tokens, in any order, each at most once:

========================  ======================================================  ==================
token                     meaning                                                 example
========================  ======================================================  ==================
``g<x>``                  PM Dice gamma for every class                           ``_g2``, ``_g0.5``
``g<x0>-<x1>-...``        one PM Dice gamma per output channel (0 = background)   ``_g1-2-2-3``
``bg<x>``                 PM Dice gamma of the background (channel 0)             ``_bg1``
``k<x>``                  TopK CE: percentage of pixels kept (0 < k <= 100)       ``_k10``
``kd<x>``                 TopK Dice / Zhao's Focal Dice: percentage kept          ``_kd20``
``fg<x>``                 Focal CE gamma                                          ``_fg2``
``fb<x>``                 Focal Dice (Wang & Chung) beta: Dice ** (1 / beta)      ``_fb2``
``lg<x>``                 Logarithmic Dice gamma: (-ln Dice) ** gamma             ``_lg0.3``
``d<n>``                  Dilated Balanced CE: dilation radius in pixels/voxels   ``_d5``
``<n>epochs``             number of epochs (nnU-Net's ``nnUNetTrainer_<n>epochs``)  ``_50epochs``
``<n>iters``              training iterations per epoch (validation: n/5, >= 1)   ``_20iters``
========================  ======================================================  ==================

A trainer accepts only the tokens that mean something for its loss (``nnUNetTrainer`` itself, the
nnU-Net baseline, accepts only the budget tokens). Numbers use ``.`` as the decimal point.
"""
from __future__ import annotations

import re
from typing import Dict, Iterable, Tuple

_NUM = r"\d+(?:\.\d+)?"
_PREFIX_TOKENS = (
    # (option, prefix, value pattern) -- longer prefixes first so "bg1" is not read as "b"+"g1"
    ("gamma_bg", "bg", _NUM),
    ("focal_gamma", "fg", _NUM),
    ("focal_beta", "fb", _NUM),
    ("log_gamma", "lg", _NUM),
    ("dice_k", "kd", _NUM),
    ("gamma", "g", rf"{_NUM}(?:-{_NUM})*"),
    ("k", "k", _NUM),
    ("dilation", "d", r"\d+"),
)
_SUFFIX_TOKENS = (("epochs", "epochs"), ("iters", "iters"))

OPTION_HELP = {
    "gamma": "g<x> or g<x0>-<x1>-... (PM Dice gamma, one value or one per channel)",
    "gamma_bg": "bg<x> (PM Dice gamma of the background)",
    "k": "k<x> (TopK CE percentage, 0 < x <= 100)",
    "dice_k": "kd<x> (TopK Dice / Zhao Focal Dice percentage, 0 < x <= 100)",
    "focal_gamma": "fg<x> (Focal CE gamma)",
    "focal_beta": "fb<x> (Focal Dice beta, > 0)",
    "log_gamma": "lg<x> (Logarithmic Dice gamma, > 0)",
    "dilation": "d<n> (Dilated Balanced CE dilation radius)",
    "epochs": "<n>epochs (number of epochs)",
    "iters": "<n>iters (training iterations per epoch)",
}


class TrainerNameError(ValueError):
    """A trainer name whose base is a plugin trainer but whose options do not parse."""


def _parse_value(option: str, text: str):
    if option == "gamma":
        values = tuple(float(v) for v in text.split("-"))
        return values[0] if len(values) == 1 else values
    if option in ("dilation", "epochs", "iters"):
        return int(text)
    return float(text)


def parse_token(token: str) -> Tuple[str, object]:
    """``"g2"`` -> ``("gamma", 2.0)``; raises TrainerNameError for a token of no known form."""
    for option, suffix in _SUFFIX_TOKENS:
        m = re.fullmatch(rf"(\d+){suffix}", token)
        if m:
            return option, int(m.group(1))
    for option, prefix, pattern in _PREFIX_TOKENS:
        m = re.fullmatch(rf"{prefix}({pattern})", token)
        if m:
            return option, _parse_value(option, m.group(1))
    raise TrainerNameError(f"unknown option token {token!r}")


def parse_options(name: str, base: str, allowed: Iterable[str]) -> Dict[str, object]:
    """Parses the options of ``name`` (``base`` + ``_token``...) and checks them against ``allowed``."""
    allowed = tuple(allowed)
    rest = name[len(base):]
    help_text = "; ".join(OPTION_HELP[o] for o in allowed)
    if not rest.startswith("_") or rest == "_":
        raise TrainerNameError(f"trainer name {name!r}: expected {base}_<option>[_<option>...]; "
                               f"{base} accepts: {help_text}")
    options: Dict[str, object] = {}
    for token in rest[1:].split("_"):
        try:
            option, value = parse_token(token)
        except TrainerNameError:
            raise TrainerNameError(f"trainer name {name!r}: cannot read option {token!r}. "
                                   f"{base} accepts: {help_text}") from None
        if option not in allowed:
            raise TrainerNameError(f"trainer name {name!r}: option {token!r} ({OPTION_HELP[option]}) does not "
                                   f"apply to {base}, which accepts: {help_text}")
        if option in options:
            raise TrainerNameError(f"trainer name {name!r}: option {option!r} is given twice")
        if option in ("epochs", "iters") and value < 1:
            raise TrainerNameError(f"trainer name {name!r}: {token!r} must be at least 1")
        if option in ("k", "dice_k") and not 0 < value <= 100:
            raise TrainerNameError(f"trainer name {name!r}: {token!r}: {option} is a percentage, 0 < k <= 100")
        if option in ("focal_beta", "log_gamma") and value <= 0:
            raise TrainerNameError(f"trainer name {name!r}: {token!r}: {option} must be > 0")
        options[option] = value
    return options
