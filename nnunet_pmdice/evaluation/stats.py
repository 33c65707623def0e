"""Paired comparison of trainers with the baseline on the same test cases.

Every trainer predicts the same test cases, so the question "does the contender beat the baseline
on this data?" is answered per case, not by comparing two means:

- **Per-case value** of a metric: the mean over the foreground classes (NaN classes skipped, as in
  the paper's aggregate), or one class's value (``per_class``). With several runs, the per-case
  values are first averaged over the trainer's runs (NaN runs skipped), then the trainers are paired
  by case; the number of runs of each trainer is recorded. Cases where either value is NaN are left
  out of that comparison (``n_cases`` says how many remain).
- **Difference** = contender - baseline per case; its mean with a confidence interval from a
  bootstrap over cases (the differences are resampled, which keeps the pairing): bias-corrected
  and accelerated (BCa) interval of :func:`scipy.stats.bootstrap`, ``n_resamples`` resamples,
  seeded (the same resampled case sets for every metric and contender); where BCa is undefined
  (e.g. almost all differences equal) the percentile interval of the same resamples is given and
  named in ``ci_method``; all differences equal (within ``TIE_TOLERANCE``) -> the interval is
  that value.
- **Test**: Wilcoxon signed-rank test, two-sided (:func:`scipy.stats.wilcoxon`,
  ``zero_method="wilcox"``, ``method="auto"``: the exact distribution up to 50 cases without tied
  ranks, an exhaustive permutation test up to 13 cases with tied ranks, else the normal
  approximation) on the differences; tied cases (``|d| <= TIE_TOLERANCE``) are dropped before the test, as Wilcoxon's
  zero method does. No non-zero difference -> p = 1.
- **Wins / ties / losses**: cases with ``d > TIE_TOLERANCE`` / ``|d| <= TIE_TOLERANCE`` / ``d < -TIE_TOLERANCE``.
- **Multiple contenders**: Holm's step-down correction of the p-values across the contenders, per
  metric (and per class and metric).
- **Significance mark**: ▲ (better) or ▼ (worse) when the Holm-adjusted p < ``ALPHA`` and the
  confidence interval excludes 0. All metrics are higher-is-better.

How to read it: the interval is the range of mean per-case differences compatible with the test
cases at hand (if it excludes 0, the sign of the difference is unlikely to be resampling noise);
the p-value is the probability of a per-case difference pattern at least this one-sided in either
direction if neither trainer were better; neither says anything about other datasets.
"""
from __future__ import annotations

import math
import warnings
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from .metrics import METRICS
from .objects import OBJECT_METRICS

#: absolute tolerance (on fractions) under which a per-case difference counts as a tie
TIE_TOLERANCE = 1e-9
#: significance level of the mark
ALPHA = 0.05

#: titles of the metrics in tables and plots
TITLES = {"dice": "Dice", "iou": "IoU", "nsd": "NSD", "precision": "precision", "recall": "recall",
          "obj_recall": "object recall", "obj_precision": "object precision", "obj_f1": "object F1",
          "obj_recall_small": "recall small obj.", "obj_recall_medium": "recall medium obj.",
          "obj_recall_large": "recall large obj."}

KEY_COLUMNS = ("trainer", "run", "case", "class")


def _float(value) -> float:
    if value is None:
        return float("nan")
    if isinstance(value, str):
        value = value.strip()
        return float(value) if value and value.lower() not in ("nan", "none", "null") else float("nan")
    return float(value)


def _nanmean(values: Sequence[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return sum(finite) / len(finite) if finite else float("nan")


def _none(value: float) -> Optional[float]:
    return None if value is None or (isinstance(value, float) and not math.isfinite(value)) else float(value)


def per_case_values(case_rows: Sequence[Mapping], metric: str, cls: Optional[str] = None
                    ) -> Tuple[Dict[str, Dict[str, float]], Dict[str, int]]:
    """``({trainer: {case: value}}, {trainer: runs})``: per-case values averaged over runs.

    The value of a case in a run is the metric of class ``cls``, or with ``cls=None`` the mean over
    the classes (NaN classes skipped); then the mean over the trainer's runs (NaN runs skipped).

    Raises:
        ValueError: if a row lacks a key column or the metric.
    """
    per_run: Dict[Tuple[str, str, str], List[float]] = {}
    runs: Dict[str, set] = {}
    for n, r in enumerate(case_rows):
        missing = [k for k in KEY_COLUMNS + (metric,) if k not in r]
        if missing:
            raise ValueError(f"per-case row {n} has no {missing} (expected columns {list(KEY_COLUMNS)} and "
                             f"the metrics)")
        trainer, run, case = str(r["trainer"]), str(r["run"]), str(r["case"])
        runs.setdefault(trainer, set()).add(run)
        if cls is not None and str(r["class"]) != cls:
            continue
        per_run.setdefault((trainer, run, case), []).append(_float(r[metric]))
    by_case: Dict[str, Dict[str, List[float]]] = {}
    for (trainer, run, case), values in per_run.items():
        by_case.setdefault(trainer, {}).setdefault(case, []).append(_nanmean(values))
    values = {t: {c: _nanmean(v) for c, v in cases.items()} for t, cases in by_case.items()}
    return values, {t: len(r) for t, r in runs.items()}


def holm(p_values: Sequence[Optional[float]]) -> List[Optional[float]]:
    """Holm's step-down adjusted p-values (``None``/NaN entries stay ``None`` and do not count).

    Example:
        >>> holm([0.01, 0.04, 0.03])
        [0.03, 0.06, 0.06]
    """
    idx = [i for i, p in enumerate(p_values) if p is not None and not math.isnan(p)]
    out: List[Optional[float]] = [None] * len(p_values)
    m, running = len(idx), 0.0
    for rank, i in enumerate(sorted(idx, key=lambda i: p_values[i])):
        running = max(running, min(1.0, (m - rank) * float(p_values[i])))
        out[i] = round(running, 15)
    return out


def bootstrap_ci(diffs: np.ndarray, n_resamples: int, seed: int, confidence: float) -> Tuple[float, float, str]:
    """``(low, high, method)`` of the mean of ``diffs``: BCa bootstrap (percentile where BCa is undefined)."""
    from scipy import stats

    if diffs.size < 2:
        return float("nan"), float("nan"), "none (fewer than 2 cases)"
    if np.all(np.abs(diffs - diffs[0]) <= TIE_TOLERANCE):
        return float(diffs.mean()), float(diffs.mean()), "none (all differences equal)"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # scipy warns where BCa degenerates; handled below
        res = stats.bootstrap((diffs,), np.mean, n_resamples=n_resamples, confidence_level=confidence,
                              method="BCa", vectorized=True, rng=np.random.default_rng(seed))
    low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
    if math.isfinite(low) and math.isfinite(high):
        return low, high, "BCa"
    dist = res.bootstrap_distribution
    half = (1 - confidence) / 2
    return float(np.quantile(dist, half)), float(np.quantile(dist, 1 - half)), "percentile"


def wilcoxon_p(diffs: np.ndarray) -> float:
    """Two-sided Wilcoxon signed-rank p-value of paired differences (ties within the tolerance are 0)."""
    from scipy import stats

    if diffs.size == 0:
        return float("nan")
    d = diffs[np.abs(diffs) > TIE_TOLERANCE]   # ties dropped here, so scipy's exact test applies to them
    if d.size == 0:
        return 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # scipy's note on falling back to the normal approximation
        return float(stats.wilcoxon(d, zero_method="wilcox", alternative="two-sided").pvalue)


def compare_values(base: Mapping[str, float], other: Mapping[str, float], n_resamples: int, seed: int,
                   confidence: float) -> Dict:
    """One comparison: the paired statistics of ``other - base`` over the cases both have a value for."""
    cases = sorted(c for c in set(base) & set(other) if not math.isnan(base[c]) and not math.isnan(other[c]))
    b = np.array([base[c] for c in cases], dtype=float)
    o = np.array([other[c] for c in cases], dtype=float)
    d = o - b
    low, high, ci_method = bootstrap_ci(d, n_resamples, seed, confidence)
    return {"n_cases": len(cases), "n_unpaired": len(set(base) | set(other)) - len(cases),
            "mean_baseline": _none(float(b.mean()) if b.size else float("nan")),
            "mean_contender": _none(float(o.mean()) if o.size else float("nan")),
            "mean_diff": _none(float(d.mean()) if d.size else float("nan")),
            "ci_low": _none(low), "ci_high": _none(high), "ci_method": ci_method,
            "p_value": _none(wilcoxon_p(d)), "p_adjusted": None,
            "wins": int(np.sum(d > TIE_TOLERANCE)), "ties": int(np.sum(np.abs(d) <= TIE_TOLERANCE)),
            "losses": int(np.sum(d < -TIE_TOLERANCE)), "significant": False, "mark": ""}


def _finish(entries: List[Dict]) -> None:
    """Holm across the contenders of one metric, then the significance mark."""
    for e, p in zip(entries, holm([e["p_value"] for e in entries])):
        e["p_adjusted"] = p
        excludes_zero = e["ci_low"] is not None and (e["ci_low"] > 0 or e["ci_high"] < 0)
        e["significant"] = bool(p is not None and p < ALPHA and excludes_zero)
        e["mark"] = ("▲" if e["mean_diff"] > 0 else "▼") if e["significant"] else ""


def paired_comparison(case_rows: Sequence[Mapping], baseline: str, metrics: Optional[Sequence[str]] = None, *,
                      n_resamples: int = 10000, seed: int = 0, confidence: float = 0.95) -> Dict:
    """Every trainer against ``baseline``, per metric, paired by test case (see the module's rules).

    Args:
        case_rows: per-case rows as in the benchmark's ``per_case.csv``: keys ``trainer``, ``run``,
            ``case``, ``class`` and the metric columns (numbers, or strings as read from CSV; an
            empty string is NaN).
        baseline: the trainer every other trainer is compared with.
        metrics: metric columns to compare; default: the paper's metrics and the object metrics
            present in the rows.
        n_resamples: bootstrap resamples.
        seed: seed of the bootstrap's random generator.
        confidence: confidence level of the intervals.

    Returns:
        A JSON-serialisable dict: ``baseline``, ``metrics``, ``classes``, ``runs`` ({trainer: runs}),
        ``method`` (the procedures in words and their settings) and ``contenders``: {trainer:
        {"metrics": {metric: entry}, "per_class": {class: {metric: entry}}}} where an entry holds
        ``n_cases, n_unpaired, mean_baseline, mean_contender, mean_diff, ci_low, ci_high, ci_method,
        p_value, p_adjusted, wins, ties, losses, significant, mark`` (undefined values are None).
        ``per_class`` is filled only when there is more than one class.

    Raises:
        ValueError: if there are no rows, the baseline or a metric is missing, there is no other
            trainer, or a setting is out of range.

    Example:
        >>> rows = [{"trainer": t, "run": 1, "case": f"c{i}", "class": "fg", "dice": v}
        ...         for i in range(8) for t, v in (("base", 0.5 + 0.01 * i), ("new", 0.6 + 0.02 * i))]
        >>> c = paired_comparison(rows, "base", n_resamples=1000)
        >>> e = c["contenders"]["new"]["metrics"]["dice"]
        >>> round(e["mean_diff"], 3), e["wins"], e["ties"], e["losses"], round(e["p_value"], 4)
        (0.135, 8, 0, 0, 0.0078)
    """
    if not case_rows:
        raise ValueError("no per-case rows to compare")
    if not isinstance(n_resamples, int) or n_resamples < 100:
        raise ValueError(f"n_resamples must be an integer >= 100, got {n_resamples!r}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    columns = set().union(*(r.keys() for r in case_rows))
    if metrics is None:
        metrics = [m for m in METRICS + OBJECT_METRICS if m in columns]
    metrics = list(metrics)
    unknown = [m for m in metrics if m not in columns]
    if unknown or not metrics:
        raise ValueError(f"metrics {unknown or metrics} are not columns of the per-case rows")
    trainers = list(dict.fromkeys(str(r.get("trainer")) for r in case_rows))
    if baseline not in trainers:
        raise ValueError(f"baseline {baseline!r} is not among the trainers of the per-case rows {trainers}")
    contenders = [t for t in trainers if t != baseline]
    if not contenders:
        raise ValueError(f"the per-case rows hold only the baseline {baseline!r}: nothing to compare")
    classes = list(dict.fromkeys(str(r["class"]) for r in case_rows))
    out: Dict = {"baseline": baseline, "metrics": metrics, "classes": classes, "runs": {}, "contenders": {
        t: {"metrics": {}, "per_class": {}} for t in contenders}}
    for cls in [None] + (classes if len(classes) > 1 else []):
        for metric in metrics:
            values, runs = per_case_values(case_rows, metric, cls)
            out["runs"] = runs
            entries = []
            for t in contenders:
                e = compare_values(values.get(baseline, {}), values.get(t, {}), n_resamples, seed, confidence)
                if cls is None:
                    out["contenders"][t]["metrics"][metric] = e
                else:
                    out["contenders"][t]["per_class"].setdefault(cls, {})[metric] = e
                entries.append(e)
            _finish(entries)
    out["method"] = {
        "pairing": "per test case: contender - baseline; cases with a NaN value on either side left out",
        "per_case_value": "mean over foreground classes (NaN classes skipped); per_class: that class's value",
        "runs": "per-case values averaged over each trainer's runs first (NaN runs skipped), then paired by case",
        "bootstrap": f"BCa interval of the mean difference, scipy.stats.bootstrap over cases, {n_resamples} "
                     f"resamples, seed {seed} (numpy default_rng); percentile interval where BCa is undefined",
        "n_resamples": n_resamples, "seed": seed, "confidence": confidence,
        "test": "Wilcoxon signed-rank, scipy.stats.wilcoxon, zero_method='wilcox', alternative='two-sided'",
        "tie_tolerance": TIE_TOLERANCE,
        "correction": f"Holm across the {len(contenders)} contender(s), per metric (and per class and metric)",
        "significance": f"mark when Holm-adjusted p < {ALPHA} and the confidence interval excludes 0 "
                        f"(▲ better, ▼ worse than the baseline)",
        "alpha": ALPHA}
    return out


def _pct(v: Optional[float], decimals: int, sign: bool = False) -> str:
    if v is None:
        return "–"
    return f"{100 * v:+.{decimals}f}" if sign else f"{100 * v:.{decimals}f}"


def _p(v: Optional[float]) -> str:
    if v is None:
        return "–"
    return "<0.001" if v < 0.001 else f"{v:.3f}"


def difference_table(comparison: Mapping, decimals: int = 2, *, per_class: Sequence[str] = ("dice",)) -> str:
    """Markdown: a block per contender with the mean difference [CI], p, Holm p, W/T/L and the mark.

    Values and differences in % (percentage points); a footnote names the procedures. Rows: every
    compared metric (mean over classes), then, with several classes, the metrics in ``per_class``
    per class (the per-class Dice by default, as in the paper's table; all of them are in the dict).

    Raises:
        ValueError: if ``comparison`` is not a :func:`paired_comparison` result.
    """
    if not isinstance(comparison, Mapping) or "contenders" not in comparison or "method" not in comparison:
        raise ValueError("difference_table needs the dict returned by paired_comparison")
    base = comparison["baseline"]
    level = round(100 * comparison["method"]["confidence"])
    lines: List[str] = []
    for name, result in comparison["contenders"].items():
        rows = [(TITLES.get(m, m), e) for m, e in result["metrics"].items()]
        for cls, per in result.get("per_class", {}).items():
            rows += [(f"{TITLES.get(m, m)} ({cls})", e) for m, e in per.items() if m in per_class]
        first = rows[0][1] if rows else {"n_cases": 0}
        lines += [f"**{name}** vs **{base}** (baseline): {first['n_cases']} paired test cases; runs: "
                  f"{comparison['runs'].get(name, '?')} vs {comparison['runs'].get(base, '?')}", "",
                  f"| metric | {base} | {name} | difference [{level}% CI] | p | p (Holm) | W / T / L | |",
                  "|---|---:|---:|---:|---:|---:|:-:|:-:|"]
        for title, e in rows:
            diff = f"{_pct(e['mean_diff'], decimals, True)} [{_pct(e['ci_low'], decimals, True)}, " \
                   f"{_pct(e['ci_high'], decimals, True)}]"
            n_note = "" if e["n_cases"] == first["n_cases"] else f" (n={e['n_cases']})"
            lines.append(f"| {title}{n_note} | {_pct(e['mean_baseline'], decimals)} | "
                         f"{_pct(e['mean_contender'], decimals)} | {diff} | {_p(e['p_value'])} | "
                         f"{_p(e['p_adjusted'])} | {e['wins']} / {e['ties']} / {e['losses']} | {e['mark']} |")
        lines.append("")
    m = comparison["method"]
    lines.append(f"Values in %, differences (contender − baseline) in percentage points: mean over the paired test "
                 f"cases of the per-case value (mean over foreground classes, or that class's value in a per-class "
                 f"row; with several runs, the per-case mean over runs). {level}% CI: BCa bootstrap over cases "
                 f"({m['n_resamples']} resamples, seed {m['seed']}; the percentile interval where BCa is "
                 f"undefined, named in summary.json's ci_method). p: two-sided Wilcoxon signed-rank test (zero differences dropped); p (Holm): "
                 f"Holm-adjusted across the contenders per metric. W / T / L: cases where the contender is better "
                 f"/ tied (|difference| <= {TIE_TOLERANCE:g}) / worse. ▲/▼: Holm p < {m['alpha']} and the CI "
                 f"excludes 0.")
    return "\n".join(lines) + "\n"


__all__ = ["TIE_TOLERANCE", "ALPHA", "TITLES", "paired_comparison", "difference_table", "holm", "per_case_values",
           "bootstrap_ci", "wilcoxon_p", "compare_values"]
