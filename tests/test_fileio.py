"""nnunet_pmdice.fileio: atomic files and folders with the usual permissions, leftovers of killed runs removed
safely, JSON read completely or refused naming the file."""
from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import REPO
from nnunet_pmdice.fileio import (MARKER, building_folder, read_json, remove_abandoned, staged_folder, write_json,
                                  write_text)


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)



def test_written_files_and_folders_get_the_usual_permissions(tmp_path, umask_022):
    assert _mode(write_text(tmp_path / "a.txt", "x")) == 0o644
    assert _mode(write_json(tmp_path / "b.json", {"a": 1})) == 0o644
    with building_folder(tmp_path / "built") as tmp:
        (tmp / "sub").mkdir()
        write_text(tmp / "sub" / "c.txt", "y")
        assert not (tmp_path / "built").exists()
    assert _mode(tmp_path / "built") == 0o755 and _mode(tmp_path / "built" / "sub") == 0o755
    assert _mode(tmp_path / "built" / "sub" / "c.txt") == 0o644
    assert not (tmp_path / "built" / MARKER).exists()
    os.umask(0o077)
    with staged_folder(tmp_path / "private") as tmp:
        (tmp / "d.txt").write_text("z")
    assert _mode(tmp_path / "private") == 0o700 and _mode(tmp_path / "private" / "d.txt") == 0o600


def test_staged_folder_replaces_only_when_complete(tmp_path):
    target = tmp_path / "out"
    with staged_folder(target) as tmp:
        (tmp / "v1").write_text("1")
    with pytest.raises(RuntimeError):
        with staged_folder(target) as tmp:
            (tmp / "v2").write_text("2")
            raise RuntimeError("boom")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"] and (target / "v1").exists()
    with pytest.raises(FileExistsError, match="appeared while it was being written"):
        with staged_folder(target, replace=False):
            pass
    with staged_folder(target) as tmp:
        (tmp / "v2").write_text("2")
    assert sorted(p.name for p in target.iterdir()) == ["v2"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


_KILLED = textwrap.dedent("""
    import os, sys, time
    from nnunet_pmdice.fileio import staged_folder
    with staged_folder(sys.argv[1]) as tmp:
        (tmp / "half").write_text("written")
        print(tmp, flush=True)
        time.sleep(600)
""")


def _start_staging(target: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-c", _KILLED, str(target)], stdout=subprocess.PIPE, text=True, env=env)
    line = proc.stdout.readline().strip()
    assert line and Path(line).is_dir(), "the staging process did not start"
    return proc


def test_leftover_of_a_killed_run_is_removed_but_not_a_live_one(tmp_path):
    target = tmp_path / "Dataset001_X"
    live = _start_staging(target)
    try:
        killed = _start_staging(target)
        killed.send_signal(signal.SIGKILL)
        killed.wait()
        partials = sorted(p.name for p in tmp_path.glob(".Dataset001_X.partial-*"))
        assert len(partials) == 2
        # a hidden folder of someone else (no marker) and another dataset's leftover are left alone
        (tmp_path / ".Dataset001_X.partial-foreign").mkdir()
        removed = remove_abandoned(target)
        assert len(removed) == 1 and removed[0].name in partials
        left = sorted(p.name for p in tmp_path.iterdir())
        assert ".Dataset001_X.partial-foreign" in left and len(left) == 2, left
        # the live one is still being written: the next run for the same target leaves it alone too
        with staged_folder(target) as tmp:
            (tmp / "done").write_text("1")
        assert (target / "done").exists()
        assert len(list(tmp_path.glob(".Dataset001_X.partial-*"))) == 2  # the live one and the foreign one
    finally:
        live.kill()
        live.wait()
    with staged_folder(target) as tmp:
        pass
    assert sorted(p.name for p in tmp_path.iterdir()) == [".Dataset001_X.partial-foreign", "Dataset001_X"]


def test_read_json_refuses_missing_truncated_and_non_json_naming_the_file(tmp_path):
    write_json(tmp_path / "ok.json", [1, {"a": None}])
    assert read_json(tmp_path / "ok.json") == [1, {"a": None}]
    with pytest.raises(ValueError, match=r"^missing file: expected the plans at .*none\.json$"):
        read_json(tmp_path / "none.json", "the plans")
    (tmp_path / "cut.json").write_text('{"labels": {"background": 0, "les')
    with pytest.raises(ValueError, match=r"^JSON file .*cut\.json is not valid JSON: it ends early \(truncated\?\)"):
        read_json(tmp_path / "cut.json")
    (tmp_path / "empty.json").write_text("")
    with pytest.raises(ValueError, match=r"dataset.json .*empty\.json is empty"):
        read_json(tmp_path / "empty.json", "dataset.json")
    (tmp_path / "bad.json").write_text("not json at all\n")
    with pytest.raises(ValueError, match=r"bad\.json is not valid JSON: Expecting value \(line 1, column 1\)"):
        read_json(tmp_path / "bad.json")
    (tmp_path / "bin.json").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ValueError, match=r"cannot read JSON file .*bin\.json"):
        read_json(tmp_path / "bin.json")
    with pytest.raises(ValueError, match="is a folder"):
        read_json(tmp_path)
