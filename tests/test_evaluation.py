"""The paper's metrics, their aggregation and the table writer; agreement with nnU-Net's own evaluation."""
from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from nnunet_pmdice.evaluation import aggregate, metrics
from nnunet_pmdice.evaluation.aggregate import combine_runs, markdown_table, summarize, table_rows
from nnunet_pmdice.evaluation.metrics import case_metrics, class_metrics, normalized_surface_dice


def square(shape, lo, hi):
    m = np.zeros(shape, bool)
    m[tuple(slice(a, b) for a, b in zip(lo, hi))] = True
    return m


# ----------------------------------------------------------------------------------- per-case metrics

def test_overlap_metrics_by_hand():
    ref = square((10, 10), (2, 2), (6, 6))      # 16 pixels
    pred = square((10, 10), (4, 2), (8, 6))     # 16 pixels, 8 of them in ref
    m = class_metrics(ref, pred, (1.0, 1.0))
    assert (m.tp, m.fp, m.fn, m.n_ref, m.n_pred) == (8, 8, 8, 16, 16)
    assert m.dice == pytest.approx(0.5)
    assert m.iou == pytest.approx(8 / 24)
    assert m.precision == pytest.approx(0.5) and m.recall == pytest.approx(0.5)


def test_precision_and_recall_differ_when_prediction_is_inside_reference():
    ref = square((8, 8), (0, 0), (4, 4))
    pred = square((8, 8), (0, 0), (2, 4))
    m = class_metrics(ref, pred, (1.0, 1.0))
    assert m.precision == 1.0 and m.recall == 0.5
    assert m.dice == pytest.approx(2 * 8 / (16 + 8))


def test_empty_mask_rules():
    empty = np.zeros((6, 6), bool)
    some = square((6, 6), (1, 1), (3, 3))
    both = class_metrics(empty, empty, (1.0, 1.0))
    assert all(math.isnan(getattr(both, k)) for k in metrics.METRICS)
    for ref, pred in ((some, empty), (empty, some)):
        m = class_metrics(ref, pred, (1.0, 1.0))
        assert [getattr(m, k) for k in metrics.METRICS] == [0.0] * 5, (ref.sum(), pred.sum())


def test_ignore_label_voxels_count_nowhere():
    ref = np.zeros((6, 6), np.uint8)
    ref[1:3, 1:3] = 1
    ref[:, 5] = 9                                   # ignore strip
    pred = ref.copy()
    pred[:, 5] = 1                                  # predictions on ignored voxels
    with_ignore = case_metrics(ref, pred, [("fg", 1)], (1.0, 1.0), ignore_label=9)["fg"]
    without = case_metrics(ref, pred, [("fg", 1)], (1.0, 1.0))["fg"]
    assert with_ignore.dice == 1.0 and with_ignore.fp == 0
    assert without.fp == 6 and without.dice < 1.0


def test_regions_are_unions_of_labels():
    ref = np.array([[0, 1, 2, 3]])
    pred = np.array([[0, 2, 2, 0]])
    m = case_metrics(np.repeat(ref, 3, 0), np.repeat(pred, 3, 0), [("heart", (1, 2, 3)), ("lv", (3,))],
                     (1.0, 1.0))
    assert m["heart"].tp == 6 and m["heart"].fn == 3 and m["heart"].fp == 0
    assert m["lv"].dice == 0.0


def test_bad_masks_raise():
    with pytest.raises(ValueError, match="shape"):
        class_metrics(np.zeros((4, 4), bool), np.zeros((4, 5), bool), (1.0, 1.0))
    with pytest.raises(ValueError, match="spacing"):
        normalized_surface_dice(square((6, 6), (1, 1), (3, 3)), square((6, 6), (1, 1), (3, 3)), (1.0,), 1.0)
    with pytest.raises(ValueError, match="tau"):
        normalized_surface_dice(square((6, 6), (1, 1), (3, 3)), square((6, 6), (1, 1), (3, 3)), (1.0, 1.0), -1)


# ---------------------------------------------------------------------------------------------- NSD

def test_nsd_identical_masks_is_one_and_empty_rules():
    a = square((12, 12, 12), (3, 3, 3), (8, 9, 7))
    assert normalized_surface_dice(a, a, (2.0, 1.0, 0.5), 0.0) == pytest.approx(1.0)
    e = np.zeros_like(a)
    assert math.isnan(normalized_surface_dice(e, e, (1.0, 1.0, 1.0), 1.0))
    assert normalized_surface_dice(a, e, (1.0, 1.0, 1.0), 1.0) == 0.0


@pytest.mark.parametrize("spacing", [(1.0, 1.0), (2.5, 0.7)])
def test_nsd_of_a_far_false_positive_blob_is_two_thirds(spacing):
    """Second computation from eq. 6: the reference square A and a prediction A + a far congruent copy B.

    S_R = S_A lies on S_P (distance 0); of S_P = S_A + S_B only S_A is within tau of S_R. So
    NSD = (|S_A| + |S_A|) / (|S_A| + |S_A| + |S_B|) = 2/3 whatever the surface-element weights are.
    """
    ref = square((40, 40), (3, 3), (11, 13))
    pred = ref | square((40, 40), (25, 24), (33, 34))
    assert normalized_surface_dice(ref, pred, spacing, tau=2.0) == pytest.approx(2 / 3, abs=1e-6)


def test_nsd_tolerance_is_in_spacing_units_along_the_right_axis():
    """A shift of one voxel moves every surface point by one voxel spacing along that axis."""
    ref = square((20, 20), (5, 5), (12, 14))
    shifted0 = np.roll(ref, 1, axis=0)
    shifted1 = np.roll(ref, 1, axis=1)
    spacing = (1.0, 3.0)
    assert normalized_surface_dice(ref, shifted0, spacing, tau=1.0) == pytest.approx(1.0)
    assert normalized_surface_dice(ref, shifted1, spacing, tau=1.0) < 0.9        # moved by 3 mm
    assert normalized_surface_dice(ref, shifted1, spacing, tau=3.0) == pytest.approx(1.0)
    # monotone in tau
    values = [normalized_surface_dice(ref, shifted1, spacing, tau=t) for t in (0.0, 1.0, 2.0, 3.0)]
    assert values == sorted(values) and values[0] < values[-1]


# -------------------------------------------------------------------------------------- aggregation

def rows_of(case_class_dice):
    out = []
    for (case, cls), d in case_class_dice.items():
        out.append({"case": case, "class": cls, **{m: d for m in metrics.METRICS}})
    return out


def test_summarize_means_over_cases_then_classes_skipping_nan():
    rows = rows_of({("a", "x"): 1.0, ("b", "x"): 0.5, ("a", "y"): 0.2, ("b", "y"): float("nan")})
    s = summarize(rows, ["x", "y"])
    assert s["per_class"]["x"]["dice"] == pytest.approx(0.75)
    assert s["per_class"]["y"]["dice"] == pytest.approx(0.2)            # the NaN case does not count
    assert s["counted_cases"] == {"x": 2, "y": 1}
    assert s["mean"]["dice"] == pytest.approx((0.75 + 0.2) / 2)          # mean over classes, not over rows
    assert s["num_cases"] == 2


def test_combine_runs_mean_and_sample_std():
    runs = [summarize(rows_of({("a", "x"): v}), ["x"]) for v in (0.6, 0.8, 1.0)]
    c = combine_runs(runs)
    assert c["runs"] == 3
    assert c["mean"]["dice"]["mean"] == pytest.approx(0.8)
    assert c["mean"]["dice"]["std"] == pytest.approx(0.2)                # ddof = 1
    assert math.isnan(combine_runs(runs[:1])["mean"]["dice"]["std"])
    with pytest.raises(ValueError, match="classes"):
        combine_runs([runs[0], summarize(rows_of({("a", "z"): 1.0}), ["z"])])


def test_markdown_table_baseline_first_best_bold_per_class_dice():
    def one(x, y):
        return combine_runs([summarize(rows_of({("a", "x"): x, ("a", "y"): y}), ["x", "y"])])
    results = {"nnUNetTrainerPMDice": one(0.9, 0.5), "nnUNetTrainer": one(0.8, 0.7)}
    table = markdown_table(results, baseline="nnUNetTrainer")
    lines = table.strip().splitlines()
    assert lines[0].startswith("| Trainer | runs | mDice | mIoU | mNSD | mPrec. | mRec. | x | y |")
    assert lines[2].startswith("| nnUNetTrainer (baseline) |")
    assert "**90.00**" in lines[3] and "**70.00**" in lines[2]            # best per-class Dice of each column
    assert "**75.00**" in lines[2] and "| 70.00 |" in lines[3]             # mDice: 75 vs 70
    rows = table_rows(results, baseline="nnUNetTrainer")
    assert rows[0]["trainer"] == "nnUNetTrainer" and rows[0]["Dice_y_mean"] == pytest.approx(0.7)
    with pytest.raises(ValueError, match="baseline"):
        markdown_table(results, baseline="nope")


def test_markdown_table_shows_std_with_several_runs():
    runs = [summarize(rows_of({("a", "x"): v}), ["x"]) for v in (0.5, 0.7)]
    assert "60.00 ± 14.14" in markdown_table({"T": combine_runs(runs)})


def test_case_csv_round_trip(tmp_path):
    rows = [{"case": "c1", "class": "x", "dice": 0.5, "iou": 1 / 3, "nsd": float("nan"), "precision": 1.0,
             "recall": 0.25, "tp": 1, "fp": 0, "fn": 3, "n_ref": 4, "n_pred": 1}]
    path = aggregate.write_csv(tmp_path / "c.csv", rows, aggregate.CASE_COLUMNS)
    back = aggregate.read_case_csv(path)
    assert back[0]["dice"] == 0.5 and math.isnan(back[0]["nsd"]) and back[0]["fn"] == 3
    assert not list(tmp_path.glob(".c.csv*"))                             # no temporary file left


# ------------------------------------------------------------- folders, against nnU-Net's own evaluation

def perturb(seg: np.ndarray, rng) -> np.ndarray:
    """A plausible prediction: the reference shifted by a pixel, with a spurious blob."""
    out = np.roll(seg, rng.integers(-2, 3), axis=-1).copy()
    idx = tuple(rng.integers(0, s - 3) for s in out.shape[-2:])
    out[..., idx[0]:idx[0] + 3, idx[1]:idx[1] + 3] = seg.max()
    return out


def make_predictions(raw: Path, out: Path, seed: int = 0) -> Path:
    from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_dataset_json
    dj = json.loads((raw / "dataset.json").read_text())
    out.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    ending = dj["file_ending"]
    for ref in sorted((raw / "labelsTs").glob("*" + ending)):
        rw = determine_reader_writer_from_dataset_json(dj, str(ref), verbose=False)()
        seg, props = rw.read_seg(str(ref))
        rw.write_seg(perturb(seg[0], rng).astype(np.uint8), str(out / ref.name), props)
    shutil.copy(raw / "dataset.json", out / "dataset.json")
    return out


@pytest.mark.parametrize("kind", ["polyp2d", "cardiac3d"])
def test_agrees_with_nnunets_summary_json(kind, tmp_path):
    from nnunetv2.evaluation.evaluate_predictions import compute_metrics_on_folder
    from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_dataset_json

    from nnunet_pmdice.evaluation import evaluate_folders
    from nnunet_pmdice.synthetic import generate

    size = (48, 48) if kind == "polyp2d" else (8, 32, 32)
    raw = generate(kind, tmp_path / "raw", 77, num_train=2, num_test=3, size=size, seed=3)
    pred = make_predictions(raw, tmp_path / "pred")
    dj = json.loads((raw / "dataset.json").read_text())
    example = next((raw / "labelsTs").iterdir())
    rw = determine_reader_writer_from_dataset_json(dj, str(example), verbose=False)
    labels = sorted(v for k, v in dj["labels"].items() if k != "background")
    theirs = compute_metrics_on_folder(str(raw / "labelsTs"), str(pred), str(tmp_path / "nnunet_summary.json"),
                                       rw(), dj["file_ending"], labels, None, 1)
    ours = evaluate_folders(raw / "labelsTs", pred, progress=False)
    names = {v: k for k, v in dj["labels"].items()}
    compared = 0
    for case in theirs["metric_per_case"]:
        cid = Path(case["reference_file"]).name[: -len(dj["file_ending"])]
        for label, m in case["metrics"].items():
            row = next(r for r in ours.case_rows if r["case"] == cid and r["class"] == names[int(label)])
            for key, theirs_key in (("dice", "Dice"), ("iou", "IoU"), ("tp", "TP"), ("fp", "FP"), ("fn", "FN")):
                a, b = row[key], m[theirs_key]
                assert (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, abs=1e-9), (cid, label, key)
            compared += 1
    assert compared == 3 * len(labels)
    assert ours.summary["mean"]["dice"] == pytest.approx(theirs["foreground_mean"]["Dice"], abs=1e-9)
    assert ours.tau_unit == ("pixels" if kind == "polyp2d" else "mm")


def test_region_dataset_classes_come_from_dataset_json(tmp_path):
    from nnunet_pmdice.evaluation import evaluate_folders
    from nnunet_pmdice.synthetic import generate

    raw = generate("cardiac3d", tmp_path / "raw", 78, num_train=2, num_test=2, size=(8, 32, 32), seed=1,
                   regions=True)
    pred = make_predictions(raw, tmp_path / "pred")
    result = evaluate_folders(raw / "labelsTs", pred, progress=False)
    assert result.classes == [("heart", (1, 2, 3)), ("LV_MYO", (2, 3)), ("LV", (3,))]
    heart = [r for r in result.case_rows if r["class"] == "heart"]
    assert len(heart) == 2 and all(r["n_ref"] > 0 for r in heart)


def test_evaluate_cli_writes_outputs_and_names_missing_predictions(tmp_path):
    from nnunet_pmdice.synthetic import generate

    raw = generate("polyp2d", tmp_path / "raw", 79, num_train=2, num_test=3, size=(40, 40), seed=2)
    pred = make_predictions(raw, tmp_path / "pred")
    cmd = [sys.executable, "-m", "nnunet_pmdice.cli", "evaluate", str(raw / "labelsTs"), str(pred),
           "--tau", "2", "-o", str(tmp_path / "ev")]
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "| mDice |" in res.stdout and "tau = 2 pixels" in res.stdout
    summary = json.loads((tmp_path / "ev" / "summary.json").read_text())
    assert summary["tau"] == 2 and summary["num_cases"] == 3
    assert len((tmp_path / "ev" / "per_case.csv").read_text().strip().splitlines()) == 1 + 3
    victim = sorted(pred.glob("*.png"))[0]
    victim.unlink()
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 2 and victim.name in res.stderr and "no prediction" in res.stderr


def test_evaluate_writes_object_columns_tables_and_units(tmp_path):
    from nnunet_pmdice.evaluation import evaluate_folders, write_evaluation
    from nnunet_pmdice.evaluation.aggregate import read_case_csv
    from nnunet_pmdice.evaluation.objects import OBJECT_COUNTS, OBJECT_METRICS, object_metrics
    from nnunet_pmdice.synthetic import generate

    raw = generate("lesion3d", tmp_path / "raw", 80, num_train=2, num_test=2, size=(12, 24, 24), seed=4)
    pred = make_predictions(raw, tmp_path / "pred")
    result = evaluate_folders(raw / "labelsTs", pred, progress=False)
    paths = write_evaluation(result, tmp_path / "ev", title="T")
    rows = read_case_csv(paths["per_case"])
    header = paths["per_case"].read_text().splitlines()[0].split(",")
    assert header == list(aggregate.CASE_COLUMNS)
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
    for r in rows:                                       # the rows hold what object_metrics says of the files
        ref = SimpleITKIO().read_seg(str(raw / "labelsTs" / f"{r['case']}.nii.gz"))[0][0]
        prd = SimpleITKIO().read_seg(str(pred / f"{r['case']}.nii.gz"))[0][0]
        expected = object_metrics(ref == 1, prd == 1).as_dict()
        for k in OBJECT_METRICS + OBJECT_COUNTS:
            a, b = r[k], expected[k]
            assert (isinstance(b, float) and math.isnan(b) and math.isnan(a)) or a == pytest.approx(b), k
    summary = json.loads(paths["summary"].read_text())
    assert summary["nsd_unit"] == "mm" and summary["objects"]["size_bins_voxels"]["large"] == [1000, None]
    pooled = summary["objects_pooled"]["lesion"]
    assert pooled["n_ref"] > 0 and pooled["n_pred"] > 0
    assert pooled["n_ref"] == sum(r["obj_n_ref"] for r in rows) and pooled["detected"] == sum(r["obj_detected"] for r in rows)
    table = paths["table"].read_text()
    assert "| mDice |" in table and "| obj. recall | obj. prec. | obj. F1 | recall small |" in table
