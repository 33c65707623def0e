"""Object-level (lesion-wise) detection metrics: recall, precision and F1 of connected components.

Pixel-averaged metrics barely move when a small object is lost; counting objects does. For one
foreground class of one case (voxels of nnU-Net's ignore label removed from both masks):

- **Objects** are the connected components of the reference mask and of the predicted mask, with
  full connectivity (8 neighbours in 2D, 26 in 3D: voxels touching by a corner belong to the same
  object), labelled by ``cc3d``. No object is dropped for being small.
- **Matching** follows the lesion-wise detection of the MSSEG-2016 challenge (Commowick et al.,
  *Sci. Rep.* 8:13650, 2018, section "Evaluation metrics"; Anima's ``animaSegPerfAnalyzer``). A
  reference object ``R_i`` is *detected* when

  1. the predicted mask covers more than ``alpha`` = 10% of its voxels, and
  2. the predicted objects overlapping ``R_i``, taken in decreasing order of their overlap with it
     until they hold more than ``gamma`` = 70% of the covered voxels, each lie at most ``beta`` = 65%
     outside the reference mask (a huge false-positive blob that grazes a lesion does not detect it).

  A predicted object is *true* (matches a reference object) by the same rule with the roles of
  reference and prediction swapped. One predicted object may detect several reference objects
  (merged lesions) and several may detect one (a split lesion), as in MSSEG.
- **Per case**: object recall = detected reference objects / reference objects; object precision =
  true predicted objects / predicted objects; object F1 = 2 P R / (P + R) (0 when P = R = 0).
- **Empty masks**: no reference object -> recall NaN; no predicted object -> precision NaN; F1 is NaN
  when both are empty and 0 when exactly one is (a complete miss, or only false alarms).
- **Size**: a reference object is *small* below 100 voxels, *medium* from 100 to 999, *large* from
  1000 (:data:`SIZE_BINS`, in voxels, fixed before any result was seen): recall is also given per
  bin (NaN where a case has no object of that size). Voxels rather than mm^3 because the network and
  the loss see voxels, and because 2D natural images (Kvasir-SEG PNGs) carry no physical spacing;
  the bins are decades: a 10 x 10 patch, a 10 x 10 x 10 cube.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Dict, Optional, Tuple

import numpy as np

#: MSSEG-2016 detection thresholds (Commowick et al. 2018)
ALPHA, BETA, GAMMA = 0.10, 0.65, 0.70

#: ``(name, lowest size, first size above)`` of each object-size bin, in voxels of the reference object
SIZE_BINS: Tuple[Tuple[str, float, float], ...] = (("small", 0, 100), ("medium", 100, 1000),
                                                    ("large", 1000, math.inf))

#: per-case object metrics (fractions, NaN where undefined), appended to the per-case columns
OBJECT_METRICS: Tuple[str, ...] = ("obj_recall", "obj_precision", "obj_f1") + tuple(
    f"obj_recall_{name}" for name, _, _ in SIZE_BINS)

#: per-case object counts, appended after :data:`OBJECT_METRICS`
OBJECT_COUNTS: Tuple[str, ...] = ("obj_n_ref", "obj_n_pred", "obj_detected", "obj_true_pred") + tuple(
    f"obj_{what}_{name}" for name, _, _ in SIZE_BINS for what in ("n", "detected"))


@dataclass(frozen=True)
class ObjectMetrics:
    """Object-level metrics of one class in one case; ``as_dict`` gives the per-case columns."""

    obj_recall: float
    obj_precision: float
    obj_f1: float
    obj_recall_small: float
    obj_recall_medium: float
    obj_recall_large: float
    obj_n_ref: int
    obj_n_pred: int
    obj_detected: int
    obj_true_pred: int
    obj_n_small: int
    obj_detected_small: int
    obj_n_medium: int
    obj_detected_medium: int
    obj_n_large: int
    obj_detected_large: int

    def as_dict(self) -> Dict[str, float]:
        return asdict(self)


def connected_components(mask: np.ndarray) -> Tuple[np.ndarray, int]:
    """Objects of a boolean 2D or 3D mask: ``(labels, n)``, full connectivity (8 in 2D, 26 in 3D).

    Raises:
        ValueError: if ``mask`` is not 2D or 3D.

    Example:
        >>> m = np.zeros((4, 4), bool); m[0, 0] = m[1, 1] = m[3, 3] = True
        >>> connected_components(m)[1]     # the diagonal neighbours touch by a corner
        2
    """
    import cc3d

    if mask.ndim not in (2, 3):
        raise ValueError(f"objects need a 2D or 3D mask, got shape {mask.shape}")
    labels, n = cc3d.connected_components(np.ascontiguousarray(mask, dtype=bool), connectivity=8 if mask.ndim == 2
                                          else 26, return_N=True)
    return labels, int(n)


def overlap_matrix(ref_labels: np.ndarray, n_ref: int, pred_labels: np.ndarray, n_pred: int) -> np.ndarray:
    """``O[i, j]``: voxels in reference object ``i`` and predicted object ``j`` (0 = background of each)."""
    both = (ref_labels > 0) | (pred_labels > 0)
    idx = ref_labels[both].astype(np.int64) * (n_pred + 1) + pred_labels[both].astype(np.int64)
    return np.bincount(idx, minlength=(n_ref + 1) * (n_pred + 1)).reshape(n_ref + 1, n_pred + 1)


def detected_objects(overlap: np.ndarray, alpha: float = ALPHA, beta: float = BETA,
                     gamma: float = GAMMA) -> np.ndarray:
    """Which objects of the rows of ``overlap`` (row 0 = background) are detected by the columns' objects.

    ``overlap`` is :func:`overlap_matrix` (rows: the objects to detect, columns: the detecting ones;
    pass its transpose for the other direction). Returns a boolean array of length ``rows - 1``.
    """
    sizes_other = overlap.sum(axis=0)                   # voxels of each detecting object
    outside = overlap[0] / np.maximum(sizes_other, 1)   # its fraction in the other mask's background
    out = np.zeros(overlap.shape[0] - 1, bool)
    for i in range(1, overlap.shape[0]):
        size = overlap[i].sum()
        covered = overlap[i, 1:].sum()
        if size == 0 or covered / size <= alpha:
            continue
        ok, total = True, 0.0
        for j in np.argsort(-overlap[i, 1:], kind="stable") + 1:
            if overlap[i, j] == 0:
                break
            if outside[j] > beta:
                ok = False
                break
            total += overlap[i, j] / covered
            if total > gamma:
                break
        out[i - 1] = ok
    return out


def _ratio(a: int, b: int) -> float:
    return a / b if b else float("nan")


def object_metrics(ref: np.ndarray, pred: np.ndarray, valid: Optional[np.ndarray] = None, alpha: float = ALPHA,
                   beta: float = BETA, gamma: float = GAMMA) -> ObjectMetrics:
    """Object recall, precision, F1 and recall by size of one class (the module's rules).

    Args:
        ref, pred: boolean masks of the same 2D or 3D shape.
        valid: optional boolean mask; voxels where it is false (nnU-Net's ignore label) are removed
            from both masks before the objects are found.
        alpha, beta, gamma: the MSSEG-2016 detection thresholds.

    Raises:
        ValueError: if the masks differ in shape or are not 2D or 3D.

    Example:
        >>> r = np.zeros((8, 8), bool); r[0:2, 0:2] = True; r[5:8, 5:8] = True   # two objects
        >>> p = np.zeros((8, 8), bool); p[0:2, 0:2] = True; p[0, 6] = True       # one found, one false alarm
        >>> m = object_metrics(r, p)
        >>> m.obj_recall, m.obj_precision, m.obj_f1, m.obj_n_small
        (0.5, 0.5, 0.5, 2)
    """
    if ref.shape != pred.shape or (valid is not None and valid.shape != ref.shape):
        raise ValueError(f"masks differ in shape: reference {ref.shape}, prediction {pred.shape}"
                         + ("" if valid is None else f", valid {valid.shape}"))
    ref = ref.astype(bool, copy=False)
    pred = pred.astype(bool, copy=False)
    if valid is not None:
        ref, pred = ref & valid, pred & valid
    ref_labels, n_ref = connected_components(ref)
    pred_labels, n_pred = connected_components(pred)
    overlap = overlap_matrix(ref_labels, n_ref, pred_labels, n_pred)
    found = detected_objects(overlap, alpha, beta, gamma)
    true_pred = detected_objects(overlap.T, alpha, beta, gamma)
    recall, precision = _ratio(int(found.sum()), n_ref), _ratio(int(true_pred.sum()), n_pred)
    if n_ref == 0 and n_pred == 0:
        f1 = float("nan")
    elif n_ref == 0 or n_pred == 0:
        f1 = 0.0
    else:
        f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    sizes = overlap[1:].sum(axis=1)
    bins = {}
    for name, lo, hi in SIZE_BINS:
        in_bin = (sizes >= lo) & (sizes < hi)
        bins[name] = (int(in_bin.sum()), int((found & in_bin).sum()))
    return ObjectMetrics(
        obj_recall=recall, obj_precision=precision, obj_f1=f1,
        obj_recall_small=_ratio(bins["small"][1], bins["small"][0]),
        obj_recall_medium=_ratio(bins["medium"][1], bins["medium"][0]),
        obj_recall_large=_ratio(bins["large"][1], bins["large"][0]),
        obj_n_ref=n_ref, obj_n_pred=n_pred, obj_detected=int(found.sum()), obj_true_pred=int(true_pred.sum()),
        obj_n_small=bins["small"][0], obj_detected_small=bins["small"][1],
        obj_n_medium=bins["medium"][0], obj_detected_medium=bins["medium"][1],
        obj_n_large=bins["large"][0], obj_detected_large=bins["large"][1])


__all__ = ["ALPHA", "BETA", "GAMMA", "SIZE_BINS", "OBJECT_METRICS", "OBJECT_COUNTS", "ObjectMetrics",
           "connected_components", "overlap_matrix", "detected_objects", "object_metrics"]
