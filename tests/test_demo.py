"""``nnunet-pmdice demo``: its default task (faintpolyp2d) and its dataset. The demo itself runs end to end,
Figure-2 panels included, in ``test_benchmark.py`` (one run serves both)."""
from __future__ import annotations

from pathlib import Path

import pytest


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
