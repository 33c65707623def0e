"""The trainer-name grammar: options chosen in the ``-tr`` name, recorded in nnU-Net's output folder.

A name is a base trainer name followed by ``_``-separated option tokens, in any order, each at most once:

========================  ======================================================  ==================
token                     meaning                                                 example
========================  ======================================================  ==================
``g<x>``                  PM Dice gamma for every class                           ``_g2``, ``_g0.5``
``g<x0>-<x1>-...``        one PM Dice gamma per output channel (0 = background)   ``_g1-2-2-3``
``bg<x>``                 PM Dice gamma of the background (channel 0)             ``_bg1``
``k<x>``                  TopK CE: percentage of pixels kept (0 < k <= 100)       ``_k10``
``kd<x>``                 Dice part's percentage: TopK Dice (pixels of a class)   ``_kd20``
                          or Zhao's Focal Dice (negatives of a class)
``fg<x>``                 Focal CE gamma                                          ``_fg2``
``fb<x>``                 Focal Dice (Wang & Chung) beta: Dice ** (1 / beta)      ``_fb2``
``lg<x>``                 Logarithmic Dice gamma: (-ln Dice) ** gamma             ``_lg0.3``
``d<n>``                  Dilated Balanced CE: dilation radius in pixels/voxels   ``_d5``
``<n>epochs``             number of epochs (nnU-Net's ``nnUNetTrainer_<n>epochs``)  ``_50epochs``
``<n>iters``              training iterations per epoch (validation: n/5, >= 1)   ``_20iters``
========================  ======================================================  ==================

A trainer accepts only the tokens that mean something for its loss (``nnUNetTrainer`` itself, the
nnU-Net baseline, accepts only the budget tokens). Numbers are ASCII digits with ``.`` as the decimal
point. Every value has a range (:data:`OPTION_RANGES`), and a whole name has at most
:data:`MAX_NAME_LENGTH` characters (``A-Z a-z 0-9 _ . -``): nnU-Net names its output folder
``<trainer>__<plans>__<configuration>``, and common file systems allow 255 bytes per folder name.
"""
from __future__ import annotations

import math
import re
from typing import Dict, Iterable, Optional, Tuple

#: longest trainer name accepted: nnU-Net's output folder ``<trainer>__<plans>__<configuration>`` must
#: fit the 255-byte limit of common file systems (ext4, XFS, APFS, NTFS); 200 leaves 55 characters for
#: ``__<plans>__<configuration>`` (``__nnUNetResEncUNetXLPlans__3d_cascade_fullres`` has 46)
MAX_NAME_LENGTH = 200

#: the characters of a trainer name (ASCII only: the name becomes a folder name and a Python identifier)
_NAME_CHARS = re.compile(r"[A-Za-z0-9_.\-]+", re.ASCII)
# ASCII digits only (``\d`` would also match ``１`` or ``٢``)
_NUM = r"[0-9]+(?:\.[0-9]+)?"
_PREFIX_TOKENS = (
    # (option, prefix, value pattern) -- longer prefixes first so "bg1" is not read as "b"+"g1"
    ("gamma_bg", "bg", _NUM),
    ("focal_gamma", "fg", _NUM),
    ("focal_beta", "fb", _NUM),
    ("log_gamma", "lg", _NUM),
    ("dice_k", "kd", _NUM),
    ("gamma", "g", rf"{_NUM}(?:-{_NUM})*"),
    ("k", "k", _NUM),
    ("dilation", "d", r"[0-9]+"),
)
_SUFFIX_TOKENS = (("epochs", "epochs"), ("iters", "iters"))
BUDGET_OPTIONS = ("epochs", "iters")

OPTION_HELP = {
    "gamma": "g<x> or g<x0>-<x1>-... (PM Dice gamma, one value or one per channel)",
    "gamma_bg": "bg<x> (PM Dice gamma of the background)",
    "k": "k<x> (TopK CE percentage, 0 < x <= 100)",
    "dice_k": "kd<x> (Dice part's percentage: TopK Dice pixels / Zhao Focal Dice negatives, 0 < x <= 100)",
    "focal_gamma": "fg<x> (Focal CE gamma)",
    "focal_beta": "fb<x> (Focal Dice beta, > 0)",
    "log_gamma": "lg<x> (Logarithmic Dice gamma, > 0)",
    "dilation": "d<n> (Dilated Balanced CE dilation radius)",
    "epochs": "<n>epochs (number of epochs)",
    "iters": "<n>iters (training iterations per epoch)",
}

#: option -> (lowest, highest, lowest excluded): the values a name may choose. The gammas cover the
#: paper's range (0 to 5) with room; a percentage is 0 < k <= 100; nnU-Net ships at most 8000 epochs
#: and trains 250 iterations per epoch
OPTION_RANGES: Dict[str, Tuple[float, float, bool]] = {
    "gamma": (0.0, 10.0, False),
    "gamma_bg": (0.0, 10.0, False),
    "focal_gamma": (0.0, 10.0, False),
    "focal_beta": (0.0, 10.0, True),
    "log_gamma": (0.0, 10.0, True),
    "k": (0.0, 100.0, True),
    "dice_k": (0.0, 100.0, True),
    "dilation": (0, 100, False),
    "epochs": (1, 100_000, False),
    "iters": (1, 100_000, False),
}

#: nnU-Net's shipped trainers whose budget is not spelled in this grammar: name -> (epochs, iters)
NNUNET_BUDGET_NAMES: Dict[str, Tuple[Optional[int], Optional[int]]] = {
    "nnUNetTrainer_1epoch": (1, None),
    "nnUNetTrainer_onlyMirror01_1500ep": (1500, None),
}


class TrainerNameError(ValueError):
    """A trainer name whose base is a plugin trainer but whose options do not parse."""


def check_name_form(name: str) -> None:
    """Refuses a trainer name that cannot become nnU-Net's output folder name.

    >>> check_name_form("nnUNetTrainerPMDice_g2_bg1")
    >>> check_name_form("nnUNetTrainerPMDice_g" + "1" * 300)
    Traceback (most recent call last):
    ...
    nnunet_pmdice.trainers.naming.TrainerNameError: trainer name 'nnUNetTrainerPMDice_g111111111...' has 321 characters; at most 200 are accepted (nnU-Net's output folder <trainer>__<plans>__<configuration> must fit 255 bytes)

    Raises:
        TrainerNameError: the name is longer than :data:`MAX_NAME_LENGTH` or has characters other than
            ASCII letters, digits, ``_``, ``.`` and ``-``.
    """
    if len(name) > MAX_NAME_LENGTH:
        raise TrainerNameError(f"trainer name {name[:30] + '...'!r} has {len(name)} characters; at most "
                               f"{MAX_NAME_LENGTH} are accepted (nnU-Net's output folder "
                               f"<trainer>__<plans>__<configuration> must fit 255 bytes)")
    if not _NAME_CHARS.fullmatch(name):
        bad = sorted({c for c in name if not _NAME_CHARS.fullmatch(c)})
        raise TrainerNameError(f"trainer name {name!r} has characters {''.join(bad)!r}; a trainer name uses ASCII "
                               f"letters, digits, '_', '.' and '-' only")


def _parse_value(option: str, text: str):
    if option == "gamma":
        values = tuple(float(v) for v in text.split("-"))
        return values[0] if len(values) == 1 else values
    if option in ("dilation", "epochs", "iters"):
        return int(text)
    return float(text)


def parse_token(token: str) -> Tuple[str, object]:
    """One option token read: the option's name and its value (not yet range-checked).

    >>> parse_token("g2")
    ('gamma', 2.0)
    >>> parse_token("50epochs")
    ('epochs', 50)

    Raises:
        TrainerNameError: a token of no known form (non-ASCII digits included).
    """
    for option, suffix in _SUFFIX_TOKENS:
        m = re.fullmatch(rf"([0-9]+){suffix}", token)
        if m:
            return option, int(m.group(1))
    for option, prefix, pattern in _PREFIX_TOKENS:
        m = re.fullmatch(rf"{prefix}({pattern})", token)
        if m:
            return option, _parse_value(option, m.group(1))
    raise TrainerNameError(f"unknown option token {token!r}")


def _range_text(option: str) -> str:
    low, high, open_low = OPTION_RANGES[option]
    return f"{low:g} {'<' if open_low else '<='} {option} <= {high:g}"


def check_value(option: str, value) -> None:
    """Refuses a value outside :data:`OPTION_RANGES` (NaN and infinity included).

    Raises:
        TrainerNameError: naming the option and its range.
    """
    low, high, open_low = OPTION_RANGES[option]
    for v in (value if isinstance(value, tuple) else (value,)):
        if not math.isfinite(v) or v < low or v > high or (open_low and v == low):
            raise TrainerNameError(f"{option} = {v:g} is out of range: {_range_text(option)}")


def parse_options(name: str, base: str, allowed: Iterable[str]) -> Dict[str, object]:
    """Parses the options of ``name`` (``base`` + ``_token``...) and checks them against ``allowed``.

    >>> parse_options("nnUNetTrainerPMDice_g2_bg1_5epochs", "nnUNetTrainerPMDice", ("gamma", "gamma_bg", "epochs"))
    {'gamma': 2.0, 'gamma_bg': 1.0, 'epochs': 5}

    Raises:
        TrainerNameError: a name too long or with characters a folder name cannot have, a token of no
            known form, an option ``base`` does not accept, an option given twice, or a value out of its
            range; the message lists what ``base`` accepts.
    """
    check_name_form(name)
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
        try:
            check_value(option, value)
        except TrainerNameError as e:
            raise TrainerNameError(f"trainer name {name[:60]!r}: option {token[:20]!r}: {e}") from None
        options[option] = value
    return options


# -- the budget tokens, for tools that name trainers (the benchmark) ---------------------------------------
def _budget_token(token: str) -> Optional[Tuple[str, int]]:
    m = re.fullmatch(r"([0-9]+)(epochs|iters)", token)
    return (m.group(2), int(m.group(1))) if m else None


def trainer_budget(name: str) -> Tuple[Optional[int], Optional[int]]:
    """``(epochs, iterations per epoch)`` set by a trainer name's budget tokens; None where the name sets none.

    Reads ``<n>epochs`` / ``<n>iters`` tokens of any name (a plugin trainer, nnU-Net's
    ``nnUNetTrainer_5epochs``), and the budget of nnU-Net's shipped trainers that spell it otherwise
    (:data:`NNUNET_BUDGET_NAMES`: ``nnUNetTrainer_1epoch``). ``_1epoch`` on any other name is not a
    budget token: the plugin trainers refuse it, so that each run has exactly one name.

    >>> trainer_budget("nnUNetTrainerPMDice_g2_50epochs_100iters")
    (50, 100)
    >>> trainer_budget("nnUNetTrainer_1epoch")
    (1, None)
    >>> trainer_budget("nnUNetTrainer_5epochs")
    (5, None)
    >>> trainer_budget("nnUNetTrainerPMDice")
    (None, None)
    """
    if name in NNUNET_BUDGET_NAMES:
        return NNUNET_BUDGET_NAMES[name]
    budget = {"epochs": None, "iters": None}
    for token in name.split("_")[1:]:
        read = _budget_token(token)
        if read:
            budget[read[0]] = read[1]
    return budget["epochs"], budget["iters"]


def with_budget(name: str, epochs: Optional[int] = None, iters: Optional[int] = None) -> str:
    """``name`` with ``_<epochs>epochs`` / ``_<iters>iters`` appended (the budget tokens of the name grammar).

    >>> with_budget("nnUNetTrainerPMDice_g2", epochs=5, iters=10)
    'nnUNetTrainerPMDice_g2_5epochs_10iters'
    >>> with_budget("nnUNetTrainer_1epoch", epochs=3)
    Traceback (most recent call last):
    ...
    ValueError: trainer 'nnUNetTrainer_1epoch' already sets its epochs; give the budget either in the names or with --epochs, not both

    Raises:
        ValueError: a budget that is not an integer in its range (:data:`OPTION_RANGES`), or one the name
            sets already.
    """
    have_epochs, have_iters = trainer_budget(name)
    for value, have, what in ((epochs, have_epochs, "epochs"), (iters, have_iters, "iters")):
        if value is not None:
            low, high, _ = OPTION_RANGES[what]
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ValueError(f"--{what} must be an integer from {low} to {high}, got {value!r}")
            if have is not None:
                raise ValueError(f"trainer {name!r} already sets its {what}; give the budget either in the "
                                 f"names or with --{what}, not both")
    return name + (f"_{epochs}epochs" if epochs else "") + (f"_{iters}iters" if iters else "")


def is_baseline_name(name: str) -> bool:
    """True for nnU-Net's default trainer, with or without budget tokens (``nnUNetTrainer_50epochs``).

    >>> [is_baseline_name(n) for n in ("nnUNetTrainer", "nnUNetTrainer_1epoch", "nnUNetTrainer_5epochs_2iters")]
    [True, True, True]
    >>> [is_baseline_name(n) for n in ("nnUNetTrainerPMDice", "nnUNetTrainer_g2", "nnUNetTrainer_1epoch_2iters")]
    [False, False, False]
    """
    if name in ("nnUNetTrainer", "nnUNetTrainer_1epoch"):  # the latter: nnU-Net's own, budget only
        return True
    tokens = name.split("_")
    return tokens[0] == "nnUNetTrainer" and len(tokens) > 1 and all(_budget_token(t) for t in tokens[1:])
