"""Trainer names, discovery by nnU-Net, pickling, deep supervision and the loss each trainer builds."""
from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch

from nnunet_pmdice import trainers
from nnunet_pmdice.trainers import TrainerNameError, trainer_class_for_name
from nnunet_pmdice.trainers.loss_builder import deep_supervision_weights
from nnunet_pmdice.trainers.naming import is_baseline_name, parse_options, parse_token, trainer_budget, with_budget
from trainer_name_cases import BAD_NAMES, TOKENS


# -- the name grammar --------------------------------------------------------------------------------
@pytest.mark.parametrize("token", sorted(TOKENS))
def test_tokens(token):
    assert parse_token(token) == TOKENS[token]


@pytest.mark.parametrize("name", sorted(BAD_NAMES))
def test_bad_names_say_what_is_accepted(name):
    with pytest.raises(TrainerNameError, match=BAD_NAMES[name]):
        trainer_class_for_name(name)


def test_kd_says_what_it_means_for_each_loss():
    """``kd`` is the Dice part's percentage: of each class's own pixels (TopK Dice), of its negatives (Zhao)."""
    with pytest.raises(TrainerNameError, match="kd<x> \\(TopK Dice: percentage of each class's own pixels"):
        trainer_class_for_name("nnUNetTrainerTopKDice_x1")
    with pytest.raises(TrainerNameError, match="kd<x> \\(Zhao Focal Dice: percentage of each class's negatives"):
        trainer_class_for_name("nnUNetTrainerFocalDiceZhao_x1")


def _shipped_epochs():
    """nnU-Net's shipped training-length trainers and the epochs their source sets."""
    import inspect
    import re as _re
    from nnunetv2.training.nnUNetTrainer.variants.training_length import (nnUNetTrainer_Xepochs,
                                                                         nnUNetTrainer_Xepochs_NoMirroring)
    found = {}
    for module in (nnUNetTrainer_Xepochs, nnUNetTrainer_Xepochs_NoMirroring):
        for name, cls in vars(module).items():
            if isinstance(cls, type) and name.startswith("nnUNetTrainer_") and cls.__module__ == module.__name__:
                m = _re.search(r"self\.num_epochs = (\d+)", inspect.getsource(cls))
                if m:
                    found[name] = int(m.group(1))
    return found


def test_budget_of_nnunets_shipped_trainers_is_read_as_they_train():
    shipped = _shipped_epochs()
    assert {"nnUNetTrainer_1epoch", "nnUNetTrainer_5epochs", "nnUNetTrainer_250epochs_NoMirroring"} <= set(shipped)
    assert {n: trainer_budget(n)[0] for n in shipped} == shipped
    assert is_baseline_name("nnUNetTrainer_1epoch") and is_baseline_name("nnUNetTrainer_5epochs")
    assert not is_baseline_name("nnUNetTrainer_250epochs_NoMirroring")  # other augmentation: no baseline


def test_budget_tokens_round_trip_through_the_trainers():
    for name in ("nnUNetTrainerPMDice_g2", "nnUNetTrainer", "nnUNetTrainerCELoss",
                 "nnUNetTrainerNoMirroring.CEPMDice_g0.5"):
        budgeted = with_budget(name, epochs=3, iters=7)
        assert trainer_budget(budgeted) == (3, 7)
        assert dict(trainer_class_for_name(budgeted).chosen_options).items() >= {"epochs": 3, "iters": 7}.items()
    assert trainer_budget("nnUNetTrainer_250epochs_NoMirroring.PMDice_5epochs") == (5, None)
    with pytest.raises(ValueError, match="--epochs must be an integer from 1 to 100000"):
        with_budget("nnUNetTrainerPMDice", epochs=10 ** 20)
    with pytest.raises(ValueError, match="already sets its iters"):
        with_budget("nnUNetTrainerPMDice_5iters", iters=5)


def test_too_long_a_name_is_refused_through_nnunets_lookup_before_any_folder_is_made():
    res = _lookup("nnUNetTrainerPMDice_" + "_".join(["g1-1"] * 50))
    assert res.returncode != 0 and "at most 200 are accepted" in res.stderr
    assert "File name too long" not in res.stderr


def test_error_lists_the_accepted_options():
    with pytest.raises(TrainerNameError) as err:
        parse_options("nnUNetTrainerPMDice_foo", "nnUNetTrainerPMDice", trainers.nnUNetTrainerPMDice.name_options)
    assert "g<x>" in str(err.value) and "bg<x>" in str(err.value) and "<n>epochs" in str(err.value)


def test_classes_made_from_names():
    cls = getattr(trainers, "nnUNetTrainerPMDice_g2_bg1_3epochs_7iters")
    assert cls.__name__ == "nnUNetTrainerPMDice_g2_bg1_3epochs_7iters"  # nnU-Net names its output folder so
    assert issubclass(cls, trainers.nnUNetTrainerPMDice)
    assert dict(cls.chosen_options) == {"gamma": 2.0, "gamma_bg": 1.0, "epochs": 3, "iters": 7}
    assert getattr(trainers, cls.__name__) is cls  # cached: one class per name
    assert trainer_class_for_name("nnUNetTrainerPMDice") is trainers.nnUNetTrainerPMDice
    assert getattr(trainers, "nnUNetTrainerFocalCEPMDice_fg3").chosen_options == {"focal_gamma": 3.0}
    baseline = getattr(trainers, "nnUNetTrainer_2epochs_5iters")
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    assert issubclass(baseline, nnUNetTrainer) and "_build_loss" not in vars(type(baseline).__mro__[1])


def test_names_that_are_not_ours_are_absent():
    assert not hasattr(trainers, "nnUNetTrainerSomethingElse")
    assert not hasattr(trainers, "nnUNetTrainer")  # nnU-Net's own class is never shadowed
    assert not hasattr(trainers, "__wrapped__")


def test_classes_pickle_by_name_into_a_fresh_process(tmp_path):
    names = ["nnUNetTrainerPMDice", "nnUNetTrainerPMDice_g0.5", "nnUNetTrainerCEPMDice_g1-2-2.5_bg0.5_10epochs",
             "nnUNetTrainer_4epochs_3iters"]
    classes = [getattr(trainers, n) for n in names]
    assert [pickle.loads(pickle.dumps(c)) for c in classes] == classes
    blob = tmp_path / "classes.pkl"
    blob.write_bytes(pickle.dumps(classes))
    code = ("import pickle,sys; cs=pickle.loads(open(sys.argv[1],'rb').read()); "
            "print([c.__name__ for c in cs]); print([dict(c.chosen_options) for c in cs])")
    res = subprocess.run([sys.executable, "-c", code, str(blob)], capture_output=True, text=True, check=True)
    assert res.stdout.splitlines()[0] == str(names)
    assert "'gamma': (1.0, 2.0, 2.5)" in res.stdout.splitlines()[1]


# -- deep supervision ---------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [2, 3, 5, 7])
@pytest.mark.parametrize("ddp, compiled", [(False, False), (True, False), (True, True)])
def test_deep_supervision_weights_are_nnunets(n, ddp, compiled):
    w = np.array([1 / (2 ** i) for i in range(n)])
    w[-1] = 1e-6 if ddp and not compiled else 0
    np.testing.assert_allclose(deep_supervision_weights(n, ddp=ddp, compiled=compiled), w / w.sum())


def test_deep_supervision_single_scale_is_never_all_zero():
    np.testing.assert_allclose(deep_supervision_weights(1), [1.0])
    with pytest.raises(ValueError):
        deep_supervision_weights(0)


# -- found by nnU-Net with zero set-up ------------------------------------------------------------------
def test_autoregister_appends_once_and_keeps_user_folders(tmp_path):
    from nnunet_pmdice._autoregister import EXT_FOLDER, register
    env = {"nnUNet_extTrainer": str(tmp_path)}
    assert register(env) is True
    assert env["nnUNet_extTrainer"].split(os.pathsep) == [str(tmp_path), EXT_FOLDER]
    assert register(env) is False
    assert env["nnUNet_extTrainer"].split(os.pathsep) == [str(tmp_path), EXT_FOLDER]
    empty = {}
    register(empty)
    assert empty["nnUNet_extTrainer"] == EXT_FOLDER


def _lookup(name, extra_env=None):
    env = {k: v for k, v in os.environ.items() if k != "nnUNet_extTrainer"}
    env.update(extra_env or {})
    code = ("from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name as f; import sys; "
            "c = f(sys.argv[1]); print('FOUND', c.__module__, c.__name__)")
    return subprocess.run([sys.executable, "-c", code, name], capture_output=True, text=True, env=env, cwd="/")


def test_nnunet_finds_trainers_in_a_fresh_interpreter_without_set_up():
    res = _lookup("nnUNetTrainerPMDice_g2_bg1")
    assert res.returncode == 0, res.stderr[-2000:]
    assert "FOUND nnunet_pmdice.trainers nnUNetTrainerPMDice_g2_bg1" in res.stdout


def test_opt_out_of_the_start_up_hook():
    res = _lookup("nnUNetTrainerPMDice", {"NNUNET_PMDICE_NO_AUTOREGISTER": "1"})
    assert res.returncode != 0 and "Could not find requested nnunet trainer" in res.stderr
    from nnunet_pmdice._autoregister import EXT_FOLDER
    res = _lookup("nnUNetTrainerPMDice", {"NNUNET_PMDICE_NO_AUTOREGISTER": "1", "nnUNet_extTrainer": EXT_FOLDER})
    assert res.returncode == 0 and "FOUND nnunet_pmdice.trainers nnUNetTrainerPMDice" in res.stdout


def test_bad_option_reaches_the_user_through_nnunets_lookup():
    res = _lookup("nnUNetTrainerPMDice_k5")
    assert res.returncode != 0 and "does not apply to nnUNetTrainerPMDice" in res.stderr


def test_cli_prints_the_ext_folder():
    from nnunet_pmdice._autoregister import EXT_FOLDER
    res = subprocess.run([sys.executable, "-m", "nnunet_pmdice.cli", "ext-path"], capture_output=True, text=True,
                         check=True)
    assert res.stdout.strip() == EXT_FOLDER and os.path.isfile(os.path.join(EXT_FOLDER, "nnunet_pmdice_trainers.py"))


# -- the loss a real trainer builds ---------------------------------------------------------------------
def _trainer(prepared_ds, name, monkeypatch):
    for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.setenv(k, prepared_ds.env[k])
    plans = prepared_ds.plans()
    plans["continue_training"] = False
    dataset_json = json.loads((prepared_ds.preprocessed / "dataset.json").read_text())
    cls = getattr(trainers, name)
    return cls(plans=plans, configuration=prepared_ds.config, fold=0, dataset_json=dataset_json,
               device=torch.device("cpu"))


def test_real_trainer_builds_pm_dice_with_plans_batch_dice_and_deep_supervision(prepared, monkeypatch):
    from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
    from nnunet_pmdice.losses import CompoundLoss, PMDiceLoss
    ds = prepared("polyp2d")
    tr = _trainer(ds, "nnUNetTrainerPMDice_g2_bg1_3epochs_7iters", monkeypatch)
    assert (tr.num_epochs, tr.num_iterations_per_epoch, tr.num_val_iterations_per_epoch) == (3, 7, 2)
    tr.initialize()
    assert isinstance(tr.loss, DeepSupervisionWrapper)
    n_scales = len(tr._get_deep_supervision_scales())
    np.testing.assert_allclose(tr.loss.weight_factors, deep_supervision_weights(n_scales))
    core = tr.loss.loss
    assert isinstance(core, CompoundLoss) and isinstance(core.dice, PMDiceLoss)
    assert core.dice.batch_dice == ds.plans()["configurations"]["2d"]["batch_dice"]
    assert core.dice.gammas_for(2) == (1.0, 2.0) and core.dice.do_bg and core.dice.smooth == 1e-6
    # one training step on a real batch (loaded in this process: no augmenter workers left behind): a finite loss
    monkeypatch.setenv("nnUNet_n_proc_DA", "0")
    batch = next(iter(tr.get_dataloaders()[0]))
    out = tr.train_step(batch)
    assert np.isfinite(out["loss"])
    log = open(tr.log_file).read()
    assert "PM Dice gamma per output channel: [1.0, 2.0]" in log and "deep supervision weights" in log


def test_baseline_with_budget_keeps_nnunets_default_loss(prepared, monkeypatch):
    from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
    tr = _trainer(prepared("polyp2d"), "nnUNetTrainer_2epochs_4iters", monkeypatch)
    tr.initialize()
    assert isinstance(tr.loss.loss, DC_and_CE_loss) and tr.num_epochs == 2 and tr.num_iterations_per_epoch == 4


def test_per_class_gamma_of_wrong_length_fails_at_initialisation(prepared, monkeypatch):
    tr = _trainer(prepared("polyp2d"), "nnUNetTrainerPMDice_g1-2-3", monkeypatch)
    with pytest.raises(ValueError, match="gamma has 3 values .* C=2"):
        tr.initialize()


def test_region_dataset_gets_sigmoid_and_rejects_gamma_bg(prepared, monkeypatch):
    ds = prepared("regions3d")
    tr = _trainer(ds, "nnUNetTrainerTopKCEPMDice_k5_g2", monkeypatch)
    tr.initialize()
    core = tr.loss.loss
    assert core.regions and core.dice.nonlin == "sigmoid" and core.ce_term.k == 5.0
    assert core.dice.gammas_for(3) == (2.0, 2.0, 2.0)
    tr_bg = _trainer(ds, "nnUNetTrainerPMDice_g2_bg1", monkeypatch)
    with pytest.raises(ValueError, match="gamma_bg only has a meaning in softmax mode"):
        tr_bg.initialize()


# -- the documentation lists the table ----------------------------------------------------------------------
def test_every_trainer_of_the_table_is_documented():
    from pathlib import Path
    from nnunet_pmdice.trainers.loss_table import TRAINER_TABLE
    root = Path(__file__).resolve().parents[1]
    docs, readme = (root / "docs" / "trainers.md").read_text(), (root / "README.md").read_text()
    missing = [r.trainer for r in TRAINER_TABLE if f"`{r.trainer}`" not in docs or f"`{r.trainer}`" not in readme]
    assert not missing
    assert all(f"`{r.loss_name}`" in docs for r in TRAINER_TABLE)  # the losses with_loss takes


def test_check_trainer_name_finds_what_nnunet_trains():
    from nnunet_pmdice.trainers import check_trainer_name
    assert check_trainer_name("nnUNetTrainer_1epoch").__module__.startswith("nnunetv2.")  # nnU-Net's own
    assert check_trainer_name("nnUNetTrainer_probabilisticOversampling_033").__module__.startswith("nnunetv2.")
    assert check_trainer_name("nnUNetTrainerPMDice_g2") is getattr(trainers, "nnUNetTrainerPMDice_g2")
    assert check_trainer_name("nnUNetTrainer_7epochs_3iters").chosen_options == {"epochs": 7, "iters": 3}
    with pytest.raises(TrainerNameError, match="does not apply to nnUNetTrainer"):
        check_trainer_name("nnUNetTrainer_g2")
    with pytest.raises(TrainerNameError, match="ASCII"):
        check_trainer_name("nnUNetTrainer_\uff15epochs")
    with pytest.raises(ValueError, match="nnU-Net cannot find trainer 'NoSuchTrainer'"):
        check_trainer_name("NoSuchTrainer")
