"""Per-case segmentation metrics of the paper: Dice, IoU, normalized surface Dice (NSD), precision, recall.

For one foreground class (a label, or a region: a set of labels) with reference mask ``R`` and
predicted mask ``P`` (voxels of nnU-Net's ignore label removed from both):

=============  ======================================  =========================================
metric         formula                                  reference
=============  ======================================  =========================================
Dice           2|R n P| / (|R| + |P|)                   eq. 1 of Hosseini (arXiv 2506.15744)
IoU            |R n P| / |R u P|
precision      |R n P| / |P|
recall         |R n P| / |R|
NSD            (|S_R n B_P(tau)| + |S_P n B_R(tau)|)    eq. 6; Nikolov et al. 2018 (arXiv 1809.04430)
               / (|S_R| + |S_P|)
=============  ======================================  =========================================

``S_X`` is the boundary surface of ``X`` and ``B_X(tau)`` the band of points within ``tau`` of it.
NSD is computed by MONAI's :func:`monai.metrics.compute_surface_dice` with ``use_subvoxels=True``,
which follows DeepMind's reference algorithm (surface elements on the half-voxel grid, weighted by
their area, distances in physical units from the voxel spacing).

Empty masks (decided here, the paper is silent; the same rule for every metric):

- ``R`` and ``P`` both empty: every metric is NaN and the case does not count for that class
  (nnU-Net writes NaN Dice/IoU in its ``summary.json`` and averages with ``nanmean``; MONAI's NSD
  is NaN as well).
- exactly one of them empty: every metric is 0, a complete miss or a pure false alarm. Precision of
  an empty prediction and recall of an empty reference (0/0) are therefore 0, not NaN, so that a
  model cannot raise its mean precision by predicting nothing on hard cases.

Units of ``tau``: those of the image spacing as nnU-Net's reader reports it, i.e. millimetres for
NIfTI and other medical formats, and pixels for 2D natural images (PNG/BMP/TIF, which carry no
spacing). Axes of length 1 (nnU-Net stores a 2D image as ``(1, H, W)``) are dropped.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

#: the metrics of the paper's tables, in the order of their columns
METRICS: Tuple[str, ...] = ("dice", "iou", "nsd", "precision", "recall")

LabelOrRegion = Union[int, Tuple[int, ...]]

#: default NSD tolerance; the paper does not state its tau
DEFAULT_TAU = 1.0


@dataclass(frozen=True)
class ClassMetrics:
    """The metrics of one foreground class in one case (fractions in [0, 1], NaN where undefined)."""

    dice: float
    iou: float
    nsd: float
    precision: float
    recall: float
    tp: int
    fp: int
    fn: int
    n_ref: int
    n_pred: int

    def as_dict(self) -> Dict[str, float]:
        return asdict(self)


def _check_masks(ref: np.ndarray, pred: np.ndarray, valid: Optional[np.ndarray]) -> None:
    for name, a in (("reference", ref), ("prediction", pred)) + ((("valid", valid),) if valid is not None else ()):
        if not isinstance(a, np.ndarray):
            raise TypeError(f"{name} mask must be a numpy array, got {type(a).__name__}")
        if a.shape != ref.shape:
            raise ValueError(f"{name} mask has shape {a.shape}, expected the reference's shape {ref.shape}")


def overlap_counts(ref: np.ndarray, pred: np.ndarray, valid: Optional[np.ndarray] = None) -> Tuple[int, int, int]:
    """``(tp, fp, fn)`` of two boolean masks of the same shape, counted where ``valid`` is true.

    Counted by nnU-Net's own ``compute_tp_fp_fn_tn`` (``valid`` false = its ignore mask), so the
    counts agree with nnU-Net's ``summary.json`` by construction.

    Raises:
        ValueError: if the masks differ in shape.
    """
    from nnunetv2.evaluation.evaluate_predictions import compute_tp_fp_fn_tn

    _check_masks(ref, pred, valid)
    tp, fp, fn, _ = compute_tp_fp_fn_tn(ref.astype(bool, copy=False), pred.astype(bool, copy=False),
                                        None if valid is None else ~valid.astype(bool, copy=False))
    return int(tp), int(fp), int(fn)


def normalized_surface_dice(ref: np.ndarray, pred: np.ndarray, spacing: Sequence[float], tau: float) -> float:
    """NSD (eq. 6 of the paper) of two boolean 2D or 3D masks, via MONAI's sub-voxel surface algorithm.

    Args:
        ref, pred: boolean masks of the same shape ``(X, Y)`` or ``(X, Y, Z)``.
        spacing: voxel size per axis (same order as the array axes); ``tau`` is in its units.
        tau: tolerance, >= 0: boundary points within ``tau`` of the other boundary count as correct.

    Returns:
        NSD in [0, 1]; NaN when both masks are empty; 0 when exactly one is empty.

    Example:
        >>> a = np.zeros((8, 8), bool); a[2:6, 2:6] = True
        >>> normalized_surface_dice(a, np.roll(a, 1, axis=0), (1.0, 1.0), tau=1.0)
        1.0
    """
    _check_masks(ref, pred, None)
    if ref.ndim not in (2, 3):
        raise ValueError(f"NSD needs 2D or 3D masks, got shape {ref.shape}")
    if len(spacing) != ref.ndim or not all(math.isfinite(s) and s > 0 for s in spacing):
        raise ValueError(f"spacing must be {ref.ndim} positive numbers (one per axis), got {tuple(spacing)}")
    if not (math.isfinite(tau) and tau >= 0):
        raise ValueError(f"tau must be a finite number >= 0, got {tau}")
    ref_any, pred_any = bool(ref.any()), bool(pred.any())
    if not ref_any and not pred_any:
        return float("nan")
    if ref_any != pred_any:
        return 0.0
    import torch
    from monai.metrics import compute_surface_dice

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MONAI's deprecation notices; empty masks are handled above
        value = compute_surface_dice(torch.from_numpy(np.ascontiguousarray(pred, dtype=bool))[None, None],
                                     torch.from_numpy(np.ascontiguousarray(ref, dtype=bool))[None, None],
                                     class_thresholds=[float(tau)], include_background=True,
                                     spacing=[float(s) for s in spacing], use_subvoxels=True)
    return float(value.item())


def class_metrics(ref: np.ndarray, pred: np.ndarray, spacing: Sequence[float], tau: float = DEFAULT_TAU,
                  valid: Optional[np.ndarray] = None) -> ClassMetrics:
    """All metrics of one class from its boolean reference and predicted masks (see the module's rules).

    Args:
        ref, pred: boolean masks of the same 2D or 3D shape.
        spacing: voxel size per axis, the unit of ``tau``.
        tau: NSD tolerance.
        valid: optional boolean mask; voxels where it is false (nnU-Net's ignore label) are left out.

    Example:
        >>> r = np.zeros((6, 6), bool); r[1:4, 1:4] = True
        >>> p = np.zeros((6, 6), bool); p[1:4, 1:3] = True
        >>> m = class_metrics(r, p, (1.0, 1.0))
        >>> round(m.dice, 3), m.precision, round(m.recall, 3)
        (0.8, 1.0, 0.667)
    """
    tp, fp, fn = overlap_counts(ref, pred, valid)
    n_ref, n_pred = tp + fn, tp + fp
    if n_ref == 0 and n_pred == 0:
        nan = float("nan")
        return ClassMetrics(nan, nan, nan, nan, nan, tp, fp, fn, n_ref, n_pred)
    if valid is not None:
        ref, pred = ref & valid, pred & valid
    return ClassMetrics(
        dice=2 * tp / (2 * tp + fp + fn),
        iou=tp / (tp + fp + fn),
        nsd=normalized_surface_dice(ref.astype(bool, copy=False), pred.astype(bool, copy=False), spacing, tau),
        precision=tp / n_pred if n_pred else 0.0,
        recall=tp / n_ref if n_ref else 0.0,
        tp=tp, fp=fp, fn=fn, n_ref=n_ref, n_pred=n_pred)


def class_mask(segmentation: np.ndarray, label_or_region: LabelOrRegion) -> np.ndarray:
    """Boolean mask of a label (``int``) or a region (tuple of labels: their union) in a label map.

    nnU-Net's ``region_or_label_to_mask``, so classes mean what they mean in nnU-Net's evaluation.
    """
    from nnunetv2.evaluation.evaluate_predictions import region_or_label_to_mask

    if isinstance(label_or_region, list):
        label_or_region = tuple(label_or_region)
    return region_or_label_to_mask(segmentation, label_or_region)


def squeeze_spatial(seg: np.ndarray, spacing: Sequence[float]) -> Tuple[np.ndarray, Tuple[float, ...]]:
    """Drops spatial axes of length 1 and their spacing (nnU-Net reads a 2D image as ``(1, H, W)``).

    ``seg`` is a label map as nnU-Net's readers return it, ``(1, *spatial)`` or ``spatial``.
    """
    if seg.ndim == len(spacing) + 1:
        if seg.shape[0] != 1:
            raise ValueError(f"expected a single-channel segmentation, got shape {seg.shape}")
        seg = seg[0]
    if seg.ndim != len(spacing):
        raise ValueError(f"segmentation of shape {seg.shape} does not match spacing {tuple(spacing)}")
    keep = [i for i, s in enumerate(seg.shape) if s > 1]
    if len(keep) not in (2, 3):
        raise ValueError(f"segmentation of shape {seg.shape} is not a 2D or 3D image")
    return seg.reshape([seg.shape[i] for i in keep]), tuple(float(spacing[i]) for i in keep)


def case_metrics(ref_seg: np.ndarray, pred_seg: np.ndarray, classes: Sequence[Tuple[str, LabelOrRegion]],
                 spacing: Sequence[float], tau: float = DEFAULT_TAU,
                 ignore_label: Optional[int] = None) -> Dict[str, ClassMetrics]:
    """Metrics of every foreground class of one case.

    Args:
        ref_seg, pred_seg: label maps of the same shape (spatial axes only).
        classes: ``(name, label_or_region)`` of each foreground class, e.g. ``[("RV", 1), ("MYO", 2)]``
            or, for nnU-Net region datasets, ``[("heart", (1, 2, 3)), ...]``.
        spacing: voxel size per axis (unit of ``tau``).
        tau: NSD tolerance.
        ignore_label: voxels with this label in the reference are left out of every metric.

    Returns:
        ``{class name: ClassMetrics}`` in the order of ``classes``.
    """
    if ref_seg.shape != pred_seg.shape:
        raise ValueError(f"prediction has shape {pred_seg.shape}, reference has {ref_seg.shape}")
    valid = None if ignore_label is None else ref_seg != ignore_label
    return {name: class_metrics(class_mask(ref_seg, lab), class_mask(pred_seg, lab), spacing, tau, valid)
            for name, lab in classes}


def classes_from_dataset_json(dataset_json: dict) -> Tuple[List[Tuple[str, LabelOrRegion]], Optional[int]]:
    """Foreground classes ``[(name, label_or_region)]`` and the ignore label, as nnU-Net's LabelManager sees them."""
    from nnunetv2.utilities.label_handling.label_handling import LabelManager

    labels = dataset_json.get("labels")
    if not isinstance(labels, dict) or not labels:
        raise ValueError("dataset.json has no 'labels' mapping (expected e.g. {\"background\": 0, \"tumor\": 1})")
    lm = LabelManager(labels, dataset_json.get("regions_class_order"))
    wanted = lm.foreground_regions if lm.has_regions else lm.foreground_labels
    classes = []
    for value in wanted:
        key = tuple(int(v) for v in value) if isinstance(value, (tuple, list)) else int(value)
        name = next((n for n, v in labels.items() if n != "ignore" and
                     (tuple(int(x) for x in v) if isinstance(v, (tuple, list)) else int(v)) in (key, (key,))),
                    str(key))
        classes.append((name, key))
    return classes, lm.ignore_label
