"""Trainers of the paper's comparison losses: names, recipes, nnU-Net's own CE trainer, and real training runs."""
from __future__ import annotations

import json
import math
import pickle
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import logged_train_losses
from nnunet_pmdice import trainers
from nnunet_pmdice.losses import (CompoundLoss, CrossEntropyTerm, DiceFamilyLoss, DiceLoss, DilatedBalancedCETerm,
                                  FocalCrossEntropyTerm, LogDiceLoss, TopKCrossEntropyTerm, TopKDiceLoss,
                                  WangFocalDiceLoss, ZhaoFocalDiceLoss)
from nnunet_pmdice.trainers import NNUNET_BASES
from nnunet_pmdice.trainers.baselines import BASELINE_TRAINERS
from nnunet_pmdice.trainers.loss_table import RECIPES, LossContext

#: trainer -> (Dice part type, CE part type, default options)
EXPECTED = {
    "nnUNetTrainerDice": (DiceLoss, None, {}),
    "nnUNetTrainerLogDice": (LogDiceLoss, None, {"log_gamma": 0.3}),
    "nnUNetTrainerFocalDiceWang": (WangFocalDiceLoss, None, {"focal_beta": 2.0}),
    "nnUNetTrainerFocalDiceZhao": (ZhaoFocalDiceLoss, None, {"dice_k": 10.0}),
    "nnUNetTrainerCEDice": (DiceLoss, CrossEntropyTerm, {}),
    "nnUNetTrainerFocalCEDice": (DiceLoss, FocalCrossEntropyTerm, {"focal_gamma": 2.0}),
    "nnUNetTrainerTopKCEDice": (DiceLoss, TopKCrossEntropyTerm, {"k": 10.0}),
    "nnUNetTrainerTopKDice": (TopKDiceLoss, None, {"dice_k": 10.0}),
    "nnUNetTrainerCETopKDice": (TopKDiceLoss, CrossEntropyTerm, {"dice_k": 10.0}),
    "nnUNetTrainerTopKCETopKDice": (TopKDiceLoss, TopKCrossEntropyTerm, {"dice_k": 10.0, "k": 10.0}),
    "nnUNetTrainerDBCE": (None, DilatedBalancedCETerm, {"dilation": 5}),
    "nnUNetTrainerDBCEDice": (DiceLoss, DilatedBalancedCETerm, {"dilation": 5}),
}
LABELS_CTX = LossContext(batch_dice=True, regions=False, ignore_label=4, ddp=False, num_heads=4)
REGIONS_CTX = LossContext(batch_dice=False, regions=True, ignore_label=None, ddp=False, num_heads=3)


def _nnunet_trainer_class_names():
    import nnunetv2
    folder = Path(nnunetv2.__file__).parent / "training" / "nnUNetTrainer"
    return {m for f in folder.rglob("*.py") for m in re.findall(r"^class (\w+)", f.read_text(), re.M)}


def test_every_row_has_a_trainer():
    assert sorted(c.__name__ for c in BASELINE_TRAINERS) == sorted(EXPECTED)
    assert all(getattr(trainers, name) is cls for cls in BASELINE_TRAINERS for name in [cls.__name__])


def test_no_trainer_name_is_taken_by_nnunet():
    """nnU-Net looks in its own folder first: a built-in of the same name (or base name) would win."""
    builtin = _nnunet_trainer_class_names()
    assert "nnUNetTrainerCELoss" in builtin and "nnUNetTrainerDiceLoss" in builtin  # the scan works
    ours = [n for n in trainers.BASE_TRAINERS if n not in NNUNET_BASES]
    clashes = [b for b in builtin for n in ours if b == n or b.startswith(n + "_")]
    assert not clashes


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_recipe_builds_the_loss_with_the_paper_settings(name):
    dice_type, ce_type, defaults = EXPECTED[name]
    recipe = RECIPES[getattr(trainers, name).loss_kind]
    assert recipe.defaults == defaults
    assert set(getattr(trainers, name).name_options) == set(defaults) | {"epochs", "iters"}
    core = recipe.build(LABELS_CTX, dict(recipe.defaults))
    assert isinstance(core, CompoundLoss) and core.ignore_label == 4 and not core.regions
    assert type(core.dice) is dice_type if dice_type else core.dice is None
    assert type(core.ce_term) is ce_type if ce_type else core.ce_term is None
    if dice_type:
        d = core.dice
        assert (d.batch_dice, d.do_bg, d.smooth, d.squared, d.nonlin) == (True, True, 1e-6, True, "softmax")
    if core.dice is not None and core.ce_term is not None:
        assert core.weight_dice == core.weight_ce == 1.0
    if ce_type is DilatedBalancedCETerm:
        assert core.ce_term.num_classes == 4


def test_options_reach_the_loss():
    recipe = RECIPES["topk_ce_topk_dice"]
    core = recipe.build(LABELS_CTX, {"k": 5.0, "dice_k": 20.0})
    assert core.ce_term.k == 5.0 and core.dice.k == 20.0
    assert RECIPES["log_dice"].build(LABELS_CTX, {"log_gamma": 0.5}).dice.log_gamma == 0.5
    assert RECIPES["focal_dice_wang"].build(LABELS_CTX, {"focal_beta": 3.0}).dice.beta == 3.0
    assert RECIPES["dbce_dice"].build(LABELS_CTX, {"dilation": 2}).ce_term.dilation == 2
    cls = getattr(trainers, "nnUNetTrainerTopKCETopKDice_k5_kd20_50epochs")
    assert dict(cls.chosen_options) == {"k": 5.0, "dice_k": 20.0, "epochs": 50}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_region_datasets_get_sigmoid_or_a_clear_error(name):
    recipe = RECIPES[getattr(trainers, name).loss_kind]
    if EXPECTED[name][1] is DilatedBalancedCETerm:
        with pytest.raises(ValueError, match="region datasets .* not supported by the DBCE trainers"):
            recipe.build(REGIONS_CTX, dict(recipe.defaults))
        return
    core = recipe.build(REGIONS_CTX, dict(recipe.defaults))
    assert core.regions and all(m.nonlin == "sigmoid" for m in core.modules() if isinstance(m, DiceFamilyLoss))


# the tokens and refused names of these trainers are in tests/trainer_name_cases.py (test_trainers.py)


def test_nnunet_ce_trainer_takes_the_budget_options_and_keeps_its_loss():
    from nnunetv2.training.nnUNetTrainer.variants.loss.nnUNetTrainerCELoss import nnUNetTrainerCELoss
    cls = getattr(trainers, "nnUNetTrainerCELoss_3epochs_7iters")
    assert issubclass(cls, nnUNetTrainerCELoss) and cls._build_loss is nnUNetTrainerCELoss._build_loss
    assert dict(cls.chosen_options) == {"epochs": 3, "iters": 7}
    assert pickle.loads(pickle.dumps(cls)) is cls
    assert not hasattr(trainers, "nnUNetTrainerCELoss")  # nnU-Net's own name is never shadowed
    assert "nnUNetTrainerCELoss" not in trainers.__all__


# -- through nnU-Net's own lookup and nnUNetv2_train ----------------------------------------------------------
@pytest.mark.integration
def test_nnunet_finds_its_ce_trainer_with_a_budget_in_a_fresh_interpreter():
    code = ("from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name as f; "
            "c = f('nnUNetTrainerCELoss_2epochs_3iters'); print('FOUND', c.__module__, [b.__name__ for b in c.__mro__])")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/")
    assert res.returncode == 0, res.stderr[-2000:]
    assert "FOUND nnunet_pmdice.trainers" in res.stdout and "'nnUNetTrainerCELoss'" in res.stdout


#: trainer names trained for real, with options in some of them to show they reach the loss
RUNS = {
    "nnUNetTrainerDice": {},
    "nnUNetTrainerLogDice_lg0.5": {"log_gamma": 0.5},
    "nnUNetTrainerFocalDiceWang_fb3": {"focal_beta": 3.0},
    "nnUNetTrainerFocalDiceZhao_kd20": {"dice_k": 20.0},
    "nnUNetTrainerCEDice": {},
    "nnUNetTrainerFocalCEDice_fg1": {"focal_gamma": 1.0},
    "nnUNetTrainerTopKCEDice_k5": {"k": 5.0},
    "nnUNetTrainerTopKDice": {"dice_k": 10.0},
    "nnUNetTrainerCETopKDice_kd30": {"dice_k": 30.0},
    "nnUNetTrainerTopKCETopKDice_k5_kd20": {"dice_k": 20.0, "k": 5.0},
    "nnUNetTrainerDBCE_d2": {"dilation": 2},
    "nnUNetTrainerDBCEDice": {"dilation": 5},
}
#: a fold added to the dataset's splits with a single validation case: nnU-Net's final validation after
#: training (prediction with mirroring, export and metrics in spawned workers) dominates a tiny run
ONE_CASE_FOLD = 5


@pytest.fixture(scope="module")
def polyp_one_case_fold(prepared):
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
    from nnunetv2.utilities.crossval_split import generate_crossval_split
    ds = prepared("polyp2d")
    splits_file = ds.preprocessed / "splits_final.json"
    if splits_file.is_file():
        splits = json.loads(splits_file.read_text())
    else:  # what nnU-Net writes on the first training, so fold 0-4 stay nnU-Net's
        folder = ds.preprocessed / "nnUNetPlans_2d"
        keys = sorted(infer_dataset_class(str(folder)).get_identifiers(str(folder)))
        splits = generate_crossval_split(keys, seed=12345, n_splits=5)
    if len(splits) == ONE_CASE_FOLD:
        keys = sorted(splits[0]["train"] + splits[0]["val"])
        splits.append({"train": keys[1:], "val": keys[:1]})
        splits_file.write_text(json.dumps(splits, indent=1))
    assert len(splits[ONE_CASE_FOLD]["val"]) == 1
    return ds


@pytest.mark.integration
@pytest.mark.parametrize("name", list(RUNS))
def test_trains_through_nnunetv2_train(polyp_one_case_fold, name):
    ds = polyp_one_case_fold
    trainer = f"{name}_1epochs_1iters"
    fold = ds.train(trainer, fold=ONE_CASE_FOLD)
    assert (fold / "checkpoint_final.pth").is_file()
    losses = logged_train_losses(fold)
    assert len(losses) == 1 and math.isfinite(losses[0])
    log = "\n".join(p.read_text() for p in fold.glob("training_log_*.txt"))
    kind = getattr(trainers, name.split("_")[0]).loss_kind
    assert f"Loss ({kind}): {RECIPES[kind].summary}" in log
    assert f"resolved options: {RUNS[name]}" in log
    assert "deep supervision weights: [0.571429, 0.285714, 0.142857, 0.0]" in log  # nnU-Net's, 4 outputs
    assert "foreground_mean" in json.loads((fold / "validation" / "summary.json").read_text())  # validated
