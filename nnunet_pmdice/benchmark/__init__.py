"""The package's two benchmarks.

- The training benchmark (``nnunet-pmdice benchmark``, and ``nnunet-pmdice demo`` on synthetic data):
  nnU-Net's CLIs train and predict each trainer, the paper's metrics compare them with nnU-Net's
  baseline. :mod:`.runner` (command line, settings, jobs, resume, scheduling, nnU-Net's protocol),
  :mod:`.commands` (running and logging nnU-Net's commands), :mod:`.report` (table, comparison, plots),
  :mod:`.cluster` (the jobs through submitit on SLURM), :mod:`.demo`.
- The loss-cost benchmark (``nnunet-pmdice bench-loss``): forward+backward time and peak memory of
  PM Dice next to nnU-Net's own losses, :mod:`.loss_cost`.
"""
from .commands import StepFailed
from .runner import Benchmark, BenchmarkSettings, Job, choose_baseline, trainer_budget, with_budget

__all__ = ["Benchmark", "BenchmarkSettings", "Job", "StepFailed", "choose_baseline", "trainer_budget", "with_budget"]
