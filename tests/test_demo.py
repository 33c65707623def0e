"""``nnunet-pmdice demo`` on its default task (faintpolyp2d): dataset, the comparison and the Figure-2 panels."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from conftest import PYTHON

T_BASE, T_PM = "nnUNetTrainer_1epochs_1iters", "nnUNetTrainerPMDice_1epochs_1iters"


def demo_cli(args, env):
    return subprocess.run([PYTHON, "-m", "nnunet_pmdice.cli", "demo", *args], env=env, capture_output=True, text=True,
                          timeout=1200)


def test_demo_defaults_are_the_documented_task():
    from nnunet_pmdice.benchmark.demo import DEMO_DEFAULTS, DEMO_KIND, DEMO_RUNS
    from nnunet_pmdice.cli import build_parser
    args = build_parser().parse_args(["demo"])
    assert args.kind == DEMO_KIND == "faintpolyp2d" and args.runs == DEMO_RUNS == 3
    assert DEMO_DEFAULTS[DEMO_KIND]["num_test"] >= 40          # enough cases for the paired comparison


def test_dataset_id_taken_by_another_dataset_is_refused(tmp_path):
    from nnunet_pmdice.benchmark.demo import demo_env, ensure_dataset
    from nnunet_pmdice.synthetic import generate
    env = demo_env(tmp_path, "cpu", base={})
    generate("polyp2d", env["nnUNet_raw"], 500, num_train=2, num_test=1, size=(32, 32))
    with pytest.raises(ValueError, match="Dataset500_SynthPolyp2D"):
        ensure_dataset(Path(env["nnUNet_raw"]), "faintpolyp2d", 500,
                       dict(num_train=2, num_test=1, size=(32, 32), seed=0), say=lambda m: None, env=env)


@pytest.mark.integration
def test_demo_on_the_faint_task_writes_table_and_figure2_panels(tmp_path):
    out = tmp_path / "demo"
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", nnUNet_compile="f")
    res = demo_cli(["-o", str(out), "--device", "cpu", "--epochs", "1", "--iters", "1", "--num-train", "4",
                    "--num-test", "3", "--size", "32", "32", "--runs", "1", "--figure-cases", "2"], env)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    dj = json.loads((out / "nnUNet_raw" / "Dataset500_SynthFaintPolyp2D" / "dataset.json").read_text())
    assert dj["synthetic"]["kind"] == "faintpolyp2d" and sum(dj["synthetic"]["objects_test"]["polyp"].values()) >= 3
    table = (out / "table.md").read_text()
    assert f"| {T_BASE} (baseline) |" in table and f"| {T_PM} |" in table
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
    # resuming keeps the figures
    again = demo_cli(["-o", str(out), "--device", "cpu", "--epochs", "1", "--iters", "1", "--num-train", "4",
                      "--num-test", "3", "--size", "32", "32", "--runs", "1", "--figure-cases", "2"], env)
    assert again.returncode == 0 and "[figure]" not in again.stdout
