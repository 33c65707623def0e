"""Tiny copies of the paper's three datasets, in each archive's exact layout, with their quirks.

- Kvasir-SEG: RGB JPEG images of varying sizes, masks as lossy JPEGs (gray values other than 0/255 from
  compression noise; every third mask saved as a 3-channel JPEG), ``kavsir_bboxes.json`` (sic); or the
  masks of PNG re-releases (``<id>.png`` beside ``<id>.jpg`` images, stored 0/1 or 0/255).
- ACDC: ``database/training/patientNNN`` with ``Info.cfg``, a 4D cine file (must be skipped), ED/ES frames
  and ground truth; every third patient's files carry the header quirk (sform scaled to identity, the
  true spacing only in the qform); each patient has its own spacing.
- MSSEG-2016 (challenge layout and the 2021 flat layout) and MSSEG-2 (two FLAIR time points, some cases
  with an empty ground truth).

NIfTI files are written with nibabel (the arrays are (x, y, z)); the true spacing of each case is
returned so that tests can compare it with what the converter wrote.

Defects are planted one at a time in copies (:func:`truncate`: a file cut short as a broken download
leaves it), and :func:`assert_refused` checks that a converter refuses the copy and leaves nothing behind.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict, List, Sequence, Tuple

import numpy as np
import pytest

from nnunet_pmdice.fileio import read_json as _read_json, write_json

# ------------------------------------------------------------------------------------------------ Kvasir


def kvasir_ids(n: int, seed: int = 0) -> List[str]:
    rng = np.random.default_rng(seed)
    chars = np.array(list("abcdefghijklmnopqrstuvwxyz0123456789"))
    return sorted("cj" + "".join(rng.choice(chars, 23)) for _ in range(n))


#: mask encodings of :func:`make_kvasir`: the archive's lossy JPEG, and PNG re-releases (0/1 or 0/255)
KVASIR_MASKS = ("jpg", "png01", "png255")


def make_kvasir(root: Path, n: int = 20, seed: int = 0, masks: str = "jpg") -> Tuple[Path, List[str]]:
    """``root/Kvasir-SEG`` with ``n`` cases; returns (the Kvasir-SEG folder, the ids).

    ``masks``: ``"jpg"`` as in the archive (``masks/<id>.jpg``, lossy, 0/255), ``"png01"`` / ``"png255"`` as
    PNG re-releases store them (``masks/<id>.png``, lossless, values 0/1 or 0/255); every third mask is
    3-channel.
    """
    assert masks in KVASIR_MASKS
    from PIL import Image
    rng = np.random.default_rng(seed)
    base = root / "Kvasir-SEG"
    (base / "images").mkdir(parents=True)
    (base / "masks").mkdir()
    ids = kvasir_ids(n, seed)
    boxes = {}
    for k, case in enumerate(ids):
        h, w = int(rng.integers(36, 60)), int(rng.integers(40, 72))
        yy, xx = np.mgrid[:h, :w]
        cy, cx, ry, rx = h * rng.uniform(0.35, 0.65), w * rng.uniform(0.35, 0.65), h * 0.25, w * 0.2
        inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        img = np.stack([90 + 80 * inside, 60 + 20 * inside, 50 + 10 * inside], -1) + rng.normal(0, 12, (h, w, 3))
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(base / "images" / f"{case}.jpg", quality=90)
        mask = (inside * (1 if masks == "png01" else 255)).astype(np.uint8)
        mask_image = Image.fromarray(mask).convert("RGB") if k % 3 == 0 else Image.fromarray(mask)
        if masks == "jpg":
            mask_image.save(base / "masks" / f"{case}.jpg", quality=40)
        else:
            mask_image.save(base / "masks" / f"{case}.png")
        ys, xs = np.nonzero(inside)
        box = {"label": "polyp", "xmin": int(xs.min()), "ymin": int(ys.min()), "xmax": int(xs.max()),
               "ymax": int(ys.max())}
        boxes[case] = {"height": h, "width": w, "bbox": [box]}
    write_json(base / "kavsir_bboxes.json", boxes)
    return base, ids


# -------------------------------------------------------------------------------------------------- NIfTI

def save_nifti(path: Path, data_xyz: np.ndarray, spacing_xyz: Sequence[float], quirk: bool = False,
               origin_xyz: Sequence[float] = (0.0, 0.0, 0.0)) -> None:
    """A NIfTI file; ``quirk``: sform scaled to identity (code 1), the true spacing only in the qform."""
    import nibabel as nib
    affine = np.diag(list(spacing_xyz)[:3] + [1.0])
    affine[:3, 3] = origin_xyz
    img = nib.Nifti1Image(data_xyz, affine)
    img.set_qform(affine, code=1)
    if quirk:
        unscaled = np.eye(4)
        unscaled[:3, 3] = origin_xyz
        img.set_sform(unscaled, code=1)
    else:
        img.set_sform(affine, code=1)
    if len(spacing_xyz) > 3:
        img.header.set_zooms(tuple(spacing_xyz))
    nib.save(img, str(path))


def _blobs(rng, shape_xyz, num_labels: int) -> np.ndarray:
    x, y, z = np.meshgrid(*[np.arange(s) for s in shape_xyz], indexing="ij")
    cx, cy = shape_xyz[0] / 2 + rng.uniform(-1, 1), shape_xyz[1] / 2 + rng.uniform(-1, 1)
    d = np.sqrt((x - cx) ** 2 + (y - cy) ** 2)
    label = np.zeros(shape_xyz, np.uint8)
    for k in range(num_labels, 0, -1):  # nested rings: the innermost is the highest label
        label[d <= 1.2 * k + 0.5] = k
    return label


# -------------------------------------------------------------------------------------------------- ACDC

ACDC_SHAPE = (10, 9, 3)  # x, y, z


def acdc_spacing(patient: int) -> Tuple[float, float, float]:
    inplane = 1.25 + 0.03125 * (patient % 8)
    return (inplane, inplane, 5.0 + patient % 6)


def acdc_frames(patient: int) -> Tuple[int, int]:
    return 1, 4 + patient % 6


def make_acdc_patient(folder: Path, patient: int, with_gt: bool = True, seed: int = 0) -> None:
    rng = np.random.default_rng(seed * 1000 + patient)
    name = f"patient{patient:03d}"
    pdir = folder / name
    pdir.mkdir(parents=True)
    ed, es = acdc_frames(patient)
    (pdir / "Info.cfg").write_text(f"ED: {ed}\nES: {es}\nGroup: {['DCM', 'HCM', 'MINF', 'NOR', 'RV'][patient % 5]}\n"
                                   f"Height: 170.0\nNbFrame: {es + 2}\nWeight: 70.0\n")
    spacing = acdc_spacing(patient)
    quirk = patient % 3 == 0
    cine = rng.integers(0, 300, ACDC_SHAPE + (es + 2,)).astype(np.int16)
    save_nifti(pdir / f"{name}_4d.nii.gz", cine, spacing + (1.0,), quirk=quirk)
    for frame in (ed, es):
        label = _blobs(rng, ACDC_SHAPE, 3)
        image = (label * 60 + rng.integers(0, 40, ACDC_SHAPE)).astype(np.int16)
        save_nifti(pdir / f"{name}_frame{frame:02d}.nii.gz", image, spacing, quirk=quirk)
        if with_gt:
            save_nifti(pdir / f"{name}_frame{frame:02d}_gt.nii.gz", label, spacing, quirk=quirk)


def make_acdc(root: Path, testing: Sequence[int] = (), testing_gt: Sequence[int] = ()) -> Path:
    """``root/database`` with training patients 1-100 and the given testing patients; returns ``database``."""
    database = root / "database"
    for p in range(1, 101):
        make_acdc_patient(database / "training", p)
    for p in testing:
        make_acdc_patient(database / "testing", p, with_gt=p in testing_gt)
    return database


# ------------------------------------------------------------------------------------------------- MSSEG

MSSEG_SHAPE = (8, 7, 6)  # x, y, z
MSSEG_SPACING = (1.0, 1.0, 1.2)


def _msseg_volumes(rng, names: Sequence[str], lesion: bool = True) -> Dict[str, np.ndarray]:
    label = _blobs(rng, MSSEG_SHAPE, 1) if lesion else np.zeros(MSSEG_SHAPE, np.uint8)
    out = {n: (100 + 50 * label + rng.normal(0, 5, MSSEG_SHAPE)).astype(np.float32) for n in names}
    out["label"] = label
    return out


def make_msseg2016(root: Path, centres=("01", "07", "08"), patients=5, seed: int = 0) -> Path:
    """The challenge layout: ``root/Training/Center_XX/Patient_YY/...``; returns ``root/Training``."""
    rng = np.random.default_rng(seed)
    training = root / "Training"
    for c in centres:
        for p in range(1, patients + 1):
            pdir = training / f"Center_{c}" / f"Patient_{p:02d}"
            for sub in ("Preprocessed_Data", "Masks", "Raw_Data"):
                (pdir / sub).mkdir(parents=True)
            vols = _msseg_volumes(rng, ["FLAIR", "T1", "T2", "DP", "GADO"])
            for m in ("FLAIR", "T1", "T2", "DP", "GADO"):
                save_nifti(pdir / "Preprocessed_Data" / f"{m}_preprocessed.nii.gz", vols[m], MSSEG_SPACING)
            save_nifti(pdir / "Masks" / "Consensus.nii.gz", vols["label"], MSSEG_SPACING)
            for k in range(1, 8):
                save_nifti(pdir / "Masks" / f"ManualSegmentation_{k}.nii.gz", vols["label"], MSSEG_SPACING)
            # raw data: another grid; reading it instead of Preprocessed_Data would fail the grid check
            save_nifti(pdir / "Raw_Data" / "FLAIR.nii.gz", np.zeros((5, 5, 4), np.float32), (2.0, 2.0, 2.0))
    return training


def make_msseg2016_flat(root: Path, patients=("01016SACH", "01038PAGU", "01040VANE", "07001MOEL", "07003SATH",
                                               "07010NABO"), seed: int = 1) -> Path:
    """The flat layout of the 2021 re-release; the first patient's files are uncompressed ``.nii``."""
    rng = np.random.default_rng(seed)
    for k, pid in enumerate(patients):
        pdir = root / pid
        pdir.mkdir(parents=True)
        vols = _msseg_volumes(rng, ["3DFLAIR", "3DT1", "3DT1GADO", "DP", "T2"])
        ending = ".nii" if k == 0 else ".nii.gz"
        for m in ("3DFLAIR", "3DT1", "3DT1GADO", "DP", "T2"):
            save_nifti(pdir / f"{m}{ending}", vols[m], MSSEG_SPACING)
        save_nifti(pdir / f"Consensus{ending}", vols["label"], MSSEG_SPACING)
        save_nifti(pdir / f"ManualSegmentation_1{ending}", vols["label"], MSSEG_SPACING)
    return root


def make_msseg2(root: Path, cases=("013", "015", "016", "018", "019"), empty=("015", "019"), seed: int = 2) -> Path:
    """MSSEG-2: ``root/<case>/flair_time0{1,2}_on_middle_space.nii.gz`` + ground truths; some empty."""
    rng = np.random.default_rng(seed)
    for case in cases:
        cdir = root / case
        cdir.mkdir(parents=True)
        vols = _msseg_volumes(rng, ["t1", "t2"], lesion=case not in empty)
        save_nifti(cdir / "flair_time01_on_middle_space.nii.gz", vols["t1"], MSSEG_SPACING)
        save_nifti(cdir / "flair_time02_on_middle_space.nii.gz", vols["t2"], MSSEG_SPACING)
        save_nifti(cdir / "ground_truth.nii.gz", vols["label"], MSSEG_SPACING)
        for k in range(1, 5):
            save_nifti(cdir / f"ground_truth_expert{k}.nii.gz", vols["label"], MSSEG_SPACING)
    return root


# ---------------------------------------------------------------------------------------------- checks

def left_behind(raw_root: Path) -> List[str]:
    """Anything a failed conversion might have left in the output folder."""
    return sorted(p.name for p in raw_root.iterdir()) if raw_root.exists() else []


def verify_integrity(dataset_folder: Path) -> None:
    """nnU-Net's own check (the one behind ``--verify_dataset_integrity``); raises when it fails."""
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity
    verify_dataset_integrity(str(dataset_folder), num_processes=1)


def read_json(path: Path):
    return _read_json(path)


def truncate(path: Path, keep: float = 0.6) -> Path:
    """Cuts ``path`` to the first ``keep`` of its bytes (what a broken download leaves)."""
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[:int(len(data) * keep)])
    return Path(path)


def assert_refused(convert: Callable, source, tmp_path: Path, match: str, dataset_id: int, **kw) -> None:
    """``convert(source, dataset_id, tmp_path/raw, ...)`` raises a ConversionError matching ``match`` and leaves
    nothing in the raw folder nor in the preprocessed folder."""
    from nnunet_pmdice.conversion import ConversionError
    raw, pre = tmp_path / "raw", tmp_path / "pre"
    with pytest.raises(ConversionError, match=match):
        convert(source, dataset_id, raw, num_processes=kw.pop("num_processes", 1), progress=False,
                preprocessed_root=pre, **kw)
    assert left_behind(raw) == [], f"partial output left: {left_behind(raw)}"
    assert left_behind(pre) == [], f"output left in the preprocessed folder: {left_behind(pre)}"
