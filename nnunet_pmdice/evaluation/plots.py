"""The benchmark's figures as PNG files (matplotlib, Agg backend: no display needed).

- :func:`plot_metrics`: the table's columns as grouped bars per trainer, with the std over runs as
  error bars;
- :func:`plot_case_distribution`: per-case Dice and NSD of every trainer (box plot plus the cases);
- :func:`plot_forest`: paired differences to the baseline with their confidence intervals;
- :func:`plot_overlays`: a few test cases per trainer with true positives green, false positives
  red and false negatives blue, as in the paper's Figure 5.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from ..fileio import writing_file
from .aggregate import table_columns

#: colours of the overlay figure (RGB in [0, 1])
OVERLAY_COLOURS = {"tp": (0.1, 0.8, 0.1), "fp": (0.9, 0.1, 0.1), "fn": (0.1, 0.3, 1.0)}


def pyplot():
    import matplotlib
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    return plt


def save_figure(fig, path, tight: bool = True) -> Path:
    """Saves ``fig`` as a PNG at ``path`` atomically (:func:`nnunet_pmdice.fileio.writing_file`) and closes it."""
    path = Path(path)
    with writing_file(path) as tmp:
        fig.savefig(tmp, dpi=120, bbox_inches="tight" if tight else None)
    pyplot().close(fig)
    return path


def plot_metrics(results: Mapping[str, Mapping], path, title: str = "") -> Path:
    """Grouped bars: one group per table column (mDice ... per-class Dice), one bar per trainer, in %.

    Args:
        results: ``{trainer: aggregate.combine_runs(...)}`` in legend order (baseline first).
        path: the PNG to write.

    Raises:
        ValueError: if ``results`` is empty.
    """
    if not results:
        raise ValueError("no results to plot")
    plt = pyplot()
    names = list(results)
    cols = table_columns(next(iter(results.values()))["classes"])
    width = 0.8 / len(names)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * len(cols) * max(1, len(names)) ** 0.5 + 2), 4.2))
    lows = []
    for i, n in enumerate(names):
        cells = [results[n]["mean"][m] if c is None else results[n]["per_class"][c][m] for _, m, c in cols]
        means = np.array([100 * v["mean"] for v in cells], dtype=float)
        stds = np.array([0.0 if math.isnan(v["std"]) else 100 * v["std"] for v in cells])
        x = np.arange(len(cols)) + (i - (len(names) - 1) / 2) * width
        bars = ax.bar(x, np.nan_to_num(means), width, yerr=stds, capsize=3, label=f"{n} (runs: {results[n]['runs']})")
        for b, v in zip(bars, means):
            if not math.isnan(v):
                ax.annotate(f"{v:.1f}", (b.get_x() + b.get_width() / 2, v), ha="center", va="bottom", fontsize=7,
                            xytext=(0, 2), textcoords="offset points")
        lows.extend(list(means[~np.isnan(means)] - stds[~np.isnan(means)]))
    ax.set_xticks(np.arange(len(cols)))
    ax.set_xticklabels([t for t, _, _ in cols])
    ax.set_ylabel("%  (mean over runs; error bar: std)")
    low = max(0.0, (min(lows) if lows else 0.0) - 10)
    ax.set_ylim(5 * math.floor(low / 5), 102)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title(title or "Test-set metrics per trainer")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    out = save_figure(fig, path)
    return out


def case_means(case_rows: Sequence[Mapping], metric: str) -> Dict[Tuple[str, str, str], float]:
    """``{(trainer, run, case): mean over classes}`` of one metric (NaN classes skipped)."""
    acc: Dict[Tuple[str, str, str], List[float]] = {}
    for r in case_rows:
        v = float(r[metric])
        key = (str(r["trainer"]), str(r["run"]), str(r["case"]))
        acc.setdefault(key, [])
        if not math.isnan(v):
            acc[key].append(v)
    return {k: (sum(v) / len(v) if v else float("nan")) for k, v in acc.items()}


def plot_case_distribution(case_rows: Sequence[Mapping], trainers: Sequence[str], path,
                           metrics: Sequence[str] = ("dice", "nsd")) -> Path:
    """Box plots of the per-case values (mean over classes) of each trainer, every run's cases pooled.

    Args:
        case_rows: per-case rows with keys ``trainer``, ``run``, ``case`` and the metrics.
        trainers: the trainers in plot order.
        path: the PNG to write.
    """
    plt = pyplot()
    titles = {"dice": "Dice", "iou": "IoU", "nsd": "NSD", "precision": "precision", "recall": "recall"}
    fig, axes = plt.subplots(1, len(metrics), figsize=(max(5.0, 1.6 * len(trainers) + 1) * len(metrics) / 1.4, 4.2),
                             squeeze=False)
    rng = np.random.default_rng(0)
    for ax, metric in zip(axes[0], metrics):
        means = case_means(case_rows, metric)
        data = [np.array([100 * v for (t, _, _), v in means.items() if t == tr and not math.isnan(v)]) for tr in trainers]
        ax.boxplot([d if d.size else np.array([np.nan]) for d in data], showfliers=False)
        for i, d in enumerate(data, start=1):
            ax.scatter(i + rng.uniform(-0.15, 0.15, d.size), d, s=9, alpha=0.6, color="k", zorder=3)
        ax.set_xticks(range(1, len(trainers) + 1))
        ax.set_xticklabels([_short(t) for t in trainers], rotation=20, ha="right", fontsize=8)
        ax.set_ylabel(f"per-case {titles.get(metric, metric)} (%)")
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle("Per-case distribution over the test cases (all runs)")
    fig.tight_layout()
    out = save_figure(fig, path)
    return out


def _short(name: str, width: int = 28) -> str:
    return name if len(name) <= width else name[: width - 1] + "…"


def display_image(image: np.ndarray) -> np.ndarray:
    """(C, H, W) -> RGB (3 channels, e.g. a PNG) or the first channel, each scaled to [0, 1] by percentiles."""
    if image.shape[0] == 3:
        img = np.moveaxis(image, 0, -1).astype(np.float64)
    else:
        img = image[0].astype(np.float64)
    lo, hi = np.percentile(img, (1, 99))
    return np.clip((img - lo) / max(hi - lo, 1e-8), 0, 1)


def error_overlay(reference: np.ndarray, prediction: np.ndarray) -> np.ndarray:
    """RGBA overlay of a 2D label map pair: true positives green, false positives red, false negatives blue.

    A foreground pixel predicted with the wrong class counts as a false positive (of the predicted
    class); a foreground pixel predicted as background is a false negative.

    Raises:
        ValueError: if the two label maps differ in shape.
    """
    if reference.shape != prediction.shape:
        raise ValueError(f"reference {reference.shape} and prediction {prediction.shape} differ in shape")
    out = np.zeros(reference.shape + (4,))
    masks = {"tp": (reference > 0) & (prediction == reference), "fp": (prediction > 0) & (prediction != reference),
             "fn": (reference > 0) & (prediction == 0)}
    for key, m in masks.items():
        out[m, :3] = OVERLAY_COLOURS[key]
        out[m, 3] = 0.55
    return out


def overlay_slice(image: np.ndarray, reference: np.ndarray, predictions: Mapping[str, np.ndarray]):
    """Picks the 2D view of one case: the whole image (2D) or the axis-0 slice with most reference foreground.

    Args:
        image: ``(C, *spatial)`` as nnU-Net's reader returns it.
        reference: ``(1, *spatial)`` or ``spatial`` label map; predictions likewise.

    Returns:
        ``(display image (H, W) or (H, W, 3) in [0, 1], reference (H, W), {trainer: prediction (H, W)})``.
    """
    ref = reference[0] if reference.ndim == image.ndim else reference
    preds = {k: (v[0] if v.ndim == image.ndim else v) for k, v in predictions.items()}
    if ref.shape[0] == 1:
        k = 0
    else:
        counts = (ref > 0).reshape(ref.shape[0], -1).sum(1)
        k = int(np.argmax(counts)) if counts.max() > 0 else ref.shape[0] // 2
    return display_image(image[:, k]), ref[k], {t: p[k] for t, p in preds.items()}


def plot_overlays(cases: Sequence[Tuple[str, np.ndarray, np.ndarray, Mapping[str, np.ndarray]]], path,
                  scores: Optional[Mapping[Tuple[str, str], float]] = None) -> Path:
    """The paper's Figure 5: rows are test cases; columns the image with its reference, then each trainer.

    Args:
        cases: ``(case id, display image, reference (H, W), {trainer: prediction (H, W)})`` as made by
            :func:`overlay_slice`.
        path: the PNG to write.
        scores: optional ``{(trainer, case): Dice}`` shown in the panel titles.

    Raises:
        ValueError: if ``cases`` is empty.
    """
    if not cases:
        raise ValueError("no cases to show")
    plt = pyplot()
    trainers = list(cases[0][3])
    ncol = 1 + len(trainers)
    fig, axes = plt.subplots(len(cases), ncol, figsize=(2.6 * ncol, 2.6 * len(cases) + 0.5), squeeze=False)
    for row, (case, img, ref, preds) in enumerate(cases):
        cmap = None if img.ndim == 3 else "gray"
        axes[row, 0].imshow(img, cmap=cmap)
        axes[row, 0].imshow(error_overlay(ref, ref))
        axes[row, 0].set_title(f"{case}\nreference", fontsize=8)
        for j, t in enumerate(trainers, start=1):
            axes[row, j].imshow(img, cmap=cmap)
            axes[row, j].imshow(error_overlay(ref, preds[t]))
            score = "" if scores is None or (t, case) not in scores else f"\nDice {100 * scores[(t, case)]:.1f}"
            axes[row, j].set_title(_short(t, 34) + score, fontsize=8)
    for ax in axes.ravel():
        ax.set_axis_off()
    fig.suptitle("green: true positive   red: false positive   blue: false negative", fontsize=9)
    fig.tight_layout()
    out = save_figure(fig, path)
    return out


def plot_forest(comparison: Mapping, path, title: str = "") -> Path:
    """Forest plot of a :func:`.stats.paired_comparison`: per metric (rows) and contender (markers), the
    mean per-case difference to the baseline with its confidence interval, in percentage points.

    A vertical line marks 0 (no difference); filled markers are significant (the comparison's rule).

    Args:
        comparison: the dict returned by :func:`.stats.paired_comparison`.
        path: the PNG to write.
        title: figure title (default: "difference to <baseline>").

    Raises:
        ValueError: if ``comparison`` is not a paired comparison or holds no contender.
    """
    from .stats import TITLES

    if not isinstance(comparison, Mapping) or not comparison.get("contenders") or "metrics" not in comparison:
        raise ValueError("plot_forest needs the dict returned by paired_comparison, with at least one contender")
    plt = pyplot()
    names = list(comparison["contenders"])
    metrics = list(comparison["metrics"])
    step = 0.8 / max(1, len(names))
    fig, ax = plt.subplots(figsize=(7.0, 0.9 + 0.35 * len(metrics) * max(1, len(names)) ** 0.7 + 0.4))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for k, name in enumerate(names):
        colour = colours[k % len(colours)]
        for i, metric in enumerate(metrics):
            e = comparison["contenders"][name]["metrics"].get(metric)
            if e is None or e["mean_diff"] is None:
                continue
            y = i + (k - (len(names) - 1) / 2) * step
            if e["ci_low"] is not None:
                ax.plot([100 * e["ci_low"], 100 * e["ci_high"]], [y, y], color=colour, lw=2)
            ax.plot(100 * e["mean_diff"], y, "o", color=colour, mfc=colour if e["significant"] else "white", ms=6)
    ax.axvline(0, color="k", lw=1)
    ax.set_yticks(range(len(metrics)))
    ax.set_yticklabels([TITLES.get(m, m) for m in metrics])
    ax.invert_yaxis()
    level = round(100 * comparison["method"]["confidence"])
    ax.set_xlabel(f"contender − {comparison['baseline']} (percentage points; mean over cases, {level}% CI)")
    ax.grid(axis="x", alpha=0.3)
    from matplotlib.lines import Line2D
    handles = [Line2D([], [], color=colours[k % len(colours)], marker="o", lw=2, label=name)
               for k, name in enumerate(names)]
    ax.legend(handles=handles, fontsize=8, loc="best", title="filled marker: significant", title_fontsize=7)
    ax.set_title(title or f"Paired difference to {comparison['baseline']}")
    fig.tight_layout()
    out = save_figure(fig, path)
    return out
