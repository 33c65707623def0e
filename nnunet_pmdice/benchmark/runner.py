"""The benchmark: nnU-Net's own CLIs train and predict, the paper's metrics compare (``nnunet-pmdice benchmark``).

For every independent run ``k`` and trainer ``T`` (a *job*)::

    nnUNetv2_train ID CONFIG FOLD -tr T -p PLANS -device D           (nnUNet_results=OUT/runs/run_k/nnUNet_results)
    nnUNetv2_predict -i nnUNet_raw/DATASET/imagesTs -o OUT/runs/run_k/T/predictions ...
    nnunet-pmdice evaluate nnUNet_raw/DATASET/labelsTs OUT/runs/run_k/T/predictions   (in process)

Each run has its own nnU-Net results folder, so runs never overwrite each other and can run at the
same time. The dataset is planned and preprocessed first (``nnUNetv2_plan_and_preprocess``) unless
nnU-Net's preprocessed data for the configuration is complete.

Resuming: a job is finished when its ``done.json`` exists; it is written last, after the
evaluation, and a finished job is never redone. Within an unfinished job each step has an honest
marker: training is complete when ``logs/train.ok`` exists (written after ``nnUNetv2_train`` exited
with 0); a training that stopped part way is continued with nnU-Net's ``--c`` from its latest
checkpoint (or run again when it has none); predictions are written to a temporary folder that is
moved into place only after ``nnUNetv2_predict`` exited with 0; the evaluation folder likewise. Every
command, with the environment variables that matter, goes to ``OUT/commands.log``; each step's output
goes to ``OUT/runs/run_k/T/logs/<step>.log``.

Parallel: ``--jobs N`` runs N jobs at once (each a separate nnU-Net process); ``--gpus 0 1 ...``
gives each job one GPU of the list through ``CUDA_VISIBLE_DEVICES``. On several machines, give each
``--only-runs`` (e.g. 1 2 on one, 3 4 on another) with the same output folder, or copy the
``runs/run_k`` folders together, then ``--report-only`` writes the table from every finished job.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from queue import Queue
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from .._atomic import building_folder, write_json, write_text
from ..evaluation.aggregate import CASE_COLUMNS, combine_runs, markdown_table, read_case_csv, table_rows, write_csv
from ..evaluation.metrics import DEFAULT_TAU

_BUDGET_TOKEN = re.compile(r"^(\d+)(epochs?|iters)$")
_EPOCH_LINE = re.compile(r": Epoch (\d+)\s*$")

#: environment variables a benchmark command depends on (logged with every command)
LOGGED_ENV = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "nnUNet_def_n_proc", "nnUNet_n_proc_DA",
              "nnUNet_compile", "CUDA_VISIBLE_DEVICES", "nnUNet_extTrainer", "OMP_WAIT_POLICY")


def nnunet_tool(name: str) -> str:
    """The path of an nnU-Net command installed beside this Python (a virtual environment that was not
    activated has its commands off ``PATH``), else the bare name, looked up on ``PATH``."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.is_file() else name


class StepFailed(RuntimeError):
    """An nnU-Net command of a job exited with an error."""


# ------------------------------------------------------------------------------------------ trainer names

def trainer_budget(name: str) -> Tuple[Optional[int], Optional[int]]:
    """``(epochs, iterations per epoch)`` set by a trainer name's budget tokens; None where the name sets none.

    >>> trainer_budget("nnUNetTrainerPMDice_g2_50epochs_100iters")
    (50, 100)
    >>> trainer_budget("nnUNetTrainer_1epoch")
    (1, None)
    """
    epochs = iters = None
    for token in name.split("_")[1:]:
        m = _BUDGET_TOKEN.match(token)
        if m and m.group(2).startswith("epoch"):
            epochs = int(m.group(1))
        elif m:
            iters = int(m.group(1))
    return epochs, iters


def with_budget(name: str, epochs: Optional[int] = None, iters: Optional[int] = None) -> str:
    """``name`` with ``_<epochs>epochs`` / ``_<iters>iters`` appended (the budget tokens of the name grammar)."""
    have_epochs, have_iters = trainer_budget(name)
    for value, have, what in ((epochs, have_epochs, "epochs"), (iters, have_iters, "iters")):
        if value is not None:
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"--{what} must be an integer >= 1, got {value!r}")
            if have is not None:
                raise ValueError(f"trainer {name!r} already sets its {what}; give the budget either in the "
                                 f"names or with --{what}, not both")
    return name + (f"_{epochs}epochs" if epochs else "") + (f"_{iters}iters" if iters else "")


def is_baseline_name(name: str) -> bool:
    """True for nnU-Net's default trainer, with or without budget tokens (``nnUNetTrainer_50epochs``)."""
    return name == "nnUNetTrainer" or (name.startswith("nnUNetTrainer_") and
                                       all(_BUDGET_TOKEN.match(t) for t in name.split("_")[1:]))


def check_trainer_names(names: Sequence[str]) -> None:
    """Fails fast, before any training, on a trainer name nnU-Net will not find.

    Names of plugin trainers are checked against the name grammar; other names through nnU-Net's own
    trainer lookup (which imports every trainer module nnU-Net ships).
    """
    import contextlib
    import io

    from ..trainers import BASE_TRAINERS, NNUNET_BASES, trainer_class_for_name

    for name in names:
        if not re.fullmatch(r"[A-Za-z0-9_.\-]+", name):
            raise ValueError(f"trainer name {name!r} has characters nnU-Net cannot use in a folder name")
        base = name.split("_", 1)[0]
        if base in BASE_TRAINERS and name not in NNUNET_BASES and not name.startswith("nnUNetTrainer_1epoch"):
            trainer_class_for_name(name)  # raises TrainerNameError with the accepted options
            continue
        from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
        with contextlib.redirect_stdout(io.StringIO()):
            try:
                recursive_find_trainer_class_by_name(name)
            except (RuntimeError, AssertionError) as e:
                raise ValueError(f"nnU-Net cannot find trainer {name!r}: {str(e).splitlines()[0]}") from None


def choose_baseline(trainers: Sequence[str], baseline: Optional[str] = None) -> Tuple[List[str], str]:
    """The trainer list with the baseline first, and the baseline's name.

    Without ``baseline``: the first name that is nnU-Net's default trainer (with or without budget
    tokens); if there is none, ``nnUNetTrainer`` with the budget tokens of the first trainer is added.
    """
    trainers = list(dict.fromkeys(trainers))
    if not trainers:
        raise ValueError("give at least one trainer (-tr)")
    if baseline is None:
        baseline = next((t for t in trainers if is_baseline_name(t)), None)
    if baseline is None:
        epochs, iters = trainer_budget(trainers[0])
        baseline = with_budget("nnUNetTrainer", epochs, iters)
    return [baseline] + [t for t in trainers if t != baseline], baseline


# ------------------------------------------------------------------------------------------- settings

@dataclass
class BenchmarkSettings:
    """What a benchmark trains and where; ``OUT/benchmark.json`` records it.

    Args:
        dataset: nnU-Net dataset id (``500``) or name (``Dataset500_SynthPolyp2D``) in ``nnUNet_raw``; it
            needs ``imagesTs`` and ``labelsTs`` (the held-out test cases).
        configuration: nnU-Net configuration (``2d``, ``3d_fullres``, ...).
        trainers: trainer names, baseline first (see :func:`choose_baseline`).
        out: output folder.
        runs: independent runs (trainings from scratch) per trainer.
        fold: nnU-Net fold to train: ``all`` (every training case; the default) or ``0``-``4``.
        plans: plans identifier (``-p``).
        device: ``cuda``, ``cpu`` or ``mps``.
        tau: NSD tolerance (mm for 3D, pixels for 2D images).
        jobs: jobs run at the same time.
        gpus: GPU ids handed to jobs through ``CUDA_VISIBLE_DEVICES`` (one job per GPU at a time).
        only_runs: run only these run ids (1-based), e.g. to share the runs between machines.
        overlay_cases: test cases shown in the overlay figure.
        preprocess_processes: ``-np`` of ``nnUNetv2_plan_and_preprocess``.
    """

    dataset: str
    configuration: str
    trainers: List[str]
    out: str
    baseline: str = ""
    runs: int = 1
    fold: str = "all"
    plans: str = "nnUNetPlans"
    device: str = "cuda"
    tau: float = DEFAULT_TAU
    jobs: int = 1
    gpus: List[str] = field(default_factory=list)
    only_runs: List[int] = field(default_factory=list)
    overlay_cases: int = 4
    preprocess_processes: int = 2

    def __post_init__(self):
        if not isinstance(self.runs, int) or self.runs < 1:
            raise ValueError(f"--runs must be an integer >= 1, got {self.runs!r}")
        if self.fold != "all" and not (str(self.fold).isdigit()):
            raise ValueError(f"--fold must be 'all' or a fold number, got {self.fold!r}")
        self.fold = str(self.fold)
        if self.device not in ("cuda", "cpu", "mps"):
            raise ValueError(f"--device must be cuda, cpu or mps, got {self.device!r}")
        if not isinstance(self.jobs, int) or self.jobs < 1:
            raise ValueError(f"--jobs must be an integer >= 1, got {self.jobs!r}")
        if self.gpus and self.device != "cuda":
            raise ValueError(f"--gpus needs --device cuda, got --device {self.device}")
        bad = [r for r in self.only_runs if not 1 <= r <= self.runs]
        if bad:
            raise ValueError(f"--only-runs {bad} outside 1..{self.runs} (--runs {self.runs})")
        if not (self.tau >= 0 and self.tau != float("inf")):
            raise ValueError(f"--tau must be a finite number >= 0, got {self.tau}")
        if not self.trainers:
            raise ValueError("give at least one trainer (-tr)")
        self.baseline = self.baseline or self.trainers[0]
        if self.baseline not in self.trainers:
            raise ValueError(f"baseline {self.baseline!r} is not among the trainers {self.trainers}")


@dataclass(frozen=True)
class Job:
    """One training + prediction + evaluation of one trainer in one run."""

    trainer: str
    run: int
    out: Path

    @property
    def run_folder(self) -> Path:
        return self.out / "runs" / f"run_{self.run}"

    @property
    def folder(self) -> Path:
        return self.run_folder / self.trainer

    @property
    def results_root(self) -> Path:
        """The ``nnUNet_results`` of this run."""
        return self.run_folder / "nnUNet_results"

    @property
    def tag(self) -> str:
        return f"run {self.run} {self.trainer}"

    @property
    def done_file(self) -> Path:
        return self.folder / "done.json"


class Benchmark:
    """Runs the jobs of :class:`BenchmarkSettings` and writes the table and plots.

    Args:
        settings: what to run.
        env: the environment of the nnU-Net commands (default ``os.environ``); it must set
            ``nnUNet_raw`` and ``nnUNet_preprocessed``. With ``device='cpu'``, ``nnUNet_def_n_proc=1``
            and (for training) ``nnUNet_n_proc_DA=0`` are set unless ``env`` sets them: spawned
            workers each import torch, which costs more than they save on small CPU runs.
        echo: where progress lines go (default stdout).
    """

    def __init__(self, settings: BenchmarkSettings, env: Optional[Mapping[str, str]] = None, echo=None):
        self.s = settings
        self.env = dict(os.environ if env is None else env)
        self.out = Path(settings.out).resolve()
        self.echo = echo or (lambda msg: print(msg, flush=True))
        for var in ("nnUNet_raw", "nnUNet_preprocessed"):
            if not self.env.get(var):
                raise ValueError(f"set the environment variable {var} (nnU-Net's {var.split('_')[1]} folder)")
        self.raw_root = Path(self.env["nnUNet_raw"])
        self.pre_root = Path(self.env["nnUNet_preprocessed"])
        self.dataset_name = dataset_folder_name(settings.dataset, self.raw_root)
        self.raw = self.raw_root / self.dataset_name
        for sub in ("imagesTs", "labelsTs"):
            if not (self.raw / sub).is_dir():
                raise FileNotFoundError(f"{self.raw / sub} does not exist: the benchmark predicts and scores the "
                                        f"held-out test cases in imagesTs/ and labelsTs/")
        self.env.setdefault("PYTHONUNBUFFERED", "1")  # the epoch lines reach the log and progress bar as they happen
        if self.s.device == "cpu":
            self.env.setdefault("nnUNet_def_n_proc", "1")
            # nnU-Net gives torch one thread per core on -device cpu; spinning OpenMP waits slow every other
            # process down (measured in tests/conftest.py)
            self.env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        self._log_lock = threading.Lock()
        self._print_lock = threading.Lock()
        self.failures: List[Tuple[Job, str]] = []

    # -------------------------------------------------------------------------------- logging, commands

    def _say(self, msg: str) -> None:
        with self._print_lock:
            self.echo(msg)

    def _log(self, text: str) -> None:
        with self._log_lock:
            self.out.mkdir(parents=True, exist_ok=True)
            with open(self.out / "commands.log", "a", encoding="utf-8") as f:
                f.write(text.rstrip("\n") + "\n")

    def run_command(self, cmd: List[str], extra_env: Mapping[str, str], log_file: Path, tag: str,
                    epochs: Optional[int] = None) -> float:
        """Runs one command, its output to ``log_file``, the command to ``commands.log``; returns seconds.

        Raises :class:`StepFailed` (with the end of the output) when it exits with an error.
        """
        env = {**self.env, **extra_env}
        shown_env = " ".join(f"{k}={shlex.quote(env[k])}" for k in LOGGED_ENV if env.get(k))
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        self._log(f"# {stamp} [{tag}]\n{shown_env} {shlex.join(cmd)}")
        log_file.parent.mkdir(parents=True, exist_ok=True)
        start = time.time()
        tail: deque = deque(maxlen=40)
        bar = None
        if epochs and self.s.jobs == 1:
            from tqdm import tqdm
            bar = tqdm(total=epochs, desc=f"  {tag}: epochs", unit="epoch", disable=None, leave=False)
        proc = None
        try:
            with open(log_file, "w", encoding="utf-8") as log:
                log.write(f"# {shown_env} {shlex.join(cmd)}\n")
                proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                        cwd=str(self.out), bufsize=1)
                for line in proc.stdout:
                    log.write(line)
                    tail.append(line)
                    if bar is not None:
                        m = _EPOCH_LINE.search(line)
                        if m:
                            bar.update(int(m.group(1)) - bar.n)
                rc = proc.wait()
        except FileNotFoundError:
            raise StepFailed(f"{cmd[0]} not found: is nnunetv2 installed in this environment?") from None
        finally:
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
            if bar is not None:
                bar.close()
        seconds = time.time() - start
        self._log(f"# [{tag}] exit {rc} after {seconds:.1f} s")
        if rc != 0:
            raise StepFailed(f"{tag}: {cmd[0]} exited with {rc} (log: {log_file}):\n" + "".join(tail)[-3000:])
        return seconds

    # ------------------------------------------------------------------------------------ preprocessing

    def preprocessed_complete(self) -> bool:
        """True when nnU-Net's plans list the configuration and its data holds every training case."""
        plans_file = self.pre_root / self.dataset_name / f"{self.s.plans}.json"
        if not plans_file.is_file():
            return False
        plans = json.loads(plans_file.read_text())
        config = plans.get("configurations", {}).get(self.s.configuration)
        if config is None:
            raise ValueError(f"{plans_file} has no configuration {self.s.configuration!r}; it has "
                             f"{sorted(plans.get('configurations', {}))}")
        data = self.pre_root / self.dataset_name / config.get("data_identifier", f"{self.s.plans}_{self.s.configuration}")
        if not data.is_dir():
            return False
        expected = json.loads((self.raw / "dataset.json").read_text())["numTraining"]
        from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
        try:
            return len(infer_dataset_class(str(data)).get_identifiers(str(data))) >= expected
        except AssertionError:
            return False

    def prepare(self) -> None:
        """Plans and preprocesses the dataset (nnU-Net's CLI) unless done; writes the fold split if needed."""
        if not self.preprocessed_complete():
            if self.s.plans != "nnUNetPlans":
                raise ValueError(f"plans {self.s.plans!r} are not preprocessed for {self.s.configuration}; run "
                                 f"nnUNetv2_plan_and_preprocess with your planner first")
            self._say(f"[prepare] nnUNetv2_plan_and_preprocess {self.dataset_name} {self.s.configuration} "
                      f"(log: {self.out / 'logs' / 'preprocess.log'})")
            t = self.run_command([nnunet_tool("nnUNetv2_plan_and_preprocess"), "-d", self.dataset_id(),
                                  "-c", self.s.configuration,
                                  "-np", str(self.s.preprocess_processes), "-npfp", str(self.s.preprocess_processes),
                                  "--verify_dataset_integrity"], {},
                                 self.out / "logs" / "preprocess.log", "prepare")
            self._say(f"[prepare] done in {t:.0f} s")
            if not self.preprocessed_complete():
                raise StepFailed(f"nnUNetv2_plan_and_preprocess finished but {self.pre_root / self.dataset_name} "
                                 f"lacks cases; see {self.out / 'logs' / 'preprocess.log'}")
        else:
            self._say(f"[prepare] {self.dataset_name} {self.s.configuration}: already preprocessed")
        if self.s.fold != "all" and self.s.jobs > 1:
            self._write_split()

    def _write_split(self) -> None:
        """nnU-Net writes splits_final.json on its first training; jobs running at once would race to write it."""
        splits = self.pre_root / self.dataset_name / "splits_final.json"
        if splits.is_file():
            return
        from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
        from nnunetv2.utilities.crossval_split import generate_crossval_split
        plans = json.loads((self.pre_root / self.dataset_name / f"{self.s.plans}.json").read_text())
        data = self.pre_root / self.dataset_name / plans["configurations"][self.s.configuration]["data_identifier"]
        keys = sorted(infer_dataset_class(str(data)).get_identifiers(str(data)))
        write_json(splits, generate_crossval_split(keys, seed=12345, n_splits=5))  # nnU-Net's own seed and split

    def dataset_id(self) -> str:
        return str(int(self.dataset_name[len("Dataset"):len("Dataset") + 3]))

    # ------------------------------------------------------------------------------------------- jobs

    def jobs(self) -> List[Job]:
        runs = self.s.only_runs or list(range(1, self.s.runs + 1))
        return [Job(t, r, self.out) for r in runs for t in self.s.trainers]

    def fold_folder(self, job: Job) -> Path:
        return (job.results_root / self.dataset_name / f"{job.trainer}__{self.s.plans}__{self.s.configuration}"
                / f"fold_{self.s.fold}")

    def job_finished(self, job: Job) -> bool:
        if not job.done_file.is_file():
            return False
        done = json.loads(job.done_file.read_text())
        return done.get("tau") == self.s.tau

    def run_job(self, job: Job, gpu: Optional[str] = None) -> None:
        """Train, predict, evaluate one job, skipping the steps already complete; ``done.json`` last."""
        extra = {"nnUNet_results": str(job.results_root)}
        if gpu is not None:
            extra["CUDA_VISIBLE_DEVICES"] = str(gpu)
        logs = job.folder / "logs"
        timings = {k: json.loads(f.read_text())["seconds"] for k, f in
                   (("train_s", logs / "train.ok"), ("predict_s", logs / "predict.ok")) if f.is_file()}
        fold = self.fold_folder(job)
        if not (logs / "train.ok").is_file():
            resume = any((fold / c).is_file() for c in ("checkpoint_final.pth", "checkpoint_latest.pth",
                                                        "checkpoint_best.pth"))
            train_env = dict(extra)
            if self.s.device == "cpu":
                train_env.setdefault("nnUNet_n_proc_DA", self.env.get("nnUNet_n_proc_DA", "0"))
            cmd = [nnunet_tool("nnUNetv2_train"), self.dataset_id(), self.s.configuration, self.s.fold,
                   "-tr", job.trainer,
                   "-p", self.s.plans, "-device", self.s.device] + (["--c"] if resume else [])
            self._say(f"[{job.tag}] train{' (continuing from its checkpoint)' if resume else ''} "
                      f"(log: {logs / 'train.log'})")
            epochs = trainer_budget(job.trainer)[0] or 1000
            timings["train_s"] = self.run_command(cmd, train_env, logs / "train.log", job.tag, epochs=epochs)
            if not (fold / "checkpoint_final.pth").is_file():
                raise StepFailed(f"{job.tag}: nnUNetv2_train exited with 0 but wrote no {fold / 'checkpoint_final.pth'}")
            write_json(logs / "train.ok", {"fold_folder": str(fold), "seconds": timings["train_s"]})
            self._say(f"[{job.tag}] train done in {timings['train_s']:.0f} s")
        predictions = job.folder / "predictions"
        if not predictions.is_dir():
            tmp = job.folder / ".predictions.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            cmd = [nnunet_tool("nnUNetv2_predict"), "-i", str(self.raw / "imagesTs"), "-o", str(tmp),
                   "-d", self.dataset_id(),
                   "-c", self.s.configuration, "-f", self.s.fold, "-tr", job.trainer, "-p", self.s.plans,
                   "-device", self.s.device, "--disable_progress_bar"]
            if self.s.device == "cpu":
                cmd += ["-npp", "1", "-nps", "1"]
            self._say(f"[{job.tag}] predict {len(list((self.raw / 'labelsTs').iterdir()))} test cases")
            timings["predict_s"] = self.run_command(cmd, extra, logs / "predict.log", job.tag)
            os.replace(tmp, predictions)
            write_json(logs / "predict.ok", {"seconds": timings["predict_s"]})
        evaluation = job.folder / "evaluation"
        summary_file = evaluation / "summary.json"
        if not summary_file.is_file() or json.loads(summary_file.read_text()).get("tau") != self.s.tau:
            from ..evaluation.evaluate import evaluate_folders, write_evaluation
            self._log(f"# {time.strftime('%Y-%m-%d %H:%M:%S')} [{job.tag}] (in process)\n"
                      f"nnunet-pmdice evaluate {shlex.quote(str(self.raw / 'labelsTs'))} "
                      f"{shlex.quote(str(predictions))} --tau {self.s.tau:g} -o {shlex.quote(str(evaluation))}")
            start = time.time()
            result = evaluate_folders(self.raw / "labelsTs", predictions, tau=self.s.tau, progress=False)
            with building_folder(evaluation) as tmp:
                write_evaluation(result, tmp, title=job.trainer)
            timings["evaluate_s"] = time.time() - start
        summary = json.loads(summary_file.read_text())
        write_json(job.done_file, {"trainer": job.trainer, "run": job.run, "dataset": self.dataset_name,
                                   "configuration": self.s.configuration, "fold": self.s.fold, "plans": self.s.plans,
                                   "tau": self.s.tau, "timings": timings, "mean": summary["mean"],
                                   "finished": time.strftime("%Y-%m-%d %H:%M:%S")})
        m = summary["mean"]
        self._say(f"[{job.tag}] done: mDice {100 * (m['dice'] or 0):.2f}  mNSD {100 * (m['nsd'] or 0):.2f}")

    def _check_out_folder(self) -> None:
        record = self.out / "benchmark.json"
        fixed = {"dataset": self.dataset_name, "configuration": self.s.configuration, "fold": self.s.fold,
                 "plans": self.s.plans}
        if record.is_file():
            old = json.loads(record.read_text())
            differ = {k: (old.get(k), v) for k, v in fixed.items() if old.get(k) != v}
            if differ:
                raise ValueError(f"{self.out} holds a benchmark with other settings "
                                 f"({', '.join(f'{k}: {a} there, {b} now' for k, (a, b) in differ.items())}); "
                                 f"use another output folder")
        write_json(record, {**asdict(self.s), **fixed, "out": str(self.out)})

    def run(self, report_only: bool = False) -> Dict:
        """Runs every unfinished job (unless ``report_only``), then writes and returns the report."""
        self.out.mkdir(parents=True, exist_ok=True)
        self._check_out_folder()
        if not report_only:
            self._log(f"# ==== {time.strftime('%Y-%m-%d %H:%M:%S')} nnunet-pmdice benchmark: "
                      f"{shlex.join(sys.argv)}")
            self.prepare()
            jobs = self.jobs()
            todo = [j for j in jobs if not self.job_finished(j)]
            for j in jobs:
                if j not in todo:
                    self._say(f"[{j.tag}] finished before: skipped")
            self._say(f"{len(todo)} of {len(jobs)} jobs to run "
                      f"({len(self.s.trainers)} trainers x {len(jobs) // max(1, len(self.s.trainers))} runs)")
            self._run_all(todo)
        report = self.report()
        if self.failures:
            self._say(f"{len(self.failures)} jobs failed: " + "; ".join(f"{j.tag}: {str(e).splitlines()[0]}"
                                                                      for j, e in self.failures))
        return report

    def _run_all(self, todo: List[Job]) -> None:
        gpus: Optional[Queue] = None
        if self.s.gpus:
            gpus = Queue()
            for g in self.s.gpus:
                gpus.put(g)

        def one(job: Job) -> None:
            gpu = gpus.get() if gpus is not None else None
            try:
                self.run_job(job, gpu)
            except StepFailed as e:
                self.failures.append((job, str(e)))
                self._say(f"[{job.tag}] FAILED: {e}")
            finally:
                if gpus is not None:
                    gpus.put(gpu)

        workers = min(self.s.jobs, max(1, len(todo)))
        if workers == 1:
            for job in todo:
                one(job)
        else:
            with ThreadPoolExecutor(workers) as pool:
                list(pool.map(one, todo))

    # ---------------------------------------------------------------------------------------- report

    def report(self) -> Dict:
        """Table (markdown, CSV), all per-case rows, summary JSON and plots from every finished job."""
        combined, case_rows, missing = {}, [], []
        for trainer in self.s.trainers:
            summaries = []
            for run in range(1, self.s.runs + 1):
                job = Job(trainer, run, self.out)
                if not self.job_finished(job):
                    missing.append(job.tag)
                    continue
                summaries.append(json.loads((job.folder / "evaluation" / "summary.json").read_text()))
                for r in read_case_csv(job.folder / "evaluation" / "per_case.csv"):
                    case_rows.append({"trainer": trainer, "run": run, **r})
            if summaries:
                combined[trainer] = combine_runs(summaries)
        report = {"dataset": self.dataset_name, "configuration": self.s.configuration, "fold": self.s.fold,
                  "tau": self.s.tau, "baseline": self.s.baseline, "trainers": combined, "unfinished": missing}
        if not combined:
            self._say("no finished jobs yet: nothing to tabulate")
            return report
        baseline = self.s.baseline if self.s.baseline in combined else None
        table = markdown_table(combined, baseline)
        paths = {"table": self.out / "table.md", "table_csv": self.out / "table.csv",
                 "per_case": self.out / "per_case.csv", "summary": self.out / "summary.json"}
        unit = "pixels" if json.loads((self.raw / "dataset.json").read_text())["file_ending"] in (
            ".png", ".bmp", ".tif") else "mm"
        write_text(paths["table"], f"{table}\nDataset {self.dataset_name}, configuration {self.s.configuration}, "
                                   f"fold {self.s.fold}; test cases: {self.raw / 'imagesTs'}; NSD tau = "
                                   f"{self.s.tau:g} {unit}; values in %, mean ± std over runs; bold: best.\n")
        write_csv(paths["table_csv"], table_rows(combined, baseline))
        write_csv(paths["per_case"], case_rows, ("trainer", "run") + CASE_COLUMNS)
        write_json(paths["summary"], report)
        paths.update(self._plots(combined, case_rows))
        self._say("\n" + table)
        if missing:
            self._say(f"unfinished jobs (not in the table): {', '.join(missing)}")
        for k, p in paths.items():
            self._say(f"{k}: {p}")
        report["paths"] = {k: str(p) for k, p in paths.items()}
        return report

    def _plots(self, combined: Mapping, case_rows: List[Dict]) -> Dict[str, Path]:
        from ..evaluation import plots
        order = list(combined)
        if self.s.baseline in order:
            order = [self.s.baseline] + [t for t in order if t != self.s.baseline]
        folder = self.out / "plots"
        paths = {"plot_metrics": plots.plot_metrics({t: combined[t] for t in order}, folder / "metrics.png",
                                                    title=f"{self.dataset_name} ({self.s.configuration}): test set"),
                 "plot_per_case": plots.plot_case_distribution(case_rows, order, folder / "per_case.png")}
        overlay = self._overlay_cases(order, case_rows)
        if overlay:
            cases, scores = overlay
            paths["plot_overlays"] = plots.plot_overlays(cases, folder / "overlays.png", scores)
        return paths

    def _overlay_cases(self, order: List[str], case_rows: List[Dict]):
        """Cases spread over the baseline's per-case Dice (worst to best), from the first run all trainers finished."""
        from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_dataset_json
        from ..evaluation.plots import case_means, overlay_slice

        run = next((r for r in range(1, self.s.runs + 1)
                    if all(self.job_finished(Job(t, r, self.out)) for t in order)), None)
        if run is None or self.s.overlay_cases < 1:
            return None
        dice = case_means(case_rows, "dice")
        ranked = sorted((v if v == v else -1.0, case) for (t, r, case), v in dice.items()
                        if t == order[0] and r == str(run))
        n = min(self.s.overlay_cases, len(ranked))
        picks = [ranked[round(i * (len(ranked) - 1) / max(1, n - 1))][1] for i in range(n)]
        picks = list(dict.fromkeys(picks))
        dj = json.loads((self.raw / "dataset.json").read_text())
        ending = dj["file_ending"]
        example = next((self.raw / "labelsTs").glob("*" + ending))
        reader = determine_reader_writer_from_dataset_json(dj, str(example), verbose=False)()
        cases = []
        for case in picks:
            # one file per channel, except natural images (an RGB PNG is one file holding three channels)
            files = sorted(str(p) for p in (self.raw / "imagesTs").glob(f"{case}_*{ending}")
                           if re.fullmatch(re.escape(case) + r"_\d{4}" + re.escape(ending), p.name))
            image, _ = reader.read_images(files)
            ref, _ = reader.read_seg(str(self.raw / "labelsTs" / f"{case}{ending}"))
            preds = {t: reader.read_seg(str(Job(t, run, self.out).folder / "predictions" / f"{case}{ending}"))[0]
                     for t in order}
            cases.append((case, *overlay_slice(image, ref, preds)))
        scores = {(t, c): v for (t, r, c), v in dice.items() if r == str(run)}
        return cases, scores


def dataset_folder_name(dataset, raw_root: Path) -> str:
    """``Dataset<id>_<name>`` for an id (``500``) or a full name, looked up in ``raw_root``."""
    text = str(dataset)
    if text.startswith("Dataset"):
        if not (raw_root / text).is_dir():
            raise FileNotFoundError(f"dataset {text} not found in nnUNet_raw={raw_root}")
        return text
    if not text.isdigit():
        raise ValueError(f"-d must be a dataset id (e.g. 500) or a name Dataset500_..., got {text!r}")
    found = sorted(p.name for p in Path(raw_root).glob(f"Dataset{int(text):03d}_*") if p.is_dir())
    if len(found) != 1:
        raise FileNotFoundError(f"{'no' if not found else 'more than one'} dataset with id {int(text)} in "
                                f"nnUNet_raw={raw_root}{': ' + ', '.join(found) if found else ''}")
    return found[0]


# ------------------------------------------------------------------------------------------------ CLI

def add_parser(sub) -> None:
    """Registers ``nnunet-pmdice benchmark``."""
    p = sub.add_parser(
        "benchmark", help="train trainers with nnU-Net, predict the test cases, tabulate the paper's metrics",
        description="Trains each trainer with nnUNetv2_train (one nnU-Net results folder per independent run), "
                    "predicts imagesTs with nnUNetv2_predict, evaluates against labelsTs and writes the table "
                    "(baseline first, best per column bold) and plots. Resumable: finished jobs are skipped.")
    p.add_argument("-d", required=True, metavar="ID", help="dataset id or name in nnUNet_raw (needs imagesTs/labelsTs)")
    p.add_argument("-c", default="3d_fullres", metavar="CONFIG", help="nnU-Net configuration (default 3d_fullres)")
    p.add_argument("-tr", nargs="+", required=True, metavar="TRAINER",
                   help="trainer names, e.g. nnUNetTrainer nnUNetTrainerPMDice (nnU-Net's default trainer is the "
                        "baseline; it is added when missing)")
    p.add_argument("--epochs", type=int, help="append _<n>epochs to every trainer name (same budget for all)")
    p.add_argument("--iters", type=int, help="append _<n>iters (training iterations per epoch) to every trainer name")
    p.add_argument("--baseline", help="the baseline row (default: the nnUNetTrainer among -tr)")
    p.add_argument("--runs", type=int, default=1, help="independent runs per trainer (default 1; the paper: 3)")
    p.add_argument("-f", "--fold", default="all", help="fold to train: all (every training case, default) or 0-4")
    p.add_argument("-p", "--plans", default="nnUNetPlans", help="plans identifier (default nnUNetPlans)")
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu", "mps"), help="default cuda")
    p.add_argument("--tau", type=float, default=DEFAULT_TAU, help=f"NSD tolerance, mm (3D) or pixels (2D) "
                                                                  f"(default {DEFAULT_TAU:g})")
    p.add_argument("-o", "--out", required=True, help="output folder (runs, logs, table, plots)")
    p.add_argument("--jobs", type=int, help="jobs at the same time (default: number of --gpus, else 1)")
    p.add_argument("--gpus", nargs="+", default=[], help="GPU ids; each job gets one via CUDA_VISIBLE_DEVICES")
    p.add_argument("--only-runs", type=int, nargs="+", default=[], help="run only these run ids (1-based)")
    p.add_argument("--report-only", action="store_true", help="no training: tabulate the finished jobs")
    p.add_argument("--overlay-cases", type=int, default=4, help="test cases in the overlay figure (default 4)")
    p.set_defaults(func=run_cli)


def settings_from_args(args, trainers: Optional[List[str]] = None) -> BenchmarkSettings:
    names = [with_budget(t, args.epochs, args.iters) for t in (trainers or args.tr)]
    baseline_arg = with_budget(args.baseline, args.epochs, args.iters) if args.baseline else None
    names, baseline = choose_baseline(names, baseline_arg)
    return BenchmarkSettings(dataset=str(args.d), configuration=args.c, trainers=names, baseline=baseline,
                             out=args.out, runs=args.runs, fold=str(args.fold), plans=args.plans, device=args.device,
                             tau=args.tau, jobs=args.jobs or max(1, len(args.gpus)), gpus=list(args.gpus),
                             only_runs=list(args.only_runs), overlay_cases=args.overlay_cases)


def warn_unequal_budgets(trainers: Sequence[str], say=print) -> None:
    budgets = {t: trainer_budget(t) for t in trainers}
    if len(set(budgets.values())) > 1:
        say("warning: the trainers have different training budgets (epochs, iters): "
            + ", ".join(f"{t}: {b}" for t, b in budgets.items()))


def run_cli(args) -> int:
    settings = settings_from_args(args)
    if not args.report_only:
        check_trainer_names(settings.trainers)
    warn_unequal_budgets(settings.trainers)
    bench = Benchmark(settings)
    try:
        bench.run(report_only=args.report_only)
    except StepFailed as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 1 if bench.failures else 0
