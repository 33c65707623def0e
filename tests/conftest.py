"""Shared fixtures: a private nnU-Net folder tree and tiny synthetic datasets planned by the real nnU-Net.

Integration tests drive nnU-Net's own command-line tools in subprocesses, on the CPU, exactly as a
user would. The environment keeps them fast on a 2-core machine:

- ``nnUNet_def_n_proc=1`` and ``-np 1 -npfp 1``: nnU-Net's export / fingerprint / preprocessing pools
  spawn one worker, not 8 (each spawned worker imports torch, which dominates on tiny data);
- ``nnUNet_n_proc_DA=0`` for ``nnUNetv2_train`` only: augmentation in the main process (the planner
  needs it >= 1);
- ``nnUNet_compile=f``: nnU-Net's own switch, also honoured by the plugin;
- ``OMP_WAIT_POLICY=PASSIVE``: nnU-Net gives torch one thread per CPU on ``-device cpu``; when the
  other core is busy with other work, OpenMP threads that spin while waiting for each other slow
  everything down (``/usr/bin/time nnUNetv2_train 901 2d 0 -tr nnUNetTrainerTopKDice_1epochs_1iters
  -device cpu`` on the polyp2d toy data: 32 s with ``OMP_WAIT_POLICY=ACTIVE``, 13 s with ``PASSIVE``).
  Passive waiting computes the same, without the spinning.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import pytest

REPO = Path(__file__).resolve().parents[1]

# The command-line tools of the environment running the tests (nnUNetv2_*, nnunet-pmdice) are found by
# name, as in an activated environment, also when pytest runs as .venv/bin/python -m pytest.
os.environ["PATH"] = str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")

#: dataset ids used by the shared fixtures (kept clear of the ids tests create themselves)
DATASETS = {
    "polyp2d": (901, "2d", dict(num_train=8, num_test=2, size=(64, 64))),
    "cardiac3d": (902, "3d_fullres", dict(num_train=6, num_test=2, size=(8, 40, 40))),
    "regions3d": (903, "3d_fullres", dict(num_train=6, num_test=2, size=(8, 40, 40), regions=True)),
}


def nnunet_env(root: Path) -> Dict[str, str]:
    env = dict(os.environ)
    env.update(nnUNet_raw=str(root / "raw"), nnUNet_preprocessed=str(root / "preprocessed"),
               nnUNet_results=str(root / "results"), nnUNet_def_n_proc="1", nnUNet_compile="f",
               OMP_WAIT_POLICY="PASSIVE", PYTHONUNBUFFERED="1")
    for k in ("raw", "preprocessed", "results"):
        (root / k).mkdir(parents=True, exist_ok=True)
    return env


def run_cli(args: List[str], env: Dict[str, str], timeout: float = 600, cwd=None) -> subprocess.CompletedProcess:
    """Runs a command-line tool; on failure the assertion shows the end of its output."""
    env = dict(env)
    if args[0] == "nnUNetv2_train":
        env["nnUNet_n_proc_DA"] = "0"
    res = subprocess.run(args, env=env, cwd=cwd or env.get("nnUNet_results"), capture_output=True, text=True,
                         timeout=timeout)
    if res.returncode != 0:
        tail = (res.stdout + "\n" + res.stderr)[-6000:]
        raise AssertionError(f"{' '.join(args)} exited with {res.returncode}:\n{tail}")
    return res


def pmdice_cli(args: List[str], env: Dict[str, str], check: bool = True) -> subprocess.CompletedProcess:
    """``python -m nnunet_pmdice.cli ARGS``; with ``check``, a failure raises with the end of its output."""
    res = subprocess.run([sys.executable, "-m", "nnunet_pmdice.cli", *args], env=env, capture_output=True,
                         text=True, timeout=900)
    if check and res.returncode != 0:
        raise AssertionError(f"exit {res.returncode}:\n{(res.stdout + res.stderr)[-6000:]}")
    return res


def command_lines(out: Path, tool: str) -> List[str]:
    """Lines of a benchmark's commands.log that run ``tool`` (by name or by its path in the environment's bin folder)."""
    import re
    pattern = re.compile(rf"(^|[ /]){re.escape(tool)}( |$)")
    return [ln for ln in (out / "commands.log").read_text().splitlines() if pattern.search(ln)]


@pytest.fixture(scope="session")
def nnunet_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("nnunet")


@pytest.fixture(scope="session")
def env(nnunet_root) -> Dict[str, str]:
    return nnunet_env(nnunet_root)


class Prepared:
    """A synthetic dataset written, planned and preprocessed by the real nnU-Net."""

    def __init__(self, kind: str, env: Dict[str, str]):
        from nnunet_pmdice.synthetic import generate
        self.kind = kind
        self.dataset_id, self.config, kwargs = DATASETS[kind]
        self.env = env
        synth_kind = "cardiac3d" if kind == "regions3d" else kind
        self.raw = generate(synth_kind, env["nnUNet_raw"], self.dataset_id, seed=self.dataset_id, **kwargs)
        run_cli(["nnUNetv2_plan_and_preprocess", "-d", str(self.dataset_id), "-c", self.config, "-np", "1",
                 "-npfp", "1", "--verify_dataset_integrity"], env)
        self.name = self.raw.name
        self.preprocessed = Path(env["nnUNet_preprocessed"]) / self.name

    def results_folder(self, trainer: str) -> Path:
        return Path(self.env["nnUNet_results"]) / self.name / f"{trainer}__nnUNetPlans__{self.config}"

    def train(self, trainer: str, fold: int = 0, extra: List[str] = ()) -> Path:
        run_cli(["nnUNetv2_train", str(self.dataset_id), self.config, str(fold), "-tr", trainer, "-device", "cpu",
                 *extra], self.env)
        return self.results_folder(trainer) / f"fold_{fold}"

    def predict(self, trainer: str, out: Path, fold: int = 0) -> Path:
        run_cli(["nnUNetv2_predict", "-i", str(self.raw / "imagesTs"), "-o", str(out), "-d", str(self.dataset_id),
                 "-c", self.config, "-f", str(fold), "-tr", trainer, "-device", "cpu", "-npp", "1", "-nps", "1",
                 "--disable_progress_bar"], self.env)
        return out

    def plans(self) -> dict:
        return json.loads((self.preprocessed / "nnUNetPlans.json").read_text())


_prepared: Dict[str, Prepared] = {}


@pytest.fixture(scope="session")
def prepared(env):
    """``prepared("polyp2d")`` -> the planned dataset, made once per test session."""

    def get(kind: str) -> Prepared:
        if kind not in _prepared:
            _prepared[kind] = Prepared(kind, env)
        return _prepared[kind]

    return get


def logged_train_losses(fold_folder: Path) -> List[float]:
    """The per-epoch training losses nnU-Net logged in the final checkpoint."""
    import torch
    ckpt = torch.load(fold_folder / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    return [float(v) for v in ckpt["logging"]["train_losses"]]


PYTHON = sys.executable
