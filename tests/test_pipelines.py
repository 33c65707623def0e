"""The auto-configured nnU-Net pipelines users put the plugin's trainers into, through the real CLIs.

Each test follows what a user types: ResEnc presets, the 3d_lowres -> 3d_cascade_fullres cascade,
``nnUNetv2_find_best_configuration`` with its ensemble and post-processing, continuing a run with
``--c``, validating the best checkpoint with ``--val_best``, and exporting a model to a zip that is
installed into an empty results folder and predicts. One tiny 3D dataset is planned once for the
module (2d and 3d_fullres, plus a hand-added 3d_lowres stage: nnU-Net plans one only for images much
larger than the patch), split into two folds, and every training runs one epoch of one iteration on the CPU.
"""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import logged_train_losses, nnunet_env, run_cli

pytestmark = pytest.mark.integration

DATASET_ID = 905  # kept clear of the shared fixtures' ids (conftest.DATASETS)
TRAINER = "nnUNetTrainerPMDice_g2_bg1_1epochs_1iters"
ENDING = ".nii.gz"


class Pipeline:
    """A 3D multi-class synthetic dataset planned for 2d, 3d_fullres and (by hand) 3d_lowres/cascade."""

    def __init__(self, root: Path):
        from nnunet_pmdice.synthetic import generate
        self.env = nnunet_env(root)
        self.raw = generate("cardiac3d", self.env["nnUNet_raw"], DATASET_ID, num_train=5, num_test=2,
                            size=(8, 40, 40), seed=DATASET_ID)
        self.name = self.raw.name
        self.id = str(DATASET_ID)
        self.preprocessed = Path(self.env["nnUNet_preprocessed"]) / self.name
        self.results = Path(self.env["nnUNet_results"]) / self.name
        self._trained = {}
        run_cli(["nnUNetv2_plan_and_preprocess", "-d", self.id, "-c", "2d", "3d_fullres", "-np", "1", "1",
                 "-npfp", "1", "--verify_dataset_integrity"], self.env)
        self._add_lowres_stage()
        # a two-fold split of the five cases, as a lab with its own split writes it: nnU-Net reads it instead of
        # making five folds, and the cascade needs only two lowres trainings for every case's next-stage input
        cases = sorted(p.name[:-len(ENDING)] for p in (self.raw / "labelsTr").glob("*" + ENDING))
        self.folds = [cases[:3], cases[3:]]
        (self.preprocessed / "splits_final.json").write_text(json.dumps(
            [{"train": [c for c in cases if c not in val], "val": val} for val in self.folds], indent=2))

    def _add_lowres_stage(self) -> None:
        plans_file = self.preprocessed / "nnUNetPlans.json"
        plans = json.loads(plans_file.read_text())
        full = plans["configurations"]["3d_fullres"]
        spacing = [s * f for s, f in zip(full["spacing"], (1, 2, 2))]
        size = [max(1, round(n / f)) for n, f in zip(full["median_image_size_in_voxels"], (1, 2, 2))]
        plans["configurations"]["3d_lowres"] = {
            "inherits_from": "3d_fullres", "data_identifier": "nnUNetPlans_3d_lowres", "spacing": spacing,
            "median_image_size_in_voxels": size, "batch_dice": False, "next_stage": "3d_cascade_fullres"}
        plans["configurations"]["3d_cascade_fullres"] = {"inherits_from": "3d_fullres",
                                                         "previous_stage": "3d_lowres"}
        plans_file.write_text(json.dumps(plans, indent=2))
        run_cli(["nnUNetv2_preprocess", "-d", self.id, "-c", "3d_lowres", "-np", "1"], self.env)

    def model_folder(self, config: str, trainer: str = TRAINER, plans: str = "nnUNetPlans") -> Path:
        return self.results / f"{trainer}__{plans}__{config}"

    def train(self, config: str, fold, trainer: str = TRAINER, extra=(), env=None) -> Path:
        run_cli(["nnUNetv2_train", self.id, config, str(fold), "-tr", trainer, "-device", "cpu", *extra],
                env or self.env)
        return self.model_folder(config, trainer, _plans_of(extra)) / f"fold_{fold}"

    def trained(self, config: str, fold: int) -> Path:
        """Fold ``fold`` of ``config`` trained with :data:`TRAINER` (and ``--npz``), once for the module."""
        if (config, fold) not in self._trained:
            self._trained[config, fold] = self.train(config, fold, extra=["--npz"])
        return self._trained[config, fold]

    def predict(self, out: Path, config: str, folds=("0",), extra=(), inputs: Path = None, env=None) -> Path:
        run_cli(["nnUNetv2_predict", "-i", str(inputs or self.raw / "imagesTs"), "-o", str(out), "-d", self.id,
                 "-c", config, "-f", *folds, "-tr", TRAINER, "-device", "cpu", "-npp", "1", "-nps", "1",
                 "--disable_progress_bar", *extra], env or self.env)
        return out

    def test_cases(self):
        return sorted(p.name.replace("_0000" + ENDING, ENDING) for p in (self.raw / "imagesTs").glob("*_0000" + ENDING))


def _plans_of(extra) -> str:
    extra = list(extra)
    return extra[extra.index("-p") + 1] if "-p" in extra else "nnUNetPlans"


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory) -> Pipeline:
    return Pipeline(tmp_path_factory.mktemp("pipelines"))


def _assert_segmentations(folder: Path, ds: Pipeline) -> None:
    """One prediction per test case, each a label map of the dataset's labels on the image's grid."""
    import SimpleITK as sitk
    got = sorted(p.name for p in folder.glob("*" + ENDING))
    assert got == ds.test_cases(), f"{folder}: predictions {got}, expected {ds.test_cases()}"
    labels = set(json.loads((ds.raw / "dataset.json").read_text())["labels"].values())
    for name in got:
        pred = sitk.ReadImage(str(folder / name))
        image = sitk.ReadImage(str(ds.raw / "imagesTs" / name.replace(ENDING, "_0000" + ENDING)))
        assert pred.GetSize() == image.GetSize(), f"{name}: size {pred.GetSize()} != image {image.GetSize()}"
        assert set(np.unique(sitk.GetArrayFromImage(pred)).tolist()) <= labels, f"{name}: unknown labels"


def _assert_pm_dice_log(fold: Path) -> str:
    log = "\n".join(p.read_text() for p in fold.glob("training_log_*.txt"))
    assert "PM Dice gamma per output channel: [1.0, 2.0, 2.0, 2.0]" in log, f"no PM Dice settings in {fold}"
    return log


def test_resenc_preset_trains_and_predicts(pipeline, tmp_path):
    ds = pipeline
    run_cli(["nnUNetv2_plan_experiment", "-d", ds.id, "-pl", "nnUNetPlannerResEncM"], ds.env)
    plans = json.loads((ds.preprocessed / "nnUNetResEncUNetMPlans.json").read_text())
    arch = plans["configurations"]["3d_fullres"]["architecture"]["network_class_name"]
    assert arch.endswith("ResidualEncoderUNet"), arch
    run_cli(["nnUNetv2_preprocess", "-d", ds.id, "-plans_name", "nnUNetResEncUNetMPlans", "-c", "3d_fullres",
             "-np", "1"], ds.env)
    fold = ds.train("3d_fullres", 0, extra=["-p", "nnUNetResEncUNetMPlans"])
    assert fold.parent.name == f"{TRAINER}__nnUNetResEncUNetMPlans__3d_fullres"
    _assert_pm_dice_log(fold)
    out = ds.predict(tmp_path / "pred", "3d_fullres", extra=["-p", "nnUNetResEncUNetMPlans"])
    _assert_segmentations(out, ds)


def test_lowres_folds_then_cascade_with_previous_stage(pipeline, tmp_path):
    ds = pipeline
    for fold in range(len(ds.folds)):
        trained = ds.train("3d_lowres", fold)
        _assert_pm_dice_log(trained)
    # each lowres fold's final validation wrote the next-stage input of its validation cases: every case has one
    next_stage = ds.model_folder("3d_lowres") / "predicted_next_stage" / "3d_cascade_fullres"
    written = sorted(p.name.split(".")[0] for p in next_stage.glob("*.*"))   # .b2nd (or .npz) per case
    assert written == sorted(c for val in ds.folds for c in val), f"next-stage predictions in {next_stage}: {written}"
    cascade = ds.train("3d_cascade_fullres", 0)
    log = _assert_pm_dice_log(cascade)
    assert "3d_cascade_fullres" in log
    lowres_pred = ds.predict(tmp_path / "lowres", "3d_lowres")
    _assert_segmentations(lowres_pred, ds)
    out = ds.predict(tmp_path / "cascade", "3d_cascade_fullres",
                     extra=["-prev_stage_predictions", str(lowres_pred)])
    _assert_segmentations(out, ds)


def test_find_best_configuration_ensemble_and_postprocessing(pipeline, tmp_path):
    ds = pipeline
    for config in ("2d", "3d_fullres"):
        ds.trained(config, 0)
    res = run_cli(["nnUNetv2_find_best_configuration", ds.id, "-c", "2d", "3d_fullres", "-tr", TRAINER,
                   "-f", "0", "-np", "1"], ds.env)
    info = json.loads((ds.results / "inference_information.json").read_text())
    assert (ds.results / "inference_instructions.txt").is_file(), res.stdout[-2000:]
    names = {m["trainer"] for m in info["best_model_or_ensemble"]["selected_model_or_models"]}
    assert names == {TRAINER}, names
    assert "ensemble___" in json.dumps(info["all_results"]), "no ensemble was evaluated"
    # predict both configurations with probabilities, ensemble them, post-process the ensemble
    preds = [ds.predict(tmp_path / config, config, extra=["--save_probabilities"]) for config in ("2d", "3d_fullres")]
    ensemble = tmp_path / "ensemble"
    run_cli(["nnUNetv2_ensemble", "-i", *map(str, preds), "-o", str(ensemble), "-np", "1"], ds.env)
    _assert_segmentations(ensemble, ds)
    pp_pkl = info["best_model_or_ensemble"]["postprocessing_file"]
    assert Path(pp_pkl).is_file(), pp_pkl
    plans_json = info["best_model_or_ensemble"]["some_plans_file"]
    post = tmp_path / "postprocessed"
    run_cli(["nnUNetv2_apply_postprocessing", "-i", str(ensemble), "-o", str(post), "-pp_pkl_file", pp_pkl,
             "-np", "1", "-plans_json", plans_json], ds.env)
    _assert_segmentations(post, ds)


def test_continue_with_c_resumes_from_the_latest_checkpoint(pipeline):
    """A run stopped after epoch 1 of 2 (its latest checkpoint in place) continues with ``--c``, keeping
    the epoch already trained: the logged losses of epoch 1 are those of the stopped run."""
    ds = pipeline
    first = ds.train("2d", 1, trainer="nnUNetTrainerCEPMDice_1epochs_1iters")
    stopped = ds.model_folder("2d", "nnUNetTrainerCEPMDice_2epochs_1iters") / "fold_1"
    stopped.mkdir(parents=True)
    shutil.copy(first / "checkpoint_final.pth", stopped / "checkpoint_latest.pth")
    done = ds.train("2d", 1, trainer="nnUNetTrainerCEPMDice_2epochs_1iters", extra=["--c"])
    resumed = logged_train_losses(done)
    assert len(resumed) == 2 and all(math.isfinite(v) for v in resumed), resumed
    assert resumed[0] == pytest.approx(logged_train_losses(first)[0], rel=0, abs=0)
    assert not (done / "checkpoint_latest.pth").exists() and (done / "checkpoint_final.pth").is_file()


def test_val_best_validates_with_the_best_checkpoint(pipeline, tmp_path):
    """``--val --val_best`` re-validates from ``checkpoint_best.pth``: without that file it fails, with it
    it writes the validation summary again."""
    ds = pipeline
    fold = ds.trained("2d", 0)
    best = fold / "checkpoint_best.pth"
    assert best.is_file()
    summary = fold / "validation" / "summary.json"
    summary.unlink()
    cmd = ["nnUNetv2_train", ds.id, "2d", "0", "-tr", TRAINER, "-device", "cpu", "--val", "--val_best", "--npz"]
    shutil.move(best, tmp_path / best.name)
    with pytest.raises(AssertionError):
        run_cli(cmd, ds.env)
    assert not summary.exists()
    shutil.move(tmp_path / best.name, best)
    run_cli(cmd, ds.env)
    assert "foreground_mean" in json.loads(summary.read_text())


def test_export_to_zip_install_in_empty_results_and_predict(pipeline, tmp_path):
    ds = pipeline
    ds.trained("3d_fullres", 0)
    archive = tmp_path / "model.zip"
    run_cli(["nnUNetv2_export_model_to_zip", "-d", ds.id, "-o", str(archive), "-c", "3d_fullres", "-tr", TRAINER,
             "-f", "0"], ds.env)
    assert archive.is_file()
    empty = dict(ds.env, nnUNet_results=str(tmp_path / "fresh_results"))
    Path(empty["nnUNet_results"]).mkdir()
    run_cli(["nnUNetv2_install_pretrained_model_from_zip", str(archive)], empty, cwd=tmp_path)
    installed = Path(empty["nnUNet_results"]) / ds.name / f"{TRAINER}__nnUNetPlans__3d_fullres"
    assert (installed / "fold_0" / "checkpoint_final.pth").is_file()
    out = ds.predict(tmp_path / "pred", "3d_fullres", folds=("0",), env=empty)
    _assert_segmentations(out, ds)
    direct = tmp_path / "pred_from_modelfolder"
    run_cli(["nnUNetv2_predict_from_modelfolder", "-i", str(ds.raw / "imagesTs"), "-o", str(direct),
             "-m", str(installed), "-f", "0", "-device", "cpu", "-npp", "1", "-nps", "1", "--disable_progress_bar"],
            empty, cwd=tmp_path)
    _assert_segmentations(direct, ds)
