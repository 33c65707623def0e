"""Evaluation as in the paper: per-case Dice, IoU, NSD, precision, recall; tables and plots.

- :mod:`.metrics`: the metrics of one class in one case, and the empty-mask rules;
- :mod:`.aggregate`: mean over cases, then over classes, then over runs; CSV/JSON/markdown writers;
- :mod:`.evaluate`: a prediction folder against a reference folder (``nnunet-pmdice evaluate``);
- :mod:`.objects`: object-level (lesion-wise) detection: recall, precision, F1, recall by object size;
- :mod:`.stats`: paired comparison of trainers with the baseline over the same test cases (bootstrap
  CI, Wilcoxon signed-rank, Holm);
- :mod:`.plots`: the benchmark's figures (matplotlib, Agg backend).
"""
from .aggregate import combine_runs, markdown_table, summarize
from .evaluate import Evaluation, evaluate_folders, write_evaluation
from .metrics import DEFAULT_TAU, METRICS, ClassMetrics, case_metrics, class_metrics, normalized_surface_dice
from .objects import OBJECT_COUNTS, OBJECT_METRICS, SIZE_BINS, ObjectMetrics, object_metrics
from .stats import difference_table, paired_comparison

__all__ = ["DEFAULT_TAU", "METRICS", "ClassMetrics", "case_metrics", "class_metrics", "normalized_surface_dice",
           "summarize", "combine_runs", "markdown_table", "Evaluation", "evaluate_folders", "write_evaluation",
           "OBJECT_METRICS", "OBJECT_COUNTS", "SIZE_BINS", "ObjectMetrics", "object_metrics", "paired_comparison",
           "difference_table"]
