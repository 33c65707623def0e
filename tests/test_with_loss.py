"""Any nnU-Net trainer with a loss of the plugin: ``with_loss`` and ``<trainer>.<loss>`` names.

The CLI tests train nnU-Net's own variants and a user's trainer in an ``nnUNet_extTrainer`` folder with
``nnUNetv2_train -device cpu`` for one iteration, then predict with ``nnUNetv2_predict``.
"""
from __future__ import annotations

import abc
import json
import os
import pickle
import subprocess
import sys
import textwrap

import pytest
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.training.nnUNetTrainer.variants.data_augmentation.nnUNetTrainerNoMirroring import (
    nnUNetTrainerNoMirroring)
from nnunetv2.training.nnUNetTrainer.variants.loss.nnUNetTrainerCELoss import nnUNetTrainerCELoss

from conftest import logged_train_losses, run_cli
from nnunet_pmdice import trainers
from nnunet_pmdice.trainers import TrainerNameError, loss_names, trainer_class_for_name, with_loss

#: a user's trainer module in an external folder, as nnU-Net's documentation asks for one
USER_MODULE = textwrap.dedent('''
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunet_pmdice.trainers import with_loss


    class MyTrainer(nnUNetTrainer):
        def on_train_start(self):
            super().on_train_start()
            self.print_to_log_file("MyTrainer.on_train_start ran")


    class MyTrainerTopKDice(with_loss(MyTrainer, "TopKDice_kd20")):
        pass
''')


@pytest.fixture
def user_folder(tmp_path):
    folder = tmp_path / "my_trainers"
    folder.mkdir()
    (folder / "my_trainers.py").write_text(USER_MODULE)
    return folder


# -- the classes ------------------------------------------------------------------------------------------
def test_with_loss_keeps_the_base_and_takes_the_loss():
    cls = with_loss(nnUNetTrainerNoMirroring, "PMDice_g2_bg1_3epochs")
    assert cls.__name__ == "nnUNetTrainerNoMirroring.PMDice_g2_bg1_3epochs"  # nnU-Net's output folder name
    assert issubclass(cls, nnUNetTrainerNoMirroring) and issubclass(cls, trainers.nnUNetTrainerPMDice)
    assert dict(cls.chosen_options) == {"gamma": 2.0, "gamma_bg": 1.0, "epochs": 3}
    # the same class under its -tr name, and after pickling
    assert getattr(trainers, cls.__name__) is cls and trainer_class_for_name(cls.__name__) is cls
    assert pickle.loads(pickle.dumps(cls)) is cls
    assert with_loss(nnUNetTrainerNoMirroring, "nnUNetTrainerPMDice_g2_bg1_3epochs") is cls  # prefix optional
    assert "nnUNetTrainerNoMirroring" in cls.configure_rotation_dummyDA_mirroring_and_inital_patch_size.__qualname__
    assert set(loss_names()) == {n[len("nnUNetTrainer"):] for n in trainers.NAMED_TRAINERS}


def test_a_class_with_its_own_name_pickles_in_the_process_that_made_it():
    cls = with_loss(nnUNetTrainerNoMirroring, "PMDice_g2_bg1", name="nnUNetTrainerMyRunPMDice")
    assert cls.__name__ == "nnUNetTrainerMyRunPMDice" and pickle.loads(pickle.dumps(cls)) is cls


@pytest.mark.parametrize("base, loss, message", [
    (nnUNetTrainerCELoss, "PMDice", r"builds its own loss \(.*nnUNetTrainerCELoss._build_loss\); giving it the loss "
                                    r"'PMDice' would silently drop that loss"),
    (nnUNetTrainer, "PMDice_g2", "is the trainer nnUNetTrainerPMDice: use that name"),
    (trainers.nnUNetTrainerDice, "PMDice", "already trains the plugin loss 'dice'"),
    (nnUNetTrainerNoMirroring, "NoSuchLoss_g2", "unknown loss 'NoSuchLoss' .* the losses are: PMDice, CEPMDice"),
    (nnUNetTrainerNoMirroring, "Dice_g2", "option 'g2' .* does not apply to Dice"),
    (nnUNetTrainerNoMirroring, "PMDice_g99", "gamma = 99 is out of range"),
    (dict, "PMDice", "the base must be an nnU-Net trainer class"),
])
def test_refused_combinations_say_why(base, loss, message):
    with pytest.raises(TrainerNameError, match=message):
        with_loss(base, loss)


def test_base_with_a_foreign_metaclass_is_refused():
    class Abstract(nnUNetTrainer, metaclass=abc.ABCMeta):
        pass

    with pytest.raises(TrainerNameError, match="metaclass ABCMeta"):
        with_loss(Abstract, "PMDice")


@pytest.mark.parametrize("name, message", [
    ("nnUNetTrainerCELoss.PMDice", "builds its own loss"),
    ("nnUNetTrainer.CEPMDice_g2", "is the trainer nnUNetTrainerCEPMDice_g2: use that name"),
    ("nnUNetTrainerPMDice.CEDice", "already trains a plugin loss"),
    ("NoSuchTrainer.PMDice", "nnU-Net cannot find trainer 'NoSuchTrainer'"),
    ("nnUNetTrainerNoMirroring.PMDice_" + "_".join(["g1-1"] * 45), "at most 200 are accepted"),
])
def test_refused_names_say_why(name, message):
    with pytest.raises(TrainerNameError, match=message):
        trainer_class_for_name(name)


def _lookup(names, extra_env):
    """nnU-Net's lookup of each name in a fresh interpreter (as a DDP child or nnUNetv2_predict does), then a
    pickle round trip of each class found."""
    env = {k: v for k, v in os.environ.items() if k != "nnUNet_extTrainer"}
    env.update(extra_env)
    code = ("import pickle, sys\n"
            "from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name as f\n"
            "for n in sys.argv[1:]:\n"
            "    c = f(n); d = pickle.loads(pickle.dumps(c))\n"
            "    print('FOUND', c.__name__, d is c, [b.__name__ for b in c.__mro__][:6], dict(c.chosen_options))")
    return subprocess.run([sys.executable, "-c", code, *names], capture_output=True, text=True, env=env, cwd="/")


def test_user_trainers_in_an_external_folder_are_found_in_a_fresh_process(user_folder):
    res = _lookup(["MyTrainer.PMDice_g2_bg1", "MyTrainerTopKDice", "nnUNetTrainer_probabilisticOversampling_033."
                   "CEPMDice_g0.5"], {"nnUNet_extTrainer": str(user_folder)})
    assert res.returncode == 0, res.stderr[-3000:]
    found = [line for line in res.stdout.splitlines() if line.startswith("FOUND")]
    assert found[0].startswith("FOUND MyTrainer.PMDice_g2_bg1 True ['MyTrainer.PMDice_g2_bg1', 'nnUNetTrainerPMDice'")
    assert "'MyTrainer', 'nnUNetTrainer'" in found[0] and "{'gamma': 2.0, 'gamma_bg': 1.0}" in found[0]
    assert found[1].startswith("FOUND MyTrainerTopKDice True ['MyTrainerTopKDice', 'MyTrainer.TopKDice_kd20', "
                               "'nnUNetTrainerTopKDice'") and "{'dice_k': 20.0}" in found[1]
    assert "'nnUNetTrainer_probabilisticOversampling_033'" in found[2] and "{'gamma': 0.5}" in found[2]


# -- what the trainer builds --------------------------------------------------------------------------------
def _trainer(ds, name, monkeypatch):
    for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.setenv(k, ds.env[k])
    plans = ds.plans()
    plans["continue_training"] = False
    dataset_json = json.loads((ds.preprocessed / "dataset.json").read_text())
    return trainer_class_for_name(name)(plans=plans, configuration=ds.config, fold=0, dataset_json=dataset_json,
                                        device=torch.device("cpu"))


def test_deep_supervision_follows_the_base(prepared, monkeypatch):
    from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
    from nnunet_pmdice.losses import CompoundLoss
    ds = prepared("polyp2d")
    off = _trainer(ds, "nnUNetTrainerNoDeepSupervision.CEPMDice_g2_2iters", monkeypatch)
    off.initialize()
    assert not off.enable_deep_supervision and type(off.loss) is CompoundLoss and off.num_iterations_per_epoch == 2
    assert "deep supervision weights: None" in open(off.log_file).read()
    over = _trainer(ds, "nnUNetTrainer_probabilisticOversampling_033.TopKCEPMDice_k5", monkeypatch)
    over.initialize()
    assert over.oversample_foreground_percent == 0.33 and isinstance(over.loss, DeepSupervisionWrapper)
    assert over.loss.loss.ce_term.k == 5.0


def test_a_loss_the_dataset_refuses_stops_at_initialisation(prepared, monkeypatch):
    tr = _trainer(prepared("regions3d"), "nnUNetTrainerNoMirroring.DBCE", monkeypatch)
    with pytest.raises(ValueError, match="region datasets .* not supported by the DBCE trainers"):
        tr.initialize()


# -- through nnUNetv2_train and nnUNetv2_predict -------------------------------------------------------------
@pytest.mark.integration
@pytest.mark.parametrize("name, expect", [
    ("nnUNetTrainerNoDeepSupervision.CEPMDice_g2_1epochs_1iters", "deep supervision weights: None"),
    ("nnUNetTrainer_probabilisticOversampling_033.TopKCEPMDice_k5_1epochs_1iters", "oversample_foreground_percent"),
    ("MyTrainer.PMDice_g2_bg1_1epochs_1iters", "MyTrainer.on_train_start ran"),
])
def test_train_and_predict_through_the_clis(prepared, user_folder, tmp_path, name, expect):
    ds = prepared("polyp2d")
    env = dict(ds.env, nnUNet_extTrainer=str(user_folder))
    run_cli(["nnUNetv2_train", str(ds.dataset_id), ds.config, "0", "-tr", name, "-device", "cpu"], env)
    fold = ds.results_folder(name) / "fold_0"  # the whole name, options included, names the output folder
    assert len(logged_train_losses(fold)) == 1
    log = "\n".join(p.read_text() for p in fold.glob("training_log_*.txt"))
    assert expect in log and f"trainer: {name} = " in log
    out = tmp_path / "pred"
    run_cli(["nnUNetv2_predict", "-i", str(ds.raw / "imagesTs"), "-o", str(out), "-d", str(ds.dataset_id), "-c",
             ds.config, "-f", "0", "-tr", name, "-device", "cpu", "-npp", "1", "-nps", "1", "--disable_progress_bar"],
            env)
    assert sorted(p.name for p in out.glob("*.png")) == sorted(
        p.name.replace("_0000", "") for p in (ds.raw / "imagesTs").glob("*_0000.png"))
