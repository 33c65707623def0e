"""The training benchmark's report: the paper's table, the comparison with the baseline and the plots.

:func:`write_report` reads every finished job's evaluation (``runs/run_k/T/evaluation/summary.json`` and
``per_case.csv``) and writes into the benchmark folder:

- ``table.md``: the paper's columns (mean ± std over runs, best per column bold), then the paired
  comparison of every trainer with the baseline on the same test cases
  (:func:`nnunet_pmdice.evaluation.stats.paired_comparison`: mean per-case difference with a bootstrap
  confidence interval, Wilcoxon signed-rank test, Holm-corrected, significance marks; the test is
  named in the block's footnote), then the object-level table (object recall, precision, F1, recall
  by object size); ``table.csv`` holds the paper's columns as numbers;
- ``per_case.csv``: every job's per-case rows, with ``trainer`` and ``run`` columns;
- ``summary.json``: the combined results of every trainer, the comparison and the unfinished jobs;
- ``plots/``: ``metrics.png`` (bars), ``per_case.png`` (per-case distributions), ``overlays.png``
  (test cases from worst to best baseline Dice, as the paper's Figure 5), ``forest.png`` (the
  differences to the baseline with their intervals) and, when the trainers differ only in PM Dice's
  gamma, ``gamma_sweep.png`` (the paper's Figures 3 and 4; see :func:`gamma_sweep`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from ..fileio import building_folder, read_json, write_json, write_text
from ..evaluation.aggregate import CASE_COLUMNS, METRIC_TITLES, combine_runs, markdown_table, object_table_columns, \
    read_case_csv, table_rows, write_csv
from ..evaluation.evaluate import OBJECT_TABLE_NOTE
from ..evaluation.objects import OBJECT_METRICS
from ..evaluation.stats import TITLES, difference_table

#: default number of bootstrap resamples of the comparison with the baseline
DEFAULT_BOOTSTRAP = 10000

#: file endings of 2D natural images (nnU-Net's NaturalImage2DIO), whose NSD tolerance is in pixels;
#: only for evaluation summaries written before they recorded the unit
_NATURAL_IMAGE_ENDINGS = (".png", ".bmp", ".tif", ".jpg", ".jpeg")


# ------------------------------------------------------------------------------------- finished jobs

@dataclass
class FinishedRuns:
    """The evaluations of every finished job, gathered for the report."""

    combined: Dict[str, Dict]        # trainer -> aggregate.combine_runs(...) over its finished runs
    case_rows: List[Dict]            # per-case rows with "trainer" and "run"
    summaries: List[Dict]            # every finished job's evaluation summary.json
    unfinished: List[str]            # tags of the jobs without a result


def gather(trainers: Sequence[str], runs: int, finished: Mapping[Tuple[str, int], Path]) -> FinishedRuns:
    """Reads the evaluation of every finished job; ``finished`` maps ``(trainer, run)`` to the job folder.

    Raises:
        FileNotFoundError: a finished job's evaluation (``summary.json``, ``per_case.csv``) is missing.
    """
    combined, case_rows, all_summaries, missing = {}, [], [], []
    for trainer in trainers:
        summaries = []
        for run in range(1, runs + 1):
            folder = finished.get((trainer, run))
            if folder is None:
                missing.append(f"run {run} {trainer}")
                continue
            for name in ("summary.json", "per_case.csv"):
                if not (folder / "evaluation" / name).is_file():
                    raise FileNotFoundError(f"{folder} is marked finished (done.json) but has no evaluation/{name}; "
                                            f"delete its done.json to evaluate it again")
            summaries.append(read_json((folder / "evaluation" / "summary.json")))
            for r in read_case_csv(folder / "evaluation" / "per_case.csv"):
                case_rows.append({"trainer": trainer, "run": run, **r})
        if summaries:
            combined[trainer] = combine_runs(summaries)
            all_summaries += summaries
    return FinishedRuns(combined, case_rows, all_summaries, missing)


def nsd_unit(summaries: Sequence[Mapping], file_ending: str) -> str:
    """The unit of the NSD tolerance, as the evaluation recorded it (``nsd_unit``, earlier ``tau_unit``).

    Only for summaries that record neither is it inferred from the dataset's file ending.

    >>> nsd_unit([{"nsd_unit": "mm"}], ".png"), nsd_unit([{"tau_unit": "pixels"}], ".nii.gz")
    ('mm', 'pixels')
    >>> nsd_unit([{}], ".png")
    'pixels'
    """
    for s in summaries:
        unit = s.get("nsd_unit") or s.get("tau_unit")
        if unit:
            return unit
    return "pixels" if file_ending.lower() in _NATURAL_IMAGE_ENDINGS else "mm"


# ------------------------------------------------------------------------------------------- the report

def write_report(out: Path, settings, dataset_name: str, raw: Path, finished: Mapping[Tuple[str, int], Path],
                 say: Callable[[str], None] = print) -> Dict:
    """Table (markdown, CSV), all per-case rows, summary JSON and plots from every finished job.

    Args:
        out: the benchmark folder.
        settings: the :class:`~.runner.BenchmarkSettings` (trainers, baseline, runs, tau, ...).
        dataset_name: ``Dataset<id>_<name>``.
        raw: the dataset's raw folder (``dataset.json``, ``imagesTs``, ``labelsTs``).
        finished: ``{(trainer, run): job folder}`` of the finished jobs.
        say: where the table and the written paths are printed.

    Returns:
        The content of ``summary.json``, plus ``paths`` (what was written) when any job finished.
    """
    got = gather(settings.trainers, settings.runs, finished)
    report = {"dataset": dataset_name, "configuration": settings.configuration, "fold": settings.fold,
              "tau": settings.tau, "baseline": settings.baseline, "trainers": got.combined,
              "unfinished": got.unfinished}
    choices = None
    if getattr(settings, "protocol", False):
        choices = protocol_choices(settings.trainers, settings.runs, finished)
        report.update(configurations=list(settings.configurations), folds=list(settings.folds), protocol=choices)
    if not got.combined:
        say("no finished jobs yet: nothing to tabulate")
        return report
    baseline = settings.baseline if settings.baseline in got.combined else None
    dataset_json = read_json((raw / "dataset.json"))
    unit = nsd_unit(got.summaries, dataset_json["file_ending"])
    table = markdown_table(got.combined, baseline)
    comparison = compare_with_baseline(got, baseline, settings.bootstrap, settings.seed)
    paths = {"table": out / "table.md", "table_csv": out / "table.csv", "per_case": out / "per_case.csv",
             "summary": out / "summary.json"}
    if choices is not None:
        table = with_choice_columns(table, choices)
        where = (f"configurations {' '.join(settings.configurations)} on folds {' '.join(settings.folds)}: each "
                 f"trainer's test predictions come from the configuration or ensemble nnU-Net's "
                 f"find_best_configuration chose (column 'nnU-Net's choice') with its post-processing; 'CV Dice' is "
                 f"that choice's cross-validation mean foreground Dice as nnU-Net reports it (before -> after "
                 f"post-processing, mean over runs)")
    else:
        where = f"configuration {settings.configuration}, fold {settings.fold}"
    text = (f"{table}\nDataset {dataset_name}, {where}; "
            f"test cases: {raw / 'imagesTs'}; NSD tau = {settings.tau:g} {unit}; values in %, mean ± std over "
            f"runs; bold: best.\n")
    if choices is not None:
        text += f"\n## nnU-Net's choice per trainer and run (cross-validation)\n\n{choice_table(choices)}"
    if comparison is not None:
        text += f"\n## Difference from the baseline, paired by test case\n\n{difference_table(comparison)}"
    if has_object_metrics(got.combined):
        objects = markdown_table(got.combined, baseline, columns=object_table_columns)
        text += (f"\n## Object-level detection\n\n{objects}\n{OBJECT_TABLE_NOTE.rstrip(':')}; mean ± std over runs; "
                 f"bold: best.\n")
    write_text(paths["table"], text)
    write_csv(paths["table_csv"], table_rows(got.combined, baseline))
    write_csv(paths["per_case"], got.case_rows, ("trainer", "run") + CASE_COLUMNS)
    report["nsd_unit"] = unit
    report["comparison"] = comparison
    write_json(paths["summary"], report)
    paths.update(write_plots(out / "plots", settings, dataset_name, raw, got, finished, comparison))
    say("\n" + table)
    if comparison is not None:
        say(_marked_differences(comparison))
    if got.unfinished:
        say(f"unfinished jobs (not in the table): {', '.join(got.unfinished)}")
    for k, p in paths.items():
        say(f"{k}: {p}")
    report["paths"] = {k: str(p) for k, p in paths.items()}
    return report


# ------------------------------------------------------------------------------------ nnU-Net's protocol

def protocol_choices(trainers: Sequence[str], runs: int, finished: Mapping[Tuple[str, int], Path]) -> Dict[str, Dict]:
    """Per trainer, what ``nnUNetv2_find_best_configuration`` chose in each finished run (from ``done.json``):
    ``{trainer: {"runs": {run: {chosen, cv_dice, cv_dice_postprocessed, ...}}, "chosen": [...], "cv_dice": mean,
    "cv_dice_postprocessed": mean}}``.

    Raises:
        ValueError: a finished job's ``done.json`` has no record of the choice.
    """
    result = {}
    for trainer in trainers:
        per_run = {}
        for run in range(1, runs + 1):
            folder = finished.get((trainer, run))
            if folder is None:
                continue
            done = read_json(folder / "done.json")
            if "protocol" not in done:
                raise ValueError(f"{folder / 'done.json'} records no configuration choice: this job was not run with "
                                 f"nnU-Net's protocol (--folds); delete its done.json to finish it again")
            keep = ("chosen", "configurations", "ensemble", "cv_dice", "cv_dice_postprocessed", "cv_all",
                    "postprocessing_file")
            per_run[run] = {k: done["protocol"].get(k) for k in keep}
        if per_run:
            values = list(per_run.values())
            result[trainer] = {"runs": per_run, "chosen": list(dict.fromkeys(v["chosen"] for v in values)),
                               "cv_dice": sum(v["cv_dice"] for v in values) / len(values),
                               "cv_dice_postprocessed": sum(v["cv_dice_postprocessed"] for v in values) / len(values)}
    return result


def with_choice_columns(table: str, choices: Mapping[str, Mapping]) -> str:
    r"""The paper's table with two columns after ``runs``: nnU-Net's choice and its cross-validation Dice.

    >>> t = "| Trainer | runs | mDice |\n|---|---:|---:|\n| A (baseline) | 1 | 90.00 |"
    >>> print(with_choice_columns(t, {"A": {"chosen": ["2d"], "cv_dice": 0.8, "cv_dice_postprocessed": 0.81}}), end="")
    | Trainer | runs | nnU-Net's choice | CV Dice | mDice |
    |---|---:|---|---:|---:|
    | A (baseline) | 1 | 2d | 80.00 -> 81.00 | 90.00 |
    """
    lines = table.rstrip("\n").split("\n")
    out = []
    for i, line in enumerate(lines):
        cells = line.split("|")
        if i == 0:
            extra = ["nnU-Net's choice", "CV Dice"]
        elif i == 1:
            extra = None
            out.append(line.replace("|---|---:|", "|---|---:|---|---:|", 1))
            continue
        else:
            name = cells[1].strip()
            name = name[:-len(" (baseline)")] if name.endswith(" (baseline)") else name
            c = choices.get(name.strip("*"))
            extra = ([" / ".join(c["chosen"]), f"{100 * c['cv_dice']:.2f} -> {100 * c['cv_dice_postprocessed']:.2f}"]
                     if c else ["–", "–"])
        out.append("|".join(cells[:3] + [f" {e} " for e in extra] + cells[3:]))
    return "\n".join(out) + "\n"


def choice_table(choices: Mapping[str, Mapping]) -> str:
    """One row per trainer and run: the chosen configuration or ensemble, its cross-validation Dice before and
    after post-processing, and every candidate's cross-validation Dice, as nnU-Net reported them (in %)."""
    lines = ["| Trainer | run | nnU-Net's choice | CV Dice | CV Dice post-processed | candidates (CV Dice) |",
             "|---|---:|---|---:|---:|---|"]
    for trainer, c in choices.items():
        for run, r in sorted(c["runs"].items()):
            candidates = "; ".join(f"{_candidate(k, trainer)} {100 * v:.2f}" for k, v in (r["cv_all"] or {}).items())
            lines.append(f"| {trainer} | {run} | {r['chosen']}{' (ensemble)' if r['ensemble'] else ''} | "
                         f"{100 * r['cv_dice']:.2f} | {100 * r['cv_dice_postprocessed']:.2f} | {candidates} |")
    return "\n".join(lines) + "\n"


def _candidate(identifier: str, trainer: str) -> str:
    """``T__nnUNetPlans__2d`` -> ``2d``; nnU-Net's ensemble names -> ``2d + 3d_fullres``."""
    if identifier.startswith("ensemble___"):
        parts = identifier.split("___")[1:3]
        return " + ".join(p.split("__")[-1] for p in parts)
    return identifier.split("__")[-1]


# ---------------------------------------------------------------------------------------------- plots

def has_object_metrics(combined: Mapping[str, Mapping]) -> bool:
    """True when some trainer's evaluation has object-level metrics (evaluations written before they
    existed have none)."""
    return any(not math.isnan(_nan(c["mean"].get(m, {}).get("mean"))) for c in combined.values()
               for m in OBJECT_METRICS)


def compare_with_baseline(got: FinishedRuns, baseline: Optional[str], n_resamples: int, seed: int) -> Optional[Dict]:
    """:func:`~nnunet_pmdice.evaluation.stats.paired_comparison` of every finished trainer with the baseline,
    over the per-case rows of all their runs; None without a finished baseline and another finished trainer."""
    from ..evaluation.stats import paired_comparison

    if baseline is None or len(got.combined) < 2:
        return None
    return paired_comparison(got.case_rows, baseline, n_resamples=n_resamples, seed=seed)


def _marked_differences(comparison: Mapping) -> str:
    """One line per contender: the significant differences to the baseline (for the console)."""
    lines = []
    for name, result in comparison["contenders"].items():
        marked = [f"{TITLES.get(m, m)} {e['mark']} {100 * e['mean_diff']:+.2f}"
                  for m, e in result["metrics"].items() if e["significant"]]
        lines.append(f"{name} vs {comparison['baseline']}: "
                     f"{', '.join(marked) if marked else 'no significant difference'}")
    return "\n".join(lines)


def write_plots(folder: Path, settings, dataset_name: str, raw: Path, got: FinishedRuns,
                finished: Mapping[Tuple[str, int], Path], comparison: Optional[Mapping] = None) -> Dict[str, Path]:
    """The report's figures in ``folder``, which they replace as a whole (no figure of an earlier report
    stays); returns ``{name: path}`` of those written."""
    with building_folder(folder) as tmp:
        paths = _plots(tmp, settings, dataset_name, raw, got, finished, comparison)
    return {k: folder / p.relative_to(tmp) for k, p in paths.items()}


def _plots(folder: Path, settings, dataset_name: str, raw: Path, got: FinishedRuns,
           finished: Mapping[Tuple[str, int], Path], comparison: Optional[Mapping]) -> Dict[str, Path]:
    from ..evaluation import plots

    order = list(got.combined)
    if settings.baseline in order:
        order = [settings.baseline] + [t for t in order if t != settings.baseline]
    paths = {"plot_metrics": plots.plot_metrics({t: got.combined[t] for t in order}, folder / "metrics.png",
                                                title=f"{dataset_name} ({settings.configuration}): test set"),
             "plot_per_case": plots.plot_case_distribution(got.case_rows, order, folder / "per_case.png")}
    overlay = overlay_cases(raw, order, got.case_rows, finished, settings.runs, settings.overlay_cases)
    if overlay:
        cases, scores = overlay
        paths["plot_overlays"] = plots.plot_overlays(cases, folder / "overlays.png", scores)
    if comparison is not None:
        paths["plot_forest"] = plots.plot_forest(comparison, folder / "forest.png",
                                                 title=f"{dataset_name}: difference to {comparison['baseline']}")
    sweep = gamma_sweep(order, settings.baseline)
    if sweep is not None and all(t in got.combined for _, t in sweep.points):
        paths["plot_gamma_sweep"] = plot_gamma_sweep(sweep, got.combined, folder / "gamma_sweep.png",
                                                     baseline=got.combined.get(settings.baseline),
                                                     title=f"{dataset_name} ({settings.configuration})")
    return paths


def overlay_cases(raw: Path, order: List[str], case_rows: List[Dict], finished: Mapping[Tuple[str, int], Path],
                  runs: int, n_cases: int):
    """Cases spread over the first trainer's per-case Dice (worst to best), from the first run all trainers
    finished, as ``(cases for plots.plot_overlays, {(trainer, case): Dice})``; None when there is none."""
    from ..evaluation.images import CaseImageReader
    from ..evaluation.plots import case_means, overlay_slice

    run = next((r for r in range(1, runs + 1) if all((t, r) in finished for t in order)), None)
    if run is None or n_cases < 1:
        return None
    dice = case_means(case_rows, "dice")
    ranked = sorted((v if v == v else -1.0, case) for (t, r, case), v in dice.items()
                    if t == order[0] and r == str(run))
    n = min(n_cases, len(ranked))
    picks = list(dict.fromkeys(ranked[round(i * (len(ranked) - 1) / max(1, n - 1))][1] for i in range(n)))
    reader = CaseImageReader(raw)
    cases = []
    for case in picks:
        image, ref, preds = reader.case(case, {t: finished[(t, run)] / "predictions" for t in order})
        cases.append((case, *overlay_slice(image, ref, preds)))
    scores = {(t, c): v for (t, r, c), v in dice.items() if r == str(run)}
    return cases, scores


# ---------------------------------------------------------------------------------------- gamma sweep

#: fewest trainers on a gamma curve
MIN_SWEEP_POINTS = 3

#: the metrics of the gamma plot (the paper's Figures 3 and 4), where the evaluation has them
SWEEP_METRICS = ("dice", "precision", "recall", "obj_recall")


@dataclass(frozen=True)
class GammaSweep:
    """Trainers that differ only in one PM Dice gamma: ``option`` (``gamma`` or ``gamma_bg``) per trainer."""

    option: str
    points: Tuple[Tuple[float, str], ...]   # (gamma, trainer), by increasing gamma


def _loss_options(name: str) -> Optional[Tuple[str, Dict[str, object]]]:
    """``(base trainer, every loss option with its default filled in)`` of a PM Dice trainer name, else None."""
    from ..trainers import BASE_TRAINERS
    from ..trainers.loss_table import RECIPES
    from ..trainers.naming import TrainerNameError, parse_options

    base = name.split("_", 1)[0]
    cls = BASE_TRAINERS.get(base)
    recipe = RECIPES.get(getattr(cls, "loss_kind", "") or "")
    if recipe is None or "gamma" not in recipe.defaults:
        return None
    try:
        chosen = parse_options(name, base, cls.name_options) if name != base else {}
    except TrainerNameError:
        return None
    options = {**recipe.defaults, **chosen}
    if options.get("gamma_bg") is None and not isinstance(options["gamma"], tuple):
        options["gamma_bg"] = options["gamma"]   # no background gamma of its own: the same as the others
    return base, options


def gamma_sweep(trainers: Sequence[str], baseline: Optional[str] = None) -> Optional[GammaSweep]:
    """The gamma curve of a benchmark whose trainers (the baseline aside) differ only in one PM Dice gamma.

    The trainers must share the base trainer and every other option (budget included), take at least
    :data:`MIN_SWEEP_POINTS` values of ``gamma`` (with ``gamma_bg`` following it or fixed) or of
    ``gamma_bg`` alone, and have one gamma for all foreground classes. Names are read with the
    trainer-name grammar (:mod:`nnunet_pmdice.trainers.naming`), defaults from the trainer's loss recipe.

    >>> gamma_sweep(["nnUNetTrainer", "nnUNetTrainerPMDice_g0.5", "nnUNetTrainerPMDice",
    ...              "nnUNetTrainerPMDice_g2"], "nnUNetTrainer").points
    ((0.5, 'nnUNetTrainerPMDice_g0.5'), (1.0, 'nnUNetTrainerPMDice'), (2.0, 'nnUNetTrainerPMDice_g2'))
    >>> gamma_sweep(["nnUNetTrainerPMDice_g1_bg0", "nnUNetTrainerPMDice_g1_bg1", "nnUNetTrainerPMDice_g1_bg2"]).option
    'gamma_bg'
    >>> gamma_sweep(["nnUNetTrainerPMDice_g1", "nnUNetTrainerCEPMDice_g2", "nnUNetTrainerPMDice_g3"]) is None
    True
    """
    contenders = [t for t in trainers if t != baseline]
    if len(contenders) < MIN_SWEEP_POINTS:
        return None
    parsed = [_loss_options(t) for t in contenders]
    if any(p is None for p in parsed) or len({base for base, _ in parsed}) != 1:
        return None
    options = [o for _, o in parsed]
    if any(isinstance(o["gamma"], tuple) for o in options):
        return None
    for option in ("gamma", "gamma_bg"):
        fixed = [{k: v for k, v in o.items() if k not in (option, "gamma_bg")} for o in options]
        if option == "gamma":   # gamma_bg follows gamma (not given) or stays the same
            follows = all(o["gamma_bg"] == o["gamma"] for o in options)
            if not follows:
                fixed = [{**f, "gamma_bg": o["gamma_bg"]} for f, o in zip(fixed, options)]
        if any(f != fixed[0] for f in fixed[1:]):
            continue
        values = [float(o[option]) for o in options]
        if len(set(values)) == len(values) >= MIN_SWEEP_POINTS:
            return GammaSweep(option, tuple(sorted(zip(values, contenders))))
    return None


def plot_gamma_sweep(sweep: GammaSweep, combined: Mapping[str, Mapping], path, baseline: Optional[Mapping] = None,
                     title: str = "") -> Path:
    """mDice, mPrec., mRec. and object recall against gamma (the paper's Figures 3 and 4), in %.

    Args:
        sweep: the trainers on the curve (:func:`gamma_sweep`).
        combined: ``{trainer: aggregate.combine_runs(...)}``; error bars are the std over runs.
        path: the PNG to write.
        baseline: the baseline's combined result, drawn as dashed horizontal lines.
        title: the figure's title (the dataset).
    """
    from ..evaluation.plots import pyplot, save_figure
    plt = pyplot()

    first = combined[sweep.points[0][1]]["mean"]
    metrics = [m for m in SWEEP_METRICS if m in first]
    titles = {**METRIC_TITLES, "obj_recall": TITLES["obj_recall"]}
    xs = [g for g, _ in sweep.points]
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for i, m in enumerate(metrics):
        colour = f"C{i}"
        means = [100 * _nan(combined[t]["mean"][m]["mean"]) for _, t in sweep.points]
        stds = [100 * _nan(combined[t]["mean"][m]["std"], 0.0) for _, t in sweep.points]
        ax.errorbar(xs, means, yerr=stds, marker="o", capsize=3, color=colour, label=titles.get(m, m))
        if baseline is not None and m in baseline["mean"]:
            ax.axhline(100 * _nan(baseline["mean"][m]["mean"]), color=colour, ls="--", lw=1, alpha=0.7)
    if baseline is not None:
        ax.plot([], [], color="0.4", ls="--", lw=1, label="baseline (nnU-Net)")
    ax.set_xlabel("background gamma" if sweep.option == "gamma_bg" else "gamma")
    ax.set_ylabel("%  (mean over runs; error bar: std)")
    ax.set_xticks(xs)
    ax.set_xticklabels([f"{g:g}" for g in xs])
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    ax.set_title(f"{title}: PM Dice {'background ' if sweep.option == 'gamma_bg' else ''}gamma".lstrip(": "))
    fig.tight_layout()
    return save_figure(fig, path, tight=False)


def _nan(value, default: float = math.nan) -> float:
    return default if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)
