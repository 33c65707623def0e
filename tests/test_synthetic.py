"""Synthetic datasets: determinism, the built-in imbalance, geometry, and nnU-Net's integrity check."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from nnunet_pmdice.synthetic import KINDS, generate

SMALL = {"polyp2d": (48, 48), "faintpolyp2d": (48, 48), "cardiac3d": (8, 32, 32), "lesion3d": (12, 32, 32)}


def read_dataset(folder: Path):
    """{file name: array} of every image and label file, read with nnU-Net's reader for the dataset."""
    from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_dataset_json
    dj = json.loads((folder / "dataset.json").read_text())
    out = {}
    for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        for f in sorted((folder / sub).iterdir()):
            rw = determine_reader_writer_from_dataset_json(dj, str(f), verbose=False)()
            if sub.startswith("labels"):
                arr, props = rw.read_seg(str(f))
            else:
                arr, props = rw.read_images([str(f)])
            out[f"{sub}/{f.name}"] = (arr, tuple(props["spacing"]))
    return dj, out


@pytest.mark.parametrize("kind", KINDS)
def test_same_seed_same_data_other_seed_other_data(kind, tmp_path):
    a = generate(kind, tmp_path / "a", 10, num_train=2, num_test=1, size=SMALL[kind], seed=5)
    b = generate(kind, tmp_path / "b", 10, num_train=2, num_test=1, size=SMALL[kind], seed=5)
    c = generate(kind, tmp_path / "c", 10, num_train=2, num_test=1, size=SMALL[kind], seed=6)
    dja, da = read_dataset(a)
    _, db = read_dataset(b)
    _, dc = read_dataset(c)
    assert da.keys() == db.keys() == dc.keys()
    assert len([k for k in da if k.startswith("labelsTs/")]) == 1
    for k in da:
        assert np.array_equal(da[k][0], db[k][0]), k
    assert any(not np.array_equal(da[k][0], dc[k][0]) for k in da)
    assert dja["synthetic"]["seed"] == 5 and dja["synthetic"]["size"] == list(SMALL[kind])


@pytest.mark.parametrize("kind", KINDS)
def test_recorded_foreground_fraction_matches_the_labels(kind, tmp_path):
    folder = generate(kind, tmp_path, 11, num_train=4, num_test=2, size=SMALL[kind], seed=0)
    dj, data = read_dataset(folder)
    labels = np.concatenate([v[0].ravel() for k, v in data.items() if k.startswith("labels")])
    recorded = dj["synthetic"]["foreground_fraction"]
    for name, value in dj["labels"].items():
        if name != "background":
            assert recorded[name] == pytest.approx(np.mean(labels == value), abs=1e-12), name
    assert all(0 < f for f in recorded.values())
    if kind == "lesion3d":
        assert sum(recorded.values()) < 0.01               # severe class imbalance, as MSSEG


def test_polyp2d_has_one_large_object_and_small_ones():
    from scipy.ndimage import label as components

    from nnunet_pmdice.synthetic import _polyp2d
    for seed in range(10):
        img, lab = _polyp2d(np.random.default_rng(seed), (96, 96))
        assert img.shape == (3, 96, 96) and img.dtype == np.uint8
        comp, n = components(lab)
        sizes = np.sort(np.bincount(comp.ravel())[1:])[::-1]
        assert n >= 2, seed
        assert sizes[0] > 4 * sizes[1], (seed, sizes)       # the easy object dominates the foreground


def test_cardiac3d_is_anisotropic_and_nested(tmp_path):
    from scipy.ndimage import binary_dilation
    folder = generate("cardiac3d", tmp_path, 12, num_train=2, num_test=1, size=(8, 40, 40), seed=1)
    _, data = read_dataset(folder)
    seg, spacing = data["labelsTr/" + sorted(p.name for p in (folder / "labelsTr").iterdir())[0]]
    assert spacing == (5.0, 1.5, 1.5)
    seg = seg[0]
    for z in range(seg.shape[0]):
        lv = seg[z] == 3
        if lv.any():
            ring = binary_dilation(lv, iterations=1) & ~lv
            assert np.all(seg[z][ring] == 2), z           # the myocardium surrounds the cavity
    counts = np.bincount(seg.astype(np.int64).ravel(), minlength=4)
    assert len(set(counts[1:])) == 3 and counts[1:].min() > 0   # three structures of unequal size


def test_lesion3d_has_three_channels(tmp_path):
    folder = generate("lesion3d", tmp_path, 13, num_train=2, num_test=1, size=SMALL["lesion3d"], seed=0)
    dj = json.loads((folder / "dataset.json").read_text())
    assert dj["channel_names"] == {"0": "FLAIR", "1": "T1", "2": "T2"}
    assert len(list((folder / "imagesTr").glob("*_0002.nii.gz"))) == 2


@pytest.mark.parametrize("kind,regions", [("polyp2d", False), ("faintpolyp2d", False), ("cardiac3d", False),
                                          ("cardiac3d", True), ("lesion3d", False)])
def test_nnunet_integrity_check_passes(kind, regions, tmp_path):
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity
    folder = generate(kind, tmp_path, 14, num_train=3, num_test=1, size=SMALL[kind], seed=2, regions=regions)
    verify_dataset_integrity(str(folder), num_processes=1)  # raises on any problem


@pytest.mark.parametrize("kwargs,message", [
    (dict(kind="nope"), "kind"), (dict(num_train=1), "num_train"), (dict(size=(4, 4)), "size"),
    (dict(size=(8, 8, 8)), "size"), (dict(regions=True), "regions"), (dict(dataset_id=1000), "dataset id")])
def test_bad_arguments_raise(kwargs, message, tmp_path):
    args = dict(kind="polyp2d", raw_root=tmp_path, dataset_id=15)
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        generate(**args)
    assert not any(tmp_path.iterdir())


def test_existing_dataset_needs_overwrite(tmp_path):
    generate("polyp2d", tmp_path, 16, num_train=2, num_test=0, size=(32, 32))
    with pytest.raises(FileExistsError):
        generate("polyp2d", tmp_path, 16, num_train=2, num_test=0, size=(32, 32))
    generate("polyp2d", tmp_path, 16, num_train=3, num_test=0, size=(32, 32), overwrite=True)
    assert len(list((tmp_path / "Dataset016_SynthPolyp2D" / "imagesTr").iterdir())) == 3
    assert [p.name for p in tmp_path.iterdir()] == ["Dataset016_SynthPolyp2D"]   # no temporary folder left


def test_synth_cli(tmp_path):
    res = subprocess.run([sys.executable, "-m", "nnunet_pmdice.cli", "synth", "lesion3d", "-d", "17", "--out",
                          str(tmp_path), "--num-train", "2", "--num-test", "1", "--size", "12", "24", "24"],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    folder = Path(res.stdout.strip().splitlines()[-1])
    assert folder == tmp_path / "Dataset017_SynthLesion3D"
    assert len(list((folder / "labelsTs").iterdir())) == 1


def test_faintpolyp2d_has_small_faint_objects_beside_a_large_easy_one():
    """The difficulty imbalance of the paper's Figure 2: the small objects differ little from their surround."""
    from scipy.ndimage import binary_dilation
    from scipy.ndimage import label as components

    from nnunet_pmdice.synthetic import POLYP_PARAMS, _polyp2d
    contrasts = {"large": [], "small": []}
    for seed in range(10):
        img, lab = _polyp2d(np.random.default_rng(seed), (64, 64), **POLYP_PARAMS["faintpolyp2d"])
        comp, n = components(lab, structure=np.ones((3, 3)))
        sizes = np.bincount(comp.ravel())[1:]
        order = np.argsort(sizes)[::-1]
        assert n >= 3, seed                                  # one large + at least two small
        assert sizes[order[0]] > 4 * sizes[order[1]], (seed, sizes)
        red = img[0].astype(np.float64)
        for rank, i in enumerate(order):
            obj = comp == i + 1
            ring = binary_dilation(obj, iterations=3) & ~binary_dilation(obj, iterations=1) & (lab == 0)
            contrasts["large" if rank == 0 else "small"].append(red[obj].mean() - red[ring].mean())
    # red-channel contrast to the surround, 0-255 units: the large object stands out, the small ones barely
    assert np.median(contrasts["large"]) > 40
    assert np.median(contrasts["small"]) < 15


def test_object_counts_by_size_match_the_labels(tmp_path):
    import cc3d

    from nnunet_pmdice.synthetic import OBJECT_SIZE_BINS
    folder = generate("faintpolyp2d", tmp_path, 18, num_train=3, num_test=2, size=(48, 48), seed=4)
    dj, data = read_dataset(folder)
    rec = dj["synthetic"]
    assert rec["kind"] == "faintpolyp2d" and rec["params"]["small_contrast"] > 0
    for key, prefix in (("objects", "labels"), ("objects_test", "labelsTs")):
        sizes = []
        for k, (arr, _) in data.items():
            if k.startswith(prefix):
                comps = cc3d.connected_components(np.ascontiguousarray(arr[0] == 1))
                sizes += list(np.bincount(comps.ravel())[1:])
        sizes = np.array(sizes)
        expected = {(f"{lo}-{hi}" if hi else f">={lo}"): int(np.sum((sizes >= lo) & (sizes <= (hi or np.inf))))
                    for lo, hi in OBJECT_SIZE_BINS}
        assert rec[key]["polyp"] == expected, key
        assert sum(expected.values()) == len(sizes) > 0


def test_params_change_the_objects_and_are_recorded(tmp_path):
    a = generate("faintpolyp2d", tmp_path / "a", 19, num_train=2, num_test=0, size=(48, 48), seed=1)
    b = generate("faintpolyp2d", tmp_path / "b", 19, num_train=2, num_test=0, size=(48, 48), seed=1,
                 params={"small_contrast": 0.2})
    _, da = read_dataset(a)
    _, db = read_dataset(b)
    assert all(np.array_equal(da[k][0], db[k][0]) for k in da if k.startswith("labels"))   # same geometry
    assert any(not np.array_equal(da[k][0], db[k][0]) for k in da if k.startswith("images"))
    assert json.loads((b / "dataset.json").read_text())["synthetic"]["params"]["small_contrast"] == 0.2
    with pytest.raises(ValueError, match="unknown faintpolyp2d setting"):
        generate("faintpolyp2d", tmp_path / "c", 19, num_train=2, num_test=0, params={"contrast": 1})
    with pytest.raises(ValueError, match="apply to the kinds"):
        generate("lesion3d", tmp_path / "c", 19, num_train=2, num_test=0, params={"noise": 1})


def test_an_id_used_by_another_dataset_is_refused(tmp_path):
    generate("polyp2d", tmp_path, 20, num_train=2, num_test=0, size=(32, 32))
    with pytest.raises(ValueError, match="Dataset020_SynthPolyp2D"):
        generate("faintpolyp2d", tmp_path, 20, num_train=2, num_test=0, size=(32, 32))
    assert [p.name for p in tmp_path.iterdir()] == ["Dataset020_SynthPolyp2D"]
