"""ACDC -> nnU-Net raw with the TransUNet split: a 100-patient fixture (tiny volumes) in the archive's layout,
with 4D cine files to skip and the sform/qform header quirk on every third patient."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from conftest import nnunet_env
from conversion_fixtures import (ACDC_SHAPE, acdc_frames, acdc_spacing, assert_refused, make_acdc,
                                 read_json, save_nifti, verify_integrity)
from nnunet_pmdice.conversion import (TRANSUNET_TEST, TRANSUNET_TRAIN, TRANSUNET_VAL, ConversionError,
                                      convert_acdc)


@pytest.fixture(scope="module")
def acdc_src(tmp_path_factory):
    return make_acdc(tmp_path_factory.mktemp("acdc_src"), testing=(101, 102), testing_gt=(101,))


@pytest.fixture(scope="module")
def converted(acdc_src, tmp_path_factory):
    root = tmp_path_factory.mktemp("acdc_out")
    return convert_acdc(acdc_src.parent, 951, root / "raw", include_testing=True, num_processes=1, progress=False,
                        preprocessed_root=root / "pre")


def test_transunet_lists():
    assert len(TRANSUNET_TRAIN) == 70 and len(TRANSUNET_VAL) == 10 and len(TRANSUNET_TEST) == 20
    assert sorted(TRANSUNET_TRAIN + TRANSUNET_VAL + TRANSUNET_TEST) == [f"patient{i:03d}" for i in range(1, 101)]


def test_fixture_reproduces_the_header_quirk(acdc_src):
    f = acdc_src / "training" / "patient003" / "patient003_frame01.nii.gz"
    zooms_from_affine = np.sqrt((nib.load(str(f)).affine[:3, :3] ** 2).sum(0))
    np.testing.assert_allclose(zooms_from_affine, [1, 1, 1])  # what nibabel's affine says
    np.testing.assert_allclose(sitk.ReadImage(str(f)).GetSpacing(), acdc_spacing(3))  # the truth


def test_cases_labels_spacing_and_4d_skipped(converted, acdc_src):
    ds = converted.path
    assert ds.name == "Dataset951_ACDC"
    tr = sorted(p.name[:-len("_0000.nii.gz")] for p in (ds / "imagesTr").iterdir())
    ts = sorted(p.name[:-len("_0000.nii.gz")] for p in (ds / "imagesTs").iterdir())
    assert len(tr) == 160 and len(ts) == 40 and not any("4d" in c for c in tr + ts)
    expected = sorted(f"{p}_frame{f:02d}" for p in TRANSUNET_TRAIN + TRANSUNET_VAL for f in acdc_frames(int(p[7:])))
    assert tr == expected
    assert sorted(p.name[:-7] for p in (ds / "labelsTs").iterdir()) == ts
    dj = read_json(ds / "dataset.json")
    assert dj["labels"] == {"background": 0, "RV": 1, "MYO": 2, "LV": 3} and dj["numTraining"] == 160
    assert dj["channel_names"] == {"0": "cineMRI"}
    for case in tr[:12] + ts[:6]:  # quirky (patient % 3 == 0) and plain headers among them
        part = "Tr" if case in tr else "Ts"
        patient = int(case[7:10])
        img = sitk.ReadImage(str(ds / f"images{part}" / f"{case}_0000.nii.gz"))
        lab = sitk.ReadImage(str(ds / f"labels{part}" / f"{case}.nii.gz"))
        assert img.GetDimension() == 3 and img.GetSize() == ACDC_SHAPE
        np.testing.assert_allclose(img.GetSpacing(), acdc_spacing(patient), rtol=1e-6)
        np.testing.assert_allclose(lab.GetSpacing(), acdc_spacing(patient), rtol=1e-6)
        # the output header is consistent: nibabel's affine now has the true spacing too
        zooms = np.sqrt((nib.load(str(ds / f"images{part}" / f"{case}_0000.nii.gz")).affine[:3, :3] ** 2).sum(0))
        np.testing.assert_allclose(zooms, acdc_spacing(patient), rtol=1e-6)
        src = nib.load(str(acdc_src / "training" / case[:10] / f"{case}_gt.nii.gz")).get_fdata()
        arr = sitk.GetArrayFromImage(lab)
        assert arr.dtype == np.uint8 and set(np.unique(arr)) == {0, 1, 2, 3}
        np.testing.assert_array_equal(arr, np.transpose(src, (2, 1, 0)))
    record = read_json(ds / "conversion.json")
    assert {record["cases"][f"patient001_frame{f:02d}"]["phase"] for f in acdc_frames(1)} == {"ED", "ES"}


def test_split_keeps_patients_together(converted):
    ds = converted.path
    splits = read_json(ds / "splits_final.json")
    assert len(splits) == 1 and len(splits[0]["train"]) == 140 and len(splits[0]["val"]) == 20
    patients = lambda cases: {c[:10] for c in cases}  # noqa: E731
    assert patients(splits[0]["train"]) == set(TRANSUNET_TRAIN)
    assert patients(splits[0]["val"]) == set(TRANSUNET_VAL)
    assert patients(converted.test_cases) == set(TRANSUNET_TEST) and len(converted.test_cases) == 40
    assert read_json(converted.installed_splits) == splits
    assert converted.installed_splits.parent.name == ds.name


def test_official_testing_patients_apart(converted):
    ds = converted.path
    assert sorted(p.name for p in (ds / "imagesTsOfficial").iterdir()) == sorted(
        f"patient{p}_frame{f:02d}_0000.nii.gz" for p in (101, 102) for f in acdc_frames(p))
    assert sorted(p.name for p in (ds / "labelsTsOfficial").iterdir()) == sorted(
        f"patient101_frame{f:02d}.nii.gz" for f in acdc_frames(101))


def test_nnunet_integrity_check_passes(converted):
    verify_integrity(converted.path)


def _copy(src: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(src, tmp_path / "ACDC" / "database"))


def _fails(src, tmp_path, match, **kw):
    assert_refused(convert_acdc, src, tmp_path, match, 952, **kw)


def test_bad_inputs_name_the_case_and_leave_nothing(acdc_src, tmp_path):
    _fails(tmp_path, tmp_path, "missing folder: expected ACDC's training/")
    src = _copy(acdc_src, tmp_path)
    tr = src / "training"
    shutil.rmtree(src / "testing")
    _fails(src, tmp_path, "missing folder: include_testing asks for ACDC's testing/", include_testing=True)

    shutil.move(tr / "patient042", tmp_path / "patient042")
    _fails(src, tmp_path, "case patient042: missing folder")
    shutil.move(tmp_path / "patient042", tr / "patient042")

    cfg = (tr / "patient010" / "Info.cfg").read_text()
    (tr / "patient010" / "Info.cfg").write_text(cfg.replace("ES:", "XS:"))
    _fails(src, tmp_path, "case patient010: Info.cfg has no frame number 'ES")
    (tr / "patient010" / "Info.cfg").unlink()
    _fails(src, tmp_path, "case patient010: missing file Info.cfg")
    (tr / "patient010" / "Info.cfg").write_text(cfg)

    ed, es = acdc_frames(20)
    gt = tr / "patient020" / f"patient020_frame{es:02d}_gt.nii.gz"
    gt.rename(gt.with_suffix(".bak"))
    _fails(src, tmp_path, f"case patient020_frame{es:02d}: missing ground truth")
    gt.with_suffix(".bak").rename(gt)

    (tr / "patient030" / "patient030_frame01.nii.gz").write_bytes(b"\x1f\x8b not nifti")
    _fails(src, tmp_path, "case patient030_frame01: unreadable image file")
    save_nifti(tr / "patient030" / "patient030_frame01.nii.gz", np.zeros(ACDC_SHAPE + (4,), np.int16),
               acdc_spacing(30) + (1.0,))
    _fails(src, tmp_path, "case patient030_frame01: expected a 3D image, found 4D")
    save_nifti(tr / "patient030" / "patient030_frame01.nii.gz", np.zeros((10, 8, 3), np.int16), acdc_spacing(30))
    _fails(src, tmp_path, r"case patient030_frame01: patient030_frame01_gt.nii.gz is not on the grid .*size")
    save_nifti(tr / "patient030" / "patient030_frame01.nii.gz", np.zeros(ACDC_SHAPE, np.int16), (2.0, 2.0, 9.0))
    _fails(src, tmp_path, r"case patient030_frame01: .* spacing \(")
    save_nifti(tr / "patient030" / "patient030_frame01.nii.gz", np.zeros(ACDC_SHAPE, np.int16), acdc_spacing(30))

    label = np.zeros(ACDC_SHAPE, np.uint8)
    label[0, 0, 0] = 4
    save_nifti(tr / "patient031" / f"patient031_frame{acdc_frames(31)[1]:02d}_gt.nii.gz", label, acdc_spacing(31))
    _fails(src, tmp_path, rf"case patient031_frame{acdc_frames(31)[1]:02d}: unexpected label values \[4\]")


def test_cli_existing_dataset_needs_overwrite(acdc_src, converted, tmp_path):
    env = nnunet_env(tmp_path)
    raw = Path(env["nnUNet_raw"])
    shutil.copytree(converted.path, raw / converted.path.name)
    # the training/ folder itself is accepted as the source too
    args = ["nnunet-pmdice", "convert", "acdc", str(acdc_src / "training"), "-d", "951", "-np", "1", "--no-progress"]
    res = subprocess.run(args, env=env, capture_output=True, text=True)
    assert res.returncode == 2 and "Dataset951_ACDC exists; pass --overwrite" in res.stderr
    assert "Traceback" not in res.stderr
    assert not (Path(env["nnUNet_preprocessed"]) / "Dataset951_ACDC").exists()


def test_truncated_frame_or_ground_truth_is_refused_and_the_good_dataset_kept(acdc_src, converted, tmp_path):
    """A .nii.gz cut short (a broken download): SimpleITK would fill the missing voxels with zeros."""
    raw = tmp_path / "raw"
    shutil.copytree(converted.path, raw / converted.path.name)
    before = sorted((p.relative_to(raw), p.stat().st_size) for p in raw.rglob("*"))
    src = _copy(acdc_src, tmp_path)
    es4 = acdc_frames(4)[1]
    for path, keep in ((src / "training" / "patient001" / "patient001_frame01.nii.gz", 0.6),
                       (src / "training" / "patient004" / f"patient004_frame{es4:02d}_gt.nii.gz", 0.6),
                       (src / "training" / "patient001" / "patient001_frame01.nii.gz", 0.999)):
        good = path.read_bytes()
        path.write_bytes(good[:int(len(good) * keep)] if keep < 0.99 else good[:-4])  # also: only the gzip trailer
        case = path.name[:len("patient001_frame01")]
        with pytest.raises(ConversionError, match=rf"^case {case}: truncated file: .*\({path}\)$"):
            convert_acdc(src, 951, raw, overwrite=True, num_processes=1, progress=False, install_split=False)
        assert sorted((p.relative_to(raw), p.stat().st_size) for p in raw.rglob("*")) == before
        path.write_bytes(good)


def test_conversion_killed_hard_leaves_a_leftover_that_the_next_run_removes(acdc_src, tmp_path):
    """SIGKILL in the middle of a real conversion: the hidden staging folder stays; the next run removes it."""
    import signal
    import time
    env = nnunet_env(tmp_path)
    raw = Path(env["nnUNet_raw"])
    args = ["nnunet-pmdice", "convert", "acdc", str(acdc_src), "-d", "953", "-np", "1", "--no-progress"]
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    partials = []
    while proc.poll() is None:
        partials = list(raw.glob(".Dataset953_ACDC.partial-*"))
        if partials and len(list((partials[0] / "imagesTr").glob("*.nii.gz"))) >= 3:
            break
        time.sleep(0.01)
    assert proc.poll() is None, f"the conversion ended before it could be killed: {proc.stderr.read()[-300:]}"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert [p.name for p in raw.iterdir()] == [partials[0].name]
    res = subprocess.run(args, env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-500:]
    assert sorted(p.name for p in raw.iterdir()) == ["Dataset953_ACDC"]
