"""``nnunet-pmdice demo``: the whole benchmark on a synthetic dataset, in one command, on a CPU in minutes.

It writes everything under one folder (default ``./pmdice_demo``)::

    OUT/nnUNet_raw/Dataset500_SynthFaintPolyp2D  the synthetic dataset (imagesTr/labelsTr, imagesTs/labelsTs)
    OUT/nnUNet_preprocessed/...                  nnU-Net's plans and preprocessed data
    OUT/runs/run_<k>/...                         nnU-Net's results, predictions and metrics of run k
    OUT/table.md, OUT/table.csv, OUT/plots/      the comparison
    OUT/figure2/modulation_<trainer>.png         the paper's Figure 2 from run 1's model of each trainer
    OUT/commands.log                             every command, to re-run any step by hand

and runs :class:`~nnunet_pmdice.benchmark.runner.Benchmark` with nnU-Net's default trainer (the
baseline) and ``nnUNetTrainerPMDice`` under the same budget. Running it again resumes: finished
steps are skipped.

The default task, ``faintpolyp2d``, has the paper's difficulty imbalance (Figure 2): one large,
high-contrast object per image beside 2-4 small, faint ones. Its settings were chosen from the
behaviour of nnU-Net's default trainer alone at the demo budget (see the README), so that the task is
not saturated for it.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Dict, Optional, Sequence

from ..evaluation.metrics import DEFAULT_TAU
from ..fileio import read_json
from .runner import Benchmark, BenchmarkSettings, check_trainer_names, choose_baseline, nnunet_folders, with_budget

#: nnU-Net configuration per synthetic kind
CONFIGURATION = {"faintpolyp2d": "2d", "polyp2d": "2d", "cardiac3d": "3d_fullres", "lesion3d": "3d_fullres"}

#: the demo's dataset size and budget per kind (chosen so that the CPU demo ends in minutes; see README)
DEMO_DEFAULTS: Dict[str, Dict] = {
    "faintpolyp2d": dict(num_train=40, num_test=40, size=(64, 64), epochs=10, iters=20),
    "polyp2d": dict(num_train=40, num_test=20, size=(96, 96), epochs=30, iters=40),
    "cardiac3d": dict(num_train=20, num_test=10, size=(10, 48, 48), epochs=20, iters=25),
    "lesion3d": dict(num_train=16, num_test=8, size=(24, 48, 48), epochs=20, iters=25),
}

DEMO_DATASET_ID = 500

#: the default demo task
DEMO_KIND = "faintpolyp2d"

#: runs per trainer by default (the paired comparison of the report needs several)
DEMO_RUNS = 3


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when torch sees a GPU, else ``cpu``."""
    if device not in ("auto", "cpu", "cuda", "mps"):
        raise ValueError(f"--device must be auto, cpu, cuda or mps, got {device!r}")
    if device != "auto":
        return device
    import torch
    return "cuda" if torch.cuda.is_available() else "cpu"


def demo_env(out: Path, device: str, base: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """nnU-Net's folders inside ``out``; on a CPU, workers kept in process (see :class:`Benchmark`)."""
    env = dict(os.environ if base is None else base)
    env.update(nnUNet_raw=str(out / "nnUNet_raw"), nnUNet_preprocessed=str(out / "nnUNet_preprocessed"),
               nnUNet_results=str(out / "nnUNet_results"))
    if device == "cpu":
        env.setdefault("nnUNet_def_n_proc", "1")
    for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        Path(env[k]).mkdir(parents=True, exist_ok=True)
    return env


def nnunet_dataset_name(dataset_id: int, env: Dict[str, str]) -> Optional[str]:
    """The name nnU-Net resolves ``dataset_id`` to in the folders of ``env`` (None: no dataset with that id).

    nnU-Net's own ``maybe_convert_to_dataset_name``, which reads ``nnUNet_raw``, ``nnUNet_preprocessed`` and
    ``nnUNet_results`` from the process environment, so they are set to ``env``'s for the call.

    Raises:
        ValueError: nnU-Net finds more than one name for the id.
    """
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
    keys = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")
    try:
        with nnunet_folders(**{k: env.get(k) for k in keys}):
            return maybe_convert_to_dataset_name(int(dataset_id))
    except RuntimeError as e:
        if "More than one" in str(e):
            raise ValueError(f"nnU-Net finds more than one dataset name for id {dataset_id} under "
                             f"{', '.join(env.get(k, '?') for k in keys)}") from None
        return None


def ensure_dataset(raw_root: Path, kind: str, dataset_id: int, settings: Dict, say=print,
                   env: Optional[Dict[str, str]] = None) -> Path:
    """Writes the synthetic dataset unless the same one (same settings) is there already.

    Raises:
        ValueError: the folder holds this dataset made with other settings, or another dataset with the id.
    """
    from ..synthetic import dataset_name, generate, synth_record

    folder = raw_root / dataset_name(dataset_id, kind)
    existing = nnunet_dataset_name(dataset_id, env if env is not None else {"nnUNet_raw": str(raw_root)})
    if existing is not None and existing != folder.name:
        raise ValueError(f"dataset id {dataset_id} is {existing} in {raw_root.parent}, not {folder.name} "
                         f"(--kind {kind}); use another output folder")
    wanted = synth_record(kind, **settings)
    if (folder / "dataset.json").is_file():
        have = read_json(folder / "dataset.json").get("synthetic", {})
        differ = [f"{k}: {have.get(k)} there, {wanted[k]} now" for k in wanted if have.get(k) != wanted[k]]
        if differ:
            raise ValueError(f"{folder} was made with other settings ({'; '.join(differ)}); "
                             f"use another output folder")
        say(f"[synth] {folder.name}: already there")
        return folder
    say(f"[synth] writing {folder.name}: {settings['num_train']} training + {settings['num_test']} test cases "
        f"of size {tuple(settings['size'])}")
    return generate(kind, raw_root, dataset_id, progress=True, **settings)


def run_demo(out="pmdice_demo", kind: str = DEMO_KIND, epochs: Optional[int] = None, iters: Optional[int] = None,
             runs: int = DEMO_RUNS, device: str = "auto", num_train: Optional[int] = None,
             num_test: Optional[int] = None,
             size: Optional[Sequence[int]] = None, seed: int = 0, contenders: Sequence[str] = ("nnUNetTrainerPMDice",),
             jobs: int = 1, gpus: Sequence[str] = (), tau: float = DEFAULT_TAU, dataset_id: int = DEMO_DATASET_ID,
             figure_cases: int = 3, say=print) -> Dict:
    """Synthetic dataset -> plan/preprocess -> train baseline and contenders -> predict -> table and plots.

    Then the paper's Figure 2 (:mod:`nnunet_pmdice.figures.modulation`) for run 1's model of every
    trainer, on the ``figure_cases`` test cases with the smallest reference objects
    (``OUT/figure2/modulation_<trainer>.png``; 0 draws none).

    Args:
        out: output folder (created; re-running resumes).
        kind: ``faintpolyp2d`` (2D, default), ``polyp2d``, ``cardiac3d`` or ``lesion3d``.
        epochs, iters: the training budget of every trainer (default: :data:`DEMO_DEFAULTS`).
        runs: independent runs per trainer (default 3).
        device: ``auto`` (GPU if there is one), ``cpu``, ``cuda`` or ``mps``.
        num_train, num_test, size, seed: the synthetic dataset (default: :data:`DEMO_DEFAULTS`).
        contenders: trainer names compared with nnU-Net's default trainer (budget tokens added).
        jobs, gpus: parallel jobs and the GPUs they use (see :class:`BenchmarkSettings`).
        tau: NSD tolerance (pixels for ``polyp2d``, mm for the 3D kinds).
        dataset_id: nnU-Net dataset id inside ``out``.

    Returns:
        The benchmark report (see :meth:`Benchmark.report`).
    """
    from ..synthetic import KINDS

    if kind not in KINDS:
        raise ValueError(f"--kind must be one of {KINDS}, got {kind!r}")
    defaults = DEMO_DEFAULTS[kind]
    device = resolve_device(device)
    out = Path(out).resolve()
    start = time.time()
    env = demo_env(out, device)
    synth = dict(num_train=num_train or defaults["num_train"], num_test=num_test or defaults["num_test"],
                 size=tuple(size) if size else tuple(defaults["size"]), seed=seed)
    ensure_dataset(Path(env["nnUNet_raw"]), kind, dataset_id, synth, say, env)
    budget = dict(epochs=epochs or defaults["epochs"], iters=iters or defaults["iters"])
    trainers, baseline = choose_baseline([with_budget("nnUNetTrainer", **budget)] +
                                         [with_budget(c, **budget) for c in contenders])
    check_trainer_names(trainers)
    settings = BenchmarkSettings(dataset=str(dataset_id), configuration=CONFIGURATION[kind], trainers=trainers,
                                 baseline=baseline, out=str(out), runs=runs, device=device, tau=tau, jobs=jobs,
                                 gpus=list(gpus), preprocess_processes=1 if device == "cpu" else 2)
    say(f"[demo] {len(trainers)} trainers x {runs} run(s), {budget['epochs']} epochs of {budget['iters']} "
        f"iterations each, on {device}; output: {out}")
    bench = Benchmark(settings, env, echo=say)
    report = bench.run()
    report["figures"] = modulation_figures(bench, trainers, figure_cases, device, say) if figure_cases > 0 else {}
    minutes = (time.time() - start) / 60
    say(f"[demo] finished in {minutes:.1f} min. Table: {out / 'table.md'}  Plots: {out / 'plots'}")
    report["failures"] = [f"{j.tag}: {e.splitlines()[0]}" for j, e in bench.failures]
    return report


def modulation_figures(bench: Benchmark, trainers: Sequence[str], n_cases: int, device: str, say=print) -> Dict:
    """``OUT/figure2/modulation_<trainer>.png`` for run 1's model of each trainer that finished it (kept if there).

    Label datasets only (the figure needs softmax probabilities); the same cases for every trainer.
    """
    from ..figures.modulation import write_modulation_figure
    from .runner import Job

    if any(isinstance(v, list) for v in read_json(bench.raw / "dataset.json")["labels"].values()):
        return {}
    out = {}
    for trainer in trainers:
        job = Job(trainer, 1, bench.out)
        path = bench.out / "figure2" / f"modulation_{trainer}.png"
        if not bench.job_finished(job):
            continue
        if not (path.is_file() and path.with_suffix(".json").is_file()):
            start = time.time()
            write_modulation_figure(path, bench.raw / "imagesTs", bench.raw / "labelsTs", n=n_cases,
                                    model=str(bench.fold_folder(job).parent), fold=bench.s.fold, device=device,
                                    title=f"{trainer}, run 1: modulating term m = |y - p|^gamma of the foreground")
            say(f"[figure] {path} ({time.time() - start:.0f} s)")
        out[trainer] = str(path)
    return out


# ------------------------------------------------------------------------------------------------ CLI

def add_parser(sub) -> None:
    """Registers ``nnunet-pmdice demo``."""
    p = sub.add_parser("demo", help="the benchmark on a synthetic dataset: nnU-Net's default trainer vs PM Dice",
                       description="Makes a synthetic dataset with small, faint objects beside a large easy "
                                   "one, plans and preprocesses it with nnU-Net, trains nnU-Net's default trainer "
                                   "and nnUNetTrainerPMDice with the same budget, predicts the test cases and "
                                   "writes the table, the plots and the paper's Figure 2 for run 1's models. "
                                   "Re-running resumes.")
    p.add_argument("-o", "--out", default="pmdice_demo", help="output folder (default ./pmdice_demo)")
    p.add_argument("--kind", default=DEMO_KIND, choices=tuple(DEMO_DEFAULTS),
                   help=f"synthetic dataset (default {DEMO_KIND})")
    p.add_argument("--epochs", type=int, help="epochs per trainer (default: " + ", ".join(
        f"{k} {v['epochs']}" for k, v in DEMO_DEFAULTS.items()) + ")")
    p.add_argument("--iters", type=int, help="training iterations per epoch (default: " + ", ".join(
        f"{k} {v['iters']}" for k, v in DEMO_DEFAULTS.items()) + ")")
    p.add_argument("--runs", type=int, default=DEMO_RUNS, help=f"independent runs per trainer (default {DEMO_RUNS})")
    p.add_argument("--device", default="auto", help="auto (GPU if available), cpu, cuda or mps")
    p.add_argument("--num-train", type=int, help="training cases")
    p.add_argument("--num-test", type=int, help="test cases")
    p.add_argument("--size", type=int, nargs="+", help="image size: 2 numbers (2D) or 3 (3D, z y x)")
    p.add_argument("--seed", type=int, default=0, help="dataset seed (default 0)")
    p.add_argument("-tr", nargs="+", default=["nnUNetTrainerPMDice"], metavar="TRAINER",
                   help="contenders (default nnUNetTrainerPMDice); the budget tokens are added")
    p.add_argument("--jobs", type=int, default=1, help="jobs at the same time (default 1)")
    p.add_argument("--gpus", nargs="+", default=[], help="GPU ids, one job per GPU (CUDA_VISIBLE_DEVICES)")
    p.add_argument("--tau", type=float, default=DEFAULT_TAU, help="NSD tolerance (pixels in 2D, mm in 3D)")
    p.add_argument("--figure-cases", type=int, default=3,
                   help="test cases in the Figure-2 panels of run 1's models (default 3; 0: no figure)")
    p.set_defaults(func=run_cli)


def run_cli(args) -> int:
    from .runner import StepFailed
    try:
        report = run_demo(args.out, args.kind, args.epochs, args.iters, args.runs, args.device, args.num_train,
                          args.num_test, args.size, args.seed, args.tr, max(args.jobs, len(args.gpus) or 1),
                          args.gpus, args.tau, figure_cases=args.figure_cases)
    except StepFailed as e:
        print(f"error: {e}", flush=True)
        return 1
    return 1 if report["failures"] else 0
