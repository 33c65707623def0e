"""``nnunet-pmdice evaluate`` refuses corrupt or mismatched files in one line naming the file, never scores them."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from nnunet_pmdice.cli import main
from nnunet_pmdice.evaluation import evaluate_folders


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    from nnunet_pmdice.synthetic import generate

    root = tmp_path_factory.mktemp("inputs")
    out = {}
    for kind, size, did in (("polyp2d", (32, 32), 91), ("cardiac3d", (8, 24, 24), 92)):
        raw = generate(kind, root / "raw", did, num_train=2, num_test=2, size=size, seed=5)
        out[kind] = raw
    return out


def clean_copy(raw: Path, tmp_path: Path):
    """The references and a copy of them as predictions (a perfect prediction folder)."""
    pred = tmp_path / "pred"
    shutil.copytree(raw / "labelsTs", pred)
    shutil.copy(raw / "dataset.json", pred / "dataset.json")
    return raw / "labelsTs", pred, sorted(p for p in pred.iterdir() if p.name != "dataset.json")[0]


def run_cli(gt, pred, out, capsys):
    rc = main(["evaluate", str(gt), str(pred), "-o", str(out)])
    err = capsys.readouterr().err
    errors = [l for l in err.splitlines() if l.startswith("error:")]
    assert "Traceback" not in err
    return rc, errors


def png_write(path: Path, array: np.ndarray) -> None:
    from PIL import Image
    Image.fromarray(array).save(path)


def png_read(path: Path) -> np.ndarray:
    from PIL import Image
    return np.asarray(Image.open(path))


def nifti_rewrite(path: Path, change) -> None:
    import SimpleITK as sitk
    img = sitk.ReadImage(str(path))
    new = change(img)
    sitk.WriteImage(new, str(path))


def refused(raw, pred, victim, tmp_path, capsys, *phrases):
    gt = raw / "labelsTs"
    rc, errors = run_cli(gt, pred, tmp_path / "ev", capsys)
    assert rc == 2 and len(errors) == 1, (errors, capsys)
    assert victim.name in errors[0] and all(p in errors[0] for p in phrases), errors[0]
    with pytest.raises(ValueError, match=victim.name):
        evaluate_folders(gt, pred, progress=False)
    assert not (tmp_path / "ev").exists()                                # nothing half-written


def test_clean_copy_scores_one(datasets, tmp_path, capsys):
    gt, pred, _ = clean_copy(datasets["cardiac3d"], tmp_path)
    rc, errors = run_cli(gt, pred, tmp_path / "ev", capsys)
    assert rc == 0 and not errors
    summary = json.loads((tmp_path / "ev" / "summary.json").read_text())
    assert summary["mean"]["dice"] == 1.0 and summary["spacing_mismatches"] == [] and summary["nsd_unit"] == "mm"
    assert summary["mean"]["obj_recall"] == 1.0 and summary["objects"]["alpha"] == 0.1


def test_0_255_prediction_is_refused(datasets, tmp_path, capsys):
    gt, pred, victim = clean_copy(datasets["polyp2d"], tmp_path)
    png_write(victim, (png_read(victim) > 0).astype(np.uint8) * 255)
    refused(datasets["polyp2d"], pred, victim, tmp_path, capsys, "label values [255]", "expected only [0, 1]")


def test_label_missing_from_dataset_json_is_refused_in_prediction_and_reference(datasets, tmp_path, capsys):
    gt, pred, victim = clean_copy(datasets["polyp2d"], tmp_path)
    seg = png_read(victim).copy()
    seg[0, 0] = 2
    png_write(victim, seg)
    refused(datasets["polyp2d"], pred, victim, tmp_path, capsys, "prediction", "label values [2]")
    raw = tmp_path / "raw"                                                 # now in a reference
    shutil.copytree(datasets["cardiac3d"], raw)
    gt, pred, victim = clean_copy(raw, tmp_path / "second")
    ref = raw / "labelsTs" / victim.name

    def add_label(img):
        import SimpleITK as sitk
        a = sitk.GetArrayFromImage(img)
        a[0, 0, 0] = 7
        out = sitk.GetImageFromArray(a)
        out.CopyInformation(img)
        return out
    nifti_rewrite(ref, add_label)
    refused(raw, pred, ref, tmp_path, capsys, "reference", "label values [7]")


def test_float_prediction_is_refused(datasets, tmp_path, capsys):
    import SimpleITK as sitk
    gt, pred, victim = clean_copy(datasets["cardiac3d"], tmp_path)
    nifti_rewrite(victim, lambda img: sitk.Cast(img, sitk.sitkFloat32) * 0.5)
    refused(datasets["cardiac3d"], pred, victim, tmp_path, capsys, "non-integer values", "0.5")


def test_spacing_mismatch_is_warned_and_recorded(datasets, tmp_path, capsys):
    gt, pred, victim = clean_copy(datasets["cardiac3d"], tmp_path)

    def double(img):
        img.SetSpacing(tuple(2 * s for s in img.GetSpacing()))
        return img
    nifti_rewrite(victim, double)
    rc = main(["evaluate", str(gt), str(pred), "-o", str(tmp_path / "ev")])
    err = capsys.readouterr().err
    assert rc == 0
    warnings = [l for l in err.splitlines() if l.startswith("warning:")]
    assert len(warnings) == 1 and victim.name in warnings[0] and "spacing" in warnings[0]
    summary = json.loads((tmp_path / "ev" / "summary.json").read_text())
    (m,) = summary["spacing_mismatches"]
    assert m["case"] == victim.name[: -len(".nii.gz")]
    assert m["prediction_spacing"] == pytest.approx([2 * s for s in m["reference_spacing"]])
    with pytest.warns(UserWarning, match="spacing"):
        result = evaluate_folders(gt, pred, progress=False)
    assert len(result.spacing_mismatches) == 1


@pytest.mark.parametrize("kind", ["polyp2d", "cardiac3d"])
def test_truncated_prediction_is_refused_in_one_line(kind, datasets, tmp_path, capsys):
    gt, pred, victim = clean_copy(datasets[kind], tmp_path)
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2])
    refused(datasets[kind], pred, victim, tmp_path, capsys, "cannot be read", "expected a complete label map")


def test_rgb_prediction_is_refused_naming_the_channels(datasets, tmp_path, capsys):
    gt, pred, victim = clean_copy(datasets["polyp2d"], tmp_path)
    seg = png_read(victim)
    png_write(victim, np.stack([seg] * 3, axis=-1))
    refused(datasets["polyp2d"], pred, victim, tmp_path, capsys, "3 channels", "single-channel")


def test_2d_summary_records_pixels_as_the_nsd_unit(datasets, tmp_path, capsys):
    gt, pred, _ = clean_copy(datasets["polyp2d"], tmp_path)
    rc, _ = run_cli(gt, pred, tmp_path / "ev", capsys)
    assert rc == 0
    assert json.loads((tmp_path / "ev" / "summary.json").read_text())["nsd_unit"] == "pixels"
