"""The loss benchmark runs end to end (quick shapes) and reports ratios measured in the same run."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_bench_loss_quick_run_writes_table_and_plot(tmp_path):
    res = subprocess.run([sys.executable, str(REPO / "scripts" / "bench_loss.py"), "--quick", "--repeat", "2",
                          "--warmup", "1", "--out", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    data = json.loads((tmp_path / "loss_benchmark.json").read_text())
    rows = data["losses"]
    names = {r["loss"] for r in rows}
    assert {"nnU-Net MemoryEfficientSoftDiceLoss", "nnU-Net DC_and_CE_loss", "PM Dice gamma 1",
            "CE + PM Dice", "PM Dice (plain autograd)"} <= names
    for r in rows:
        assert r["ms"] > 0 and r["peak_mib"] > 0
        if r["baseline"]:
            base = next(b for b in rows if b["shape"] == r["shape"] and b["loss"] == r["baseline"])
            assert abs(r["time_ratio"] - r["ms"] / base["ms"]) < 1e-9
    assert [t["trainer"] for t in data["train_step"]] == ["nnUNetTrainer", "nnUNetTrainerPMDice"]
    assert (tmp_path / "loss_benchmark.png").stat().st_size > 10_000
    assert "| PM Dice gamma 1 |" in res.stdout


def test_median_seconds_calls_warmup_then_repeat_times():
    from nnunet_pmdice.benchmark.loss_cost import median_seconds
    calls = []
    seconds = median_seconds(lambda: calls.append(1), warmup=3, repeat=5)
    assert len(calls) == 8 and seconds >= 0


def test_every_loss_case_is_made_without_arguments_and_runs():
    import torch
    from nnunet_pmdice.benchmark.loss_cost import _fwd_bwd, _inputs, default_cases
    logits, target = _inputs((2, 3, 16, 16), torch.device("cpu"), torch.float32)
    for case in default_cases():
        value = _fwd_bwd(case.make(), logits, target, None)
        assert torch.isfinite(value) and logits.grad is not None, case.name

