"""The training benchmark (``nnunet-pmdice benchmark``): nnU-Net's CLIs train and predict, the paper's metrics compare.

A benchmark job is one trainer ``T`` in one independent run ``k``; following it from the command to the table
takes three files:

- this module: the command line (:func:`add_parser`, :func:`run_cli`), the settings
  (:class:`BenchmarkSettings`), the jobs and their resume rules (:class:`Job`, :meth:`Benchmark.run_job`)
  and the scheduling of jobs on processes and GPUs (:meth:`Benchmark.run`);
- :mod:`.commands`: how each nnU-Net command runs and is logged (:class:`~.commands.CommandRunner`);
- :mod:`.report`: the table, the comparison with the baseline and the plots from every finished job
  (:func:`~.report.write_report`).

Each job runs::

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

nnU-Net's protocol (``-c 2d 3d_fullres --folds 0 1 2 3 4``): a job trains every configuration and fold
(a :class:`TrainUnit` each, with its own marker ``logs/train_<config>_fold_<f>.ok``) into its own
``nnUNet_results``, runs ``nnUNetv2_find_best_configuration`` (:meth:`Benchmark.choose`), predicts the test
cases with the chosen configuration or ensemble and applies its post-processing
(:meth:`Benchmark.finish_job`); the report shows each trainer's choice and cross-validation Dice. On a
SLURM cluster the same steps run as submitit jobs (:mod:`.cluster`).

Parallel: ``--jobs N`` runs N jobs at once (each a separate nnU-Net process); ``--gpus 0 1 ...``
gives each job one GPU of the list through ``CUDA_VISIBLE_DEVICES``. On several machines, give each
``--only-runs`` (e.g. 1 2 on one, 3 4 on another) with the same output folder, or copy the
``runs/run_k`` folders together, then ``--report-only`` writes the table from every finished job.
"""
from __future__ import annotations

import contextlib
import io
import os
import shlex
import shutil
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from queue import Queue
from typing import Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

from ..fileio import building_folder, read_json, write_json
from ..evaluation.metrics import DEFAULT_TAU
from ..trainers.naming import is_baseline_name, trainer_budget, with_budget
from .commands import CommandRunner, StepFailed, nnunet_default_epochs, nnunet_tool
from .report import DEFAULT_BOOTSTRAP, write_report

__all__ = ["Benchmark", "BenchmarkSettings", "Job", "StepFailed", "check_trainer_names", "choose_baseline",
           "dataset_folder_name", "is_baseline_name", "nnunet_tool", "trainer_budget", "with_budget",
           "add_parser", "run_cli"]


# ------------------------------------------------------------------------------------------ trainer names
# The budget tokens (``_<n>epochs``, ``_<n>iters``) are the trainer-name grammar's: trainer_budget,
# with_budget and is_baseline_name come from nnunet_pmdice.trainers.naming.

def check_trainer_names(names: Sequence[str]) -> None:
    """Fails fast, before any training, on a trainer name nnU-Net will not find.

    Each name goes through :func:`nnunet_pmdice.trainers.check_trainer_name`: plugin names (and
    ``<trainer>.<loss>`` names) are read by the name grammar, other names found by nnU-Net's own lookup.

    Raises:
        ValueError: a name nnU-Net cannot use or find (the message names it and, for plugin trainers,
            the options its base accepts).
    """
    from ..trainers import check_trainer_name

    with contextlib.redirect_stdout(io.StringIO()):  # nnU-Net's lookup prints while it imports its trainers
        for name in names:
            check_trainer_name(name)


def choose_baseline(trainers: Sequence[str], baseline: Optional[str] = None) -> Tuple[List[str], str]:
    """The trainer list with the baseline first, and the baseline's name.

    Without ``baseline``: the first name that is nnU-Net's default trainer (with or without budget
    tokens); if there is none, ``nnUNetTrainer`` with the budget tokens of the first trainer is added.

    >>> choose_baseline(["nnUNetTrainerPMDice_5epochs"])
    (['nnUNetTrainer_5epochs', 'nnUNetTrainerPMDice_5epochs'], 'nnUNetTrainer_5epochs')

    Raises:
        ValueError: no trainer given.
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


# ------------------------------------------------------------------------------------------ dataset name

@contextlib.contextmanager
def nnunet_folders(**folders: Optional[Path]) -> Iterator[None]:
    """nnU-Net's folder variables set to ``folders`` (None: unset) while nnU-Net's own lookups run.

    nnU-Net reads them from ``os.environ`` at each lookup; the benchmark's environment may differ
    from this process's (the demo sets its own folders). Not for use from several threads.
    """
    saved = {k: os.environ.get(k) for k in folders}
    try:
        for k, v in folders.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = str(v)
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def dataset_folder_name(dataset, raw_root: Path, preprocessed_root: Optional[Path] = None) -> str:
    """``Dataset<id>_<name>`` for an id (``500``) or a full name, as nnU-Net's CLIs resolve it.

    The lookup is nnU-Net's ``maybe_convert_to_dataset_name`` over ``raw_root`` (and
    ``preprocessed_root``, where an id must name the same dataset, as nnU-Net requires).

    Raises:
        ValueError: ``dataset`` is neither an id nor a ``Dataset...`` name.
        FileNotFoundError: no dataset (or more than one) with that id, or the named one is not in ``raw_root``.
    """
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    text = str(dataset)
    if not (text.startswith("Dataset") or text.isdigit()):
        raise ValueError(f"-d must be a dataset id (e.g. 500) or a name Dataset500_..., got {text!r}")
    with nnunet_folders(nnUNet_raw=raw_root, nnUNet_preprocessed=preprocessed_root, nnUNet_results=None):
        try:
            name = str(maybe_convert_to_dataset_name(text))
        except RuntimeError as e:
            what = "more than one dataset" if str(e).startswith("More than one") else "no dataset"
            raise FileNotFoundError(f"{what} with id {int(text)} in nnUNet_raw={raw_root}"
                                    f"{f' / nnUNet_preprocessed={preprocessed_root}' if preprocessed_root else ''} "
                                    f"(nnU-Net: {str(e).splitlines()[0]})") from None
    if not (Path(raw_root) / name).is_dir():
        raise FileNotFoundError(f"dataset {name} not found in nnUNet_raw={raw_root}")
    return name


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
        baseline: the row every other trainer is compared with (default: the first trainer).
        runs: independent runs (trainings from scratch) per trainer.
        fold: nnU-Net fold to train: ``all`` (every training case; the default) or ``0``-``4``.
        configurations: several nnU-Net configurations (``-c 2d 3d_fullres``): nnU-Net's protocol, see
            :attr:`protocol`; ``configuration`` is then the first of them.
        folds: the cross-validation folds of nnU-Net's protocol (``--folds 0 1 2 3 4``).
        plans: plans identifier (``-p``).
        device: ``cuda``, ``cpu`` or ``mps``.
        tau: NSD tolerance (mm for 3D, pixels for 2D images).
        jobs: jobs run at the same time.
        gpus: GPU ids handed to jobs through ``CUDA_VISIBLE_DEVICES`` (one job per GPU at a time).
        only_runs: run only these run ids (1-based), e.g. to share the runs between machines.
        overlay_cases: test cases shown in the overlay figure.
        preprocess_processes: ``-np`` of ``nnUNetv2_plan_and_preprocess``.
        bootstrap: bootstrap resamples of the paired comparison with the baseline.
        seed: seed of the bootstrap.

    Raises:
        ValueError: a setting out of range (the message names its command-line option).
    """

    dataset: str
    configuration: str
    trainers: List[str]
    out: str
    baseline: str = ""
    runs: int = 1
    fold: str = "all"
    configurations: List[str] = field(default_factory=list)
    folds: List[str] = field(default_factory=list)
    plans: str = "nnUNetPlans"
    device: str = "cuda"
    tau: float = DEFAULT_TAU
    jobs: int = 1
    gpus: List[str] = field(default_factory=list)
    only_runs: List[int] = field(default_factory=list)
    overlay_cases: int = 4
    preprocess_processes: int = 2
    bootstrap: int = DEFAULT_BOOTSTRAP
    seed: int = 0

    def __post_init__(self):
        if not isinstance(self.runs, int) or self.runs < 1:
            raise ValueError(f"--runs must be an integer >= 1, got {self.runs!r}")
        if self.fold != "all" and not (str(self.fold).isdigit()):
            raise ValueError(f"--fold must be 'all' or a fold number, got {self.fold!r}")
        self.fold = str(self.fold)
        self.configurations = list(self.configurations or [self.configuration])
        twice = sorted({c for c in self.configurations if self.configurations.count(c) > 1})
        if twice:
            raise ValueError(f"-c lists {', '.join(twice)} more than once")
        self.configuration = self.configurations[0]
        self.folds = [str(f) for f in self.folds]
        if "all" in self.folds:
            raise ValueError(f"--folds takes cross-validation fold numbers (e.g. 0 1 2 3 4), got {self.folds}; "
                             f"'all' is the one-fold form -f all")
        bad = [f for f in self.folds if not f.isdigit()]
        if bad:
            raise ValueError(f"--folds takes fold numbers (e.g. 0 1 2 3 4), got {bad}")
        if len(set(self.folds)) != len(self.folds):
            raise ValueError(f"--folds lists a fold more than once: {self.folds}")
        if len(self.configurations) > 1 and not self.folds:
            if self.fold == "all":
                raise ValueError(f"several configurations (-c {' '.join(self.configurations)}) need "
                                 f"cross-validation folds (--folds 0 1 2 3 4): nnU-Net chooses between them on the "
                                 f"folds' validation cases, which fold 'all' does not have")
            self.folds = [self.fold]
        if self.folds:
            self.folds = sorted(self.folds, key=int)
            self.fold = self.folds[0]
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
        if not isinstance(self.bootstrap, int) or self.bootstrap < 100:
            raise ValueError(f"--bootstrap must be an integer >= 100, got {self.bootstrap!r}")
        if not isinstance(self.seed, int):
            raise ValueError(f"--seed must be an integer, got {self.seed!r}")
        if not self.trainers:
            raise ValueError("give at least one trainer (-tr)")
        self.baseline = self.baseline or self.trainers[0]
        if self.baseline not in self.trainers:
            raise ValueError(f"baseline {self.baseline!r} is not among the trainers {self.trainers}")

    @property
    def protocol(self) -> bool:
        """True for nnU-Net's own protocol: every configuration and fold trained, ``nnUNetv2_find_best_configuration``
        chooses the configuration or ensemble and its post-processing, the test cases are predicted with that."""
        return bool(self.folds)

    @property
    def ensembling(self) -> bool:
        """Several configurations: trainings keep their validation probabilities (``--npz``) for the ensembles."""
        return len(self.configurations) > 1


@dataclass(frozen=True)
class Job:
    """One trainer in one run: its trainings, then prediction and evaluation of the test cases.

    ``own_results``: the job has its own ``nnUNet_results`` (nnU-Net's protocol, where
    ``nnUNetv2_find_best_configuration`` writes ``inference_information.json`` per results folder and the
    trainers of a run may choose at the same time); otherwise the run's trainers share one.
    """

    trainer: str
    run: int
    out: Path
    own_results: bool = False

    @property
    def run_folder(self) -> Path:
        return self.out / "runs" / f"run_{self.run}"

    @property
    def folder(self) -> Path:
        return self.run_folder / self.trainer

    @property
    def results_root(self) -> Path:
        """The ``nnUNet_results`` of this job (of its run, or its own under nnU-Net's protocol)."""
        return (self.folder if self.own_results else self.run_folder) / "nnUNet_results"

    @property
    def tag(self) -> str:
        return f"run {self.run} {self.trainer}"

    @property
    def done_file(self) -> Path:
        return self.folder / "done.json"


@dataclass(frozen=True)
class TrainUnit:
    """One ``nnUNetv2_train`` of a job: (run, trainer, configuration, fold), with its own log and marker.

    The one-configuration one-fold benchmark keeps the names ``logs/train.log`` / ``logs/train.ok``;
    under nnU-Net's protocol they are ``logs/train_<configuration>_fold_<fold>.{log,ok}``.
    """

    job: Job
    configuration: str
    fold: str
    single: bool = True

    @property
    def name(self) -> str:
        return "train" if self.single else f"train_{self.configuration}_fold_{self.fold}"

    @property
    def log_file(self) -> Path:
        return self.job.folder / "logs" / f"{self.name}.log"

    @property
    def ok_file(self) -> Path:
        return self.job.folder / "logs" / f"{self.name}.ok"

    @property
    def tag(self) -> str:
        return self.job.tag if self.single else f"{self.job.tag} {self.configuration} fold {self.fold}"


class Benchmark:
    """Runs the jobs of :class:`BenchmarkSettings` and writes the report (:func:`.report.write_report`).

    Args:
        settings: what to run.
        env: the environment of the nnU-Net commands (default ``os.environ``); it must set
            ``nnUNet_raw`` and ``nnUNet_preprocessed``. With ``device='cpu'``, ``nnUNet_def_n_proc=1``
            and (for training) ``nnUNet_n_proc_DA=0`` are set unless ``env`` sets them: spawned
            workers each import torch, which costs more than they save on small CPU runs.
        echo: where progress lines go (default stdout).

    Raises:
        ValueError: ``nnUNet_raw`` or ``nnUNet_preprocessed`` is not set.
        FileNotFoundError: the dataset, or its ``imagesTs`` / ``labelsTs``, does not exist.
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
        self.dataset_name = dataset_folder_name(settings.dataset, self.raw_root, self.pre_root)
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
        self.commands = CommandRunner(self.out, self.env, progress_bars=self.s.jobs == 1)
        self._print_lock = threading.Lock()
        self.failures: List[Tuple[Job, str]] = []

    def _say(self, msg: str) -> None:
        with self._print_lock:
            self.echo(msg)

    def run_command(self, cmd: List[str], extra_env: Mapping[str, str], log_file: Path, tag: str,
                    epochs: Optional[int] = None) -> float:
        """Runs one nnU-Net command (see :meth:`.commands.CommandRunner.run`); returns its seconds."""
        return self.commands.run(cmd, extra_env, log_file, tag, epochs)

    # ------------------------------------------------------------------------------------ preprocessing

    def plans_file(self) -> Path:
        return self.pre_root / self.dataset_name / f"{self.s.plans}.json"

    def preprocessed_complete(self, configuration: Optional[str] = None) -> bool:
        """True when nnU-Net's plans list the configuration and its data holds every training case.

        Raises:
            ValueError: the plans exist but lack the configuration, or it is a cascade stage (its
                training needs the previous stage's predictions, which the benchmark does not make).
        """
        configuration = configuration or self.s.configuration
        plans_file = self.plans_file()
        if not plans_file.is_file():
            return False
        plans = read_json(plans_file)
        config = plans.get("configurations", {}).get(configuration)
        if config is None:
            raise ValueError(f"{plans_file} has no configuration {configuration!r}; it has "
                             f"{sorted(plans.get('configurations', {}))}")
        if config.get("previous_stage"):
            raise ValueError(f"-c {configuration} is a cascade stage (previous stage {config['previous_stage']}): "
                             f"the benchmark trains configurations that need no earlier stage")
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
        data_id = PlansManager(str(plans_file)).get_configuration(configuration).data_identifier
        data = self.pre_root / self.dataset_name / data_id
        if not data.is_dir():
            return False
        expected = read_json((self.raw / "dataset.json"))["numTraining"]
        from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
        try:
            return len(infer_dataset_class(str(data)).get_identifiers(str(data))) >= expected
        except AssertionError:
            return False

    def prepare(self) -> None:
        """Plans and preprocesses the dataset (nnU-Net's CLI) unless done; writes the fold split if needed."""
        missing = [c for c in self.s.configurations if not self.preprocessed_complete(c)]
        configs = " ".join(self.s.configurations)
        if missing:
            if self.s.plans != "nnUNetPlans":
                raise ValueError(f"plans {self.s.plans!r} are not preprocessed for {' '.join(missing)}; run "
                                 f"nnUNetv2_plan_and_preprocess with your planner first")
            self._say(f"[prepare] nnUNetv2_plan_and_preprocess {self.dataset_name} {' '.join(missing)} "
                      f"(log: {self.out / 'logs' / 'preprocess.log'})")
            n = str(self.s.preprocess_processes)
            t = self.run_command([nnunet_tool("nnUNetv2_plan_and_preprocess"), "-d", self.dataset_id(),
                                  "-c", *missing, "-np", *[n] * len(missing), "-npfp", n,
                                  "--verify_dataset_integrity"], {},
                                 self.out / "logs" / "preprocess.log", "prepare")
            self._say(f"[prepare] done in {t:.0f} s")
            if not all(self.preprocessed_complete(c) for c in missing):
                raise StepFailed(f"nnUNetv2_plan_and_preprocess finished but {self.pre_root / self.dataset_name} "
                                 f"lacks cases; see {self.out / 'logs' / 'preprocess.log'}")
        else:
            self._say(f"[prepare] {self.dataset_name} {configs}: already preprocessed")
        if self.s.fold != "all":
            self.write_split()

    def split_file(self) -> Path:
        return self.pre_root / self.dataset_name / "splits_final.json"

    def write_split(self) -> None:
        """nnU-Net writes splits_final.json on its first training; jobs running at once (or on a cluster) would
        race to write it, so it is written once, before any job (nnU-Net's own seed and split), unless there."""
        splits = self.split_file()
        if splits.is_file():
            return
        from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
        from nnunetv2.utilities.crossval_split import generate_crossval_split
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
        data_id = PlansManager(str(self.plans_file())).get_configuration(self.s.configuration).data_identifier
        data = self.pre_root / self.dataset_name / data_id
        keys = sorted(infer_dataset_class(str(data)).get_identifiers(str(data)))
        write_json(splits, generate_crossval_split(keys, seed=12345, n_splits=5))  # nnU-Net's own seed and split

    def dataset_id(self) -> str:
        from nnunetv2.utilities.dataset_name_id_conversion import convert_dataset_name_to_id
        return str(convert_dataset_name_to_id(self.dataset_name))

    # ------------------------------------------------------------------------------------------- jobs

    def job(self, trainer: str, run: int) -> Job:
        return Job(trainer, run, self.out, own_results=self.s.protocol)

    def jobs(self) -> List[Job]:
        runs = self.s.only_runs or list(range(1, self.s.runs + 1))
        return [self.job(t, r) for r in runs for t in self.s.trainers]

    def units(self, job: Job) -> List[TrainUnit]:
        """The trainings of a job: every configuration x fold (one of each outside nnU-Net's protocol)."""
        if not self.s.protocol:
            return [TrainUnit(job, self.s.configuration, self.s.fold)]
        return [TrainUnit(job, c, f, single=False) for c in self.s.configurations for f in self.s.folds]

    def model_folder(self, job: Job, configuration: Optional[str] = None) -> Path:
        return (job.results_root / self.dataset_name
                / f"{job.trainer}__{self.s.plans}__{configuration or self.s.configuration}")

    def fold_folder(self, job: Job, configuration: Optional[str] = None, fold: Optional[str] = None) -> Path:
        return self.model_folder(job, configuration) / f"fold_{fold or self.s.fold}"

    def job_finished(self, job: Job) -> bool:
        if not job.done_file.is_file():
            return False
        done = read_json(job.done_file)
        return done.get("tau") == self.s.tau

    def unit_finished(self, unit: TrainUnit) -> bool:
        return unit.ok_file.is_file()

    def _extra_env(self, job: Job, gpu: Optional[str]) -> Dict[str, str]:
        extra = {"nnUNet_results": str(job.results_root)}
        if gpu is not None:
            extra["CUDA_VISIBLE_DEVICES"] = str(gpu)
        return extra

    def train_unit(self, unit: TrainUnit, gpu: Optional[str] = None) -> None:
        """``nnUNetv2_train`` of one unit unless its marker exists; continues a stopped training with ``--c``.

        Raises:
            StepFailed: nnU-Net exited with an error, or with 0 but without ``checkpoint_final.pth``.
        """
        if self.unit_finished(unit):
            return
        job = unit.job
        fold = self.fold_folder(job, unit.configuration, unit.fold)
        resume = any((fold / c).is_file() for c in ("checkpoint_final.pth", "checkpoint_latest.pth",
                                                    "checkpoint_best.pth"))
        train_env = self._extra_env(job, gpu)
        if self.s.device == "cpu":
            train_env.setdefault("nnUNet_n_proc_DA", self.env.get("nnUNet_n_proc_DA", "0"))
        cmd = [nnunet_tool("nnUNetv2_train"), self.dataset_id(), unit.configuration, unit.fold, "-tr", job.trainer,
               "-p", self.s.plans, "-device", self.s.device]
        cmd += (["--npz"] if self.s.ensembling else []) + (["--c"] if resume else [])
        self._say(f"[{unit.tag}] train{' (continuing from its checkpoint)' if resume else ''} "
                  f"(log: {unit.log_file})")
        epochs = trainer_budget(job.trainer)[0] or nnunet_default_epochs()
        seconds = self.run_command(cmd, train_env, unit.log_file, unit.tag, epochs=epochs)
        if not (fold / "checkpoint_final.pth").is_file():
            raise StepFailed(f"{unit.tag}: nnUNetv2_train exited with 0 but wrote no {fold / 'checkpoint_final.pth'}")
        write_json(unit.ok_file, {"fold_folder": str(fold), "seconds": seconds, "id": uuid.uuid4().hex,
                                  "finished": time.strftime("%Y-%m-%d %H:%M:%S")})
        self._say(f"[{unit.tag}] train done in {seconds:.0f} s")

    def run_job(self, job: Job, gpu: Optional[str] = None) -> None:
        """Trains, predicts, evaluates one job, skipping the steps already complete; ``done.json`` last."""
        for unit in self.units(job):
            self.train_unit(unit, gpu)
        self.finish_job(job, gpu)

    def finish_job(self, job: Job, gpu: Optional[str] = None) -> None:
        """Prediction of the test cases and their evaluation, once every training of the job is finished.

        Raises:
            StepFailed: a training is not finished, or an nnU-Net command failed.
        """
        missing = [u.tag for u in self.units(job) if not self.unit_finished(u)]
        if missing:
            raise StepFailed(f"{job.tag}: training not finished: {', '.join(missing)}")
        logs = job.folder / "logs"
        timings = {}
        for unit in self.units(job):
            key = "train_s" if unit.single else f"{unit.name}_s"
            timings[key] = read_json(unit.ok_file)["seconds"]
        if self.s.protocol:
            protocol, predict_s = self._predict_protocol(job, gpu)
            timings["predict_s"] = predict_s
        else:
            protocol = None
            predictions = job.folder / "predictions"
            if (logs / "predict.ok").is_file():
                timings["predict_s"] = read_json(logs / "predict.ok")["seconds"]
            if not predictions.is_dir():
                tmp = job.folder / ".predictions.tmp"
                shutil.rmtree(tmp, ignore_errors=True)
                self._say(f"[{job.tag}] predict {len(list((self.raw / 'labelsTs').iterdir()))} test cases")
                timings["predict_s"] = self._predict(job, self.s.configuration, [self.s.fold], tmp, gpu,
                                                     logs / "predict.log")
                os.replace(tmp, predictions)
                write_json(logs / "predict.ok", {"seconds": timings["predict_s"]})
        summary = self._evaluate(job, timings)
        record = {"trainer": job.trainer, "run": job.run, "dataset": self.dataset_name,
                  "configuration": self.s.configuration, "fold": self.s.fold, "plans": self.s.plans,
                  "tau": self.s.tau, "timings": timings, "mean": summary["mean"],
                  "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
        if protocol is not None:
            record.update(configurations=self.s.configurations, folds=self.s.folds, protocol=protocol)
        write_json(job.done_file, record)
        m = summary["mean"]
        chosen = f" ({protocol['chosen']})" if protocol else ""
        self._say(f"[{job.tag}] done{chosen}: mDice {100 * (m['dice'] or 0):.2f}  mNSD {100 * (m['nsd'] or 0):.2f}")

    def _predict(self, job: Job, configuration: str, folds: Sequence[str], out: Path, gpu: Optional[str],
                 log_file: Path, probabilities: bool = False) -> float:
        cmd = [nnunet_tool("nnUNetv2_predict"), "-i", str(self.raw / "imagesTs"), "-o", str(out),
               "-d", self.dataset_id(), "-c", configuration, "-f", *folds, "-tr", job.trainer, "-p", self.s.plans,
               "-device", self.s.device, "--disable_progress_bar"]
        if probabilities:
            cmd.append("--save_probabilities")
        if self.s.device == "cpu":
            cmd += ["-npp", "1", "-nps", "1"]
        return self.run_command(cmd, self._extra_env(job, gpu), log_file, job.tag)

    def _evaluate(self, job: Job, timings: Dict) -> Dict:
        predictions = job.folder / "predictions"
        evaluation = job.folder / "evaluation"
        summary_file = evaluation / "summary.json"
        if not summary_file.is_file() or read_json(summary_file).get("tau") != self.s.tau:
            from ..evaluation.evaluate import evaluate_folders, write_evaluation
            self.commands.log_in_process(job.tag, ["nnunet-pmdice", "evaluate", str(self.raw / "labelsTs"),
                                                   str(predictions), "--tau", f"{self.s.tau:g}", "-o", str(evaluation)])
            start = time.time()
            result = evaluate_folders(self.raw / "labelsTs", predictions, tau=self.s.tau, progress=False)
            with building_folder(evaluation) as tmp:
                write_evaluation(result, tmp, title=job.trainer)
            timings["evaluate_s"] = time.time() - start
        return read_json(summary_file)

    # ------------------------------------------------------------------------- nnU-Net's protocol

    def choose(self, job: Job) -> Dict:
        """``nnUNetv2_find_best_configuration`` of the job's trainer over its configurations and folds, in the
        job's own ``nnUNet_results``; its ``inference_information.json`` recorded in ``logs/find_best.ok``.

        The marker also records the trainings it chose from (their markers' ids): when a training is redone,
        the choice and everything after it are made again.

        Raises:
            StepFailed: nnU-Net failed, or wrote no readable ``inference_information.json``.
        """
        logs = job.folder / "logs"
        ok = logs / "find_best.ok"
        trained = {u.name: read_json(u.ok_file).get("id") for u in self.units(job)}
        if ok.is_file():
            record = read_json(ok)
            if record.get("trained") == trained:
                return record
            self._say(f"[{job.tag}] a training was redone: choosing the configuration again")
            ok.unlink()
        for stale in [job.folder / "predictions", job.folder / "evaluation", *self._test_folders(job)]:
            shutil.rmtree(stale, ignore_errors=True)
        info_file = job.results_root / self.dataset_name / "inference_information.json"
        info_file.unlink(missing_ok=True)
        cmd = [nnunet_tool("nnUNetv2_find_best_configuration"), self.dataset_id(), "-c", *self.s.configurations,
               "-tr", job.trainer, "-p", self.s.plans, "-f", *self.s.folds]
        self._say(f"[{job.tag}] nnUNetv2_find_best_configuration over {' '.join(self.s.configurations)}, "
                  f"folds {' '.join(self.s.folds)} (log: {logs / 'find_best.log'})")
        seconds = self.run_command(cmd, self._extra_env(job, None), logs / "find_best.log", job.tag)
        if not info_file.is_file():
            raise StepFailed(f"{job.tag}: nnUNetv2_find_best_configuration exited with 0 but wrote no {info_file}")
        info = read_json(info_file, "nnU-Net's inference_information.json")
        best = info["best_model_or_ensemble"]
        models = best["selected_model_or_models"]
        wrong = [m for m in models if m["trainer"] != job.trainer or m["plans_identifier"] != self.s.plans
                 or m["configuration"] not in self.s.configurations]
        if not models or wrong:
            raise StepFailed(f"{job.tag}: {info_file} selects {models}, not configurations of {job.trainer}")
        configs = [m["configuration"] for m in models]
        source = Path(best["some_plans_file"]).parent
        record = {"chosen": " + ".join(configs), "configurations": configs, "ensemble": len(configs) > 1,
                  "cv_dice": best["result_on_crossval_pre_pp"], "cv_dice_postprocessed": best["result_on_crossval_post_pp"],
                  "cv_all": info["all_results"], "folds": [str(f) for f in info["folds"]],
                  "postprocessing_file": best["postprocessing_file"], "plans_json": best["some_plans_file"],
                  "dataset_json": str(source / "dataset.json"), "inference_information": str(info_file),
                  "seconds": seconds, "trained": trained}
        write_json(ok, record)
        self._say(f"[{job.tag}] nnU-Net chose {record['chosen']}: cross-validation mean foreground Dice "
                  f"{100 * record['cv_dice']:.2f} ({100 * record['cv_dice_postprocessed']:.2f} post-processed)")
        return record

    def _test_folders(self, job: Job) -> List[Path]:
        return [job.folder / f"test_{c}" for c in self.s.configurations] + [job.folder / "test_ensemble"]

    def _predict_protocol(self, job: Job, gpu: Optional[str]) -> Tuple[Dict, float]:
        """The test cases predicted as nnU-Net's choice would be shipped: each chosen configuration with its
        folds (with probabilities when an ensemble won), ``nnUNetv2_ensemble``, ``nnUNetv2_apply_postprocessing``.
        Each step writes a temporary folder moved into place after its command exited with 0."""
        logs = job.folder / "logs"
        choice = self.choose(job)
        final = job.folder / "predictions"
        seconds = 0.0
        if (logs / "predict.ok").is_file() and final.is_dir():
            return choice, read_json(logs / "predict.ok")["seconds"]
        shutil.rmtree(job.folder / "evaluation", ignore_errors=True)
        members = []
        for c in choice["configurations"]:
            folder = job.folder / f"test_{c}"
            if not folder.is_dir():
                self._say(f"[{job.tag}] predict the test cases with {c}, folds {' '.join(choice['folds'])}")
                with building_folder(folder) as tmp:
                    seconds += self._predict(job, c, choice["folds"], tmp, gpu, logs / f"predict_{c}.log",
                                             probabilities=choice["ensemble"])
            members.append(folder)
        source = members[0]
        if choice["ensemble"]:
            source = job.folder / "test_ensemble"
            if not source.is_dir():
                self._say(f"[{job.tag}] nnUNetv2_ensemble {' + '.join(choice['configurations'])}")
                with building_folder(source) as tmp:
                    seconds += self.run_command([nnunet_tool("nnUNetv2_ensemble"), "-i", *map(str, members),
                                                 "-o", str(tmp)], self._extra_env(job, gpu),
                                                logs / "ensemble.log", job.tag)
        self._say(f"[{job.tag}] nnUNetv2_apply_postprocessing ({choice['postprocessing_file']})")
        with building_folder(final) as tmp:
            seconds += self.run_command([nnunet_tool("nnUNetv2_apply_postprocessing"), "-i", str(source),
                                         "-o", str(tmp), "-pp_pkl_file", choice["postprocessing_file"],
                                         "-plans_json", choice["plans_json"], "-dataset_json", choice["dataset_json"]],
                                        self._extra_env(job, gpu), logs / "postprocess.log", job.tag)
        write_json(logs / "predict.ok", {"seconds": seconds, "source": str(source)})
        return choice, seconds

    # ------------------------------------------------------------------------------------ the benchmark

    def _check_out_folder(self) -> None:
        record = self.out / "benchmark.json"
        fixed = {"dataset": self.dataset_name, "configuration": self.s.configuration, "fold": self.s.fold,
                 "plans": self.s.plans, "configurations": self.s.configurations, "folds": self.s.folds}
        if record.is_file():
            old = read_json(record)
            old.setdefault("configurations", [old.get("configuration")])   # recorded before the protocol existed
            old.setdefault("folds", [])
            differ = {k: (old.get(k), v) for k, v in fixed.items() if old.get(k) != v}
            if differ:
                raise ValueError(f"{self.out} holds a benchmark with other settings "
                                 f"({', '.join(f'{k}: {a} there, {b} now' for k, (a, b) in differ.items())}); "
                                 f"use another output folder")
        write_json(record, {**asdict(self.s), **fixed, "out": str(self.out)})

    def start(self) -> List[Job]:
        """Checks the output folder, logs the command, prepares the dataset; returns the unfinished jobs."""
        self.out.mkdir(parents=True, exist_ok=True)
        self._check_out_folder()
        self.commands.log(f"# ==== {time.strftime('%Y-%m-%d %H:%M:%S')} nnunet-pmdice benchmark: "
                          f"{shlex.join(sys.argv)}")
        self.prepare()
        jobs = self.jobs()
        todo = [j for j in jobs if not self.job_finished(j)]
        for j in jobs:
            if j not in todo:
                self._say(f"[{j.tag}] finished before: skipped")
        per_job = len(self.s.configurations) * max(1, len(self.s.folds))
        self._say(f"{len(todo)} of {len(jobs)} jobs to run "
                  f"({len(self.s.trainers)} trainers x {len(jobs) // max(1, len(self.s.trainers))} runs"
                  + (f"; {per_job} trainings each: {' '.join(self.s.configurations)} x folds {' '.join(self.s.folds)}"
                     if self.s.protocol else "") + ")")
        return todo

    def run(self, report_only: bool = False) -> Dict:
        """Runs every unfinished job (unless ``report_only``), then writes and returns the report."""
        if report_only:
            self.out.mkdir(parents=True, exist_ok=True)
            self._check_out_folder()
        else:
            self._run_all(self.start())
        report = self.report()
        if self.failures:
            self._say(f"{len(self.failures)} jobs failed: " + "; ".join(f"{j.tag}: {str(e).splitlines()[0]}"
                                                                      for j, e in self.failures))
        return report

    def _run_all(self, todo: List[Job]) -> None:
        """Runs the trainings of ``todo`` with ``jobs`` at once, then the predictions of the jobs whose trainings
        all finished; with ``gpus``, each holds one GPU while it runs."""
        gpus: Optional[Queue] = None
        if self.s.gpus:
            gpus = Queue()
            for g in self.s.gpus:
                gpus.put(g)
        failed = set()

        def guarded(job: Job, step) -> None:
            gpu = gpus.get() if gpus is not None else None
            try:
                step(gpu)
            except (StepFailed, ValueError, FileNotFoundError) as e:
                # a command that failed, or an output refused (e.g. a prediction the evaluation cannot read):
                # this job is recorded as failed, the others run on and the report is still written
                if job not in failed:
                    failed.add(job)
                    self.failures.append((job, str(e)))
                self._say(f"[{job.tag}] FAILED: {e}")
            finally:
                if gpus is not None:
                    gpus.put(gpu)

        def parallel(tasks) -> None:
            workers = min(self.s.jobs, max(1, len(tasks)))
            if workers == 1:
                for task in tasks:
                    task()
            else:
                with ThreadPoolExecutor(workers) as pool:
                    list(pool.map(lambda task: task(), tasks))

        trainings = [u for j in todo for u in self.units(j) if not self.unit_finished(u)]
        parallel([lambda u=u: guarded(u.job, lambda gpu: self.train_unit(u, gpu)) for u in trainings])
        parallel([lambda j=j: guarded(j, lambda gpu: self.finish_job(j, gpu)) for j in todo if j not in failed])

    def report(self) -> Dict:
        """Table, comparison with the baseline, per-case rows, summary and plots from every finished job."""
        finished = {(t, r): self.job(t, r).folder for t in self.s.trainers for r in range(1, self.s.runs + 1)
                    if self.job_finished(self.job(t, r))}
        return write_report(self.out, self.s, self.dataset_name, self.raw, finished, say=self._say)


# ------------------------------------------------------------------------------------------------ CLI

def add_parser(sub) -> None:
    """Registers ``nnunet-pmdice benchmark``."""
    p = sub.add_parser(
        "benchmark", help="train trainers with nnU-Net, predict the test cases, tabulate the paper's metrics",
        description="Trains each trainer with nnUNetv2_train (one nnU-Net results folder per independent run), "
                    "predicts imagesTs with nnUNetv2_predict, evaluates against labelsTs and writes the table "
                    "(baseline first, best per column bold), the paired comparison of every trainer with the "
                    "baseline and the plots. Resumable: finished jobs are skipped. Reference: docs/benchmark.md.")
    p.add_argument("-d", required=True, metavar="ID", help="dataset id or name in nnUNet_raw (needs imagesTs/labelsTs)")
    p.add_argument("-c", nargs="+", default=["3d_fullres"], metavar="CONFIG",
                   help="nnU-Net configuration(s) (default 3d_fullres); several need --folds: nnU-Net's "
                        "find_best_configuration chooses between them per trainer")
    p.add_argument("-tr", nargs="+", required=True, metavar="TRAINER",
                   help="trainer names, e.g. nnUNetTrainer nnUNetTrainerPMDice (nnU-Net's default trainer is the "
                        "baseline; it is added when missing)")
    p.add_argument("--epochs", type=int, help="append _<n>epochs to every trainer name (same budget for all)")
    p.add_argument("--iters", type=int, help="append _<n>iters (training iterations per epoch) to every trainer name")
    p.add_argument("--baseline", help="the baseline row (default: the nnUNetTrainer among -tr)")
    p.add_argument("--runs", type=int, default=1, help="independent runs per trainer (default 1; the paper: 3)")
    p.add_argument("-f", "--fold", help="the one fold to train: all (every training case, default) or 0-4")
    p.add_argument("--folds", nargs="+", metavar="FOLD",
                   help="nnU-Net's protocol: train every configuration on these cross-validation folds (e.g. 0 1 2 3 "
                        "4), run nnUNetv2_find_best_configuration per trainer, predict the test cases with its choice "
                        "and post-processing")
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
    p.add_argument("--bootstrap", type=int, default=DEFAULT_BOOTSTRAP, metavar="N",
                   help=f"bootstrap resamples of the comparison with the baseline (default {DEFAULT_BOOTSTRAP})")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap (default 0)")
    g = p.add_argument_group("cluster (submitit; reference: docs/benchmark.md#on-a-slurm-cluster)")
    g.add_argument("--cluster", choices=("slurm", "local"),
                   help="run the jobs through submitit: slurm (one job per training, returns after submission) or "
                        "local (submitit's LocalExecutor on this machine, --jobs at a time; waits)")
    g.add_argument("--partition", help="SLURM partition")
    g.add_argument("--time", type=int, metavar="MIN", help="time limit of a training job (default 1440)")
    g.add_argument("--predict-time", type=int, metavar="MIN",
                   help="time limit of a prediction, preparation or report job (default 120)")
    g.add_argument("--gpus-per-job", type=int, metavar="N", help="GPUs per training/prediction job (default 1 with "
                                                                 "--device cuda, else 0)")
    g.add_argument("--cpus-per-job", type=int, metavar="N", help="CPUs per training/prediction job (--cpus-per-task)")
    g.add_argument("--mem", type=int, metavar="GB", help="memory per job, GB")
    g.add_argument("--account", help="SLURM account")
    g.add_argument("--qos", help="SLURM quality of service")
    g.add_argument("--sbatch", nargs="+", default=[], metavar="KEY=VALUE",
                   help="further sbatch options, e.g. constraint=a100 mail-type=END")
    g.add_argument("--setup", nargs="+", default=[], metavar="LINE",
                   help="shell lines each job runs first, e.g. 'module load cuda/12.1'")
    p.set_defaults(func=run_cli)


def settings_from_args(args, trainers: Optional[List[str]] = None) -> BenchmarkSettings:
    """The settings of ``nnunet-pmdice benchmark`` arguments (budget tokens added, baseline first)."""
    names = [with_budget(t, args.epochs, args.iters) for t in (trainers or args.tr)]
    baseline_arg = with_budget(args.baseline, args.epochs, args.iters) if args.baseline else None
    names, baseline = choose_baseline(names, baseline_arg)
    configs = [args.c] if isinstance(args.c, str) else list(args.c)
    folds = list(getattr(args, "folds", None) or [])
    if folds and args.fold is not None:
        raise ValueError("give -f/--fold (one fold) or --folds (nnU-Net's cross-validation folds), not both")
    return BenchmarkSettings(dataset=str(args.d), configuration=configs[0], configurations=configs, folds=folds,
                             trainers=names, baseline=baseline, out=args.out, runs=args.runs,
                             fold=str(args.fold if args.fold is not None else "all"), plans=args.plans,
                             device=args.device,
                             tau=args.tau, jobs=args.jobs or max(1, len(args.gpus)), gpus=list(args.gpus),
                             only_runs=list(args.only_runs), overlay_cases=args.overlay_cases,
                             bootstrap=args.bootstrap, seed=args.seed)


def warn_unequal_budgets(trainers: Sequence[str], say=print) -> None:
    budgets = {t: trainer_budget(t) for t in trainers}
    if len(set(budgets.values())) > 1:
        say("warning: the trainers have different training budgets (epochs, iters): "
            + ", ".join(f"{t}: {b}" for t, b in budgets.items()))


def cluster_from_args(args, settings: BenchmarkSettings):
    """The :class:`.cluster.ClusterSettings` of ``--cluster`` and its options, None without ``--cluster``.

    Raises:
        ValueError: a cluster option without ``--cluster``, ``--gpus`` with ``--cluster`` (the scheduler gives
            each job its GPUs), or an option out of range.
    """
    slurm_only = [n for n, v in (("--partition", args.partition), ("--account", args.account), ("--qos", args.qos),
                                 ("--sbatch", args.sbatch), ("--setup", args.setup), ("--mem", args.mem),
                                 ("--cpus-per-job", args.cpus_per_job), ("--gpus-per-job", args.gpus_per_job))
                  if v not in (None, [])]
    if args.cluster != "slurm" and slurm_only:
        raise ValueError(f"{', '.join(slurm_only)} {'needs' if len(slurm_only) == 1 else 'need'} --cluster slurm")
    if args.cluster is None:
        timed = [n for n, v in (("--time", args.time), ("--predict-time", args.predict_time)) if v is not None]
        if timed:
            raise ValueError(f"{', '.join(timed)} {'needs' if len(timed) == 1 else 'need'} --cluster slurm or "
                             f"--cluster local")
        return None
    from .cluster import ClusterSettings, parse_sbatch_options
    if args.gpus:
        raise ValueError("--gpus is for the benchmark without --cluster; with --cluster use --gpus-per-job")
    if args.cluster == "slurm" and args.jobs:
        raise ValueError("--jobs is for the benchmark on this machine; SLURM runs every submitted job it can")
    gpus = args.gpus_per_job if args.gpus_per_job is not None else (1 if settings.device == "cuda" else 0)
    defaults = ClusterSettings(kind=args.cluster)
    return ClusterSettings(kind=args.cluster, partition=args.partition,
                           time_min=defaults.time_min if args.time is None else args.time,
                           predict_time_min=defaults.predict_time_min if args.predict_time is None else args.predict_time, gpus_per_job=gpus, cpus_per_job=args.cpus_per_job,
                           mem_gb=args.mem, account=args.account, qos=args.qos,
                           sbatch=parse_sbatch_options(args.sbatch), setup=list(args.setup), jobs=args.jobs or 1)


def run_cli(args) -> int:
    settings = settings_from_args(args)
    cluster = cluster_from_args(args, settings)
    if cluster is not None and args.report_only:
        raise ValueError("--report-only writes the report here; leave out --cluster")
    if not args.report_only:
        check_trainer_names(settings.trainers)
    warn_unequal_budgets(settings.trainers)
    bench = Benchmark(settings)
    try:
        if cluster is not None:
            from .cluster import submit
            return 1 if submit(bench, cluster, say=bench._say)["failed"] else 0
        bench.run(report_only=args.report_only)
    except StepFailed as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 1 if bench.failures else 0
