"""The real nnU-Net command-line tools find and run the plugin trainers (plan -> train -> predict), on CPU.

Nothing here sets ``nnUNet_extTrainer``: the trainers must be found because the package is installed.
"""
from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import logged_train_losses, run_cli

pytestmark = pytest.mark.integration


def _assert_trained(fold: Path, trainer: str):
    assert (fold / "checkpoint_final.pth").is_file(), f"no final checkpoint in {fold}"
    losses = logged_train_losses(fold)
    assert losses and all(math.isfinite(v) for v in losses), f"non-finite training losses {losses}"
    log = "\n".join(p.read_text() for p in fold.glob("training_log_*.txt"))
    assert "PM Dice gamma per output channel" in log, "loss settings missing from the training log"
    return log


def _assert_predictions(pred: Path, raw: Path, ending: str):
    expected = sorted(p.name.replace("_0000" + ending, ending) for p in (raw / "imagesTs").glob("*_0000" + ending))
    got = sorted(p.name for p in pred.glob("*" + ending))
    assert got == expected and got, f"predictions {got} != test cases {expected}"


def test_2d_pm_dice_train_and_predict(prepared, tmp_path):
    ds = prepared("polyp2d")
    trainer = "nnUNetTrainerPMDice_g2_bg1_1epochs_3iters"
    fold = ds.train(trainer)
    log = _assert_trained(fold, trainer)
    assert "PM Dice gamma per output channel: [1.0, 2.0]" in log  # background 1, polyp 2
    assert f"batch_dice={ds.plans()['configurations']['2d']['batch_dice']}" in log
    pred = ds.predict(trainer, tmp_path / "pred")
    _assert_predictions(pred, ds.raw, ".png")
    from PIL import Image
    for p in pred.glob("*.png"):
        assert set(np.unique(np.asarray(Image.open(p)))) <= {0, 1}


def test_3d_vm_dice_multiclass_train_and_predict(prepared, tmp_path):
    ds = prepared("cardiac3d")
    trainer = "nnUNetTrainerFocalCEPMDice_g1-1-2-2_1epochs_3iters"
    fold = ds.train(trainer)
    log = _assert_trained(fold, trainer)
    assert "PM Dice gamma per output channel: [1.0, 1.0, 2.0, 2.0]" in log
    pred = ds.predict(trainer, tmp_path / "pred")
    _assert_predictions(pred, ds.raw, ".nii.gz")


def test_region_dataset_ce_pm_dice_train_and_predict(prepared, tmp_path):
    ds = prepared("regions3d")
    trainer = "nnUNetTrainerCEPMDice_1epochs_3iters"
    fold = ds.train(trainer)
    log = _assert_trained(fold, trainer)
    assert "regions=True" in log and "nonlin='sigmoid'" in log
    pred = ds.predict(trainer, tmp_path / "pred")
    _assert_predictions(pred, ds.raw, ".nii.gz")


def test_model_folder_copied_elsewhere_predicts(prepared, tmp_path):
    """A trained model folder moved to another place (another machine) predicts with the package alone."""
    ds = prepared("polyp2d")
    trainer = "nnUNetTrainerTopKCEPMDice_k5_g0.5_1epochs_2iters"
    ds.train(trainer)
    moved = tmp_path / "elsewhere" / ds.results_folder(trainer).name
    shutil.copytree(ds.results_folder(trainer), moved)
    env = dict(ds.env)
    env.pop("nnUNet_results")
    out = tmp_path / "pred"
    run_cli(["nnUNetv2_predict_from_modelfolder", "-i", str(ds.raw / "imagesTs"), "-o", str(out), "-m", str(moved),
             "-f", "0", "-device", "cpu", "-npp", "1", "-nps", "1", "--disable_progress_bar"], env, cwd=tmp_path)
    _assert_predictions(out, ds.raw, ".png")


def test_ignore_label_dataset_trains(env, tmp_path):
    """nnU-Net's ignore label reaches the loss as a mask (2D, ignore strip on every training case)."""
    from nnunet_pmdice.synthetic import generate
    raw = generate("polyp2d", env["nnUNet_raw"], 905, num_train=6, num_test=1, size=(48, 48), ignore_label=True)
    run_cli(["nnUNetv2_plan_and_preprocess", "-d", "905", "-c", "2d", "-np", "1", "-npfp", "1",
             "--verify_dataset_integrity"], env)
    run_cli(["nnUNetv2_train", "905", "2d", "0", "-tr", "nnUNetTrainerCEPMDice_1epochs_2iters", "-device", "cpu"],
            env)
    fold = Path(env["nnUNet_results"]) / raw.name / "nnUNetTrainerCEPMDice_1epochs_2iters__nnUNetPlans__2d" / "fold_0"
    log = _assert_trained(fold, "nnUNetTrainerCEPMDice_1epochs_2iters")
    assert "ignore_label=2" in log
