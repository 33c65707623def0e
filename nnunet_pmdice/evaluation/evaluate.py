"""Evaluating a folder of predictions against a folder of references (``nnunet-pmdice evaluate``).

Files are read with nnU-Net's reader/writer for the dataset (the one ``dataset.json`` names, else the
one its file ending selects), so every format nnU-Net reads is supported (2D PNG, 3D NIfTI, ...),
and the spacing comes from the reference image. Classes (labels or regions) and the ignore label
come from ``dataset.json`` through nnU-Net's ``LabelManager``.

Every file is checked before it is scored, and refused with a one-line ``ValueError`` naming it
(the CLI exits with status 2 and prints that line): a file nnU-Net's reader cannot read, or a
truncated one (gzip streams are checked to their end), more than one channel (e.g. an RGB image), a shape other than the reference's,
non-integer values, or label values ``dataset.json`` does not define (e.g. a 0/255 mask; the ignore
label is allowed in references only). A prediction whose spacing differs from its reference's is
scored on the reference's grid, with a warning, and listed in ``summary.json``
(``spacing_mismatches``).
"""
from __future__ import annotations

import gzip
import json
import math
import sys
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Tuple

from .._atomic import write_json, write_text
import numpy as np

from .aggregate import CASE_COLUMNS, combine_runs, markdown_table, object_table_columns, summarize, write_csv
from .metrics import (DEFAULT_TAU, LabelOrRegion, case_metrics, class_mask, classes_from_dataset_json,
                      squeeze_spatial)
from .objects import ALPHA, BETA, GAMMA, SIZE_BINS, object_metrics

#: relative tolerance under which a prediction's spacing equals its reference's
SPACING_RTOL = 1e-4


@dataclass
class Evaluation:
    """The result of :func:`evaluate_folders`."""

    case_rows: List[Dict]
    summary: Dict
    classes: List[Tuple[str, LabelOrRegion]]
    tau: float
    tau_unit: str
    ignore_label: Optional[int] = None
    extra_predictions: List[str] = field(default_factory=list)
    spacing_mismatches: List[Dict] = field(default_factory=list)

    @property
    def nsd_unit(self) -> str:
        """Unit of the NSD tolerance: "pixels" for 2D natural images (NaturalImage2DIO), else "mm"."""
        return self.tau_unit

    def summary_json(self) -> Dict:
        return {"tau": self.tau, "tau_unit": self.tau_unit, "nsd_unit": self.tau_unit,
                "classes": [{"name": n, "label_or_region": v} for n, v in self.classes],
                "ignore_label": self.ignore_label, "extra_predictions_not_evaluated": self.extra_predictions,
                "spacing_mismatches": self.spacing_mismatches, "objects": OBJECT_METHOD, **self.summary}


#: how the object metrics were computed, written into summary.json
OBJECT_METHOD = {
    "connectivity": "full (8 in 2D, 26 in 3D), cc3d",
    "matching": "MSSEG-2016 lesion detection (Commowick et al., Sci. Rep. 2018): an object is detected when the "
                "other mask covers more than alpha of it and the objects covering it (largest overlap first, "
                "until more than gamma of the covered part) lie at most beta outside the first mask",
    "alpha": ALPHA, "beta": BETA, "gamma": GAMMA,
    "size_bins_voxels": {name: [lo, None if math.isinf(hi) else hi] for name, lo, hi in SIZE_BINS},
}


def find_dataset_json(pred_folder: Path, gt_folder: Path, dataset_json=None) -> Path:
    """``dataset_json`` if given; else the copy nnUNetv2_predict writes into the prediction folder;
    else the raw dataset's (the parent of ``labelsTs``)."""
    if dataset_json is not None:
        path = Path(dataset_json)
        if not path.is_file():
            raise FileNotFoundError(f"dataset.json {path} does not exist")
        return path
    for path in (pred_folder / "dataset.json", gt_folder.parent / "dataset.json"):
        if path.is_file():
            return path
    raise FileNotFoundError(f"no dataset.json in {pred_folder} or {gt_folder.parent}; pass --dataset-json")


def _read_seg(reader, path: Path, what: str):
    """A label map read completely by nnU-Net's reader, or a one-line ValueError naming the file.

    A gzip-compressed file (``.nii.gz``) is first decompressed to its end: ITK reads a truncated
    one without complaint, filling the missing voxels.
    """
    try:
        if path.name.endswith(".gz"):
            with gzip.open(path, "rb") as f:
                while f.read(1 << 24):
                    pass
        seg, props = reader.read_seg(str(path))
    except Exception as e:   # each reader fails its own way (RuntimeError, OSError, AssertionError, ...)
        lines = [l.strip() for l in str(e).splitlines() if l.strip()]
        detail = f"{type(e).__name__}: {lines[0][:200]}" if lines else type(e).__name__
        raise ValueError(f"{what} {path} cannot be read by nnU-Net's {type(reader).__name__} ({detail}); "
                         f"expected a complete label map") from None
    if seg.ndim < 2 or seg.shape[0] != 1:
        raise ValueError(f"{what} {path} has {seg.shape[0]} channels (array shape {seg.shape}); expected a "
                         f"single-channel label map (an RGB image is not one)")
    return seg, props


def _check_values(seg: np.ndarray, path: Path, what: str, allowed: Tuple[int, ...]) -> None:
    """Refuses non-integer values and labels ``allowed`` does not hold, naming the file."""
    values = np.unique(seg)
    bad = values[~np.isfinite(values) | (values != np.round(values))]
    if bad.size:
        raise ValueError(f"{what} {path} holds non-integer values (e.g. {bad[:3].tolist()}); expected integer "
                         f"labels {list(allowed)}")
    unknown = sorted(set(int(v) for v in values) - set(allowed))
    if unknown:
        raise ValueError(f"{what} {path} has label values {unknown[:10]} that dataset.json does not define; "
                         f"expected only {list(allowed)}")


def _evaluate_case(args) -> Tuple[List[Dict], Optional[Dict]]:
    reader_cls, ref_file, pred_file, classes, tau, ignore_label, ending, labels = args
    reader = reader_cls()
    ref, props = _read_seg(reader, ref_file, "reference")
    pred, pred_props = _read_seg(reader, pred_file, "prediction")
    if ref.shape != pred.shape:
        raise ValueError(f"prediction {pred_file} has shape {pred.shape[1:]}, reference {ref_file} has "
                         f"{ref.shape[1:]}; expected the same")
    _check_values(ref, ref_file, "reference", labels)
    _check_values(pred, pred_file, "prediction", tuple(v for v in labels if v != ignore_label))
    case = Path(ref_file).name[: -len(ending)]
    mismatch = None
    ref_spacing, pred_spacing = [float(v) for v in props["spacing"]], [float(v) for v in pred_props["spacing"]]
    if not np.allclose(ref_spacing, pred_spacing, rtol=SPACING_RTOL, atol=0):
        mismatch = {"case": case, "reference": str(ref_file), "prediction": str(pred_file),
                    "reference_spacing": ref_spacing, "prediction_spacing": pred_spacing}
    ref, spacing = squeeze_spatial(ref, props["spacing"])
    pred, _ = squeeze_spatial(pred, props["spacing"])
    metrics = case_metrics(ref, pred, classes, spacing, tau, ignore_label)
    valid = None if ignore_label is None else ref != ignore_label
    rows = []
    for name, lab in classes:
        objects = object_metrics(class_mask(ref, lab), class_mask(pred, lab), valid)
        rows.append({"case": case, "class": name, **metrics[name].as_dict(), **objects.as_dict()})
    return rows, mismatch


def dataset_labels(dataset_json: Mapping) -> Tuple[int, ...]:
    """Every label value ``dataset.json`` defines (background, classes, members of regions, ignore).

    Example:
        >>> dataset_labels({"labels": {"background": 0, "heart": [1, 2, 3], "LV": 3, "ignore": 4}})
        (0, 1, 2, 3, 4)
    """
    values = set()
    for v in dataset_json["labels"].values():
        values.update(int(x) for x in v) if isinstance(v, (list, tuple)) else values.add(int(v))
    return tuple(sorted(values))


def evaluate_folders(gt_folder, pred_folder, dataset_json=None, tau: float = DEFAULT_TAU, num_processes: int = 1,
                     progress: bool = True) -> Evaluation:
    """Per-case metrics and the paper's aggregate of every reference case in ``gt_folder``.

    Args:
        gt_folder: reference label maps (e.g. ``labelsTs``), named ``<case><file_ending>``.
        pred_folder: predictions with the same file names (e.g. the output of ``nnUNetv2_predict``).
            Every reference case needs one; predictions without a reference are listed, not evaluated.
        dataset_json: path of the dataset's ``dataset.json``; found automatically when omitted
            (see :func:`find_dataset_json`).
        tau: NSD tolerance in the units of the image spacing (mm; pixels for 2D natural images).
        num_processes: worker processes (cases are independent).
        progress: show a tqdm bar.

    Raises:
        FileNotFoundError: if a folder, ``dataset.json``, the references or a prediction is missing.
        ValueError: naming the file, if a reference or prediction cannot be read, has more than one
            channel, another shape than its reference, non-integer values or label values
            ``dataset.json`` does not define; or if an argument is out of range.

    Warns:
        UserWarning: when predictions have another spacing than their references (listed in
            ``Evaluation.spacing_mismatches``).
    """
    from nnunetv2.imageio.natural_image_reader_writer import NaturalImage2DIO
    from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_dataset_json

    gt_folder, pred_folder = Path(gt_folder), Path(pred_folder)
    for what, folder in (("reference", gt_folder), ("prediction", pred_folder)):
        if not folder.is_dir():
            raise FileNotFoundError(f"{what} folder {folder} does not exist")
    if not isinstance(num_processes, int) or num_processes < 1:
        raise ValueError(f"num_processes must be an integer >= 1, got {num_processes!r}")
    if not (tau >= 0 and tau != float("inf")):
        raise ValueError(f"tau must be a finite number >= 0, got {tau}")
    dj_path = find_dataset_json(pred_folder, gt_folder, dataset_json)
    dj = json.loads(dj_path.read_text())
    ending = dj.get("file_ending")
    if not ending:
        raise ValueError(f"{dj_path} has no 'file_ending'")
    classes, ignore_label = classes_from_dataset_json(dj)
    refs = sorted(p for p in gt_folder.iterdir() if p.name.endswith(ending) and not p.name.startswith("."))
    if not refs:
        raise FileNotFoundError(f"no reference files ending in {ending!r} in {gt_folder}")
    missing = [p.name for p in refs if not (pred_folder / p.name).is_file()]
    if missing:
        raise FileNotFoundError(f"{pred_folder} has no prediction for {len(missing)} of {len(refs)} reference "
                                f"cases, e.g. {missing[:5]}")
    ref_names = {p.name for p in refs}
    extra = sorted(p.name for p in pred_folder.iterdir() if p.name.endswith(ending) and p.name not in ref_names)
    reader_cls = determine_reader_writer_from_dataset_json(dj, str(refs[0]), verbose=False)
    labels = dataset_labels(dj)
    jobs = [(reader_cls, p, pred_folder / p.name, classes, float(tau), ignore_label, ending, labels) for p in refs]

    from tqdm import tqdm
    per_case = []
    # the bar is closed (its line ended) before an error propagates, so the error stays on a line of its own
    with tqdm(total=len(jobs), desc="evaluate", unit="case", disable=not progress, file=sys.stderr) as bar:
        if num_processes == 1:
            for j in jobs:
                per_case.append(_evaluate_case(j))
                bar.update()
        else:
            with ProcessPoolExecutor(num_processes, mp_context=get_context("spawn")) as pool:
                for result in pool.map(_evaluate_case, jobs):
                    per_case.append(result)
                    bar.update()
    rows = [r for case, _ in per_case for r in case]
    mismatches = [m for _, m in per_case if m is not None]
    if mismatches:
        m = mismatches[0]
        warnings.warn(f"{len(mismatches)} predictions have another spacing than their reference, e.g. "
                      f"{m['prediction']}: {m['prediction_spacing']} vs {m['reference_spacing']}; scored on the "
                      f"reference's grid", stacklevel=2)
    summary = summarize(rows, [n for n, _ in classes])
    unit = "pixels" if reader_cls is NaturalImage2DIO else "mm"
    return Evaluation(rows, summary, classes, float(tau), unit, ignore_label, extra, mismatches)


def write_evaluation(result: Evaluation, out_folder, title: str = "predictions") -> Dict[str, Path]:
    """Writes ``per_case.csv``, ``summary.json`` and ``table.md`` into ``out_folder`` (each atomically)."""
    out = Path(out_folder)
    paths = {"per_case": out / "per_case.csv", "summary": out / "summary.json", "table": out / "table.md"}
    write_csv(paths["per_case"], result.case_rows, CASE_COLUMNS)
    write_json(paths["summary"], result.summary_json())
    combined = {title: combine_runs([result.summary])}
    write_text(paths["table"], markdown_table(combined) + "\n" + OBJECT_TABLE_NOTE + "\n\n"
               + markdown_table(combined, columns=object_table_columns))
    return paths


#: the line above the object table
OBJECT_TABLE_NOTE = ("Object-level detection (connected components with full connectivity, matched by the MSSEG-2016 "
                     "rule; recall by reference object size: small < 100 voxels <= medium < 1000 <= large), in %, "
                     "mean over the cases where defined, then over classes:")


# ----------------------------------------------------------------------------------------------- CLI

def add_parser(sub) -> None:
    """Registers ``nnunet-pmdice evaluate``."""
    p = sub.add_parser("evaluate", help="Dice, IoU, NSD, precision and recall of a prediction folder",
                       description="Per-case metrics of every reference case and the paper's aggregate (mean "
                                   "over cases, then over foreground classes). Writes per_case.csv, summary.json "
                                   "and table.md.")
    p.add_argument("gt_folder", help="reference label maps, e.g. nnUNet_raw/DatasetXXX/labelsTs")
    p.add_argument("pred_folder", help="predictions with the same file names (nnUNetv2_predict output)")
    p.add_argument("--dataset-json", help="the dataset's dataset.json (default: PRED_FOLDER/dataset.json, "
                                          "else the one beside GT_FOLDER)")
    p.add_argument("--tau", type=float, default=DEFAULT_TAU,
                   help=f"NSD tolerance in mm (3D) or pixels (2D images) (default {DEFAULT_TAU})")
    p.add_argument("-o", "--out", help="output folder (default: PRED_FOLDER/evaluation)")
    p.add_argument("-np", "--num-processes", type=int, default=1, help="worker processes (default 1)")
    p.set_defaults(func=run_cli)


def run_cli(args) -> int:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # spacing mismatches are printed below, one line per case
        result = evaluate_folders(args.gt_folder, args.pred_folder, args.dataset_json, args.tau, args.num_processes)
    out = Path(args.out) if args.out else Path(args.pred_folder) / "evaluation"
    paths = write_evaluation(result, out, title=Path(args.pred_folder).name)
    print(paths["table"].read_text(), end="")
    print(f"NSD tolerance tau = {result.tau:g} {result.tau_unit}; {result.summary['num_cases']} cases")
    for m in result.spacing_mismatches:
        print(f"warning: prediction {m['prediction']} has spacing {m['prediction_spacing']}, its reference "
              f"{m['reference_spacing']}; scored on the reference's grid", file=sys.stderr)
    if result.extra_predictions:
        print(f"note: {len(result.extra_predictions)} predictions have no reference and were not evaluated",
              file=sys.stderr)
    for k, p in paths.items():
        print(f"{k}: {p}")
    return 0


__all__ = ["Evaluation", "evaluate_folders", "write_evaluation", "find_dataset_json", "dataset_labels"]
