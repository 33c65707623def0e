"""What the converters share: staging (nothing half-written), splits, case lists."""
from __future__ import annotations

import pytest

from nnunet_pmdice.conversion.common import (ConversionError, ConversionResult, dataset_folder_name, dataset_id_of,
                                             prepare_target, read_case_list, resolve_num_processes,
                                             seeded_test_split, split_by_list, staged_dataset)


def test_staged_dataset_leaves_nothing_on_interrupt_and_keeps_the_old_one(tmp_path):
    target = tmp_path / "Dataset970_X"
    with pytest.raises(KeyboardInterrupt):
        with staged_dataset(target, overwrite=False) as tmp:
            (tmp / "imagesTr").mkdir()
            assert tmp.parent == tmp_path and tmp.name.startswith(".")  # hidden from nnU-Net's dataset lookup
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []
    with staged_dataset(target, overwrite=False) as tmp:
        (tmp / "v1").write_text("1")
    with pytest.raises(ConversionError):
        with staged_dataset(target, overwrite=True) as tmp:
            (tmp / "v2").write_text("2")
            raise ConversionError("case x: broken")
    assert [p.name for p in tmp_path.iterdir()] == ["Dataset970_X"] and (target / "v1").exists()
    with staged_dataset(target, overwrite=True) as tmp:
        (tmp / "v2").write_text("2")
    assert [p.name for p in target.iterdir()] == ["v2"] and [p.name for p in tmp_path.iterdir()] == ["Dataset970_X"]
    with pytest.raises(FileExistsError, match="pass --overwrite"):
        prepare_target(tmp_path, "Dataset970_X", overwrite=False, preprocessed_root=None)
    (tmp_path / "pre" / "Dataset971_X").mkdir(parents=True)
    (tmp_path / "pre" / "Dataset971_X" / "splits_final.json").write_text("[]")
    with pytest.raises(FileExistsError, match="splits_final.json exists"):
        prepare_target(tmp_path, "Dataset971_X", overwrite=False, preprocessed_root=tmp_path / "pre")


def test_seeded_test_split_is_stratified_and_reproducible():
    cases = [f"c{g}_p{i}" for g in range(3) for i in range(5)]
    groups = {c: c[:2] for c in cases}
    train, test = seeded_test_split(cases, 0.4, seed=1, groups=groups)
    assert len(train) == 9 and len(test) == 6 and sorted(train + test) == sorted(cases)
    assert sorted(c[:2] for c in test) == ["c0", "c0", "c1", "c1", "c2", "c2"]
    assert seeded_test_split(list(reversed(cases)), 0.4, seed=1, groups=groups) == (train, test)
    assert seeded_test_split(cases, 0.4, seed=2, groups=groups) != (train, test)
    train, test = seeded_test_split([f"k{i:04d}" for i in range(1000)], 0.1, seed=0)
    assert (len(train), len(test)) == (900, 100)
    with pytest.raises(ValueError, match=r"test_fraction must be in \(0, 1\)"):
        seeded_test_split(cases, 1.0, seed=0)
    with pytest.raises(ConversionError, match="leaves 1 training"):
        seeded_test_split(["a", "b"], 0.5, seed=0)


def test_case_lists(tmp_path):
    (tmp_path / "l.txt").write_text("a.jpg\nb.nii.gz  # comment\n\n# only a comment\na\nc.png\n")
    assert read_case_list(tmp_path / "l.txt") == ["a", "b", "c"]
    (tmp_path / "empty.txt").write_text("# nothing\n")
    with pytest.raises(ConversionError, match="names no case"):
        read_case_list(tmp_path / "empty.txt")
    with pytest.raises(ConversionError, match="missing file: expected a case list"):
        read_case_list(tmp_path / "none.txt")
    assert split_by_list(["a", "b", "c", "d"], ["c"], "l") == (["a", "b", "d"], ["c"])
    with pytest.raises(ConversionError, match="leaves 1 training"):
        split_by_list(["a", "b", "c"], ["a", "b"], "l")
    assert dataset_folder_name(7, "ACDC") == "Dataset007_ACDC"
    with pytest.raises(ValueError, match="1..999"):
        dataset_folder_name(1000, "ACDC")
    with pytest.raises(TypeError):
        dataset_folder_name("7", "ACDC")


def test_num_processes_checked_up_front():
    assert resolve_num_processes(3) == 3 and resolve_num_processes(None) >= 1
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(ValueError, match="num_processes must be an int >= 1"):
            resolve_num_processes(bad)


def test_dataset_name_and_id_round_trip_and_summary(tmp_path):
    for dataset_id in (7, 42, 501, 999):
        assert dataset_id_of(dataset_folder_name(dataset_id, "KvasirSEG")) == dataset_id
    res = ConversionResult(tmp_path / "Dataset042_ACDC", ["a", "b"], ["c"], [{"train": ["a"], "val": ["b"]}])
    assert res.summary().splitlines()[-1] == "next: nnUNetv2_plan_and_preprocess -d 42 --verify_dataset_integrity"
    (tmp_path / "Dataset042_Other").mkdir()
    with pytest.raises(ValueError, match="dataset id 42 is already used by Dataset042_Other"):
        prepare_target(tmp_path, "Dataset042_ACDC", overwrite=False, preprocessed_root=None)
