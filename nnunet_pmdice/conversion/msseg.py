"""MSSEG (multiple sclerosis lesions, 3D MRI) -> nnU-Net raw dataset, three source layouts.

The paper's dataset (15 scans, 5 modalities, expert consensus, 9 train / 6 test) is the MICCAI 2016
MSSEG training set, written as ``Dataset<id>_MSSEG2016`` from either of its layouts:

- challenge layout (``source`` may be ``Training/`` or the folder holding it)::

      Training/Center_01/Patient_01/Preprocessed_Data/{FLAIR,T1,T2,DP,GADO}_preprocessed.nii.gz
      Training/Center_01/Patient_01/Masks/Consensus.nii.gz  (+ ManualSegmentation_1..7, Raw_Data/: unused)

  centres 01, 07, 08 with 5 patients each; case ids ``center01_patient01``;
- flat layout of the 2021 full re-release, one folder per patient (its name is the case id; its first
  two digits, when digits, are the centre)::

      01016SACH/{3DFLAIR,3DT1,T2,DP,3DT1GADO,Consensus}.nii(.gz)

Channels FLAIR, T1, T2, DP, GADO (0000..0004); all must be on the FLAIR grid (co-registered); labels
background / lesion.

MSSEG-2 (MICCAI 2021, new lesions between two time points) is a second dataset,
``Dataset<id>_MSSEG2``::

      <case>/flair_time01_on_middle_space.nii.gz, flair_time02_on_middle_space.nii.gz, ground_truth.nii.gz

channels FLAIR_time01, FLAIR_time02, labels background / new_lesion; many cases have an empty ground
truth (kept: nnU-Net trains on them).

Split: no public 9/6 split exists, so a seeded one, stratified by centre: in each centre,
``round(0.4 * n)`` patients drawn as test (2 of 5: 6 of the 15 scans), seed 12345 by default; cases
without a centre form one group. ``test_list`` overrides it. Training folds: nnU-Net's own seeded
5-fold cross-validation of the training cases.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import List, Optional, Tuple

from .common import (DEFAULT_SEED, ConversionError, ConversionResult, PathLike, case_error, check_case_id,
                     cross_validation_folds, destination, parallel_map, read_case_list, resolve_num_processes,
                     seeded_test_split, split_by_list)
from .nifti import NIFTI_ENDINGS, find_nifti, label_values, match_grid, read_image, write_image, write_label

LAYOUTS = ("auto", "2016", "2016-flat", "msseg2")
#: channel name -> file stems accepted for it, challenge layout first
MSSEG2016_CHANNELS = {
    "FLAIR": ("FLAIR_preprocessed", "3DFLAIR", "FLAIR"),
    "T1": ("T1_preprocessed", "3DT1", "T1"),
    "T2": ("T2_preprocessed", "T2"),
    "DP": ("DP_preprocessed", "DP"),
    "GADO": ("GADO_preprocessed", "3DT1GADO", "GADO"),
}
MSSEG2_CHANNELS = {"FLAIR_time01": ("flair_time01_on_middle_space",),
                   "FLAIR_time02": ("flair_time02_on_middle_space",)}
REFERENCE_2016 = ("Commowick et al., Multiple sclerosis lesions segmentation from multiple experts: the MICCAI 2016 "
                  "challenge dataset, NeuroImage 2021. https://portal.fli-iam.irisa.fr/msseg-challenge/")
REFERENCE_2 = ("Commowick et al., MSSEG-2 challenge proceedings: Multiple sclerosis new lesions segmentation "
               "challenge, MICCAI 2021. https://portal.fli-iam.irisa.fr/msseg-2/")
DEFAULT_TEST_FRACTION = 0.4


class MssegCase(dict):
    """``{"case", "group", "channels": [paths in channel order], "label": path, "layout"}``."""


def _find_labelled_dirs(root: Path, label_stem: str) -> List[Path]:
    """Folders holding ``<label_stem>.nii(.gz)``, at most four levels below ``root``."""
    out = set()
    for ending in NIFTI_ENDINGS:
        for depth in range(0, 5):
            for p in root.glob("/".join(["*"] * depth + [label_stem + ending])):
                if not any(part.startswith(".") for part in p.relative_to(root).parts):
                    out.add(p.parent)
    return sorted(out)


def _check_siblings(case_dirs: List[Path], expected: str) -> None:
    """Every folder with NIfTI files beside the case folders must be a case too (incomplete ones are errors)."""
    for parent in sorted({d.parent for d in case_dirs}):
        for sub in sorted(p for p in parent.iterdir() if p.is_dir() and not p.name.startswith(".")):
            if sub not in case_dirs and any(sub.glob("*.nii*")):
                raise case_error(sub.name, f"missing file: expected {expected} in this case folder", sub)


def _msseg2016_case(label_dir: Path) -> MssegCase:
    """A 2016 case from the folder holding its Consensus file (``Masks/`` or the patient folder itself)."""
    patient_dir = label_dir.parent if label_dir.name == "Masks" else label_dir
    centre_dir = patient_dir.parent
    m_p, m_c = re.fullmatch(r"Patient_(\d+)", patient_dir.name), re.fullmatch(r"Center_(\d+)", centre_dir.name)
    if m_p and m_c:
        layout, case, group = "2016", f"center{m_c.group(1)}_patient{m_p.group(1)}", m_c.group(1)
        search = [patient_dir / "Preprocessed_Data", patient_dir]
    else:
        layout, case = "2016-flat", patient_dir.name
        group = case[:2] if re.match(r"\d\d", case) else None
        search = [patient_dir, patient_dir / "Preprocessed_Data"]
    check_case_id(case, patient_dir)
    channels = []
    for channel, stems in MSSEG2016_CHANNELS.items():
        found = next((p for folder in search for s in stems if (p := find_nifti(folder, s)) is not None), None)
        if found is None:
            raise case_error(case, f"missing {channel} image: expected one of "
                                   f"{', '.join(s + '.nii.gz' for s in stems)} in {search[0]}", patient_dir)
        channels.append(found)
    return MssegCase(case=case, group=group, channels=channels, label=find_nifti(label_dir, "Consensus"),
                     layout=layout)


def _msseg2_case(case_dir: Path) -> MssegCase:
    case = check_case_id(case_dir.name, case_dir)
    channels = []
    for channel, (stem,) in MSSEG2_CHANNELS.items():
        p = find_nifti(case_dir, stem)
        if p is None:
            raise case_error(case, f"missing {channel} image: expected {stem}.nii.gz", case_dir)
        channels.append(p)
    label = find_nifti(case_dir, "ground_truth")
    if label is None:
        raise case_error(case, "missing ground truth: expected ground_truth.nii.gz (the consensus)", case_dir)
    return MssegCase(case=case, group=None, channels=channels, label=label, layout="msseg2")


def find_msseg_cases(source: PathLike, layout: str = "auto") -> Tuple[str, List[MssegCase]]:
    """(layout, cases) found under ``source``; ``layout`` is one of :data:`LAYOUTS` (``auto`` detects it).

    For the 2016 layouts, a ``Training/`` folder under ``source`` is used when there is one.

    Raises:
        ValueError: ``layout`` is not one of :data:`LAYOUTS`.
        ConversionError: no case, an incomplete case (a missing modality or ground truth), two layouts
            mixed, another layout than ``layout``, or a case id found twice.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    source = Path(source)
    if not source.is_dir():
        raise ConversionError(f"missing folder: expected the unpacked MSSEG data at {source}")
    msseg2 = sorted({p.parent for p in source.glob("*/flair_time01_on_middle_space.nii*")}
                    | {p.parent for p in source.glob("*/*/flair_time01_on_middle_space.nii*")})
    root2016 = source / "Training" if (source / "Training").is_dir() else source
    dirs2016 = [] if layout == "msseg2" else _find_labelled_dirs(root2016, "Consensus")
    if layout == "auto":
        if msseg2 and dirs2016:
            raise ConversionError(f"{source} holds both MSSEG-2 cases (e.g. {msseg2[0]}) and MSSEG-2016 cases "
                                  f"(e.g. {dirs2016[0]}); point it at one dataset or pass layout")
        if not msseg2 and not dirs2016:
            raise ConversionError(f"no MSSEG case found in {source}: expected Center_XX/Patient_YY/Masks/"
                                  "Consensus.nii.gz (MSSEG-2016), <patient>/Consensus.nii.gz (2021 re-release) or "
                                  "<case>/flair_time01_on_middle_space.nii.gz (MSSEG-2)")
    if layout == "msseg2" or (layout == "auto" and msseg2):
        if not msseg2:
            raise ConversionError(f"no MSSEG-2 case in {source}: expected <case>/flair_time01_on_middle_space.nii.gz")
        _check_siblings(msseg2, "flair_time01_on_middle_space.nii.gz")
        return "msseg2", [_msseg2_case(d) for d in msseg2]
    if not dirs2016:
        raise ConversionError(f"no MSSEG-2016 case in {root2016}: expected Consensus.nii.gz in each patient's "
                              "Masks/ folder (or patient folder)")
    cases = [_msseg2016_case(d) for d in dirs2016]
    # patients whose Consensus is missing are errors, not skipped
    patient_dirs = [d.parent if d.name == "Masks" else d for d in dirs2016]
    for centre in sorted(root2016.glob("Center_*")):
        for patient in sorted(centre.glob("Patient_*")):
            if patient not in patient_dirs:
                raise case_error(f"{centre.name}/{patient.name}", "missing ground truth: expected "
                                 "Masks/Consensus.nii.gz", patient)
    if any(c["layout"] == "2016-flat" for c in cases):
        _check_siblings(patient_dirs, "Consensus.nii.gz")
    found = {c["layout"] for c in cases}
    if layout != "auto" and found != {layout}:
        raise ConversionError(f"{source} holds the {'/'.join(sorted(found))} layout, not {layout}")
    if len(found) > 1:
        raise ConversionError(f"{source} mixes the 2016 challenge layout and the flat 2021 layout; convert them apart")
    ids = [c["case"] for c in cases]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})
        raise ConversionError(f"case ids found twice under {source}: {', '.join(dup)}")
    return found.pop(), sorted(cases, key=lambda c: c["case"])


def convert_msseg_case(case: MssegCase, images_out: List[Path], label_out: Path) -> dict:
    """Converts one case: every channel on the grid of the first, label values 0/1. Module-level (spawn pool).

    Raises:
        ConversionError: a file cut short or unreadable, a channel or the ground truth off the first
            channel's grid, or label values other than 0/1 (see :mod:`.nifti`).
    """
    name = case["case"]
    first = read_image(case["channels"][0], name)
    images = [first] + [match_grid(first, read_image(p, name), name, case["channels"][0], p)
                        for p in case["channels"][1:]]
    label = match_grid(first, read_image(case["label"], name), name, case["channels"][0], case["label"])
    array = label_values(label, [0, 1], name, case["label"])
    for image, out in zip(images, images_out):
        write_image(image, out)
    write_label(array, first, label_out)
    return {"case": name, "group": case["group"], "lesion_voxels": int(array.sum()),
            "spacing_zyx": [float(s) for s in first.GetSpacing()[::-1]], "shape_zyx": list(first.GetSize()[::-1]),
            "source": [str(p) for p in case["channels"]] + [str(case["label"])]}


def _run_case(task):
    return convert_msseg_case(*task)


def convert_msseg(source: PathLike, dataset_id: int, raw_root: Optional[PathLike] = None, *, layout: str = "auto",
                  test_list: Optional[PathLike] = None, test_fraction: float = DEFAULT_TEST_FRACTION,
                  seed: int = DEFAULT_SEED, overwrite: bool = False, num_processes: Optional[int] = None,
                  progress: bool = True, install_split: bool = True,
                  preprocessed_root: Optional[PathLike] = None) -> ConversionResult:
    """Writes ``Dataset<id>_MSSEG2016`` (5 channels) or ``Dataset<id>_MSSEG2`` (2 channels) and its split.

    Args:
        source: the unpacked data (see the module docstring for the layouts).
        dataset_id: nnU-Net dataset id, 1..999.
        raw_root: where to write the dataset (default ``$nnUNet_raw``).
        layout: ``auto`` (detect), ``2016``, ``2016-flat`` or ``msseg2``.
        test_list: text file of test case ids (overrides the seeded split).
        test_fraction, seed: the seeded split, stratified by centre (default 0.4: 2 of 5 patients per centre).
        overwrite, num_processes, progress, install_split, preprocessed_root: as in
            :func:`~nnunet_pmdice.conversion.kvasir.convert_kvasir`.

    Returns: a :class:`~.common.ConversionResult`.

    Raises:
        ConversionError: the source cannot be converted as it is (a missing, truncated or unreadable file,
            a case off its grid, unexpected label values ...): one line naming the case and the file.
        FileExistsError: the dataset (or its installed split) exists and ``overwrite`` is False.
        ValueError: a bad argument, no raw folder, or the dataset id used by another dataset name.

    Example:
        (on your downloaded data, not run as a test)::

            convert_msseg("~/data/MSSEG2016/Training", 503)
    """
    num_processes = resolve_num_processes(num_processes)
    layout, cases = find_msseg_cases(Path(source).expanduser(), layout)
    by_id = {c["case"]: c for c in cases}
    ids = sorted(by_id)
    if test_list is not None:
        train, test = split_by_list(ids, read_case_list(test_list), test_list)
        how = f"Test cases: the {len(test)} cases listed in `{test_list}`."
    else:
        groups = {c["case"]: c["group"] for c in cases}
        train, test = seeded_test_split(ids, test_fraction, seed, groups)
        strat = "in each centre" if any(g is not None for g in groups.values()) else "of all cases"
        how = (f"Test cases: round({test_fraction:g} x n) cases drawn at random {strat} (numpy default_rng, "
               f"seed {seed}): {', '.join(test)}.")
    splits = cross_validation_folds(train)
    how += (f" Training folds: nnU-Net's own seeded {len(splits)}-fold cross-validation over the {len(train)} "
            "training cases (`generate_crossval_split`, seed 12345).")

    is2 = layout == "msseg2"
    channels = MSSEG2_CHANNELS if is2 else MSSEG2016_CHANNELS
    dest = destination(raw_root, preprocessed_root, install_split, dataset_id, "MSSEG2" if is2 else "MSSEG2016",
                       overwrite)
    with dest.staged() as tmp:
        tasks = []
        for part, part_ids in (("Tr", train), ("Ts", test)):
            (tmp / f"images{part}").mkdir()
            (tmp / f"labels{part}").mkdir()
            for c in part_ids:
                tasks.append((by_id[c], [tmp / f"images{part}" / f"{c}_{i:04d}.nii.gz" for i in range(len(channels))],
                              tmp / f"labels{part}" / f"{c}.nii.gz"))
        infos = parallel_map(_run_case, tasks, num_processes, desc=f"convert {'MSSEG-2' if is2 else 'MSSEG-2016'}",
                             progress=progress)
        empty = sorted(i["case"] for i in infos if i["lesion_voxels"] == 0)
        if empty:
            dest.notes.append(f"{len(empty)} case(s) with an empty ground truth: {', '.join(empty[:10])}")
        dest.write_metadata(
            tmp, splits=splits, test_cases=test, how=how, infos=infos,
            dataset_json=dict(channel_names=dict(enumerate(channels)),
                              labels={"background": 0, "new_lesion" if is2 else "lesion": 1},
                              num_training=len(train), file_ending=".nii.gz",
                              reference=REFERENCE_2 if is2 else REFERENCE_2016, reader_writer="SimpleITKIO",
                              description=("MSSEG-2 new MS lesions, two FLAIR time points" if is2 else
                                           "MSSEG-2016 MS lesions, 5 co-registered modalities, expert consensus")
                              + f" ({layout} layout)"),
            record={"dataset": "MSSEG-2" if is2 else "MSSEG-2016", "layout": layout,
                    "source": str(Path(source).expanduser().resolve()),
                    "test_list": str(test_list) if test_list is not None else None,
                    "test_fraction": None if test_list is not None else test_fraction,
                    "seed": None if test_list is not None else seed, "test": test})
    return dest.result(train, test, splits)
