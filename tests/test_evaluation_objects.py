"""Object-level (lesion-wise) metrics: connected components, the MSSEG-2016 matching rule, size bins, empty masks."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from nnunet_pmdice.evaluation.aggregate import CASE_COLUMNS, summarize
from nnunet_pmdice.evaluation.metrics import METRICS
from nnunet_pmdice.evaluation.objects import (ALPHA, BETA, GAMMA, OBJECT_COUNTS, OBJECT_METRICS, SIZE_BINS,
                                              object_metrics)


def box(shape, lo, hi):
    m = np.zeros(shape, bool)
    m[tuple(slice(a, b) for a, b in zip(lo, hi))] = True
    return m


def reference_rule(ref, pred, alpha=ALPHA, beta=BETA, gamma=GAMMA):
    """The MSSEG-2016 rule written out again, object by object, on scipy.ndimage labels (full structure)."""
    full = np.ones((3,) * ref.ndim)
    ref_lab, n_ref = ndimage.label(ref, structure=full)
    pred_lab, n_pred = ndimage.label(pred, structure=full)

    def detected(a_lab, n_a, a_mask, b_lab, n_b, b_mask):
        out = []
        for i in range(1, n_a + 1):
            obj = a_lab == i
            covered = np.count_nonzero(obj & b_mask)
            if covered / obj.sum() <= alpha:
                out.append(False)
                continue
            overlaps = sorted(((np.count_nonzero(obj & (b_lab == j)), j) for j in range(1, n_b + 1)),
                              key=lambda t: -t[0])
            ok, acc = True, 0.0
            for size, j in overlaps:
                if size == 0:
                    break
                other = b_lab == j
                if np.count_nonzero(other & ~a_mask) / other.sum() > beta:
                    ok = False
                    break
                acc += size / covered
                if acc > gamma:
                    break
            out.append(ok)
        return np.array(out, bool), [np.count_nonzero(a_lab == i) for i in range(1, n_a + 1)]

    found, sizes = detected(ref_lab, n_ref, ref, pred_lab, n_pred, pred)
    true_pred, _ = detected(pred_lab, n_pred, pred, ref_lab, n_ref, ref)
    return n_ref, n_pred, found, true_pred, np.array(sizes)


def random_blobs(rng, shape, n, max_r):
    m = np.zeros(shape, bool)
    grid = np.indices(shape)
    for _ in range(n):
        c = [rng.integers(0, s) for s in shape]
        r = rng.uniform(0.6, max_r)
        m |= sum((g - ci) ** 2 for g, ci in zip(grid, c)) <= r ** 2
    return m


@pytest.mark.parametrize("shape,seed", [((64, 64), 0), ((64, 64), 1), ((16, 24, 24), 2), ((16, 24, 24), 3)])
def test_agrees_with_an_independent_computation(shape, seed):
    rng = np.random.default_rng(seed)
    outcomes = []
    for k in range(4):
        ref = random_blobs(rng, shape, 8, 5)
        pred = ndimage.binary_dilation(ref) if k % 2 else ref.copy()
        pred ^= random_blobs(rng, shape, 6, 4)                            # misses, false alarms, splits
        m = object_metrics(ref, pred)
        n_ref, n_pred, found, true_pred, sizes = reference_rule(ref, pred)
        assert (m.obj_n_ref, m.obj_n_pred) == (n_ref, n_pred)
        assert (m.obj_detected, m.obj_true_pred) == (int(found.sum()), int(true_pred.sum()))
        assert m.obj_recall == pytest.approx(found.mean())
        assert m.obj_precision == pytest.approx(true_pred.mean())
        for name, lo, hi in SIZE_BINS:
            in_bin = (sizes >= lo) & (sizes < hi)
            assert getattr(m, f"obj_n_{name}") == in_bin.sum()
            assert getattr(m, f"obj_detected_{name}") == (found & in_bin).sum()
        outcomes += list(found) + list(true_pred)
    assert 0 < sum(outcomes) < len(outcomes)                              # both outcomes were exercised


def test_touching_objects_are_one_object_with_full_connectivity_2d_and_3d():
    m2 = box((10, 10), (1, 1), (4, 4)) | box((10, 10), (4, 4), (7, 7))   # touching at a corner
    assert object_metrics(m2, m2).obj_n_ref == 1
    assert ndimage.label(m2)[1] == 2                                     # face connectivity would see two
    m3 = box((8, 8, 8), (0, 0, 0), (2, 2, 2)) | box((8, 8, 8), (2, 2, 2), (4, 4, 4))
    assert object_metrics(m3, m3).obj_n_ref == 1
    apart = box((10, 10), (1, 1), (3, 3)) | box((10, 10), (4, 4), (6, 6))  # one empty row between them
    m = object_metrics(apart, apart)
    assert (m.obj_n_ref, m.obj_recall, m.obj_precision, m.obj_f1) == (2, 1.0, 1.0, 1.0)


def test_empty_mask_rules():
    empty = np.zeros((12, 12), bool)
    two = box((12, 12), (1, 1), (3, 3)) | box((12, 12), (6, 6), (9, 9))
    both = object_metrics(empty, empty)
    assert all(math.isnan(getattr(both, k)) for k in OBJECT_METRICS)
    assert (both.obj_n_ref, both.obj_n_pred) == (0, 0)
    miss = object_metrics(two, empty)
    assert miss.obj_recall == 0.0 and math.isnan(miss.obj_precision) and miss.obj_f1 == 0.0
    alarm = object_metrics(empty, two)
    assert math.isnan(alarm.obj_recall) and alarm.obj_precision == 0.0 and alarm.obj_f1 == 0.0
    assert math.isnan(alarm.obj_recall_small)


def test_alpha_overlap_threshold_is_strict():
    ref = box((20, 20), (0, 0), (10, 10))                                 # 100 voxels
    ten = box((20, 20), (0, 0), (1, 10))                                  # covers exactly 10%: not detected
    eleven = ten | box((20, 20), (1, 0), (2, 1))                          # 11%
    assert object_metrics(ref, ten).obj_recall == 0.0
    assert object_metrics(ref, eleven).obj_recall == 1.0


def test_a_huge_grazing_blob_detects_nothing():
    ref = box((40, 40), (0, 0), (4, 4))                                   # 16 voxels
    blob = box((40, 40), (0, 2), (30, 30))                                # covers half the lesion, mostly outside
    m = object_metrics(ref, blob)
    assert m.obj_recall == 0.0 and m.obj_precision == 0.0                 # beta: > 65% of the blob is outside


def test_split_and_merged_lesions():
    ref = box((20, 20), (2, 2), (8, 12))
    split = box((20, 20), (2, 2), (8, 6)) | box((20, 20), (2, 8), (8, 12))
    m = object_metrics(ref, split)
    assert (m.obj_n_pred, m.obj_recall, m.obj_precision) == (2, 1.0, 1.0)
    two = box((20, 20), (2, 2), (8, 6)) | box((20, 20), (2, 8), (8, 12))
    merged = box((20, 20), (2, 2), (8, 12))                               # fills the gap between them
    m = object_metrics(two, merged)
    assert (m.obj_n_ref, m.obj_n_pred, m.obj_recall, m.obj_precision) == (2, 1, 1.0, 1.0)


def test_size_bins_by_voxels_of_the_reference_object():
    shape = (60, 120)
    ref = (box(shape, (0, 0), (9, 11)) | box(shape, (0, 20), (10, 30)) | box(shape, (12, 0), (39, 37))
           | box(shape, (12, 40), (32, 90)))                              # 99, 100, 999, 1000 voxels
    assert sorted(ndimage.sum(ref, *ndimage.label(ref)[:1], index=range(1, 5))) == [99, 100, 999, 1000]
    pred = box(shape, (0, 0), (9, 11)) | box(shape, (12, 40), (32, 90))    # finds the 99 and the 1000
    m = object_metrics(ref, pred)
    assert (m.obj_n_small, m.obj_n_medium, m.obj_n_large) == (1, 2, 1)
    assert (m.obj_recall_small, m.obj_recall_medium, m.obj_recall_large) == (1.0, 0.0, 1.0)
    assert m.obj_recall == 0.5


def test_ignored_voxels_are_removed_before_the_objects_are_found():
    ref = box((10, 10), (1, 1), (4, 4))
    pred = ref | box((10, 10), (7, 7), (9, 9))                            # a false alarm ...
    valid = ~box((10, 10), (6, 6), (10, 10))                              # ... inside the ignored corner
    assert object_metrics(ref, pred).obj_precision == 0.5
    assert object_metrics(ref, pred, valid).obj_precision == 1.0


def test_refuses_bad_masks():
    with pytest.raises(ValueError, match="shape"):
        object_metrics(np.zeros((4, 4), bool), np.zeros((4, 5), bool))
    with pytest.raises(ValueError, match="2D or 3D"):
        object_metrics(np.zeros(4, bool), np.zeros(4, bool))


def test_columns_are_appended_and_pooled_in_the_summary():
    assert CASE_COLUMNS[:2 + len(METRICS) + 5] == ("case", "class") + METRICS + ("tp", "fp", "fn", "n_ref", "n_pred")
    assert CASE_COLUMNS[-len(OBJECT_METRICS) - len(OBJECT_COUNTS):] == OBJECT_METRICS + OBJECT_COUNTS
    ref1 = box((20, 20), (0, 0), (3, 3)) | box((20, 20), (10, 10), (14, 14))
    ref2 = box((20, 20), (5, 5), (8, 8))
    rows = []
    for case, ref, pred in (("a", ref1, box((20, 20), (0, 0), (3, 3))), ("b", ref2, ref2)):
        rows.append({"case": case, "class": "fg", **{k: 0.5 for k in METRICS}, **object_metrics(ref, pred).as_dict()})
    s = summarize(rows, ["fg"])
    assert s["per_class"]["fg"]["obj_recall"] == pytest.approx((0.5 + 1.0) / 2)     # mean over cases
    assert s["objects_pooled"]["fg"]["recall"] == pytest.approx(2 / 3)             # 2 of 3 objects
    assert s["objects_pooled"]["fg"]["n_small"] == 3 and s["mean"]["obj_f1"] == pytest.approx((2 / 3 + 1) / 2)
