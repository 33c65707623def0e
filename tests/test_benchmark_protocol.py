"""The benchmark over nnU-Net's own protocol (configurations x folds, find_best_configuration, its ensemble and
post-processing on the test cases) and its jobs through submitit (SLURM parameters; the LocalExecutor on CPU)."""
from __future__ import annotations

import json
import pickle
import re

import pytest

from nnunet_pmdice.benchmark.cluster import BenchmarkTask, ClusterSettings, parse_sbatch_options, slurm_parameters
from nnunet_pmdice.benchmark.runner import BenchmarkSettings

from conftest import command_lines, nnunet_env, pmdice_cli

DATASET_ID = 906  # kept clear of the other tests' ids
T_BASE, T_PM = "nnUNetTrainer_1epochs_1iters", "nnUNetTrainerPMDice_1epochs_1iters"
PROTOCOL = ["-c", "2d", "3d_fullres", "--folds", "0", "1", "--epochs", "1", "--iters", "1", "--device", "cpu"]


def cli(args, env, check=True):
    return pmdice_cli(["benchmark", *args], env, check)


# ------------------------------------------------------------------------------------------- settings

@pytest.mark.parametrize("kwargs,message", [
    (dict(configurations=["2d", "2d"]), "-c lists 2d more than once"),
    (dict(folds=["0", "all"]), "'all' is the one-fold form"),
    (dict(folds=["0", "x"]), "--folds takes fold numbers"),
    (dict(folds=["1", "1"]), "more than once"),
    (dict(configurations=["2d", "3d_fullres"]), "need cross-validation folds"),
])
def test_bad_protocol_settings_raise(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        BenchmarkSettings(dataset="500", configuration="2d", trainers=["nnUNetTrainer"], out="x", **kwargs)


def test_protocol_settings():
    s = BenchmarkSettings(dataset="500", configuration="2d", configurations=["2d", "3d_fullres"], folds=["1", "0"],
                          trainers=["nnUNetTrainer"], out="x")
    assert s.protocol and s.ensembling and s.folds == ["0", "1"] and s.configuration == "2d"
    one = BenchmarkSettings(dataset="500", configuration="2d", trainers=["nnUNetTrainer"], out="x", fold="0")
    assert not one.protocol and one.configurations == ["2d"]       # -f 0: today's one-fold benchmark
    mixed = BenchmarkSettings(dataset="500", configuration="2d", configurations=["2d", "3d_fullres"], fold="2",
                              trainers=["nnUNetTrainer"], out="x")
    assert mixed.protocol and mixed.folds == ["2"] and not BenchmarkSettings(
        dataset="5", configuration="2d", folds=["0"], trainers=["nnUNetTrainer"], out="x").ensembling


@pytest.mark.parametrize("extra,message", [
    (["-f", "0", "--folds", "0", "1"], "not both"),
    (["--partition", "gpu"], "--partition needs --cluster slurm"),
    (["--cluster", "local", "--account", "lab"], "--account needs --cluster slurm"),
    (["--time", "60"], "--time needs --cluster"),
    (["--cluster", "slurm", "--gpus", "0"], "--gpus is for the benchmark without --cluster"),
    (["--cluster", "slurm", "--jobs", "2"], "--jobs is for the benchmark on this machine"),
    (["--cluster", "slurm", "--sbatch", "constraint"], "KEY=VALUE"),
    (["--cluster", "slurm", "--time", "0"], "--time must be an integer >= 1"),
    (["--cluster", "local", "--report-only"], "--report-only"),
])
def test_bad_command_lines_get_one_line_errors(extra, message, tmp_path, monkeypatch, capsys):
    from nnunet_pmdice.cli import main
    monkeypatch.setenv("nnUNet_raw", str(tmp_path))
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path))
    assert main(["benchmark", "-d", "500", "-c", "2d", "-tr", "nnUNetTrainer", "-o", str(tmp_path / "o"),
                 "--device", "cuda", *extra]) == 2
    err = capsys.readouterr().err
    errors = [ln for ln in err.splitlines() if ln.startswith("error:")]      # (torch may warn first)
    assert len(errors) == 1 and message in errors[0] and "Traceback" not in err, err


# -------------------------------------------------------------------------------------- SLURM parameters

def test_sbatch_script_of_a_training_job(tmp_path):
    """The parameters go through submitit's own SLURM script writer (what SlurmExecutor submits)."""
    from submitit.slurm.slurm import SlurmExecutor, _make_sbatch_string
    cluster = ClusterSettings("slurm", partition="gpu", time_min=600, gpus_per_job=2, cpus_per_job=12, mem_gb=48,
                              account="lab", qos="high", sbatch=parse_sbatch_options(["constraint=a100"]),
                              setup=["module load cuda/12.1"])
    params = slurm_parameters(cluster, "pmdice-train-1-T-2d-0", "train", dependency="afterok:11:12")
    assert set(params) <= SlurmExecutor._valid_parameters()
    script = _make_sbatch_string(command="python -u -m submitit.core._submit X", folder=tmp_path, **params)
    for line in ("#SBATCH --partition=gpu", "#SBATCH --time=600", "#SBATCH --gpus-per-node=2",
                 "#SBATCH --cpus-per-task=12", "#SBATCH --mem=48GB", "#SBATCH --account=lab", "#SBATCH --qos=high",
                 "#SBATCH --constraint=a100", "#SBATCH --dependency=afterok:11:12",
                 "#SBATCH --kill-on-invalid-dep=yes", "#SBATCH --job-name=pmdice-train-1-T-2d-0",
                 "module load cuda/12.1"):
        assert line in script.splitlines(), line
    assert f"#SBATCH --output={tmp_path}/%j_0_log.out" in script.splitlines()


def test_report_job_has_no_gpu_and_the_shorter_time():
    cluster = ClusterSettings("slurm", time_min=600, predict_time_min=30, gpus_per_job=1, cpus_per_job=8)
    report = slurm_parameters(cluster, "pmdice-report", "report", dependency="afterany:5")
    assert report["time"] == 30 and "gpus_per_node" not in report and "cpus_per_task" not in report
    assert report["dependency"] == "afterany:5"
    predict = slurm_parameters(cluster, "pmdice-predict", "predict")
    assert predict["gpus_per_node"] == 1 and predict["time"] == 30 and "dependency" not in predict
    with pytest.raises(ValueError, match="--partition are SLURM options"):
        ClusterSettings("local", partition="gpu")
    with pytest.raises(ValueError, match="--cluster must be one of"):
        ClusterSettings("pbs")


def test_task_pickles_and_is_requeued_with_its_arguments():
    s = BenchmarkSettings(dataset="500", configuration="2d", trainers=["nnUNetTrainer"], out="x", folds=["0"])
    task = BenchmarkTask(s, {"nnUNet_raw": "/r", "CUDA_VISIBLE_DEVICES": "3", "HOME": "/h"}, "train",
                         "nnUNetTrainer", 1, "2d", "0")
    assert task.env == {"nnUNet_raw": "/r"}                # the scheduler's GPUs, the node's own variables
    again = pickle.loads(pickle.dumps(task))
    assert (again.step, again.trainer, again.configuration, again.fold, again.settings) == \
        ("train", "nnUNetTrainer", "2d", "0", s)
    delayed = task.checkpoint()
    assert delayed.function is task and delayed.args == ()


# ------------------------------------------------------------- end to end: the protocol through submitit

@pytest.fixture(scope="module")
def protocol(tmp_path_factory):
    """Baseline and PM Dice, 2d and 3d_fullres, folds 0 and 1, one epoch of one iteration, two jobs at a time on
    this machine, on a tiny 3D dataset the benchmark plans itself."""
    from nnunet_pmdice.synthetic import generate
    root = tmp_path_factory.mktemp("protocol")
    env = nnunet_env(root)
    generate("cardiac3d", env["nnUNet_raw"], DATASET_ID, num_train=5, num_test=2, size=(8, 40, 40), seed=DATASET_ID)
    out = root / "bench"
    res = cli(["-d", str(DATASET_ID), "-tr", "nnUNetTrainerPMDice", *PROTOCOL, "-o", str(out), "--jobs", "2",
               "--bootstrap", "200"], env)
    return out, env, res


@pytest.mark.integration
def test_protocol_chooses_per_trainer_and_reports_cv_and_test_metrics(protocol):
    out, env, res = protocol
    trains = command_lines(out, "nnUNetv2_train")
    assert len(trains) == 8 and all("--npz" in ln for ln in trains)          # 2 trainers x 2 configurations x 2 folds
    assert {re.search(r" (2d|3d_fullres) ([01]) -tr (\S+)", ln).groups() for ln in trains} == {
        (c, f, t) for c in ("2d", "3d_fullres") for f in "01" for t in (T_BASE, T_PM)}
    summary = json.loads((out / "summary.json").read_text())
    table = (out / "table.md").read_text()
    assert "| Trainer | runs | nnU-Net's choice | CV Dice |" in table
    assert "## nnU-Net's choice per trainer and run (cross-validation)" in table
    for trainer in (T_BASE, T_PM):
        job = out / "runs" / "run_1" / trainer
        finds = [ln for ln in command_lines(out, "nnUNetv2_find_best_configuration") if f"-tr {trainer} " in ln]
        assert len(finds) == 1 and "-c 2d 3d_fullres" in finds[0] and finds[0].endswith("-f 0 1")
        info = json.loads((job / "nnUNet_results" / "Dataset906_SynthCardiac3D" / "inference_information.json")
                          .read_text())
        chosen = [m["configuration"] for m in info["best_model_or_ensemble"]["selected_model_or_models"]]
        choice = summary["protocol"][trainer]
        assert choice["chosen"] == [" + ".join(chosen)]
        assert choice["cv_dice"] == pytest.approx(info["best_model_or_ensemble"]["result_on_crossval_pre_pp"])
        assert choice["cv_dice_postprocessed"] == pytest.approx(
            info["best_model_or_ensemble"]["result_on_crossval_post_pp"])
        row = next(ln for ln in table.splitlines() if ln.startswith(f"| {trainer}"))
        assert f"| {' + '.join(chosen)} | {100 * choice['cv_dice']:.2f} -> " in row
        # the test cases were predicted with the choice, ensembled when an ensemble won, then post-processed
        for c in ("2d", "3d_fullres"):
            assert (job / f"test_{c}").is_dir() == (c in chosen)
        assert (job / "test_ensemble").is_dir() == (len(chosen) > 1)
        pp = [ln for ln in command_lines(out, "nnUNetv2_apply_postprocessing") if f"/{trainer}/" in ln]
        assert len(pp) == 1 and info["best_model_or_ensemble"]["postprocessing_file"] in pp[0]
        assert len(list((job / "predictions").glob("*.nii.gz"))) == 2
        assert 0 <= summary["trainers"][trainer]["mean"]["dice"]["mean"] <= 1
        assert len(list((job / "logs").glob("train_*_fold_*.ok"))) == 4 and (job / "logs" / "find_best.ok").is_file()
    assert set(summary["comparison"]["contenders"]) == {T_PM}
    assert json.loads((out / "runs" / "run_1" / T_PM / "done.json").read_text())["protocol"]["folds"] == ["0", "1"]


@pytest.mark.integration
def test_second_call_redoes_nothing_and_a_crashed_unit_is_redone_alone_through_submitit(protocol):
    """The crashed training is redone as a job of submitit's LocalExecutor: one training job, one prediction
    job for its trainer, one report job; their submitit files beside the job's own logs."""
    out, env, _ = protocol
    before = (out / "commands.log").read_text().count("\n# [")
    res = cli(["-d", str(DATASET_ID), "-tr", "nnUNetTrainerPMDice", *PROTOCOL, "-o", str(out)], env)
    assert res.stdout.count("finished before: skipped") == 2 and "0 of 2 jobs to run" in res.stdout
    assert (out / "commands.log").read_text().count("\n# [") == before          # no nnU-Net command ran

    # a crash of one training of PM Dice: its marker and checkpoint gone, its job unfinished
    job = out / "runs" / "run_1" / T_PM
    (job / "logs" / "train_3d_fullres_fold_1.ok").unlink()
    (job / "done.json").unlink()
    fold = job / "nnUNet_results" / "Dataset906_SynthCardiac3D" / f"{T_PM}__nnUNetPlans__3d_fullres" / "fold_1"
    (fold / "checkpoint_final.pth").unlink()
    trains, finds = len(command_lines(out, "nnUNetv2_train")), len(command_lines(out, "nnUNetv2_find_best_configuration"))
    res = cli(["-d", str(DATASET_ID), "-tr", "nnUNetTrainerPMDice", *PROTOCOL, "-o", str(out), "--cluster", "local"],
              env)
    assert f"[run 1 {T_BASE}] finished before: skipped" in res.stdout and "1 trainings to submit (local)" in res.stdout
    new_trains = command_lines(out, "nnUNetv2_train")[trains:]
    assert len(new_trains) == 1 and f" 3d_fullres 1 -tr {T_PM} " in new_trains[0]
    new_finds = command_lines(out, "nnUNetv2_find_best_configuration")[finds:]
    assert len(new_finds) == 1 and f"-tr {T_PM} " in new_finds[0]             # the choice made again, for PM only
    assert (job / "done.json").is_file() and (fold / "checkpoint_final.pth").is_file()
    # submitit's files: the training and the prediction job beside PM Dice's logs, the report job's in OUT/logs
    logs = sorted((job / "logs" / "submitit").glob("*_0_log.out"))
    assert len(logs) == 2 and len(list((job / "logs" / "submitit").glob("*_submitted.pkl"))) == 2
    text = "".join(p.read_text() for p in logs)
    assert text.count("Job completed successfully") == 2 and f"[run 1 {T_PM} 3d_fullres fold 1] train done" in text
    assert "choosing the configuration again" in text
    assert not (out / "runs" / "run_1" / T_BASE / "logs" / "submitit").exists()
    assert len(list((out / "logs" / "submitit").glob("*_0_log.out"))) == 1
    submitted = json.loads((out / "logs" / "submitted.json").read_text())[-1]
    assert submitted["cluster"] == "local" and not submitted["failed"] and len(submitted["jobs"]) == 3
    assert f"| {T_PM} |" in (out / "table.md").read_text()


@pytest.mark.integration
def test_a_configuration_missing_from_the_plans_is_refused(protocol):
    out, env, _ = protocol
    res = cli(["-d", str(DATASET_ID), "-tr", "nnUNetTrainerPMDice", "-c", "2d", "3d_lowres", "--folds", "0", "1",
               "--epochs", "1", "--iters", "1", "--device", "cpu", "-o", str(out.parent / "other")], env, check=False)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "has no configuration '3d_lowres'" in errors[0], res.stderr


# ------------------------------------------------- SLURM submission, with sbatch standing in for the cluster

FAKE_SBATCH = """#!/bin/sh
# records the script it was given and answers as sbatch does
n=$(($(cat "$FAKE_SLURM/count" 2>/dev/null || echo 100) + 1))
echo $n > "$FAKE_SLURM/count"
cp "$1" "$FAKE_SLURM/job_$n.sh"
echo "Submitted batch job $n"
"""


def test_slurm_submission_chains_prepare_trainings_predictions_and_report(tmp_path, monkeypatch, capsys):
    """What the benchmark hands to sbatch through submitit's SlurmExecutor: a preparation job, one job per
    training unit after it, a prediction job per (run, trainer) after its trainings, the report after all."""
    from nnunet_pmdice.cli import main
    from nnunet_pmdice.synthetic import generate
    env = nnunet_env(tmp_path)
    generate("polyp2d", env["nnUNet_raw"], 323, num_train=5, num_test=1, size=(32, 32))
    fake = tmp_path / "fake_slurm"
    fake.mkdir()
    for tool, text in (("sbatch", FAKE_SBATCH), ("srun", "#!/bin/sh\nexit 0\n")):
        (fake / tool).write_text(text)
        (fake / tool).chmod(0o755)
    for k in ("nnUNet_raw", "nnUNet_preprocessed"):
        monkeypatch.setenv(k, env[k])
    monkeypatch.setenv("FAKE_SLURM", str(fake))
    monkeypatch.setenv("PATH", f"{fake}:{env['PATH']}")
    out = tmp_path / "bench"
    assert main(["benchmark", "-d", "323", "-c", "2d", "--folds", "0", "1", "-tr", "nnUNetTrainerPMDice",
                 "--epochs", "1", "-o", str(out), "--cluster", "slurm", "--partition", "gpu", "--time", "90",
                 "--mem", "16", "--sbatch", "constraint=a100"]) == 0
    stdout = capsys.readouterr().out
    scripts = {int(p.stem[4:]): p.read_text() for p in fake.glob("job_*.sh")}
    assert sorted(scripts) == list(range(101, 109))          # prepare, 4 trainings, 2 predictions, report

    def sbatch(text, key):
        found = re.search(rf"^#SBATCH --{key}=(\S+)$", text, re.M)
        return found and found.group(1)
    names = {sbatch(t, "job-name"): (i, t) for i, t in scripts.items()}
    prepare_id, prepare = names["pmdice-prepare"]
    assert sbatch(prepare, "dependency") is None and sbatch(prepare, "gpus-per-node") is None
    ids = {}
    for trainer in ("nnUNetTrainer_1epochs", "nnUNetTrainerPMDice_1epochs"):
        trains = []
        for fold in "01":
            i, text = names[f"pmdice-train-1-{trainer}-2d-{fold}"]
            assert sbatch(text, "dependency") == f"afterok:{prepare_id}" and sbatch(text, "partition") == "gpu"
            assert sbatch(text, "time") == "90" and sbatch(text, "mem") == "16GB" and sbatch(text, "gpus-per-node") == "1"
            assert sbatch(text, "constraint") == "a100" and sbatch(text, "kill-on-invalid-dep") == "yes"
            assert sbatch(text, "output") == str(out / "runs" / "run_1" / trainer / "logs" / "submitit" / "%j_0_log.out")
            trains.append(str(i))
        i, text = names[f"pmdice-predict-1-{trainer}"]
        assert sbatch(text, "dependency") == "afterok:" + ":".join(trains) and sbatch(text, "time") == "120"
        ids[trainer] = str(i)
    _, report = names["pmdice-report"]
    assert sbatch(report, "dependency") == "afterany:" + ":".join(ids.values())
    assert "squeue -u $USER" in stdout and all(f"  {i}  " in stdout for i in scripts)
    submitted = json.loads((out / "logs" / "submitted.json").read_text())[-1]
    assert submitted["cluster"] == "slurm" and len(submitted["jobs"]) == 8
    # submitit renamed each script to <job id>_submission.sh beside the job's logs
    pm_logs = out / "runs" / "run_1" / "nnUNetTrainerPMDice_1epochs" / "logs" / "submitit"
    assert (pm_logs / f"{ids['nnUNetTrainerPMDice_1epochs']}_submission.sh").is_file()

    # submitting again while squeue still lists a job of the first submission would train twice into one folder
    (fake / "squeue").write_text("#!/bin/sh\necho 104\n")
    (fake / "squeue").chmod(0o755)
    again = ["benchmark", "-d", "323", "-c", "2d", "--folds", "0", "1", "-tr", "nnUNetTrainerPMDice", "--epochs", "1",
             "-o", str(out), "--cluster", "slurm"]
    assert main(again) == 2
    err = capsys.readouterr().err
    assert "jobs 104 of the earlier submission" in err and "scancel" in err
    assert len(list(fake.glob("job_*.sh"))) == 8                                # nothing submitted
    (fake / "squeue").write_text("#!/bin/sh\necho 'slurm_load_jobs error: Invalid job id specified' >&2\nexit 1\n")
    assert main(again) == 0 and len(list(fake.glob("job_*.sh"))) == 16          # all ended: submitted again
