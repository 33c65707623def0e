"""Kvasir-SEG -> nnU-Net raw: a fixture in the archive's layout (lossy, partly 3-channel JPEG masks)."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import PYTHON, REPO, nnunet_env, run_cli
from conversion_fixtures import assert_refused, left_behind, make_kvasir, read_json, truncate, verify_integrity
from nnunet_pmdice.conversion import convert_kvasir


@pytest.fixture(scope="module")
def kvasir_src(tmp_path_factory):
    return make_kvasir(tmp_path_factory.mktemp("kvasir_src"), n=20)


def _copy(src: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(src, tmp_path / "src" / "Kvasir-SEG"))


def test_fixture_has_the_jpeg_mask_quirks(kvasir_src):
    base, ids = kvasir_src
    masks = [Image.open(base / "masks" / f"{c}.jpg") for c in ids]
    assert {m.mode for m in masks} == {"RGB", "L"}, "fixture must have gray and 3-channel masks"
    values = np.unique(np.concatenate([np.asarray(m.convert("L")).ravel() for m in masks]))
    assert len(values) > 20, "JPEG masks should carry compression noise (values other than 0/255)"
    assert (base / "kavsir_bboxes.json").is_file()


def test_convert_seeded_split(kvasir_src, tmp_path):
    base, ids = kvasir_src
    res = convert_kvasir(base.parent, 941, tmp_path / "raw", num_processes=1, progress=False,
                         preprocessed_root=tmp_path / "pre")
    ds = res.path
    assert ds == tmp_path / "raw" / "Dataset941_KvasirSEG"
    assert len(res.train_cases) == 18 and len(res.test_cases) == 2
    assert sorted(res.train_cases + res.test_cases) == ids
    tr = sorted(p.name[:-len("_0000.png")] for p in (ds / "imagesTr").glob("*_0000.png"))
    ts = sorted(p.name[:-len("_0000.png")] for p in (ds / "imagesTs").glob("*_0000.png"))
    assert tr == sorted(res.train_cases) and ts == sorted(res.test_cases)
    assert sorted(p.stem for p in (ds / "labelsTs").glob("*.png")) == ts
    dj = read_json(ds / "dataset.json")
    assert dj["channel_names"] == {"0": "R", "1": "G", "2": "B"} and dj["labels"] == {"background": 0, "polyp": 1}
    assert dj["numTraining"] == 18 and dj["file_ending"] == ".png"
    for case in ids:
        part = "Tr" if case in tr else "Ts"
        img = Image.open(ds / f"images{part}" / f"{case}_0000.png")
        lab = np.asarray(Image.open(ds / f"labels{part}" / f"{case}.png"))
        src_mask = np.asarray(Image.open(base / "masks" / f"{case}.jpg").convert("L"))
        assert img.mode == "RGB" and img.size == Image.open(base / "images" / f"{case}.jpg").size
        assert lab.dtype == np.uint8 and set(np.unique(lab)) == {0, 1}
        np.testing.assert_array_equal(lab, (src_mask > 127).astype(np.uint8))
    # nnU-Net's 2D reader sees 3 channels
    from nnunetv2.imageio.natural_image_reader_writer import NaturalImage2DIO
    arr, _ = NaturalImage2DIO().read_images([str(ds / "imagesTr" / f"{tr[0]}_0000.png")])
    assert arr.shape[0] == 3
    # the split: 5 folds over the 18 training cases, each case validated once; test cases in no fold
    splits = read_json(ds / "splits_final.json")
    assert len(splits) == 5 and sorted(c for f in splits for c in f["val"]) == tr
    for f in splits:
        assert sorted(f["train"] + f["val"]) == tr
    assert read_json(tmp_path / "pre" / ds.name / "splits_final.json") == splits
    assert res.installed_splits == tmp_path / "pre" / ds.name / "splits_final.json"
    assert "cp " in (ds / "splits_README.md").read_text()
    # same seed -> same split; nnU-Net's own default folds
    from nnunetv2.utilities.crossval_split import generate_crossval_split
    assert splits == [{k: list(map(str, v)) for k, v in f.items()} for f in generate_crossval_split(tr, 12345, 5)]
    record = read_json(ds / "conversion.json")
    assert record["test"] == ts and set(record["cases"]) == set(ids)
    verify_integrity(ds)
    assert left_behind(tmp_path / "raw") == [ds.name]


def test_cli_resize_with_test_list_file_and_pranet_folder(kvasir_src, tmp_path):
    base, ids = kvasir_src
    env = nnunet_env(tmp_path / "nn")
    listed = [ids[3], ids[7], ids[11]]
    (tmp_path / "test.txt").write_text(f"# test ids\n{listed[0]}.jpg\n\n{listed[1]}\n{listed[2]}  # last\n")
    out = run_cli(["nnunet-pmdice", "convert", "kvasir", str(base), "-d", "942", "--size", "32", "-np", "1",
                   "--test-list", str(tmp_path / "test.txt")], env)
    ds = Path(env["nnUNet_raw"]) / "Dataset942_KvasirSEG"
    assert str(ds) in out.stdout and "17 training cases" in out.stdout
    assert sorted(p.stem for p in (ds / "labelsTs").glob("*.png")) == sorted(listed)
    for p in list((ds / "imagesTr").glob("*.png")) + list((ds / "labelsTr").glob("*.png")):
        assert Image.open(p).size == (32, 32)
    assert all(set(np.unique(np.asarray(Image.open(p)))) <= {0, 1} for p in (ds / "labelsTr").glob("*.png"))
    assert (Path(env["nnUNet_preprocessed"]) / ds.name / "splits_final.json").is_file()
    verify_integrity(ds)
    # the script, with a PraNet-style TestDataset/Kvasir folder as the list, non-square size
    pranet = tmp_path / "TestDataset" / "Kvasir"
    (pranet / "images").mkdir(parents=True)
    (pranet / "masks").mkdir()
    for c in listed[:2]:
        (pranet / "images" / f"{c}.png").write_bytes(b"")
    run_cli([PYTHON, str(REPO / "scripts" / "convert_kvasir.py"), str(base.parent), "-d", "942", "--overwrite",
             "--size", "24", "40", "-np", "1", "--test-list", str(pranet), "--no-progress"], env)
    assert sorted(p.stem for p in (ds / "labelsTs").glob("*.png")) == sorted(listed[:2])
    assert Image.open(next((ds / "imagesTr").glob("*.png"))).size == (40, 24)


def _fails(src, tmp_path, match, **kw):
    assert_refused(convert_kvasir, src, tmp_path, match, 943, **kw)


def test_bad_inputs_name_the_case_and_leave_nothing(kvasir_src, tmp_path):
    base, ids = kvasir_src
    _fails(tmp_path / "nowhere", tmp_path, "missing folder")
    src = _copy(base, tmp_path)
    shutil.rmtree(src / "masks")
    _fails(src, tmp_path, "missing folder.*masks")

    src = _copy(base, tmp_path / "a")
    (src / "masks" / f"{ids[4]}.jpg").unlink()
    _fails(src, tmp_path, f"case {ids[4]}: missing mask")

    src = _copy(base, tmp_path / "b")
    (src / "images" / f"{ids[5]}.jpg").write_bytes(b"not a jpeg")
    _fails(src, tmp_path, f"case {ids[5]}: unreadable image file")

    # size mismatch, raised in a spawned worker: the message survives the process boundary
    src = _copy(base, tmp_path / "c")
    Image.open(src / "masks" / f"{ids[6]}.jpg").resize((13, 11)).save(src / "masks" / f"{ids[6]}.jpg")
    _fails(src, tmp_path, rf"case {ids[6]}: image is \d+x\d+ \(h x w\) but its mask is 11x13", num_processes=2)

    src = _copy(base, tmp_path / "d")
    noise = np.random.default_rng(0).integers(0, 256, (40, 50), dtype=np.uint8)
    Image.fromarray(noise).save(src / "images" / f"{ids[0]}.jpg")
    Image.fromarray(noise).save(src / "masks" / f"{ids[0]}.jpg")
    _fails(src, tmp_path, f"case {ids[0]}: mask is not binary")

    (tmp_path / "list.txt").write_text("nonexistent_case\n")
    _fails(base, tmp_path, "names cases that are not in the source dataset: nonexistent_case",
           test_list=tmp_path / "list.txt")


def test_existing_dataset_needs_overwrite_and_cli_reports_errors(kvasir_src, tmp_path):
    base, ids = kvasir_src
    env = nnunet_env(tmp_path / "nn")
    args = ["nnunet-pmdice", "convert", "kvasir", str(base), "-d", "944", "-np", "1", "--no-progress"]
    run_cli(args, env)
    ds = Path(env["nnUNet_raw"]) / "Dataset944_KvasirSEG"
    marker = ds / "imagesTr" / "marker"
    marker.write_text("old")
    import subprocess
    res = subprocess.run(args, env=env, capture_output=True, text=True)
    assert res.returncode == 2 and "exists; pass --overwrite" in res.stderr and "Traceback" not in res.stderr
    assert marker.exists(), "the existing dataset must be left alone"
    run_cli(args + ["--overwrite", "--test-fraction", "0.2"], env)
    assert not marker.exists() and len(list((ds / "imagesTs").glob("*.png"))) == 4
    # an error from the source: exit status 2, one line naming the case, the old dataset intact
    bad = _copy(base, tmp_path)
    (bad / "masks" / f"{ids[2]}.jpg").write_bytes(b"garbage")
    res = subprocess.run(args[:3] + [str(bad)] + args[4:] + ["--overwrite"], env=env, capture_output=True, text=True)
    assert res.returncode == 2 and f"error: case {ids[2]}: unreadable image file" in res.stderr
    assert "Traceback" not in res.stderr
    assert len(list((ds / "imagesTs").glob("*.png"))) == 4
    assert left_behind(Path(env["nnUNet_raw"])) == [ds.name]
    # another dataset name under the same id is refused (nnU-Net needs one name per id)
    (Path(env["nnUNet_raw"]) / "Dataset945_Other").mkdir()
    with pytest.raises(ValueError, match="already used by Dataset945_Other"):
        convert_kvasir(base, 945, env["nnUNet_raw"], num_processes=1, progress=False, install_split=False)


# --------------------------------------------------------------------------- defects a demanding user meets

@pytest.mark.parametrize("masks", ["png01", "png255"])
def test_png_masks_of_re_releases_beside_jpeg_images(tmp_path, masks):
    """PNG re-releases store the masks as <id>.png (0/1 or 0/255, some 3-channel) beside <id>.jpg images."""
    base, ids = make_kvasir(tmp_path / "src", n=8, seed=4, masks=masks)
    res = convert_kvasir(base, 946, tmp_path / "raw", num_processes=1, progress=False, install_split=False)
    for case in ids:
        part = "Tr" if case in res.train_cases else "Ts"
        label = np.asarray(Image.open(res.path / f"labels{part}" / f"{case}.png"))
        source = np.asarray(Image.open(base / "masks" / f"{case}.png").convert("L"))
        assert label.sum() > 0
        np.testing.assert_array_equal(label, (source > 0).astype(np.uint8))
    record = read_json(res.path / "conversion.json")
    assert {c["mask_encoding"] for c in record["cases"].values()} == {"0/1" if masks == "png01" else "0/255"}


def test_truncated_files_and_unusable_masks_are_refused_naming_the_file(kvasir_src, tmp_path):
    base, ids = kvasir_src
    src = _copy(base, tmp_path / "a")
    truncate(src / "images" / f"{ids[1]}.jpg")
    _fails(src, tmp_path, rf"case {ids[1]}: .*truncated.*{ids[1]}\.jpg")

    png, png_ids = make_kvasir(tmp_path / "png", n=8, seed=4, masks="png01")
    mask = png / "masks" / f"{png_ids[2]}.png"
    good = mask.read_bytes()
    mask.write_bytes(good[:-20])  # the end of the compressed stream and the IEND chunk missing
    _fails(png, tmp_path, rf"case {png_ids[2]}: truncated file: .*{png_ids[2]}\.png")
    truncate(mask, 0.7)
    _fails(png, tmp_path, rf"case {png_ids[2]}: .*truncated.*{png_ids[2]}\.png")
    mask.write_bytes(good)

    # a lossless mask that is neither 0/1 nor 0/255
    values = np.zeros((40, 50), np.uint8)
    values[5:10, 5:10], values[20:30, 20:30] = 1, 255
    Image.fromarray(values).save(png / "masks" / f"{png_ids[3]}.png")
    image = png / "images" / f"{png_ids[3]}.jpg"
    Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(image)
    _fails(png, tmp_path, rf"case {png_ids[3]}: ambiguous mask encoding: values \[0, 1, 255\].*{png_ids[3]}\.png")
    values[values > 0] = 100
    Image.fromarray(values).save(png / "masks" / f"{png_ids[3]}.png")
    _fails(png, tmp_path, rf"case {png_ids[3]}: ambiguous mask encoding: values \[0, 100\]")

    # every mask empty (e.g. 0/1 masks stored as JPEG): refused, not 20 empty labels
    black = _copy(base, tmp_path / "b")
    for case in ids:
        size = Image.open(black / "masks" / f"{case}.jpg").size
        Image.fromarray(np.zeros(size[::-1], np.uint8)).save(black / "masks" / f"{case}.jpg")
    _fails(black, tmp_path, rf"all 20 masks are empty .*{ids[0]}\.jpg")


def test_leftover_of_a_killed_conversion_is_removed_by_the_next_run(kvasir_src, tmp_path):
    """A conversion killed hard leaves its hidden staging folder; the next run for that dataset removes it."""
    import signal
    import subprocess
    import sys
    import textwrap
    base, ids = kvasir_src
    raw = tmp_path / "raw"
    target = raw / "Dataset947_KvasirSEG"
    script = textwrap.dedent("""
        import sys, time
        from pathlib import Path
        from nnunet_pmdice.conversion.common import staged_dataset
        with staged_dataset(Path(sys.argv[1]), overwrite=True) as tmp:
            (tmp / "imagesTr").mkdir()
            print(tmp, flush=True)
            time.sleep(600)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script, str(target)], stdout=subprocess.PIPE, text=True,
                            env=nnunet_env(tmp_path / "nn"))
    partial = Path(proc.stdout.readline().strip())
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert partial.is_dir() and partial.name.startswith(".Dataset947_KvasirSEG.partial-")
    res = convert_kvasir(base, 947, raw, num_processes=1, progress=False, install_split=False)
    assert left_behind(raw) == [res.path.name]


def test_dataset_and_split_get_the_usual_permissions(kvasir_src, tmp_path):
    import os
    import stat
    base, ids = kvasir_src
    old = os.umask(0o022)
    try:
        res = convert_kvasir(base, 949, tmp_path / "raw", num_processes=1, progress=False,
                             preprocessed_root=tmp_path / "pre")
    finally:
        os.umask(old)
    modes = {p.relative_to(tmp_path).as_posix(): stat.S_IMODE(p.stat().st_mode)
             for p in [res.path, *res.path.rglob("*"), res.installed_splits]}
    wrong = {p: oct(m) for p, m in modes.items() if m != (0o755 if (tmp_path / p).is_dir() else 0o644)}
    assert not wrong, f"not 0755 folders / 0644 files: {sorted(wrong.items())[:5]}"
