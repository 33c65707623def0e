"""The benchmark against nnU-Net's baseline: orchestration of nnU-Net's CLIs (:mod:`.runner`) and the demo (:mod:`.demo`)."""
from .runner import Benchmark, BenchmarkSettings, Job, StepFailed, choose_baseline, trainer_budget, with_budget

__all__ = ["Benchmark", "BenchmarkSettings", "Job", "StepFailed", "choose_baseline", "trainer_budget", "with_budget"]
