"""Writing files and folders so that a reader never sees them half-written, and reading JSON with a clear error.

- :func:`writing_file` (and :func:`write_text` / :func:`write_json` on it): a temporary file beside the
  target, renamed into place;
- :func:`staged_folder` (and :func:`building_folder`, the same with replacing): a hidden temporary folder
  beside the target, moved into place only when the block completes; removed on any error;
- :func:`read_json`: a JSON file read completely, or a one-line ``ValueError`` naming the file.

Temporary files and folders are made private (``mkstemp``: 0600, ``mkdtemp``: 0700) while they are written;
what is moved into place gets the usual permissions, ``0o666 & ~umask`` for files and ``0o777 & ~umask``
for folders, like files made with ``open``.

A staged folder holds a marker file (:data:`MARKER`: the owner's pid, host and target) locked with
``fcntl.flock`` for as long as its owner works in it. A process killed hard (SIGKILL, power loss) leaves the
folder behind, hidden (its name starts with a dot, so nnU-Net never takes it for a dataset); the next
:func:`staged_folder` for the same target removes such leftovers: only folders with the marker, and only
when no process holds the lock (on a file system without ``flock``: only when the owner ran on this host
and its pid is gone).
"""
from __future__ import annotations

import errno
import glob
import json
import math
import os
import shutil
import socket
import stat
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, List, Optional, Union

PathLike = Union[str, os.PathLike]

#: name of the marker (and lock) file inside a staged folder
MARKER = ".nnunet-pmdice-staging"
#: tags of the hidden folders made beside a target: ``.<target>.<tag>-<random>``
_TAGS = ("partial", "old")


# ---------------------------------------------------------------------------------------------- permissions

def current_umask() -> int:
    """The process's umask (read from ``/proc/self/status`` where there is one, so nothing is changed).

    >>> 0 <= current_umask() <= 0o777
    True
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def publish_permissions(path: PathLike) -> None:
    """Gives ``path`` (a file, or a folder and everything in it) the permissions ``open``/``mkdir`` would:
    ``0o666 & ~umask`` for files (``0o777 & ~umask`` for files executable by their owner), ``0o777 & ~umask``
    for folders. Symbolic links are left alone.

    >>> import tempfile, stat
    >>> d = Path(tempfile.mkdtemp()); (d / "a.txt").write_text("x") and None
    >>> publish_permissions(d)
    >>> oct(stat.S_IMODE(d.stat().st_mode)) == oct(0o777 & ~current_umask())
    True
    """
    umask = current_umask()
    dir_mode, file_mode, exe_mode = 0o777 & ~umask, 0o666 & ~umask, 0o777 & ~umask

    def fix(p: str) -> None:
        st = os.lstat(p)
        if stat.S_ISLNK(st.st_mode):
            return
        if stat.S_ISDIR(st.st_mode):
            mode = dir_mode
        else:
            mode = exe_mode if st.st_mode & stat.S_IXUSR else file_mode
        if stat.S_IMODE(st.st_mode) != mode:
            os.chmod(p, mode)

    path = os.fspath(path)
    fix(path)
    if os.path.isdir(path) and not os.path.islink(path):
        for root, dirs, files in os.walk(path):
            for name in dirs + files:
                fix(os.path.join(root, name))


# ------------------------------------------------------------------------------------------------- files

@contextmanager
def writing_file(path: PathLike) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to (by any writer: ``savefig``, ``np.save``...); renamed
    into place, with the usual permissions (``0o666 & ~umask``), when the block completes, removed on any
    error. The temporary name keeps ``path``'s suffixes, so writers that pick a format by ending still do.

    >>> import tempfile
    >>> target = Path(tempfile.mkdtemp()) / "plots" / "a.txt"
    >>> with writing_file(target) as tmp:
    ...     _ = tmp.write_text("done")
    >>> target.read_text(), sorted(p.name for p in target.parent.iterdir())
    ('done', ['a.txt'])
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix="".join(path.suffixes), dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        publish_permissions(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path: PathLike, text: str) -> Path:
    """Writes ``text`` (UTF-8) through :func:`writing_file`: a reader sees the old content or the new, never
    a part. Returns ``path`` as a Path.

    >>> import tempfile
    >>> p = write_text(Path(tempfile.mkdtemp()) / "sub" / "a.txt", "hello")
    >>> p.read_text()
    'hello'
    """
    path = Path(path)
    with writing_file(path) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            f.write(text)
    return path


def json_ready(value):
    """``value`` with NaN/inf floats as ``None`` and numpy scalars as Python numbers (strict JSON).

    >>> json_ready({"a": float("nan"), 1: (2.5, float("inf"))})
    {'a': None, '1': [2.5, None]}
    """
    if isinstance(value, dict):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(path: PathLike, obj, indent: int = 2) -> Path:
    """Writes ``obj`` as indented strict JSON (NaN -> null), atomically (see :func:`write_text`).

    >>> import tempfile
    >>> p = write_json(Path(tempfile.mkdtemp()) / "x.json", {"dice": float("nan")})
    >>> read_json(p)
    {'dice': None}
    """
    return write_text(path, json.dumps(json_ready(obj), indent=indent) + "\n")


def read_json(path: PathLike, what: Optional[str] = None):
    """The content of the JSON file ``path``, read completely.

    Args:
        path: the file.
        what: what the file is, for the error message (e.g. ``"the dataset's dataset.json"``).

    Raises:
        ValueError: one line naming the file, when it is missing, unreadable, empty, truncated or not JSON.

    >>> import tempfile
    >>> p = Path(tempfile.mkdtemp()) / "splits_final.json"
    >>> _ = p.write_text('[{"train": ["a"], "val": ')
    >>> read_json(p, "the split")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: the split .../splits_final.json is not valid JSON: it ends early (truncated?) (line 1, column 26)
    >>> read_json(p.parent / "none.json")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: missing file: expected a JSON file at .../none.json
    """
    path = Path(path)
    label = what or "JSON file"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ValueError(f"missing file: expected {what or 'a JSON file'} at {path}") from None
    except IsADirectoryError:
        raise ValueError(f"{label} {path} is a folder, expected a JSON file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"cannot read {label} {path}: {e}") from None
    if not text.strip():
        raise ValueError(f"{label} {path} is empty, expected JSON")
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        truncated = e.pos >= len(text.rstrip()) or e.msg.startswith("Unterminated string")
        problem = "it ends early (truncated?)" if truncated else e.msg
        raise ValueError(f"{label} {path} is not valid JSON: {problem} (line {e.lineno}, column {e.colno})") from None


# ----------------------------------------------------------------------------------------------- folders

def _owner_record(target: Path) -> str:
    return json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "target": str(target),
                       "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}) + "\n"


def _claim(parent: Path, target: Path, tag: str):
    """A new hidden folder ``.<target>.<tag>-*`` in ``parent`` with its marker written and locked.

    Returns (folder, open file descriptor holding the lock).
    """
    import fcntl
    folder = Path(tempfile.mkdtemp(prefix=f".{target.name}.{tag}-", dir=parent))
    try:
        fd = os.open(folder / MARKER, os.O_RDWR | os.O_CREAT, 0o600)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
                raise
        os.write(fd, _owner_record(target).encode())
    except BaseException:
        os.close(fd)
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return folder, fd


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _is_abandoned(folder: Path) -> bool:
    """True when ``folder`` is a staged folder (it holds the marker) that no process works in any more."""
    import fcntl
    marker = folder / MARKER
    try:
        fd = os.open(marker, os.O_RDONLY)
    except OSError:
        return False  # no marker: not ours, or its owner is moving it into place
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False  # its owner holds the lock
        except OSError:  # no flock on this file system: fall back on the owner's pid, on this host only
            try:
                owner = json.loads(os.read(fd, 4096).decode() or "{}")
            except (OSError, ValueError):
                return False
            if owner.get("host") != socket.gethostname() or not isinstance(owner.get("pid"), int):
                return False
            return not _pid_alive(owner["pid"])
        # the lock is ours now: abandoned, unless the owner moved the folder into place meanwhile
        return marker.exists()
    finally:
        os.close(fd)


def remove_abandoned(target: PathLike) -> List[Path]:
    """Removes the hidden folders a killed :func:`staged_folder` for ``target`` left beside it.

    Only folders named ``.<target>.partial-*`` or ``.<target>.old-*`` that hold the :data:`MARKER` file and
    whose owner is gone (its lock is free) are removed. Returns the removed folders.

    >>> import tempfile
    >>> remove_abandoned(Path(tempfile.mkdtemp()) / "Dataset001_X")
    []
    """
    target = Path(target)
    if not target.parent.is_dir():
        return []
    removed = []
    for tag in _TAGS:
        for folder in sorted(target.parent.glob(f".{glob.escape(target.name)}.{tag}-*")):
            if folder.is_dir() and not folder.is_symlink() and _is_abandoned(folder):
                shutil.rmtree(folder, ignore_errors=True)
                if not folder.exists():
                    removed.append(folder)
    return removed


@contextmanager
def staged_folder(target: PathLike, replace: bool = True) -> Iterator[Path]:
    """Yields an empty hidden folder beside ``target``; moves it to ``target`` when the block completes.

    The folder (``.<target>.partial-<random>``, hidden so that nnU-Net never takes it for a dataset) is
    private while it is filled; before it is moved into place, it and everything in it get the usual
    permissions (:func:`publish_permissions`). An existing ``target`` is moved aside and removed only once
    the new one is in place (put back if that fails). On any exception (an error in a worker,
    KeyboardInterrupt) the folder is removed and ``target`` is left as it was. Leftovers of a killed
    earlier run for the same target are removed first (:func:`remove_abandoned`).

    Args:
        target: the folder to create or replace.
        replace: when False and ``target`` appeared while the block ran, raise FileExistsError.

    Raises:
        FileExistsError: ``target`` exists at the end and ``replace`` is False.

    >>> import tempfile
    >>> root = Path(tempfile.mkdtemp())
    >>> with staged_folder(root / "out") as tmp:
    ...     _ = (tmp / "a.txt").write_text("complete")
    >>> sorted(p.name for p in root.iterdir()), (root / "out" / "a.txt").read_text()
    (['out'], 'complete')
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_abandoned(target)
    tmp, fd = _claim(target.parent, target, "partial")
    try:
        yield tmp
        if target.exists() and not replace:
            raise FileExistsError(f"{target} appeared while it was being written; pass --overwrite to replace it")
        (tmp / MARKER).unlink()
        publish_permissions(tmp)
        if target.exists() or target.is_symlink():
            old, old_fd = _claim(target.parent, target, "old")
            try:
                os.replace(target, old / target.name)
                try:
                    os.replace(tmp, target)
                except BaseException:
                    os.replace(old / target.name, target)  # put the previous one back
                    raise
            finally:
                os.close(old_fd)
                shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        os.close(fd)


@contextmanager
def building_folder(target: PathLike) -> Iterator[Path]:
    """Yields a temporary folder beside ``target``; on success it replaces ``target``, on error it is removed.

    :func:`staged_folder` with ``replace=True``.

    >>> import tempfile
    >>> root = Path(tempfile.mkdtemp())
    >>> with building_folder(root / "evaluation") as tmp:
    ...     _ = write_json(tmp / "summary.json", {"n": 1})
    >>> read_json(root / "evaluation" / "summary.json")
    {'n': 1}
    """
    with staged_folder(target, replace=True) as tmp:
        yield tmp


__all__ = ["PathLike", "MARKER", "current_umask", "publish_permissions", "write_text", "json_ready", "write_json",
           "read_json", "staged_folder", "building_folder", "remove_abandoned"]
