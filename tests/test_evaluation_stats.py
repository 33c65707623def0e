"""Paired comparison with the baseline: bootstrap CI, Wilcoxon, Holm, wins/ties/losses, table and forest plot."""
from __future__ import annotations

import csv
import io

import numpy as np
import pytest
from scipy import stats as sps

from nnunet_pmdice.evaluation.aggregate import csv_text
from nnunet_pmdice.evaluation.plots import plot_forest
from nnunet_pmdice.evaluation.stats import TIE_TOLERANCE, difference_table, holm, paired_comparison


def make_rows(values, classes=("fg",), runs=(1,)):
    """``values[trainer][run][class]`` -> per-case values; rows as the benchmark writes them."""
    rows = []
    for trainer, per_run in values.items():
        for run in runs:
            for cls in classes:
                for i, v in enumerate(per_run[run][cls]):
                    rows.append({"trainer": trainer, "run": run, "case": f"case_{i:03d}", "class": cls, "dice": v})
    return rows


def via_csv(rows):
    """The rows as read back from CSV: every value a string, NaN as an empty field."""
    return list(csv.DictReader(io.StringIO(csv_text(rows))))


def bca_numpy(d, n_resamples, seed, confidence=0.95):
    """Independent BCa interval of the mean (Efron & Tibshirani 1993, ch. 14), plain numpy."""
    from statistics import NormalDist
    rng = np.random.default_rng(seed)
    n = d.size
    boot = d[rng.integers(0, n, size=(n_resamples, n))].mean(axis=1)
    theta = d.mean()
    z0 = NormalDist().inv_cdf(np.mean(boot < theta))
    jack = np.array([np.delete(d, i).mean() for i in range(n)])
    diff = jack.mean() - jack
    a = (diff ** 3).sum() / (6 * ((diff ** 2).sum()) ** 1.5)
    out = []
    for q in ((1 - confidence) / 2, (1 + confidence) / 2):
        z = NormalDist().inv_cdf(q)
        out.append(np.quantile(boot, NormalDist().cdf(z0 + (z0 + z) / (1 - a * (z0 + z)))))
    return out


@pytest.fixture()
def data():
    rng = np.random.default_rng(7)
    n = 15
    base = {"x": rng.uniform(0.5, 0.9, n), "y": rng.uniform(0.3, 0.8, n)}
    better = {c: np.clip(v + rng.normal(0.04, 0.05, n), 0, 1) for c, v in base.items()}
    same = {c: v.copy() for c, v in base.items()}
    same["x"][:3] += np.array([0.01, -0.02, 0.0])
    worse = {c: np.clip(v - rng.normal(0.02, 0.05, n), 0, 1) for c, v in base.items()}
    return {"base": {1: base}, "better": {1: better}, "same": {1: same}, "worse": {1: worse}}


def test_mean_difference_p_value_and_wins_match_an_independent_computation(data):
    comparison = paired_comparison(via_csv(make_rows(data, ("x", "y"))), "base", n_resamples=2000)
    assert comparison["runs"] == {"base": 1, "better": 1, "same": 1, "worse": 1}
    for name in ("better", "same", "worse"):
        mine = (data[name][1]["x"] + data[name][1]["y"]) / 2            # per-case mean over the classes
        theirs = (data["base"][1]["x"] + data["base"][1]["y"]) / 2
        d = mine - theirs
        e = comparison["contenders"][name]["metrics"]["dice"]
        assert e["n_cases"] == 15 and e["n_unpaired"] == 0
        assert e["mean_diff"] == pytest.approx(d.mean(), abs=1e-12)
        assert e["mean_baseline"] == pytest.approx(theirs.mean(), abs=1e-12)
        assert e["p_value"] == pytest.approx(sps.wilcoxon(d[np.abs(d) > TIE_TOLERANCE]).pvalue, rel=1e-12)
        assert (e["wins"], e["ties"], e["losses"]) == (int((d > 1e-9).sum()), int((abs(d) <= 1e-9).sum()),
                                                       int((d < -1e-9).sum()))
        for cls in ("x", "y"):                                             # per class as well
            dc = data[name][1][cls] - data["base"][1][cls]
            ec = comparison["contenders"][name]["per_class"][cls]["dice"]
            assert ec["mean_diff"] == pytest.approx(dc.mean(), abs=1e-12)
    same = comparison["contenders"]["same"]["metrics"]["dice"]
    assert (same["wins"], same["ties"], same["losses"]) == (1, 13, 1)     # hand-made: +0.005, -0.01, 12 equal


def test_bootstrap_interval_agrees_with_an_independent_bca_bootstrap(data):
    comparison = paired_comparison(make_rows(data, ("x", "y")), "base", n_resamples=20000, seed=3)
    d = ((data["better"][1]["x"] + data["better"][1]["y"]) - (data["base"][1]["x"] + data["base"][1]["y"])) / 2
    e = comparison["contenders"]["better"]["metrics"]["dice"]
    low, high = bca_numpy(d, 40000, seed=11)                               # other resamples: Monte-Carlo tolerance
    assert e["ci_method"] == "BCa"
    assert e["ci_low"] == pytest.approx(low, abs=0.003) and e["ci_high"] == pytest.approx(high, abs=0.003)
    assert e["ci_low"] < d.mean() < e["ci_high"]
    narrow = paired_comparison(make_rows(data, ("x", "y")), "base", n_resamples=20000, seed=3, confidence=0.5)
    n = narrow["contenders"]["better"]["metrics"]["dice"]
    assert e["ci_low"] < n["ci_low"] < n["ci_high"] < e["ci_high"]


def test_deterministic_with_a_seed(data):
    rows = make_rows(data, ("x", "y"))
    a = paired_comparison(rows, "base", n_resamples=500, seed=1)
    assert a == paired_comparison(rows, "base", n_resamples=500, seed=1)
    b = paired_comparison(rows, "base", n_resamples=500, seed=2)
    assert a["contenders"]["better"]["metrics"]["dice"]["ci_low"] != b["contenders"]["better"]["metrics"]["dice"]["ci_low"]
    assert a["method"]["seed"] == 1 and a["method"]["n_resamples"] == 500


def test_holm_by_hand():
    assert holm([0.01, 0.04, 0.03]) == [0.03, 0.06, 0.06]
    assert holm([0.5, None, 0.01, 0.02]) == [0.5, None, 0.03, 0.04]
    assert holm([0.04, 0.03]) == [0.06, 0.06]                               # monotone
    assert holm([0.2, 0.8]) == [0.4, 0.8]
    assert holm([0.6, 0.7]) == [1.0, 1.0]


def test_holm_across_contenders_and_significance_rule(data):
    comparison = paired_comparison(make_rows(data, ("x", "y")), "base", n_resamples=2000)
    entries = {n: comparison["contenders"][n]["metrics"]["dice"] for n in ("better", "same", "worse")}
    p = [entries[n]["p_value"] for n in ("better", "same", "worse")]
    order = np.argsort(p)
    expected = {}
    running = 0.0
    for rank, i in enumerate(order):                                       # Holm, written out again
        running = max(running, min(1.0, (3 - rank) * p[i]))
        expected[("better", "same", "worse")[i]] = running
    for n, e in entries.items():
        assert e["p_adjusted"] == pytest.approx(expected[n], rel=1e-12)
        excludes = e["ci_low"] > 0 or e["ci_high"] < 0
        assert e["significant"] == (e["p_adjusted"] < 0.05 and excludes)
        assert e["mark"] == ("" if not e["significant"] else "▲" if e["mean_diff"] > 0 else "▼")
    assert entries["better"]["mark"] == "▲"
    assert entries["same"]["mark"] == ""
    assert "Holm" in comparison["method"]["correction"] and "wilcox" in comparison["method"]["test"]


def test_runs_are_averaged_per_case_before_pairing():
    values = {"base": {1: {"fg": [0.2, 0.4, 0.6, 0.8]}, 2: {"fg": [0.4, 0.4, 0.6, float("nan")]}},
              "new": {1: {"fg": [0.5, 0.5, 0.5, 0.9]}, 2: {"fg": [0.5, 0.7, 0.9, 0.9]}}}
    comparison = paired_comparison(via_csv(make_rows(values, runs=(1, 2))), "base", n_resamples=1000)
    assert comparison["runs"] == {"base": 2, "new": 2}
    e = comparison["contenders"]["new"]["metrics"]["dice"]
    d = np.array([0.5 - 0.3, 0.6 - 0.4, 0.7 - 0.6, 0.9 - 0.8])              # NaN run skipped for the last case
    assert e["mean_diff"] == pytest.approx(d.mean()) and e["n_cases"] == 4
    assert "averaged over each trainer's runs first" in comparison["method"]["runs"]


def test_nan_cases_are_left_out_and_equal_differences_give_a_point_interval():
    values = {"base": {1: {"fg": [0.5, 0.6, float("nan"), 0.7]}}, "new": {1: {"fg": [0.6, 0.7, 0.2, 0.8]}}}
    e = paired_comparison(make_rows(values), "base", n_resamples=1000)["contenders"]["new"]["metrics"]["dice"]
    assert e["n_cases"] == 3 and e["n_unpaired"] == 1
    assert e["ci_low"] == pytest.approx(0.1) and e["ci_high"] == pytest.approx(0.1)
    assert e["ci_method"].startswith("none")
    values = {"base": {1: {"fg": [0.5, 0.6, 0.7]}}, "new": {1: {"fg": [0.5, 0.6, 0.7]}}}
    e = paired_comparison(make_rows(values), "base", n_resamples=1000)["contenders"]["new"]["metrics"]["dice"]
    assert e["p_value"] == 1.0 and (e["wins"], e["ties"], e["losses"]) == (0, 3, 0) and not e["significant"]


def test_refuses_bad_input(data):
    rows = make_rows(data, ("x",))
    with pytest.raises(ValueError, match="baseline 'nope'"):
        paired_comparison(rows, "nope")
    with pytest.raises(ValueError, match="only the baseline"):
        paired_comparison([r for r in rows if r["trainer"] == "base"], "base")
    with pytest.raises(ValueError, match="nsd"):
        paired_comparison(rows, "base", metrics=["nsd"])
    with pytest.raises(ValueError, match="no per-case rows"):
        paired_comparison([], "base")
    with pytest.raises(ValueError, match="n_resamples"):
        paired_comparison(rows, "base", n_resamples=5)
    with pytest.raises(ValueError, match="paired_comparison"):
        difference_table({"x": 1})


def test_table_and_forest_plot(data, tmp_path):
    import json

    comparison = paired_comparison(make_rows(data, ("x", "y")), "base", n_resamples=1000)
    json.dumps(comparison, allow_nan=False)                                 # strict JSON
    table = difference_table(comparison)
    for name in ("better", "same", "worse"):
        assert f"**{name}** vs **base** (baseline): 15 paired test cases" in table
    better = comparison["contenders"]["better"]["metrics"]["dice"]
    line = next(l for l in table.splitlines() if l.startswith("| Dice |") and "▲" in l)
    assert f"{100 * better['mean_diff']:+.2f} [{100 * better['ci_low']:+.2f}, {100 * better['ci_high']:+.2f}]" in line
    assert f"{better['wins']} / {better['ties']} / {better['losses']}" in line
    assert "| Dice (x) |" in table and "Wilcoxon" in table and "Holm" in table and "BCa" in table
    path = plot_forest(comparison, tmp_path / "plots" / "forest.png", title="t")
    import matplotlib.image as mpimg
    img = mpimg.imread(path)
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 300
    with pytest.raises(ValueError, match="paired_comparison"):
        plot_forest({"contenders": {}}, tmp_path / "x.png")


def test_benchmark_per_case_csv_round_trip_compares_paper_and_object_metrics(tmp_path):
    from nnunet_pmdice.evaluation.aggregate import CASE_COLUMNS, read_case_csv, write_csv
    from nnunet_pmdice.evaluation.metrics import METRICS
    from nnunet_pmdice.evaluation.objects import OBJECT_METRICS

    rng = np.random.default_rng(1)
    rows = []
    for trainer, shift in (("nnUNetTrainer", 0.0), ("nnUNetTrainerPMDice", 0.05)):
        for i in range(10):
            row = {"trainer": trainer, "run": 1, "case": f"c{i}", "class": "lesion"}
            row.update({m: float(np.clip(rng.uniform(0.4, 0.8) + shift, 0, 1)) for m in METRICS + OBJECT_METRICS})
            row["obj_recall_large"] = float("nan")                       # no large lesion anywhere
            rows.append(row)
    path = write_csv(tmp_path / "per_case.csv", rows, ("trainer", "run") + CASE_COLUMNS)
    comparison = paired_comparison(read_case_csv(path), "nnUNetTrainer", n_resamples=500)
    assert comparison["metrics"] == list(METRICS + OBJECT_METRICS)
    entries = comparison["contenders"]["nnUNetTrainerPMDice"]["metrics"]
    assert entries["obj_recall_large"]["n_cases"] == 0 and entries["obj_recall_large"]["mean_diff"] is None
    assert entries["obj_recall"]["n_cases"] == 10 and not comparison["contenders"]["nnUNetTrainerPMDice"]["per_class"]
    assert "| object recall |" in difference_table(comparison)
