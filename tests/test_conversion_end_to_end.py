"""A converted dataset goes through the real nnU-Net: integrity check, plan, preprocess, and a PM Dice training
that uses the converter's splits_final.json (not a split nnU-Net made itself)."""
from __future__ import annotations

from pathlib import Path

import pytest

from conftest import logged_train_losses, run_cli
from conversion_fixtures import make_kvasir, read_json

pytestmark = pytest.mark.integration


def test_converted_kvasir_plans_preprocesses_and_trains(env, tmp_path):
    src, ids = make_kvasir(tmp_path, n=12, seed=3)
    run_cli(["nnunet-pmdice", "convert", "kvasir", str(src), "-d", "948", "--size", "48", "-np", "1",
             "--no-progress"], env)
    name = "Dataset948_KvasirSEG"
    installed = Path(env["nnUNet_preprocessed"]) / name / "splits_final.json"
    splits = read_json(installed)
    assert splits == read_json(Path(env["nnUNet_raw"]) / name / "splits_final.json")
    # -npfp 1: the fingerprint/integrity pool would otherwise spawn 8 workers
    run_cli(["nnUNetv2_plan_and_preprocess", "-d", "948", "-c", "2d", "-np", "1", "-npfp", "1",
             "--verify_dataset_integrity"], env)
    assert read_json(installed) == splits, "planning must keep the installed split"
    trainer = "nnUNetTrainerPMDice_1epochs_2iters"
    run_cli(["nnUNetv2_train", "948", "2d", "0", "-tr", trainer, "-device", "cpu"], env)
    fold = Path(env["nnUNet_results"]) / name / f"{trainer}__nnUNetPlans__2d" / "fold_0"
    log = "\n".join(p.read_text() for p in fold.glob("training_log_*.txt"))
    assert f"Using splits from existing split file: {installed}" in log
    assert (f"This split has {len(splits[0]['train'])} training and {len(splits[0]['val'])} validation cases"
            in log)
    assert sorted(p.name for p in (fold / "validation").glob("*.png")) == sorted(f"{c}.png" for c in splits[0]["val"])
    assert len(logged_train_losses(fold)) == 1
