"""The benchmark and the demo: trainer budgets, settings, and an end-to-end run through nnU-Net's CLIs on CPU."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from nnunet_pmdice.benchmark.commands import nnunet_default_epochs
from nnunet_pmdice.benchmark.report import MIN_SWEEP_POINTS, gamma_sweep, nsd_unit
from nnunet_pmdice.benchmark.runner import (BenchmarkSettings, check_trainer_names, choose_baseline,
                                            dataset_folder_name, is_baseline_name, trainer_budget, with_budget)

from conftest import command_lines, nnunet_env, pmdice_cli as cli


# ------------------------------------------------------------------------------------------- names

@pytest.mark.parametrize("name,budget", [
    ("nnUNetTrainer", (None, None)), ("nnUNetTrainer_5epochs", (5, None)), ("nnUNetTrainer_1epoch", (1, None)),
    ("nnUNetTrainerPMDice_g2_bg1_50epochs_100iters", (50, 100)), ("nnUNetTrainerPMDice_7iters", (None, 7))])
def test_trainer_budget(name, budget):
    assert trainer_budget(name) == budget


def test_with_budget_appends_and_refuses_two_budgets():
    assert with_budget("nnUNetTrainerPMDice_g2", 3, 4) == "nnUNetTrainerPMDice_g2_3epochs_4iters"
    assert with_budget("nnUNetTrainer") == "nnUNetTrainer"
    with pytest.raises(ValueError, match="already sets its epochs"):
        with_budget("nnUNetTrainer_5epochs", epochs=3)
    with pytest.raises(ValueError, match="--iters"):
        with_budget("nnUNetTrainer", iters=0)


def test_baseline_is_nnunets_default_trainer_first():
    assert is_baseline_name("nnUNetTrainer_3epochs_2iters") and not is_baseline_name("nnUNetTrainerPMDice")
    names, base = choose_baseline(["nnUNetTrainerPMDice_2epochs", "nnUNetTrainer_2epochs"])
    assert names == ["nnUNetTrainer_2epochs", "nnUNetTrainerPMDice_2epochs"] and base == "nnUNetTrainer_2epochs"
    names, base = choose_baseline(["nnUNetTrainerPMDice_2epochs_3iters"])          # added, same budget
    assert base == "nnUNetTrainer_2epochs_3iters" and names[0] == base


def test_trainer_names_checked_before_any_training():
    check_trainer_names(["nnUNetTrainer_2epochs", "nnUNetTrainerPMDice_g2_bg1_2epochs", "nnUNetTrainerCELoss"])
    with pytest.raises(ValueError, match="nnUNetTrainerNoSuchThing"):
        check_trainer_names(["nnUNetTrainerNoSuchThing"])
    with pytest.raises(ValueError):
        check_trainer_names(["nnUNetTrainerPMDice_gx"])
    with pytest.raises(ValueError, match="characters"):
        check_trainer_names(["nnUNetTrainer PMDice"])
    check_trainer_names(["nnUNetTrainer_probabilisticOversampling_033.CEPMDice_g0.5"])   # <trainer>.<loss>
    with pytest.raises(ValueError, match="NoSuchLoss"):
        check_trainer_names(["nnUNetTrainer.NoSuchLoss"])


@pytest.mark.parametrize("kwargs,message", [
    (dict(runs=0), "--runs"), (dict(fold="x"), "--fold"), (dict(device="tpu"), "--device"),
    (dict(jobs=0), "--jobs"), (dict(gpus=["0"], device="cpu"), "--gpus"), (dict(only_runs=[3]), "--only-runs"),
    (dict(tau=-1.0), "--tau"), (dict(baseline="nope"), "baseline"), (dict(bootstrap=50), "--bootstrap"),
    (dict(seed=1.5), "--seed")])
def test_bad_settings_raise(kwargs, message):
    args = dict(dataset="500", configuration="2d", trainers=["nnUNetTrainer"], out="x")
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        BenchmarkSettings(**args)


def test_dataset_lookup_errors(tmp_path):
    (tmp_path / "Dataset005_A").mkdir()
    assert dataset_folder_name("5", tmp_path) == "Dataset005_A"
    with pytest.raises(FileNotFoundError, match="no dataset with id 6"):
        dataset_folder_name(6, tmp_path)
    with pytest.raises(ValueError, match="-d"):
        dataset_folder_name("abc", tmp_path)
    # an id must name one dataset across nnU-Net's folders, as nnU-Net's own CLIs require
    (tmp_path / "pre" / "Dataset005_B").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="more than one dataset with id 5"):
        dataset_folder_name("5", tmp_path, tmp_path / "pre")
    with pytest.raises(FileNotFoundError, match="Dataset007_C not found"):
        dataset_folder_name("Dataset007_C", tmp_path)


def test_default_epoch_count_is_read_from_nnunet():
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    import inspect
    assert f"self.num_epochs = {nnunet_default_epochs()}" in inspect.getsource(nnUNetTrainer.__init__)


def test_nsd_unit_comes_from_the_evaluation_summary():
    assert nsd_unit([{"nsd_unit": "mm", "tau_unit": "mm"}], ".png") == "mm"      # recorded: no guess
    assert nsd_unit([{"tau_unit": "pixels"}], ".nii.gz") == "pixels"             # summaries of earlier versions
    assert nsd_unit([{}], ".nii.gz") == "mm" and nsd_unit([{}], ".png") == "pixels"


# ------------------------------------------------------------------------------------- gamma sweeps

G = "nnUNetTrainerPMDice"


@pytest.mark.parametrize("trainers,option,gammas", [
    (["nnUNetTrainer", f"{G}_g0", f"{G}_g0.5", f"{G}_g1", f"{G}_g2", f"{G}_g5"], "gamma", [0, 0.5, 1, 2, 5]),
    ([f"{G}_g0.5_3epochs", f"{G}_3epochs", f"{G}_g2_3epochs"], "gamma", [0.5, 1, 2]),       # no token: gamma 1
    ([f"{G}_g2_bg1", f"{G}_g3_bg1", f"{G}_g4_bg1"], "gamma", [2, 3, 4]),                  # background fixed
    ([f"{G}_g2_bg0", f"{G}_g2_bg1", f"{G}_g2"], "gamma_bg", [0, 1, 2]),                   # no bg token: bg = gamma
    ([f"nnUNetTrainerCEPMDice_g{g}" for g in (1, 2, 3)], "gamma", [1, 2, 3]),
])
def test_gamma_sweep_detected(trainers, option, gammas):
    sweep = gamma_sweep(trainers, "nnUNetTrainer")
    assert sweep is not None and sweep.option == option
    assert [g for g, _ in sweep.points] == gammas and "nnUNetTrainer" not in [t for _, t in sweep.points]


@pytest.mark.parametrize("trainers", [
    [f"{G}_g1", f"{G}_g2"],                                                   # fewer than MIN_SWEEP_POINTS
    [f"{G}_g1", f"{G}_g2", "nnUNetTrainerCEPMDice_g3"],                       # another loss
    [f"{G}_g1", f"{G}_g2", f"{G}_g3_5epochs"],                                # another budget
    [f"{G}_g1_bg1", f"{G}_g2_bg2", f"{G}_g3_bg1"],                            # gamma and background both move
    [f"{G}_g1", f"{G}_g1-2", f"{G}_g3"],                                      # a per-channel gamma
    [f"{G}_g1", f"{G}", f"{G}_g3"],                                           # gamma 1 twice
    ["nnUNetTrainerDice", "nnUNetTrainerCELoss", "nnUNetTrainerTopKDice"],    # no gamma at all
])
def test_no_gamma_sweep(trainers):
    assert MIN_SWEEP_POINTS == 3
    assert gamma_sweep(["nnUNetTrainer"] + trainers, "nnUNetTrainer") is None


# ------------------------------------------------------------------------ end to end, through the CLIs

BUDGET = ["--epochs", "1", "--iters", "2"]
T_BASE, T_PM = "nnUNetTrainer_1epochs_2iters", "nnUNetTrainerPMDice_1epochs_2iters"


#: ``nnunet-pmdice demo`` on its default task (faintpolyp2d) with a tiny dataset and budget
DEMO = ["demo", "--device", "cpu", *BUDGET, "--num-train", "4", "--num-test", "3", "--size", "48", "48",
        "--seed", "3", "--runs", "1", "--figure-cases", "2"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The demo end to end: synthetic data, nnU-Net plan/train/predict, the comparison, the Figure-2 panels."""
    out = tmp_path_factory.mktemp("demo")
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", nnUNet_compile="f")
    res = cli([*DEMO, "-o", str(out)], env)
    return out, env, res


@pytest.mark.integration
def test_demo_writes_table_plots_and_command_log(demo):
    out, _, res = demo
    table = (out / "table.md").read_text()
    rows = [ln for ln in table.splitlines() if ln.startswith("| nnUNet")]
    assert rows[0].startswith(f"| {T_BASE} (baseline) |") and rows[1].startswith(f"| {T_PM} |")
    assert "| mDice | mIoU | mNSD | mPrec. | mRec. |" in table and "NSD tau = 1 pixels" in table
    assert table in res.stdout.replace("\n\n", "\n") or rows[0] in res.stdout
    per_case = (out / "per_case.csv").read_text().strip().splitlines()
    assert per_case[0].startswith("trainer,run,case,class,dice")
    assert len(per_case) == 1 + 2 * 3                              # 2 trainers x 3 test cases x 1 class
    for png in ("metrics.png", "per_case.png", "overlays.png"):
        data = (out / "plots" / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, png
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["trainers"]) == {T_BASE, T_PM} and not summary["unfinished"]
    for t in (T_BASE, T_PM):
        m = summary["trainers"][t]["mean"]["dice"]["mean"]
        assert 0.0 <= m <= 1.0
        done = json.loads((out / "runs" / "run_1" / t / "done.json").read_text())
        assert done["timings"]["train_s"] > 0 and done["timings"]["predict_s"] > 0
    trains = command_lines(out, "nnUNetv2_train")
    assert len(trains) == 2 and all("-device cpu" in ln and "nnUNet_results=" in ln for ln in trains)
    assert len(command_lines(out, "nnUNetv2_plan_and_preprocess")) == 1
    assert len(command_lines(out, "nnUNetv2_predict")) == 2
    # the per-run nnU-Net results folder holds nnU-Net's own training output
    assert (out / "runs" / "run_1" / "nnUNet_results" / "Dataset500_SynthFaintPolyp2D" / f"{T_PM}__nnUNetPlans__2d"
            / "fold_all" / "checkpoint_final.pth").is_file()
    dj = json.loads((out / "nnUNet_raw" / "Dataset500_SynthFaintPolyp2D" / "dataset.json").read_text())
    assert dj["synthetic"]["kind"] == "faintpolyp2d" and sum(dj["synthetic"]["objects_test"]["polyp"].values()) >= 3


@pytest.mark.integration
def test_demo_draws_the_figure2_panels_of_the_same_cases_for_each_trainer(demo):
    out, _, res = demo
    for trainer in (T_BASE, T_PM):
        png = out / "figure2" / f"modulation_{trainer}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", trainer
        losses = json.loads(png.with_suffix(".json").read_text())["cases"]
        assert len(losses) == 2
        for case in losses.values():
            assert 0 <= case["dice_loss"] <= 1 and set(case["pm_dice_loss"]) == {"0.5", "1", "2", "5"}
    # both figures show the same cases (picked from the references alone)
    assert (json.loads((out / "figure2" / f"modulation_{T_BASE}.json").read_text())["cases"].keys()
            == json.loads((out / "figure2" / f"modulation_{T_PM}.json").read_text())["cases"].keys())
    assert res.stdout.count("[figure]") == 2


@pytest.mark.integration
def test_rerun_skips_finished_jobs_and_redoes_a_crashed_one(demo):
    out, env, _ = demo
    before = len(command_lines(out, "nnUNetv2_train"))
    res = cli([*DEMO, "-o", str(out)], env)
    assert res.stdout.count("finished before: skipped") == 2 and "already preprocessed" in res.stdout
    assert "[figure]" not in res.stdout                                   # the figures are kept too
    assert len(command_lines(out, "nnUNetv2_train")) == before

    # a crash of the PM Dice job after its checkpoint: no train.ok, no predictions, no done.json
    job = out / "runs" / "run_1" / T_PM
    for p in (job / "done.json", job / "logs" / "train.ok"):
        p.unlink()
    shutil.rmtree(job / "predictions")
    shutil.rmtree(job / "evaluation")
    bench_env = nnunet_env_of_demo(out, env)
    res = cli(["benchmark", "-d", "500", "-c", "2d", "-tr", "nnUNetTrainerPMDice", *BUDGET, "--device", "cpu",
               "-o", str(out)], bench_env)
    assert f"[run 1 {T_BASE}] finished before: skipped" in res.stdout
    trains = command_lines(out, "nnUNetv2_train")
    assert len(trains) == before + 1 and T_PM in trains[-1] and trains[-1].endswith("--c")
    assert (job / "done.json").is_file() and len(list((job / "predictions").glob("*.png"))) == 3
    assert "(baseline)" in (out / "table.md").read_text()


@pytest.mark.integration
def test_a_refused_prediction_fails_its_job_and_the_others_are_still_reported(demo):
    """A prediction the evaluation refuses (0/255 instead of the dataset's labels 0/1) fails that job with a
    line naming the file; the benchmark still writes the report of the finished jobs and exits with 1."""
    from PIL import Image
    import numpy as np
    out, env, _ = demo
    job = out / "runs" / "run_1" / T_PM
    (job / "done.json").unlink()
    shutil.rmtree(job / "evaluation")
    bad = sorted((job / "predictions").glob("*.png"))[0]
    Image.fromarray((np.asarray(Image.open(bad)) > 0).astype(np.uint8) * 255).save(bad)
    (out / "table.md").unlink()
    res = cli(["benchmark", "-d", "500", "-c", "2d", "-tr", "nnUNetTrainerPMDice", *BUDGET, "--device", "cpu",
               "-o", str(out)], nnunet_env_of_demo(out, env), check=False)
    assert res.returncode == 1, res.stdout[-3000:] + res.stderr[-3000:]
    assert f"[run 1 {T_PM}] FAILED" in res.stdout and bad.name in res.stdout
    table = (out / "table.md").read_text()
    assert f"| {T_BASE} (baseline) |" in table and f"| {T_PM} |" not in table


def nnunet_env_of_demo(out: Path, env):
    return dict(env, nnUNet_raw=str(out / "nnUNet_raw"), nnUNet_preprocessed=str(out / "nnUNet_preprocessed"),
                nnUNet_results=str(out / "nnUNet_results"))


@pytest.mark.integration
def test_report_only_and_other_settings_refused(demo, tmp_path):
    out, env, _ = demo
    bench_env = nnunet_env_of_demo(out, env)
    (out / "table.md").unlink()
    res = cli(["benchmark", "-d", "500", "-c", "2d", "-tr", "nnUNetTrainerPMDice", *BUDGET, "--device", "cpu",
               "-o", str(out), "--report-only"], bench_env)
    assert (out / "table.md").is_file() and "nnUNetv2_train" not in res.stdout
    res = cli(["benchmark", "-d", "500", "-c", "3d_fullres", "-tr", "nnUNetTrainerPMDice", "--device", "cpu",
               "-o", str(out), "--report-only"], bench_env, check=False)
    assert res.returncode == 2 and "other settings" in res.stderr


def test_benchmark_needs_held_out_test_cases(tmp_path):
    from nnunet_pmdice.synthetic import generate
    env = nnunet_env(tmp_path)
    folder = generate("polyp2d", env["nnUNet_raw"], 321, num_train=2, num_test=0, size=(32, 32))
    shutil.rmtree(folder / "imagesTs")
    res = cli(["benchmark", "-d", "321", "-c", "2d", "-tr", "nnUNetTrainerPMDice", "--device", "cpu", "-o",
               str(tmp_path / "out")], env, check=False)
    assert res.returncode == 2 and "imagesTs" in res.stderr
    res = cli(["benchmark", "-d", "321", "-c", "2d", "-tr", "nnUNetTrainerNoSuchThing", "--device", "cpu", "-o",
               str(tmp_path / "out")], env, check=False)
    assert res.returncode == 2 and "nnUNetTrainerNoSuchThing" in res.stderr


# ----------------------------------------- the report of a finished benchmark, without training

SWEEP = ["nnUNetTrainer", f"{G}_g0.5", f"{G}_g1", f"{G}_g2"]


def fake_predictions(raw: Path, folder: Path, grow: int) -> None:
    """Predictions made from the test references: each object grown (grow > 0) or shrunk by |grow| pixels."""
    from nnunetv2.imageio.natural_image_reader_writer import NaturalImage2DIO
    from scipy import ndimage
    io_ = NaturalImage2DIO()
    folder.mkdir(parents=True)
    for label in sorted((raw / "labelsTs").glob("*.png")):
        seg, props = io_.read_seg(str(label))
        mask = seg[0, 0] > 0
        if grow:
            op = ndimage.binary_dilation if grow > 0 else ndimage.binary_erosion
            mask = op(mask, iterations=abs(grow))
        io_.write_seg(mask[None].astype("uint8"), str(folder / label.name), props)


@pytest.fixture(scope="module")
def finished_benchmark(tmp_path_factory):
    """A benchmark folder whose jobs are finished, as the runner leaves them (predictions, evaluation,
    done.json), with predictions made from the references instead of trained models: 2 runs of 4 trainers."""
    from nnunet_pmdice.fileio import write_json
    from nnunet_pmdice.evaluation.evaluate import evaluate_folders, write_evaluation
    from nnunet_pmdice.synthetic import generate
    root = tmp_path_factory.mktemp("report")
    env = nnunet_env(root)
    raw = generate("polyp2d", env["nnUNet_raw"], 322, num_train=2, num_test=6, size=(48, 48), seed=1)
    out = root / "bench"
    grow = {SWEEP[0]: -2, SWEEP[1]: -1, SWEEP[2]: 0, SWEEP[3]: 1}
    for run in (1, 2):
        for trainer in SWEEP:
            job = out / "runs" / f"run_{run}" / trainer
            fake_predictions(raw, job / "predictions", grow[trainer] + (run == 2 and trainer == SWEEP[0]))
            write_evaluation(evaluate_folders(raw / "labelsTs", job / "predictions", tau=1.0, progress=False),
                             job / "evaluation", title=trainer)
            write_json(job / "done.json", {"trainer": trainer, "run": run, "tau": 1.0})
    res = cli(["benchmark", "-d", "322", "-c", "2d", "-tr", *SWEEP, "--runs", "2", "--device", "cpu", "-o", str(out),
               "--report-only", "--bootstrap", "2000", "--seed", "7"], env)
    return out, res


def test_report_compares_each_trainer_with_the_baseline_on_the_same_cases(finished_benchmark):
    import csv
    out, res = finished_benchmark
    summary = json.loads((out / "summary.json").read_text())
    comparison = summary["comparison"]
    assert comparison["baseline"] == "nnUNetTrainer" and set(comparison["contenders"]) == set(SWEEP[1:])
    assert comparison["runs"] == {t: 2 for t in SWEEP}
    assert comparison["method"]["n_resamples"] == 2000 and comparison["method"]["seed"] == 7
    # the difference is the mean over cases of (per-case mean over runs) - (the baseline's), from per_case.csv
    rows = list(csv.DictReader(open(out / "per_case.csv")))
    def per_case(t):
        cases = sorted({r["case"] for r in rows})
        return [sum(float(r["dice"]) for r in rows if r["trainer"] == t and r["case"] == c) / 2 for c in cases]
    base, pm = per_case("nnUNetTrainer"), per_case(f"{G}_g1")
    entry = comparison["contenders"][f"{G}_g1"]["metrics"]["dice"]
    assert entry["n_cases"] == 6 and entry["mean_diff"] == pytest.approx(sum(pm) / 6 - sum(base) / 6)
    assert entry["wins"] == 6 and entry["ci_low"] > 0                  # exact references beat eroded ones
    table = (out / "table.md").read_text()
    assert "Difference from the baseline" in table and "Wilcoxon signed-rank" in table
    assert f"**{G}_g1** vs **nnUNetTrainer** (baseline): 6 paired test cases; runs: 2 vs 2" in table
    assert "--bootstrap" not in res.stderr and f"{G}_g1 vs nnUNetTrainer:" in res.stdout
    # the object-level table, and the object metrics compared like the paper's
    objects = table[table.index("## Object-level detection"):]
    assert "| obj. recall | obj. prec. | obj. F1 |" in objects and f"| {G}_g1 | 2 | **100.00 ± 0.00** |" in objects
    assert {"dice", "nsd", "obj_recall", "obj_f1"} <= set(comparison["metrics"])
    assert summary["nsd_unit"] == "pixels" and "NSD tau = 1 pixels" in table
    for png in ("metrics.png", "per_case.png", "overlays.png", "forest.png", "gamma_sweep.png"):
        data = (out / "plots" / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, png


def test_report_without_a_gamma_sweep_draws_no_gamma_plot(finished_benchmark, tmp_path):
    finished, _ = finished_benchmark
    env = nnunet_env(finished.parent)
    out = tmp_path / "bench"
    shutil.copytree(finished, out)
    res = cli(["benchmark", "-d", "322", "-c", "2d", "-tr", *SWEEP[:3], "--runs", "2", "--device", "cpu", "-o",
               str(out), "--report-only", "--bootstrap", "500"], env)
    assert "plot_gamma_sweep" not in res.stdout and "plot_forest" in res.stdout
    assert not (out / "plots" / "gamma_sweep.png").exists()          # the earlier report's plot is gone
    assert (out / "plots" / "forest.png").is_file()
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["comparison"]["contenders"]) == set(SWEEP[1:3])


def test_report_refuses_a_finished_job_without_its_evaluation(finished_benchmark, tmp_path):
    finished, _ = finished_benchmark
    out = tmp_path / "bench"
    shutil.copytree(finished, out)
    (out / "runs" / "run_2" / f"{G}_g2" / "evaluation" / "per_case.csv").unlink()
    res = cli(["benchmark", "-d", "322", "-c", "2d", "-tr", *SWEEP, "--runs", "2", "--device", "cpu", "-o", str(out),
               "--report-only", "--bootstrap", "500"], nnunet_env(finished.parent), check=False)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert f"run_2/{G}_g2 is marked finished (done.json) but has no evaluation/per_case.csv" in res.stderr


def test_case_images_are_read_with_nnunets_reader(finished_benchmark):
    from nnunet_pmdice.evaluation.images import CaseImageReader
    finished, _ = finished_benchmark
    raw = finished.parent / "raw" / "Dataset322_SynthPolyp2D"
    reader = CaseImageReader(raw)
    case = sorted(p.name[:-len(".png")] for p in (raw / "labelsTs").glob("*.png"))[0]
    pred_folder = finished / "runs" / "run_1" / f"{G}_g1" / "predictions"
    image, ref, preds = reader.case(case, {"g1": pred_folder})
    assert image.shape[0] == 3 and ref.shape == preds["g1"].shape == (1, 1) + image.shape[2:]
    assert (ref == preds["g1"]).all()                       # g1's predictions are the references themselves
    with pytest.raises(FileNotFoundError, match="no image of case 'nocase'"):
        reader.case("nocase", {"g1": pred_folder})
    with pytest.raises(FileNotFoundError, match="nocase.png does not exist"):
        reader.segmentation(pred_folder, "nocase")
