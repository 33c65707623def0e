"""The training benchmark's jobs through submitit: on a SLURM cluster, or on this machine with its LocalExecutor.

``nnunet-pmdice benchmark ... --cluster slurm`` submits one submitit job per training unit (run, trainer,
configuration, fold), one prediction job per (run, trainer) that starts after its trainings succeeded
(``--dependency afterok``), and one report job that starts after every prediction job ended
(``afterany``: the report tabulates what finished and lists the rest). The submitting command returns
once everything is submitted and prints the job ids. Each job runs the same code as the local benchmark
(:class:`BenchmarkTask` calls :meth:`.runner.Benchmark.train_unit`, :meth:`~.runner.Benchmark.finish_job`
or :meth:`~.runner.Benchmark.report`), so the resume markers are the same: a resubmission submits only
the units and jobs that are not finished. A job that reaches its time limit is requeued by submitit
(:class:`submitit.helpers.Checkpointable`) and a training continues from its latest checkpoint.

``--cluster local`` runs the same jobs with submitit's ``LocalExecutor`` (``--jobs`` at a time) and waits
for them: the jobs' files are those of a cluster run, which is how the tests check this path on a CPU.

The submitit files of a job (``<id>_submission.sh``, ``<id>_0_log.out``, ``<id>_0_log.err``, the pickled
task and result) go beside the job's own logs: ``OUT/runs/run_k/T/logs/submitit/``; those of the
preparation and report jobs to ``OUT/logs/submitit/``.
"""
from __future__ import annotations

import os
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Sequence

from ..fileio import read_json, write_json
from .commands import LOGGED_ENV
from .runner import Benchmark, BenchmarkSettings, Job, TrainUnit

__all__ = ["CLUSTER_KINDS", "ClusterSettings", "BenchmarkTask", "slurm_parameters", "submit"]

#: values of ``--cluster``
CLUSTER_KINDS = ("slurm", "local")

#: environment variables a job takes from the submitting benchmark's environment (the job's own
#: ``CUDA_VISIBLE_DEVICES`` is the scheduler's)
JOB_ENV = tuple(k for k in LOGGED_ENV if k != "CUDA_VISIBLE_DEVICES") + ("PYTHONUNBUFFERED",)


@dataclass
class ClusterSettings:
    """Where and with what resources the benchmark's jobs run.

    Args:
        kind: ``slurm`` (submitit's SlurmExecutor, returns after submission) or ``local`` (its
            LocalExecutor, waits).
        partition, account, qos: SLURM's ``--partition``, ``--account``, ``--qos``.
        time_min: time limit of a training job, minutes.
        predict_time_min: time limit of a prediction (and of the preparation and report) job, minutes.
        gpus_per_job: GPUs of a training or prediction job (SLURM ``--gpus-per-node``).
        cpus_per_job: CPUs of a training or prediction job (``--cpus-per-task``).
        mem_gb: memory of a job in GB (``--mem``).
        sbatch: further ``#SBATCH`` options, ``{"constraint": "a100", ...}``.
        setup: shell lines run in each job before Python (e.g. ``module load cuda``).
        jobs: with ``local``, jobs at the same time.

    Raises:
        ValueError: an option out of range (named as on the command line).
    """

    kind: str
    partition: Optional[str] = None
    time_min: int = 1440
    predict_time_min: int = 120
    gpus_per_job: int = 1
    cpus_per_job: Optional[int] = None
    mem_gb: Optional[int] = None
    account: Optional[str] = None
    qos: Optional[str] = None
    sbatch: Dict[str, str] = field(default_factory=dict)
    setup: List[str] = field(default_factory=list)
    jobs: int = 1

    def __post_init__(self):
        if self.kind not in CLUSTER_KINDS:
            raise ValueError(f"--cluster must be one of {', '.join(CLUSTER_KINDS)}, got {self.kind!r}")
        for name, value, low in (("--time", self.time_min, 1), ("--predict-time", self.predict_time_min, 1),
                                 ("--gpus-per-job", self.gpus_per_job, 0), ("--jobs", self.jobs, 1)):
            if not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        for name, value in (("--cpus-per-job", self.cpus_per_job), ("--mem", self.mem_gb)):
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if self.kind == "local":
            given = [n for n, v in (("--partition", self.partition), ("--account", self.account),
                                    ("--qos", self.qos), ("--sbatch", self.sbatch), ("--setup", self.setup)) if v]
            if given:
                raise ValueError(f"{', '.join(given)} are SLURM options: they need --cluster slurm")


def parse_sbatch_options(items: Sequence[str]) -> Dict[str, str]:
    """``["constraint=a100", "mail-type=END"]`` -> ``{"constraint": "a100", "mail-type": "END"}``.

    >>> parse_sbatch_options(["constraint=a100", "--exclude=node[1-2]"])
    {'constraint': 'a100', 'exclude': 'node[1-2]'}

    Raises:
        ValueError: an item without ``=`` or with an empty name.
    """
    options = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip().lstrip("-")
        if not sep or not key:
            raise ValueError(f"--sbatch takes KEY=VALUE items (e.g. constraint=a100), got {item!r}")
        options[key] = value
    return options


def slurm_parameters(cluster: ClusterSettings, name: str, step: str,
                     dependency: Optional[str] = None) -> Dict[str, object]:
    """The parameters of submitit's ``SlurmExecutor.update_parameters`` for one job (SLURM's own names).

    ``step``: ``train``, ``predict`` (GPUs and CPUs as a training, the shorter time limit) or ``prepare`` /
    ``report`` (no GPU). A job with a dependency is cancelled by SLURM when the dependency can never
    be satisfied (``kill-on-invalid-dep``), so that the report job, which waits for it to end, still runs.

    >>> p = slurm_parameters(ClusterSettings("slurm", partition="gpu", mem_gb=32), "pmdice-train", "train")
    >>> p["partition"], p["gpus_per_node"], p["mem"], p["time"]
    ('gpu', 1, '32GB', 1440)
    """
    gpu_step = step in ("train", "predict")
    params: Dict[str, object] = {"job_name": name,
                                 "time": cluster.time_min if step == "train" else cluster.predict_time_min}
    if gpu_step and cluster.gpus_per_job:
        params["gpus_per_node"] = cluster.gpus_per_job
    if gpu_step and cluster.cpus_per_job:
        params["cpus_per_task"] = cluster.cpus_per_job
    if cluster.mem_gb:
        params["mem"] = f"{cluster.mem_gb}GB"
    for key in ("partition", "account", "qos"):
        if getattr(cluster, key):
            params[key] = getattr(cluster, key)
    if cluster.setup:
        params["setup"] = list(cluster.setup)
    extra = dict(cluster.sbatch)
    if dependency:
        params["dependency"] = dependency
        extra.setdefault("kill-on-invalid-dep", "yes")
    if extra:
        params["additional_parameters"] = extra
    return params


class BenchmarkTask:
    """One benchmark step run inside a submitit job: ``prepare``, ``train`` (one unit), ``finish`` (predict and
    evaluate one job) or ``report``; built from the settings, so it pickles small.

    Requeued with the same arguments when its job reaches the time limit (submitit's ``checkpoint``); the
    step then resumes from its markers (a training with ``--c``).
    """

    def __init__(self, settings: BenchmarkSettings, env: Mapping[str, str], step: str, trainer: str = "",
                 run: int = 0, configuration: str = "", fold: str = ""):
        self.settings, self.step = settings, step
        self.env = {k: env[k] for k in JOB_ENV if env.get(k)}
        self.trainer, self.run, self.configuration, self.fold = trainer, run, configuration, fold

    def __call__(self):
        bench = Benchmark(self.settings, {**os.environ, **self.env})
        if self.step == "prepare":
            bench.prepare()
            return "prepared"
        if self.step == "report":
            report = bench.report()
            return {k: report.get(k) for k in ("paths", "unfinished")}
        job = bench.job(self.trainer, self.run)
        if self.step == "train":
            bench.train_unit(TrainUnit(job, self.configuration, self.fold, single=not self.settings.protocol))
        elif self.step == "finish":
            bench.finish_job(job)
        else:
            raise ValueError(f"unknown benchmark step {self.step!r}")
        return f"{self.step} {job.tag} done"

    def checkpoint(self, *args, **kwargs):
        from submitit.helpers import DelayedSubmission
        return DelayedSubmission(self, *args, **kwargs)

    def __repr__(self) -> str:
        what = " ".join(str(x) for x in (self.trainer, self.run or "", self.configuration, self.fold) if x)
        return f"BenchmarkTask({self.step}{' ' + what if what else ''})"


def _job_name(*parts) -> str:
    return "pmdice-" + "-".join(str(p) for p in parts if p != "")


class _Submitter:
    """Makes one submitit executor per log folder and kind of job."""

    def __init__(self, bench: Benchmark, cluster: ClusterSettings):
        self.bench, self.cluster = bench, cluster

    def executor(self, folder: Path, name: str, step: str, dependency: Optional[str] = None):
        import submitit
        folder.mkdir(parents=True, exist_ok=True)
        if self.cluster.kind == "slurm":
            ex = submitit.SlurmExecutor(folder=folder)
            ex.update_parameters(**slurm_parameters(self.cluster, name, step, dependency))
        else:
            ex = submitit.LocalExecutor(folder=folder)
            ex.update_parameters(timeout_min=self.cluster.time_min if step == "train" else self.cluster.predict_time_min)
        return ex

    def submit(self, task: BenchmarkTask, folder: Path, name: str, step: str, dependency: Optional[str] = None):
        return self.executor(folder, name, step, dependency).submit(task)


def submit(bench: Benchmark, cluster: ClusterSettings, say: Callable[[str], None] = print) -> Dict:
    """Submits the unfinished steps of the benchmark as submitit jobs; on ``local``, waits for them.

    Returns ``{"jobs": {tag: job id}, "failed": [...], "report": ...}``; also written to
    ``OUT/logs/submitted.json`` (appended per call).

    Raises:
        StepFailed: on ``local``, the preparation failed.
    """
    s = bench.s
    bench.out.mkdir(parents=True, exist_ok=True)
    bench._check_out_folder()
    record = bench.out / "logs" / "submitted.json"
    history = read_json(record) if record.is_file() else []
    if cluster.kind == "slurm":
        earlier = next((h for h in reversed(history) if h.get("cluster") == "slurm"), None)
        queued = still_queued(list(earlier["jobs"].values())) if earlier else []
        if queued:
            raise ValueError(f"jobs {' '.join(queued)} of the earlier submission ({earlier['time']}) are still queued or "
                             f"running (squeue): wait for them or cancel them (scancel) before submitting again")
    bench.commands.log(f"# ==== {time.strftime('%Y-%m-%d %H:%M:%S')} nnunet-pmdice benchmark --cluster "
                       f"{cluster.kind}: {shlex.join(sys.argv)}")
    sub = _Submitter(bench, cluster)
    out_logs = bench.out / "logs" / "submitit"
    ids: Dict[str, str] = {}
    prepare_id = None
    needs_prepare = (not all(bench.preprocessed_complete(c) for c in s.configurations)
                     or (s.fold != "all" and not bench.split_file().is_file()))
    if cluster.kind == "slurm" and needs_prepare:
        job = sub.submit(BenchmarkTask(s, bench.env, "prepare"), out_logs, _job_name("prepare"), "prepare")
        prepare_id = ids["prepare"] = job.job_id
        say(f"[prepare] submitted as job {job.job_id}")
    else:
        bench.prepare()
    jobs = bench.jobs()
    todo = [j for j in jobs if not bench.job_finished(j)]
    for j in jobs:
        if j not in todo:
            say(f"[{j.tag}] finished before: skipped")
    units = [u for j in todo for u in bench.units(j) if not bench.unit_finished(u)]
    say(f"{len(todo)} of {len(jobs)} jobs to run, {len(units)} trainings to submit ({cluster.kind})")

    def train_task(u: TrainUnit):
        return (BenchmarkTask(s, bench.env, "train", u.job.trainer, u.job.run, u.configuration, u.fold),
                u.job.folder / "logs" / "submitit", _job_name("train", u.job.run, u.job.trainer,
                                                              u.configuration, u.fold), "train")

    if cluster.kind == "slurm":
        after = f"afterok:{prepare_id}" if prepare_id else None
        train_ids: Dict[Job, List[str]] = {}
        for u in units:
            job = sub.submit(*train_task(u), dependency=after)
            ids[u.tag] = job.job_id
            train_ids.setdefault(u.job, []).append(job.job_id)
        finish_ids = []
        for j in todo:
            deps = train_ids.get(j, []) or ([prepare_id] if prepare_id else [])
            job = sub.submit(BenchmarkTask(s, bench.env, "finish", j.trainer, j.run), j.folder / "logs" / "submitit",
                             _job_name("predict", j.run, j.trainer), "predict",
                             dependency="afterok:" + ":".join(deps) if deps else None)
            ids[f"{j.tag} predict"] = job.job_id
            finish_ids.append(job.job_id)
        job = sub.submit(BenchmarkTask(s, bench.env, "report"), out_logs, _job_name("report"), "report",
                         dependency="afterany:" + ":".join(finish_ids) if finish_ids else None)
        ids["report"] = job.job_id
        for tag, jid in ids.items():
            say(f"  {jid}  {tag}")
        say(f"submitted {len(ids)} SLURM jobs; follow them with: squeue -u $USER (or sacct -j "
            f"{','.join(ids.values())}); each job's output: <job folder>/logs/submitit/<id>_0_log.out; "
            f"the table: {bench.out / 'table.md'} once job {ids['report']} ended")
        result = {"cluster": "slurm", "jobs": ids, "failed": []}
    else:
        failed: Dict[str, str] = {}
        failed_jobs: set = set()
        _run_local(sub, [(u.tag, u.job, train_task(u)) for u in units], cluster.jobs, ids, failed, failed_jobs, say)
        ready = [j for j in todo if j not in failed_jobs]
        for j in todo:
            if j not in ready:
                say(f"[{j.tag}] not predicted: a training failed")
        _run_local(sub, [(f"{j.tag} predict", j, (BenchmarkTask(s, bench.env, "finish", j.trainer, j.run),
                                                  j.folder / "logs" / "submitit", _job_name("predict", j.run, j.trainer),
                                                  "predict")) for j in ready], cluster.jobs, ids, failed, failed_jobs,
                   say)
        _run_local(sub, [("report", None, (BenchmarkTask(s, bench.env, "report"), out_logs, _job_name("report"),
                                           "report"))], 1, ids, failed, failed_jobs, say)
        result = {"cluster": "local", "jobs": ids, "failed": failed}
    write_json(record, history + [{"time": time.strftime("%Y-%m-%d %H:%M:%S"), **result}])
    return result


def still_queued(job_ids: Sequence[str]) -> List[str]:
    """The ids among ``job_ids`` that SLURM's ``squeue`` still lists (pending or running); none where there is
    no ``squeue`` or it knows none of them (it exits with an error for ids it has forgotten)."""
    import shutil
    import subprocess
    squeue = shutil.which("squeue")
    if not squeue or not job_ids:
        return []
    res = subprocess.run([squeue, "-h", "-o", "%i", "-j", ",".join(job_ids)], capture_output=True, text=True)
    if res.returncode != 0:
        return []
    listed = set(res.stdout.split())
    return [j for j in job_ids if j in listed]


def _run_local(sub: _Submitter, tasks, limit: int, ids: Dict[str, str], failed: Dict[str, str], failed_jobs: set,
               say) -> None:
    """Runs ``tasks`` (tag, job, submit arguments) with submitit's LocalExecutor, ``limit`` at a time, and
    waits for them; a task whose job raised goes to ``failed`` with the first line of its error."""
    pending, running = list(tasks), []
    job_of = {tag: job for tag, job, _ in tasks}
    while pending or running:
        while pending and len(running) < limit:
            tag, _, args = pending.pop(0)
            job = sub.submit(*args)
            ids[tag] = job.job_id
            say(f"[{tag}] submitit local job {job.job_id} (log: {Path(args[1]) / f'{job.job_id}_0_log.out'})")
            running.append((tag, job))
        still = []
        for tag, job in running:
            if not job.done():
                still.append((tag, job))
                continue
            error = job.exception()
            if error is not None:
                lines = [ln for ln in str(error).splitlines() if ln.strip()]
                failed[tag] = next((ln for ln in reversed(lines) if "StepFailed" in ln or "Error" in ln),
                                   lines[-1] if lines else repr(error))
                failed_jobs.add(job_of[tag])
                say(f"[{tag}] FAILED (job {job.job_id}): {failed[tag]}")
        running = still
        if running:
            time.sleep(0.5)
