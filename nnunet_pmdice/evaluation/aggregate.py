"""Aggregation as in the paper, and the writers of its tables (CSV, JSON, markdown).

The paper's numbers are, for each metric, the mean over test cases (per class), then the mean over
the foreground classes (``mDice``, ``mIoU``, ``mNSD``, ``mPrec.``, ``mRec.``), then the mean over
independent runs; the per-class Dice of multi-class datasets is shown beside them (Table 2). Cases
whose value is NaN for a class (both masks empty, see :mod:`.metrics`) do not count for that class;
a class with no counted case at all is left out of the mean over classes. Across runs the table
gives mean +- sample standard deviation (``ddof=1``; no std for a single run).

The object-level metrics (:mod:`.objects`) are aggregated the same way (mean over the cases where
they are defined, then over classes, then over runs) and shown in a second table; ``summarize``
also pools the object counts over the test set (``objects_pooled``: detected reference objects /
all reference objects, per class and size bin), the lesion-wise rate most papers report.
"""
from __future__ import annotations

import csv
import io
import math
from typing import Dict, Iterable, List, Mapping, Optional, Sequence

from .._atomic import write_text
from .metrics import METRICS
from .objects import OBJECT_COUNTS, OBJECT_METRICS, SIZE_BINS

#: column titles of the paper's tables, then of the object table
METRIC_TITLES = {"dice": "mDice", "iou": "mIoU", "nsd": "mNSD", "precision": "mPrec.", "recall": "mRec.",
                 "obj_recall": "obj. recall", "obj_precision": "obj. prec.", "obj_f1": "obj. F1",
                 "obj_recall_small": "recall small", "obj_recall_medium": "recall medium",
                 "obj_recall_large": "recall large"}

#: every aggregated metric: the paper's, then the object-level ones
ALL_METRICS = METRICS + OBJECT_METRICS

#: the columns of a per-case CSV, after any leading key columns (trainer, run); the object columns
#: are appended after the paper's so that older readers keep their column positions
CASE_COLUMNS = ("case", "class") + METRICS + ("tp", "fp", "fn", "n_ref", "n_pred") + OBJECT_METRICS + OBJECT_COUNTS


def _num(v) -> float:
    return float("nan") if v is None or v == "" else float(v)


def _mean(values: Iterable[float]) -> float:
    finite = [float(v) for v in values if v is not None and v != "" and not math.isnan(float(v))]
    return sum(finite) / len(finite) if finite else float("nan")


def _std(values: Sequence[float]) -> float:
    finite = [float(v) for v in values if v is not None and v != "" and not math.isnan(float(v))]
    if len(finite) < 2:
        return float("nan")
    m = sum(finite) / len(finite)
    return math.sqrt(sum((v - m) ** 2 for v in finite) / (len(finite) - 1))


def pooled_objects(case_rows: Sequence[Mapping], class_names: Sequence[str]) -> Dict:
    """Object counts summed over the cases, per class: ``{class: {n_ref, detected, n_pred, true_pred,
    recall, precision, n_<bin>, detected_<bin>, recall_<bin>}}`` (ratios NaN where the count is 0)."""
    out = {}
    for c in class_names:
        rows = [r for r in case_rows if r["class"] == c and r.get("obj_n_ref") not in (None, "")]
        tot = {k: sum(int(r[k]) for r in rows) for k in OBJECT_COUNTS}
        entry = {"n_ref": tot["obj_n_ref"], "detected": tot["obj_detected"], "n_pred": tot["obj_n_pred"],
                 "true_pred": tot["obj_true_pred"],
                 "recall": tot["obj_detected"] / tot["obj_n_ref"] if tot["obj_n_ref"] else float("nan"),
                 "precision": tot["obj_true_pred"] / tot["obj_n_pred"] if tot["obj_n_pred"] else float("nan")}
        for name, _, _ in SIZE_BINS:
            n, d = tot[f"obj_n_{name}"], tot[f"obj_detected_{name}"]
            entry.update({f"n_{name}": n, f"detected_{name}": d, f"recall_{name}": d / n if n else float("nan")})
        out[c] = entry
    return out


def summarize(case_rows: Sequence[Mapping], class_names: Sequence[str]) -> Dict:
    """The paper's aggregate of one set of predictions, and that of the object metrics.

    Args:
        case_rows: one row per (case, class) with keys ``case``, ``class``, the :data:`METRICS` and,
            where computed, the object metrics and counts (missing ones count as NaN).
        class_names: the foreground classes, in table order.

    Returns:
        ``{"num_cases", "classes", "per_class": {class: {metric: mean over cases}},
        "counted_cases": {class: n}, "mean": {metric: mean over classes}, "objects_pooled": {class:
        pooled object counts}}``, for every metric of :data:`ALL_METRICS`.

    Raises:
        ValueError: if there are no rows or a row names an unknown class.
    """
    if not case_rows:
        raise ValueError("no per-case results to summarize (is the prediction folder empty?)")
    unknown = {r["class"] for r in case_rows} - set(class_names)
    if unknown:
        raise ValueError(f"per-case rows name classes {sorted(unknown)} not in {list(class_names)}")
    per_class = {c: {m: _mean(r.get(m) for r in case_rows if r["class"] == c) for m in ALL_METRICS}
                 for c in class_names}
    counted = {c: sum(1 for r in case_rows if r["class"] == c and not math.isnan(_num(r["dice"])))
               for c in class_names}
    return {"num_cases": len({r["case"] for r in case_rows}), "classes": list(class_names),
            "per_class": per_class, "counted_cases": counted,
            "mean": {m: _mean(per_class[c][m] for c in class_names) for m in ALL_METRICS},
            "objects_pooled": pooled_objects(case_rows, class_names)}


def combine_runs(summaries: Sequence[Mapping]) -> Dict:
    """Mean and sample std over independent runs of :func:`summarize` results (same classes).

    Summaries written before a metric existed (no key) count as NaN for it.

    Raises:
        ValueError: if there are no summaries or they disagree on the classes.
    """
    if not summaries:
        raise ValueError("no run summaries to combine")
    classes = list(summaries[0]["classes"])
    for s in summaries[1:]:
        if list(s["classes"]) != classes:
            raise ValueError(f"runs disagree on the classes: {classes} vs {list(s['classes'])}")

    def both(values):
        values = list(values)
        return {"mean": _mean(values), "std": _std(values)}

    return {"runs": len(summaries), "classes": classes,
            "mean": {m: both(s["mean"].get(m) for s in summaries) for m in ALL_METRICS},
            "per_class": {c: {m: both(s["per_class"][c].get(m) for s in summaries) for m in ALL_METRICS}
                          for c in classes}}


def table_columns(classes: Sequence[str]) -> List[tuple]:
    """``(title, metric, class or None)`` of each value column: the m-metrics, then per-class Dice if > 1 class."""
    cols = [(METRIC_TITLES[m], m, None) for m in METRICS]
    if len(classes) > 1:
        cols += [(c, "dice", c) for c in classes]
    return cols


def object_table_columns(classes: Sequence[str]) -> List[tuple]:
    """``(title, metric, None)`` of the object table: object recall, precision, F1, recall by size."""
    return [(METRIC_TITLES[m], m, None) for m in OBJECT_METRICS]


def _cell(combined: Mapping, metric: str, cls: Optional[str]) -> Dict[str, float]:
    return combined["mean"][metric] if cls is None else combined["per_class"][cls][metric]


def markdown_table(results: Mapping[str, Mapping], baseline: Optional[str] = None, decimals: int = 2,
                   columns=table_columns) -> str:
    """The paper's table in markdown: one row per trainer (baseline first), values in %, best per column bold.

    Values are ``mean ± std`` over runs ("–" where undefined, e.g. no large object in any case) (the std only with two runs or more); with several rows, the
    best mean of each column (all metrics are higher-is-better) is bold, ties included.

    Args:
        results: ``{trainer: combine_runs(...)}``, in row order.
        baseline: the trainer shown first and marked "(baseline)".
        decimals: digits after the point.
        columns: ``classes -> [(title, metric, class or None)]``; :func:`object_table_columns` gives
            the object table.

    Raises:
        ValueError: if there are no results or the baseline is not among them.
    """
    if not results:
        raise ValueError("no results to tabulate")
    names = list(results)
    if baseline is not None:
        if baseline not in results:
            raise ValueError(f"baseline {baseline!r} is not among the results {names}")
        names = [baseline] + [n for n in names if n != baseline]
    classes = next(iter(results.values()))["classes"]
    cols = columns(classes)
    fmt = f"{{:.{decimals}f}}"
    shown = {n: ["–" if math.isnan(_cell(results[n], m, c)["mean"]) else fmt.format(100 * _cell(results[n], m, c)["mean"])
                 for _, m, c in cols] for n in names}
    best = []
    for j, (_, m, c) in enumerate(cols):
        finite = [_cell(results[n], m, c)["mean"] for n in names if not math.isnan(_cell(results[n], m, c)["mean"])]
        best.append(fmt.format(100 * max(finite)) if finite else None)
    lines = ["| Trainer | runs | " + " | ".join(t for t, _, _ in cols) + " |",
             "|---|---:|" + "---:|" * len(cols)]
    for n in names:
        cells = []
        for j, (_, m, c) in enumerate(cols):
            value = _cell(results[n], m, c)
            text = shown[n][j]
            if not math.isnan(value["std"]):
                text += " ± " + fmt.format(100 * value["std"])
            if len(names) > 1 and shown[n][j] == best[j]:
                text = f"**{text}**"
            cells.append(text)
        label = f"{n} (baseline)" if n == baseline else n
        lines.append(f"| {label} | {results[n]['runs']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def table_rows(results: Mapping[str, Mapping], baseline: Optional[str] = None) -> List[Dict]:
    """Flat rows of the table (fractions, not %), for CSV: ``trainer, baseline, runs, <col>_mean, <col>_std``."""
    rows = []
    for n, combined in results.items():
        row = {"trainer": n, "baseline": n == baseline, "runs": combined["runs"]}
        for title, m, c in table_columns(combined["classes"]):
            key = METRIC_TITLES[m].rstrip(".") if c is None else f"Dice_{c}"
            value = _cell(combined, m, c)
            row[f"{key}_mean"], row[f"{key}_std"] = value["mean"], value["std"]
        rows.append(row)
    if baseline is not None:
        rows.sort(key=lambda r: not r["baseline"])
    return rows


def csv_text(rows: Sequence[Mapping], columns: Optional[Sequence[str]] = None) -> str:
    """CSV text of dict rows; NaN is written as an empty field."""
    if not rows and columns is None:
        raise ValueError("no rows and no columns to write")
    columns = list(columns or rows[0].keys())
    out = io.StringIO()
    w = csv.DictWriter(out, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()})
    return out.getvalue()


def write_csv(path, rows: Sequence[Mapping], columns: Optional[Sequence[str]] = None):
    """Writes dict rows as CSV, atomically."""
    return write_text(path, csv_text(rows, columns))


def read_case_csv(path) -> List[Dict]:
    """Reads a per-case CSV written by :func:`write_csv` (metrics as floats, empty fields as NaN)."""
    rows = []
    with open(path, newline="", encoding="utf-8") as f:
        for r in csv.DictReader(f):
            for k in ALL_METRICS:
                if k in r or k in METRICS:
                    r[k] = float(r[k]) if r.get(k, "") != "" else float("nan")
            for k in ("tp", "fp", "fn", "n_ref", "n_pred") + OBJECT_COUNTS:
                if k in r and r[k] != "":
                    r[k] = int(r[k])
            rows.append(r)
    return rows
