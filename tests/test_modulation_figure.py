"""``nnunet-pmdice modulation-figure``: the modulating term and the losses against numpy, a real model, bad input."""
from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import PYTHON, run_cli
from nnunet_pmdice.figures.modulation import FIGURE_GAMMAS, case_losses, modulating_term


def numpy_pm_dice(probs: np.ndarray, label: np.ndarray, gamma: float, eps: float = 1e-6) -> float:
    """Eq. 5 by hand: per class m = |y - p|^gamma, D = (2 sum m y p + eps) / (sum m (y^2 + p^2) + eps),
    loss = 1 - mean of D over the classes present in the reference (background included)."""
    dices = []
    for c in range(probs.shape[0]):
        y = (label == c).astype(np.float64)
        if y.sum() == 0:
            continue
        p = probs[c]
        m = np.abs(y - p) ** gamma
        dices.append((2 * np.sum(m * y * p) + eps) / (np.sum(m * (y * y + p * p)) + eps))
    return 1 - float(np.mean(dices))


def hand_made_case(h: int = 12, w: int = 16):
    """A large object predicted well, a small one almost missed (the paper's Figure 2 situation)."""
    label = np.zeros((h, w), np.uint8)
    label[2:9, 2:9] = 1          # large
    label[9:11, 12:14] = 1       # small
    p1 = np.full((h, w), 0.05)
    p1[2:9, 2:9] = 0.95
    p1[3:8, 3:8] = 0.99
    p1[9:11, 12:14] = 0.3        # almost missed
    p1[0, 0] = 0.6               # a false positive pixel
    return label, np.stack([1 - p1, p1])


def test_modulating_term_and_losses_agree_with_numpy():
    label, probs = hand_made_case()
    losses = case_losses(probs, label)
    assert set(losses) == {0.0, *FIGURE_GAMMAS}
    for g in (0.0, *FIGURE_GAMMAS):
        assert losses[g] == pytest.approx(numpy_pm_dice(probs, label, g), abs=1e-6), g
    y = (label == 1).astype(np.float64)
    for g in FIGURE_GAMMAS:
        np.testing.assert_allclose(modulating_term(probs[1], y, g), np.abs(y - probs[1]) ** g, rtol=1e-12)
    # the paper's point: the Dice loss is low although the small object is missed; PM Dice rises with gamma
    assert losses[0.0] < 0.1
    assert losses[0.0] < losses[0.5] < losses[1.0] < losses[2.0] < losses[5.0]


def test_ignore_label_pixels_count_in_no_sum():
    label, probs = hand_made_case()
    with_ignore = label.copy()
    with_ignore[:, -3:] = 2
    kept = np.s_[:, :-3]
    losses = case_losses(probs, with_ignore, [1.0], ignore_label=2)
    assert losses[1.0] == pytest.approx(numpy_pm_dice(probs[(slice(None),) + kept], label[kept], 1.0), abs=1e-6)


@pytest.mark.parametrize("bad,message", [("shape", "does not match"), ("not_softmax", "sum to 1")])
def test_case_losses_refuses_bad_probabilities(bad, message):
    label, probs = hand_made_case()
    if bad == "shape":
        probs = probs[:, :-1]
    else:
        probs = probs * 0.5
    with pytest.raises(ValueError, match=message):
        case_losses(probs, label)


def write_probability_folder(root: Path):
    """A PNG dataset of two hand-made cases and the folder nnUNetv2_predict --save_probabilities would write."""
    images, labels, preds = root / "imagesTs", root / "labelsTs", root / "pred"
    for f in (images, labels, preds):
        f.mkdir(parents=True)
    dj = {"channel_names": {"0": "R", "1": "G", "2": "B"}, "labels": {"background": 0, "polyp": 1},
          "numTraining": 2, "file_ending": ".png", "overwrite_image_reader_writer": "NaturalImage2DIO"}
    (preds / "dataset.json").write_text(json.dumps(dj))
    truth = {}
    for i, shift in enumerate((0, 1)):
        label, probs = hand_made_case()
        label, probs = np.roll(label, shift, 1), np.roll(probs, shift, 2)
        case = f"case_{i}"
        Image.fromarray((np.stack([label * 200 + 20] * 3, -1)).astype(np.uint8)).save(images / f"{case}_0000.png")
        Image.fromarray(label).save(labels / f"{case}.png")
        # nnU-Net stores the probabilities of a 2D PNG case as (C, 1, H, W)
        np.savez_compressed(preds / f"{case}.npz", probabilities=probs[:, None].astype(np.float32))
        truth[case] = (label, probs.astype(np.float32).astype(np.float64))
    return images, labels, preds, truth


def cli(args, **kw):
    return subprocess.run([PYTHON, "-m", "nnunet_pmdice.cli", "modulation-figure", *args], capture_output=True,
                          text=True, **kw)


def printed_losses(stdout: str):
    """{case: {0.0: Dice loss, gamma: PM Dice loss}} from the command's output lines."""
    out = {}
    for line in stdout.splitlines():
        m = re.match(r"(\S+): Dice loss ([0-9.]+); PM Dice loss (.*)$", line)
        if m:
            out[m.group(1)] = {0.0: float(m.group(2)),
                               **{float(g): float(v) for g, v in re.findall(r"gamma ([0-9.]+): ([0-9.]+)", m.group(3))}}
    return out


def test_command_on_saved_probabilities_prints_the_numpy_losses(tmp_path):
    images, labels, preds, truth = write_probability_folder(tmp_path)
    out = tmp_path / "fig" / "figure2.png"
    res = cli(["-p", str(preds), "-i", str(images), "-l", str(labels), "-o", str(out), "--cases", "case_1", "case_0"])
    assert res.returncode == 0, res.stderr
    printed = printed_losses(res.stdout)
    assert list(printed) == ["case_1", "case_0"]
    recorded = json.loads(out.with_suffix(".json").read_text())["cases"]
    for case, (label, probs) in truth.items():
        for g in (0.0, *FIGURE_GAMMAS):
            expected = numpy_pm_dice(probs, label, g)
            assert printed[case][g] == pytest.approx(expected, abs=1e-4), (case, g)
            got = recorded[case]["dice_loss"] if g == 0 else recorded[case]["pm_dice_loss"][f"{g:g}"]
            assert got == pytest.approx(expected, abs=1e-6), (case, g)
    with Image.open(out) as im:
        assert im.format == "PNG" and im.size[0] > im.size[1] > 100     # one row of 7 panels per case


def test_bad_inputs_give_one_line_errors(tmp_path):
    images, labels, preds, _ = write_probability_folder(tmp_path)
    out = tmp_path / "x.png"
    cases = {
        "missing folder": (["-p", str(tmp_path / "nope"), "-i", str(images), "-l", str(labels)], "nope"),
        "case not found": (["-p", str(preds), "-i", str(images), "-l", str(labels), "--cases", "case_9"], "case_9"),
        "class outside": (["-p", str(preds), "-i", str(images), "-l", str(labels), "--class-index", "2"],
                          "class index"),
        "missing labels": (["-p", str(preds), "-i", str(images), "-l", str(tmp_path / "nolabels")], "nolabels"),
        "missing model fold": (["-m", str(preds), "-f", "0", "-i", str(images), "-l", str(labels)], "fold_0"),
    }
    for what, (args, needle) in cases.items():
        res = cli(args + ["-o", str(out)])
        assert res.returncode == 2, (what, res.stdout, res.stderr)
        errors = [ln for ln in res.stderr.splitlines() if ln.startswith("error: ")]   # (torch may warn first)
        assert len(errors) == 1 and needle in errors[0] and "Traceback" not in res.stderr, (what, res.stderr)
    assert not out.exists()


@pytest.mark.integration
def test_command_on_a_trained_model_matches_nnunet_saved_probabilities(prepared, tmp_path):
    """A real 1-epoch model: the figure's losses from nnUNetPredictor equal those from nnUNetv2_predict's npz."""
    ds = prepared("polyp2d")
    trainer = "nnUNetTrainer_1epochs_1iters"
    ds.train(trainer)
    model = ds.results_folder(trainer)
    preds = tmp_path / "pred"
    run_cli(["nnUNetv2_predict", "-i", str(ds.raw / "imagesTs"), "-o", str(preds), "-d", str(ds.dataset_id),
             "-c", ds.config, "-f", "0", "-tr", trainer, "-device", "cpu", "-npp", "1", "-nps", "1",
             "--save_probabilities", "--disable_progress_bar"], ds.env)
    common = ["-i", str(ds.raw / "imagesTs"), "-l", str(ds.raw / "labelsTs"), "-n", "2"]
    res_model = cli(["-m", str(model), "-f", "0", "-o", str(tmp_path / "model.png"), *common], env=ds.env)
    assert res_model.returncode == 0, res_model.stderr
    res_npz = cli(["-p", str(preds), "-o", str(tmp_path / "npz.png"), *common], env=ds.env)
    assert res_npz.returncode == 0, res_npz.stderr
    from_model, from_npz = printed_losses(res_model.stdout), printed_losses(res_npz.stdout)
    assert len(from_model) == 2 and from_model.keys() == from_npz.keys()
    for case in from_model:
        for g, v in from_model[case].items():
            assert 0 <= v <= 1
            assert v == pytest.approx(from_npz[case][g], abs=2e-3), (case, g)   # same model, float rounding
    assert (tmp_path / "model.png").stat().st_size > 10_000
