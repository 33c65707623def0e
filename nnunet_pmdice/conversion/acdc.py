"""ACDC (cardiac cine MRI, 100 + 50 patients) -> nnU-Net raw dataset with the TransUNet split.

Source layout (``source`` may be ``database/``, its parent, or hold ``training/`` directly)::

    database/training/patient001/Info.cfg                  "ED: 1", "ES: 12", "Group: DCM", ...
    database/training/patient001/patient001_4d.nii.gz      the whole cine: never read
    database/training/patient001/patient001_frame01.nii.gz     the ED frame (number from Info.cfg)
    database/training/patient001/patient001_frame01_gt.nii.gz  its ground truth
    database/training/patient001/patient001_frame12(_gt).nii.gz  the ES frame
    database/testing/patient101 .. patient150/   the same (ground truth only in newer releases)

Each ED and ES frame is one case (``patient001_frame01``, ``patient001_frame12``), labels 0 background,
1 RV, 2 MYO, 3 LV. Files are read with SimpleITK, which takes the spacing from the qform: ACDC's sform is
scaled to identity (nibabel's affine says 1 x 1 x 1 mm) while the qform holds the true spacing
(about 1.5 mm in plane, 5-10 mm between slices). Outputs carry the true spacing in both forms.

Split (the paper follows TransUNet; both frames of a patient always on the same side):

- test, in imagesTs/labelsTs: the 20 patients of :data:`TRANSUNET_TEST`;
- splits_final.json: ONE fold, the 70 training patients (140 cases) against the 10 validation patients
  of :data:`TRANSUNET_VAL` (20 cases); imagesTr holds those 80 patients.

``include_testing=True`` also converts ``database/testing`` into ``imagesTsOfficial`` (and
``labelsTsOfficial`` where a patient has ground truth), kept apart from the paper's test set.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from .common import (ConversionError, ConversionResult, PathLike, case_error, destination, iter_sorted_dirs,
                     parallel_map, resolve_num_processes)
from .nifti import find_nifti, label_values, match_grid, read_image, spacing_zyx, write_image, write_label

NAME = "ACDC"
LABELS = {"background": 0, "RV": 1, "MYO": 2, "LV": 3}
#: TransUNet's test patients (the paper's 20 test scans)
TRANSUNET_TEST = tuple(f"patient{i:03d}" for i in (2, 3, 8, 9, 12, 14, 17, 24, 42, 48, 49, 53, 55, 64, 67, 79, 81,
                                                    88, 92, 95))
#: TransUNet's validation patients
TRANSUNET_VAL = tuple(f"patient{i:03d}" for i in (19, 21, 29, 33, 41, 50, 61, 71, 76, 80))
#: TransUNet's 70 training patients: the rest of patient001..patient100
TRANSUNET_TRAIN = tuple(f"patient{i:03d}" for i in range(1, 101)
                        if f"patient{i:03d}" not in TRANSUNET_TEST + TRANSUNET_VAL)
REFERENCE = ("Bernard et al., Deep Learning Techniques for Automatic MRI Cardiac Multi-Structures Segmentation and "
             "Diagnosis: Is the Problem Solved?, IEEE TMI 2018. https://www.creatis.insa-lyon.fr/Challenge/acdc/")
_PATIENT = re.compile(r"patient\d{3}")


def find_acdc_database(source: PathLike) -> Path:
    """The folder holding ``training/``: ``source``, ``source/database`` or ``source/ACDC/database``.

    Raises:
        ConversionError: no such folder.
    """
    source = Path(source)
    if not source.is_dir():
        raise ConversionError(f"missing folder: expected the unpacked ACDC archive at {source}")
    for root in (source, source / "database", source / "ACDC" / "database"):
        if (root / "training").is_dir():
            return root
    if source.name == "training" and any(_PATIENT.fullmatch(p.name) for p in source.iterdir()):
        return source.parent
    raise ConversionError(f"missing folder: expected ACDC's training/ folder in {source} or {source / 'database'}")


def read_info_cfg(patient_dir: Path) -> Dict[str, str]:
    """The ``key: value`` lines of ``Info.cfg``; ED and ES must be frame numbers.

    Raises:
        ConversionError: ``Info.cfg`` is missing or unreadable, or has no ``ED: <n>`` / ``ES: <n>`` line.
    """
    patient = patient_dir.name
    cfg = patient_dir / "Info.cfg"
    if not cfg.is_file():
        raise case_error(patient, "missing file Info.cfg (expected lines 'ED: <frame>' and 'ES: <frame>')", cfg)
    try:
        text = cfg.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise case_error(patient, f"unreadable Info.cfg: {e}", cfg) from None
    info = {}
    for line in text.splitlines():
        if ":" in line:
            key, value = line.split(":", 1)
            info[key.strip()] = value.strip()
    for key in ("ED", "ES"):
        if not re.fullmatch(r"\d+", info.get(key, "")):
            raise case_error(patient, f"Info.cfg has no frame number '{key}: <integer>' (found {info.get(key)!r})",
                             cfg)
    return info


def patient_frames(patient_dir: Path, need_label: bool) -> List[dict]:
    """The ED and ES frames of a patient: ``[{"case", "phase", "image", "label"}]`` (label None if absent).

    Raises:
        ConversionError: a frame file (or its ground truth when ``need_label``) is missing; see
            :func:`read_info_cfg`.
    """
    patient = patient_dir.name
    info = read_info_cfg(patient_dir)
    frames = []
    for phase in ("ED", "ES"):
        stem = f"{patient}_frame{int(info[phase]):02d}"
        if any(f["case"] == stem for f in frames):  # ED == ES: one case
            frames[-1]["phase"] += "+" + phase
            continue
        image = find_nifti(patient_dir, stem)
        if image is None:
            raise case_error(stem, f"missing {phase} frame: expected {stem}.nii.gz (Info.cfg: {phase}: {info[phase]})",
                             patient_dir)
        label = find_nifti(patient_dir, stem + "_gt")
        if label is None and need_label:
            raise case_error(stem, f"missing ground truth: expected {stem}_gt.nii.gz", patient_dir)
        frames.append({"case": stem, "phase": phase, "image": image, "label": label, "group": info.get("Group")})
    return frames


def convert_acdc_case(frame: dict, image_out: Path, label_out: Optional[Path]) -> dict:
    """Converts one frame (3D image and optional ground truth); returns its spacing and shape.

    Module-level so that a spawn pool can run it.

    Raises:
        ConversionError: a file cut short or unreadable, not 3D, off the image's grid, or with label values
            other than 0-3 (see :mod:`.nifti`).
    """
    case = frame["case"]
    image = read_image(frame["image"], case, ndim=3, itk_warnings=False)
    if frame["label"] is not None and label_out is not None:
        label = read_image(frame["label"], case, ndim=3, itk_warnings=False)
        label = match_grid(image, label, case, frame["image"], frame["label"])
        write_label(label_values(label, sorted(LABELS.values()), case, frame["label"]), image, label_out)
    write_image(image, image_out)
    return {"case": case, "phase": frame["phase"], "group": frame["group"],
            "spacing_zyx": spacing_zyx(image), "shape_zyx": list(image.GetSize()[::-1]),
            "source": str(frame["image"])}


def _run_case(task):
    return convert_acdc_case(*task)


def _patient_dirs(folder: Path, wanted: Optional[Tuple[str, ...]]) -> List[Path]:
    if wanted is None:
        return [p for p in iter_sorted_dirs(folder) if _PATIENT.fullmatch(p.name)]
    out = []
    for patient in wanted:
        if not (folder / patient).is_dir():
            raise case_error(patient, f"missing folder: expected the patient folder {folder / patient} "
                                      "(all 100 training patients are needed for the TransUNet split)")
        out.append(folder / patient)
    return out


def convert_acdc(source: PathLike, dataset_id: int, raw_root: Optional[PathLike] = None, *,
                 include_testing: bool = False, overwrite: bool = False, num_processes: Optional[int] = None,
                 progress: bool = True, install_split: bool = True,
                 preprocessed_root: Optional[PathLike] = None) -> ConversionResult:
    """Writes ``Dataset<id>_ACDC`` (3D cine-MRI frames, labels background/RV/MYO/LV) with the TransUNet split.

    Args:
        source: the unpacked archive (``database/``, its parent, or a folder holding ``training/``).
        dataset_id: nnU-Net dataset id, 1..999.
        raw_root: where to write the dataset (default ``$nnUNet_raw``).
        include_testing: also convert ``testing/`` (patients 101-150) into imagesTsOfficial/labelsTsOfficial.
        overwrite, num_processes, progress, install_split, preprocessed_root: as in
            :func:`~nnunet_pmdice.conversion.kvasir.convert_kvasir`.

    Returns: a :class:`~.common.ConversionResult` (train_cases: the 80 patients' frames in imagesTr).

    Raises:
        ConversionError: the source cannot be converted as it is (a missing, truncated or unreadable file,
            a case off its grid, unexpected label values ...): one line naming the case and the file.
        FileExistsError: the dataset (or its installed split) exists and ``overwrite`` is False.
        ValueError: a bad argument, no raw folder, or the dataset id used by another dataset name.

    Example:
        (on your downloaded data, not run as a test)::

            convert_acdc("~/data/ACDC/database", 502)
    """
    num_processes = resolve_num_processes(num_processes)
    database = find_acdc_database(Path(source).expanduser())
    frames = {}
    for patient_dir in _patient_dirs(database / "training", TRANSUNET_TRAIN + TRANSUNET_VAL + TRANSUNET_TEST):
        frames[patient_dir.name] = patient_frames(patient_dir, need_label=True)
    official = []
    if include_testing:
        testing = database / "testing"
        if not testing.is_dir():
            raise ConversionError(f"missing folder: include_testing asks for ACDC's testing/ at {testing}")
        official = [f for d in _patient_dirs(testing, None) for f in patient_frames(d, need_label=False)]
        if not official:
            raise ConversionError(f"no patient folders (patientNNN) in {testing}")

    def cases_of(patients):
        return [f["case"] for p in patients for f in frames[p]]

    train, val, test = cases_of(TRANSUNET_TRAIN), cases_of(TRANSUNET_VAL), cases_of(TRANSUNET_TEST)
    splits = [{"train": train, "val": val}]
    how = ("TransUNet's split of the 100 training patients, both frames (ED, ES) of a patient on the same side: "
           "test = patients " + " ".join(p[len("patient"):] for p in TRANSUNET_TEST) + "; validation (fold 0) = "
           "patients " + " ".join(p[len("patient"):] for p in TRANSUNET_VAL) + "; training = the other 70 patients.")

    dest = destination(raw_root, preprocessed_root, install_split, dataset_id, NAME, overwrite)
    with dest.staged() as tmp:
        tasks = []
        parts = [("Tr", [f for p in TRANSUNET_TRAIN + TRANSUNET_VAL for f in frames[p]]),
                 ("Ts", [f for p in TRANSUNET_TEST for f in frames[p]])]
        if official:
            parts.append(("TsOfficial", official))
        for part, part_frames in parts:
            (tmp / f"images{part}").mkdir()
            if any(f["label"] is not None for f in part_frames):
                (tmp / f"labels{part}").mkdir()
            for f in part_frames:
                label_out = tmp / f"labels{part}" / f"{f['case']}.nii.gz" if f["label"] is not None else None
                tasks.append((f, tmp / f"images{part}" / f"{f['case']}_0000.nii.gz", label_out))
        infos = parallel_map(_run_case, tasks, num_processes, desc="convert ACDC", progress=progress)
        if official:
            with_gt = sum(f["label"] is not None for f in official)
            dest.notes.append(f"{len(official)} frames of ACDC's testing/ in imagesTsOfficial "
                              f"({with_gt} with ground truth in labelsTsOfficial)")
        dest.write_metadata(
            tmp, splits=splits, test_cases=test, how=how, infos=infos,
            dataset_json=dict(channel_names={0: "cineMRI"}, labels=LABELS, num_training=len(train) + len(val),
                              file_ending=".nii.gz", reference=REFERENCE, reader_writer="SimpleITKIO",
                              description="ACDC end-diastolic (ED) and end-systolic (ES) frames with ground truth"),
            record={"dataset": "ACDC", "source": str(database.resolve()), "split": "TransUNet",
                    "train_patients": list(TRANSUNET_TRAIN), "val_patients": list(TRANSUNET_VAL),
                    "test_patients": list(TRANSUNET_TEST), "include_testing": include_testing})
    return dest.result(train + val, test, splits)
