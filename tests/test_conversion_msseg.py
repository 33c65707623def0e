"""MSSEG -> nnU-Net raw: the MICCAI 2016 challenge layout (the paper's dataset), the flat 2021 re-release
layout, and MSSEG-2 (two FLAIR time points, some empty ground truths)."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import nnunet_env, run_cli
from conversion_fixtures import (MSSEG_SHAPE, MSSEG_SPACING, assert_refused, make_msseg2,
                                 make_msseg2016, make_msseg2016_flat, read_json, save_nifti, truncate,
                                 verify_integrity)
from nnunet_pmdice.conversion import convert_msseg


@pytest.fixture(scope="module")
def msseg2016_src(tmp_path_factory):
    return make_msseg2016(tmp_path_factory.mktemp("msseg2016"))


def _ids(folder: Path, ending=".nii.gz"):
    return sorted({p.name[:-len("_0000" + ending)] for p in folder.glob("*_0000" + ending)})


def _check_case(ds: Path, part: str, case: str, num_channels: int):
    ref = sitk.ReadImage(str(ds / f"labels{part}" / f"{case}.nii.gz"))
    assert ref.GetSize() == MSSEG_SHAPE
    np.testing.assert_allclose(ref.GetSpacing(), MSSEG_SPACING, rtol=1e-6)
    assert sorted(p.name for p in (ds / f"images{part}").glob(f"{case}_*.nii.gz")) == [
        f"{case}_{c:04d}.nii.gz" for c in range(num_channels)]
    for c in range(num_channels):
        img = sitk.ReadImage(str(ds / f"images{part}" / f"{case}_{c:04d}.nii.gz"))
        assert img.GetSize() == MSSEG_SHAPE and img.GetSpacing() == ref.GetSpacing()
        assert img.GetOrigin() == ref.GetOrigin() and img.GetDirection() == ref.GetDirection()
    return sitk.GetArrayFromImage(ref)


def test_msseg2016_challenge_layout_9_6_split(msseg2016_src, tmp_path):
    res = convert_msseg(msseg2016_src.parent, 961, tmp_path / "raw", num_processes=1, progress=False,
                        preprocessed_root=tmp_path / "pre")
    ds = res.path
    assert ds.name == "Dataset961_MSSEG2016"
    tr, ts = _ids(ds / "imagesTr"), _ids(ds / "imagesTs")
    assert len(tr) == 9 and len(ts) == 6 and tr == sorted(res.train_cases) and ts == res.test_cases
    # stratified: 2 test patients per centre; the default split documented in the README
    assert ts == ["center01_patient04", "center01_patient05", "center07_patient03", "center07_patient05",
                  "center08_patient01", "center08_patient03"]
    dj = read_json(ds / "dataset.json")
    assert dj["channel_names"] == {"0": "FLAIR", "1": "T1", "2": "T2", "3": "DP", "4": "GADO"}
    assert dj["labels"] == {"background": 0, "lesion": 1} and dj["numTraining"] == 9
    for case in tr[:3] + ts[:2]:
        arr = _check_case(ds, "Tr" if case in tr else "Ts", case, 5)
        assert arr.dtype == np.uint8 and set(np.unique(arr)) == {0, 1}
    # channel 3 (DP) is the DP file of that patient, not another modality
    case = tr[0]
    centre, patient = case[6:8], case[-2:]
    src = sitk.ReadImage(str(msseg2016_src / f"Center_{centre}" / f"Patient_{patient}" / "Preprocessed_Data"
                             / "DP_preprocessed.nii.gz"))
    out = sitk.ReadImage(str(ds / "imagesTr" / f"{case}_0003.nii.gz"))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(out), sitk.GetArrayFromImage(src))
    splits = read_json(ds / "splits_final.json")
    assert len(splits) == 5 and sorted(c for f in splits for c in f["val"]) == tr
    assert read_json(tmp_path / "pre" / ds.name / "splits_final.json") == splits
    # the documented default: the same seed gives the same test patients
    again = convert_msseg(msseg2016_src, 962, tmp_path / "raw2", num_processes=1, progress=False, install_split=False)
    assert again.test_cases == ts
    other = convert_msseg(msseg2016_src, 963, tmp_path / "raw3", seed=7, num_processes=1, progress=False,
                          install_split=False)
    assert other.test_cases != ts and len(other.test_cases) == 6
    verify_integrity(ds)


def test_msseg2016_flat_layout(tmp_path):
    src = make_msseg2016_flat(tmp_path / "flat")
    env = nnunet_env(tmp_path / "nn")
    out = run_cli(["nnunet-pmdice", "convert", "msseg", str(src), "-d", "964", "-np", "1", "--no-progress"], env)
    ds = Path(env["nnUNet_raw"]) / "Dataset964_MSSEG2016"
    assert "4 training cases" in out.stdout
    tr, ts = _ids(ds / "imagesTr"), _ids(ds / "imagesTs")
    assert sorted(tr + ts) == ["01016SACH", "01038PAGU", "01040VANE", "07001MOEL", "07003SATH", "07010NABO"]
    assert sorted(c[:2] for c in ts) == ["01", "07"]  # one of three per centre
    for case in tr:
        _check_case(ds, "Tr", case, 5)
    flair = sitk.ReadImage(str(src / "01016SACH" / "3DFLAIR.nii"))
    part = "Tr" if "01016SACH" in tr else "Ts"
    out = sitk.ReadImage(str(ds / f"images{part}" / "01016SACH_0000.nii.gz"))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(out), sitk.GetArrayFromImage(flair))
    assert read_json(Path(env["nnUNet_preprocessed"]) / ds.name / "splits_final.json") == read_json(
        ds / "splits_final.json")
    verify_integrity(ds)


def test_msseg2_layout_with_empty_ground_truth(tmp_path):
    src = make_msseg2(tmp_path / "msseg2")
    (tmp_path / "test.txt").write_text("015\n018\n")
    res = convert_msseg(src, 965, tmp_path / "raw", test_list=tmp_path / "test.txt", num_processes=1, progress=False,
                        install_split=False)
    ds = res.path
    assert ds.name == "Dataset965_MSSEG2" and res.test_cases == ["015", "018"]
    assert _ids(ds / "imagesTr") == ["013", "016", "019"]
    dj = read_json(ds / "dataset.json")
    assert dj["channel_names"] == {"0": "FLAIR_time01", "1": "FLAIR_time02"}
    assert dj["labels"] == {"background": 0, "new_lesion": 1}
    assert _check_case(ds, "Tr", "019", 2).sum() == 0  # empty ground truth kept
    assert _check_case(ds, "Tr", "013", 2).sum() > 0
    assert any("empty ground truth" in n and "019" in n for n in res.notes)
    assert res.installed_splits is None and len(read_json(ds / "splits_final.json")) == 3
    verify_integrity(ds)


def test_geometry_round_off_is_harmonised(msseg2016_src, tmp_path):
    src = Path(shutil.copytree(msseg2016_src, tmp_path / "Training"))
    t2 = src / "Center_01" / "Patient_01" / "Preprocessed_Data" / "T2_preprocessed.nii.gz"
    save_nifti(t2, np.ones(MSSEG_SHAPE, np.float32), MSSEG_SPACING, origin_xyz=(1e-4, 0, -1e-4))
    res = convert_msseg(src, 966, tmp_path / "raw", num_processes=1, progress=False, install_split=False)
    part = "Tr" if "center01_patient01" in res.train_cases else "Ts"
    _check_case(res.path, part, "center01_patient01", 5)  # identical geometry in every channel


def _fails(src, tmp_path, match, **kw):
    assert_refused(convert_msseg, src, tmp_path, match, 967, **kw)


def test_bad_inputs_name_the_case_and_leave_nothing(msseg2016_src, tmp_path):
    _fails(tmp_path / "nowhere", tmp_path, "missing folder")
    (tmp_path / "empty").mkdir()
    _fails(tmp_path / "empty", tmp_path, "no MSSEG case found")
    src = Path(shutil.copytree(msseg2016_src, tmp_path / "s" / "Training"))
    pd = src / "Center_07" / "Patient_03" / "Preprocessed_Data"

    save_nifti(pd / "T2_preprocessed.nii.gz", np.ones((8, 7, 5), np.float32), MSSEG_SPACING)
    _fails(src, tmp_path, r"case center07_patient03: T2_preprocessed.nii.gz is not on the grid of "
                          r"FLAIR_preprocessed.nii.gz: size")
    save_nifti(pd / "T2_preprocessed.nii.gz", np.ones(MSSEG_SHAPE, np.float32), MSSEG_SPACING, origin_xyz=(3, 0, 0))
    _fails(src, tmp_path, r"case center07_patient03: .*origin")
    save_nifti(pd / "T2_preprocessed.nii.gz", np.ones(MSSEG_SHAPE, np.float32), MSSEG_SPACING)

    (pd / "GADO_preprocessed.nii.gz").unlink()
    _fails(src, tmp_path, "case center07_patient03: missing GADO image")
    save_nifti(pd / "GADO_preprocessed.nii.gz", np.ones(MSSEG_SHAPE, np.float32), MSSEG_SPACING)

    consensus = src / "Center_08" / "Patient_05" / "Masks" / "Consensus.nii.gz"
    label = np.zeros(MSSEG_SHAPE, np.float32)
    label[1, 1, 1] = 0.5
    save_nifti(consensus, label, MSSEG_SPACING)
    _fails(src, tmp_path, r"case center08_patient05: label map has non-integer values \[0.5\]")
    label[1, 1, 1] = 2
    save_nifti(consensus, label, MSSEG_SPACING)
    _fails(src, tmp_path, r"case center08_patient05: unexpected label values \[2\]")
    consensus.unlink()
    _fails(src, tmp_path, "case Center_08/Patient_05: missing ground truth")

    flat = make_msseg2016_flat(tmp_path / "flat")
    (flat / "07003SATH" / "Consensus.nii.gz").unlink()
    _fails(flat, tmp_path, "case 07003SATH: missing file: expected Consensus.nii.gz")

    ms2 = make_msseg2(tmp_path / "ms2")
    (ms2 / "016" / "flair_time02_on_middle_space.nii.gz").unlink()
    _fails(ms2, tmp_path, "case 016: missing FLAIR_time02 image")
    (ms2 / "018" / "ground_truth.nii.gz").unlink()
    (ms2 / "018" / "flair_time01_on_middle_space.nii.gz").unlink()
    _fails(ms2, tmp_path, "case 018: missing file: expected flair_time01")

    both = tmp_path / "both"
    shutil.copytree(msseg2016_src, both / "Training")
    make_msseg2(both / "msseg2")
    _fails(both, tmp_path, "holds both MSSEG-2 cases")
    _fails(both / "msseg2", tmp_path, "no MSSEG-2016 case", layout="2016")
    _fails(msseg2016_src, tmp_path, "holds the 2016 layout, not 2016-flat", layout="2016-flat")
    (tmp_path / "list.txt").write_text("center01_patient09\n")
    _fails(msseg2016_src, tmp_path, "not in the source dataset: center01_patient09", test_list=tmp_path / "list.txt")


def test_truncated_modality_is_refused_naming_the_file(msseg2016_src, tmp_path):
    src = Path(shutil.copytree(msseg2016_src, tmp_path / "s" / "Training"))
    t2 = truncate(src / "Center_01" / "Patient_01" / "Preprocessed_Data" / "T2_preprocessed.nii.gz")
    _fails(src, tmp_path, rf"case center01_patient01: truncated file: .*\({t2}\)")
    # an uncompressed .nii cut short (the flat layout's first patient is uncompressed)
    flat = make_msseg2016_flat(tmp_path / "flat")
    dp = truncate(flat / "01016SACH" / "DP.nii", 0.8)
    _fails(flat, tmp_path, rf"case 01016SACH: truncated file: .*\({dp}\)")
