"""What the three dataset converters share.

- :class:`ConversionError`: the one error type for a source dataset that cannot be converted as it is;
- :func:`destination` (:func:`prepare_target`): checks before any work (existing dataset, dataset id
  already used under another name); the :class:`Destination` it returns builds the dataset in a hidden
  temporary folder beside the target (:func:`staged_dataset`, on :func:`nnunet_pmdice.fileio.staged_folder`)
  and moves it into place only when complete, so an error or an interrupt leaves nothing half-written,
  then writes the metadata every converter writes (:meth:`Destination.write_metadata`) and installs the
  split (:meth:`Destination.result`);
- :func:`seeded_test_split`, :func:`read_case_list`, :func:`cross_validation_folds`: the train/test split
  and the training folds (nnU-Net's own fold generator);
- :func:`write_split_files` / :func:`install_splits`: ``splits_final.json`` kept in the raw dataset with a
  note saying how it was made and how to install it, and installed into ``$nnUNet_preprocessed``;
- :func:`write_dataset_json`: nnU-Net's ``generate_dataset_json`` with the plugin's provenance keys;
- :func:`parallel_map`: a progress bar over the cases, in a spawn process pool when more than one
  process is asked for (nnU-Net's own multiprocessing style).

Kept import-light: spawned workers import the converter modules, so nnU-Net, scikit-learn and tqdm are
imported inside the functions that need them.
"""
from __future__ import annotations

import os
import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from ..fileio import PathLike, staged_folder, write_json, write_text

#: seed of the default test split and of the training folds (the seed nnU-Net uses for its own folds)
DEFAULT_SEED = 12345
#: number of training folds written to splits_final.json when the converter makes them
DEFAULT_NUM_FOLDS = 5
#: endings stripped from the entries of a test list (file names are accepted as well as case ids)
_LIST_ENDINGS = (".nii.gz", ".nii", ".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
_CASE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9.\-]*(?:_[A-Za-z0-9.\-]+)*")


class ConversionError(ValueError):
    """A source dataset that cannot be converted as it is.

    The message names the case (or the file) and says what was expected and what was found. A subclass
    of ``ValueError``: the ``nnunet-pmdice`` command prints it without a traceback and exits with status 2.
    Raised before anything is moved into place, so no partial dataset is left behind.

    Example:
        >>> str(case_error("patient001_frame01", "unexpected label values [4]", "/data/x_gt.nii.gz"))
        'case patient001_frame01: unexpected label values [4] (/data/x_gt.nii.gz)'
    """


def case_error(case: str, problem: str, path: Optional[PathLike] = None) -> ConversionError:
    """A :class:`ConversionError` worded ``case <case>: <problem> (<path>)``.

    >>> str(case_error("c1", "missing mask"))
    'case c1: missing mask'
    """
    return ConversionError(f"case {case}: {problem}" + (f" ({path})" if path is not None else ""))


def check_case_id(case: str, source: PathLike) -> str:
    """Case ids become file names and nnU-Net identifiers: letters, digits, '.', '-' and single '_'.

    Raises:
        ConversionError: the id is not usable (naming ``source``).

    >>> check_case_id("patient001_frame01", "/data")
    'patient001_frame01'
    >>> check_case_id("case_0001", "/data")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    nnunet_pmdice.conversion.common.ConversionError: case id 'case_0001' (from /data) is not usable as an nnU-Net case id: ...
    """
    if not _CASE_ID.fullmatch(case) or re.search(r"_\d{4}$", case):
        raise ConversionError(f"case id {case!r} (from {source}) is not usable as an nnU-Net case id: expected "
                              "letters, digits, '.', '-' and single '_', not ending in '_' + 4 digits")
    return case


# ----------------------------------------------------------------------------------------------- target

def dataset_folder_name(dataset_id: int, name: str) -> str:
    """``Dataset<id:03d>_<name>``, nnU-Net's dataset folder name; ``dataset_id`` must be 1..999.

    Raises:
        TypeError: ``dataset_id`` is not an int.
        ValueError: ``dataset_id`` is not in 1..999.

    >>> dataset_folder_name(7, "ACDC")
    'Dataset007_ACDC'
    """
    if isinstance(dataset_id, bool) or not isinstance(dataset_id, (int, np.integer)):
        raise TypeError(f"dataset_id must be an int, got {type(dataset_id).__name__}")
    if not 1 <= int(dataset_id) <= 999:
        raise ValueError(f"dataset id must be 1..999 (nnU-Net's three digits), got {dataset_id}")
    return f"Dataset{int(dataset_id):03d}_{name}"


def dataset_id_of(name: str) -> int:
    """The id of the dataset folder ``name`` (nnU-Net's ``convert_dataset_name_to_id``).

    >>> dataset_id_of("Dataset007_ACDC")
    7
    """
    from nnunetv2.utilities.dataset_name_id_conversion import convert_dataset_name_to_id
    return int(convert_dataset_name_to_id(name))


def resolve_raw_root(raw_root: Optional[PathLike]) -> Path:
    """``raw_root`` if given, else ``$nnUNet_raw``.

    Raises:
        ValueError: neither is there.

    >>> resolve_raw_root("/data/nnUNet_raw")
    PosixPath('/data/nnUNet_raw')
    """
    root = raw_root if raw_root is not None else os.environ.get("nnUNet_raw")
    if not root:
        raise ValueError("no output folder: give --out (raw_root) or set nnUNet_raw")
    return Path(root)


def resolve_preprocessed_root(preprocessed_root: Optional[PathLike], install_split: bool) -> Optional[Path]:
    """Where ``splits_final.json`` gets installed: ``preprocessed_root``, else ``$nnUNet_preprocessed``, else None.

    >>> resolve_preprocessed_root("/data/pre", install_split=False) is None
    True
    """
    if not install_split:
        return None
    root = preprocessed_root if preprocessed_root is not None else os.environ.get("nnUNet_preprocessed")
    return Path(root) if root else None


def prepare_target(raw_root: Path, name: str, overwrite: bool, preprocessed_root: Optional[Path]) -> Path:
    """Checks made before any work; returns ``raw_root / name``.

    Raises:
        FileExistsError: the dataset (or its installed ``splits_final.json``) exists and ``overwrite`` is False.
        ValueError: the dataset id is already used by a dataset of another name in the raw, preprocessed or
            results folder (nnU-Net refuses ids that map to two names).
    """
    dataset_id = dataset_id_of(name)
    for root in (raw_root, preprocessed_root, os.environ.get("nnUNet_results")):
        if root is None or not Path(root).is_dir():
            continue
        # the folders nnU-Net's find_candidate_datasets would take for this id
        clash = sorted(p.name for p in Path(root).iterdir() if p.is_dir() and p.name != name
                       and p.name.startswith(dataset_folder_name(dataset_id, "")))
        if clash:
            raise ValueError(f"dataset id {dataset_id} is already used by {clash[0]} in {root}; nnU-Net needs "
                             f"one name per id: choose another -d or remove that dataset")
    target = raw_root / name
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} exists; pass --overwrite (overwrite=True) to replace it")
    if preprocessed_root is not None:
        installed = preprocessed_root / name / "splits_final.json"
        if installed.exists() and not overwrite:
            raise FileExistsError(f"{installed} exists; pass --overwrite (overwrite=True) to replace it")
    return target


@contextmanager
def staged_dataset(target: Path, overwrite: bool) -> Iterator[Path]:
    """Yields an empty hidden folder beside ``target``; moves it to ``target`` when the block completes.

    :func:`nnunet_pmdice.fileio.staged_folder`: on any exception (a ConversionError in a worker,
    KeyboardInterrupt) the temporary folder is removed and ``target`` is left as it was; the folder's name
    starts with a dot so that nnU-Net never takes it for a dataset, and what a killed conversion left
    there is removed by the next conversion of the same dataset. The dataset gets the usual permissions.

    Raises:
        FileExistsError: ``target`` appeared during the conversion and ``overwrite`` is False.
    """
    with staged_folder(target, replace=overwrite) as tmp:
        yield tmp


# ------------------------------------------------------------------------------------------------ split

def read_case_list(path: PathLike) -> List[str]:
    """Case ids from a text file (one per line; '#' comments and blank lines skipped) or a folder.

    File names are accepted in place of ids (``cju0qkwl35piu0993l0dewei2.jpg`` -> ``cju0qkwl35piu0993l0dewei2``).
    A folder stands for the names of its files, or of the files in its ``images/`` sub-folder when it has
    one (the layout of PraNet's ``TestDataset/Kvasir``).

    Raises:
        ConversionError: ``path`` is missing or unreadable, or names no case.

    >>> import tempfile
    >>> p = Path(tempfile.mkdtemp()) / "test.txt"
    >>> _ = p.write_text("# PraNet test cases\\ncju0qkwl35piu0993l0dewei2.jpg\\ncju0s690hkp960855tjuaqvv0  # second\\n")
    >>> read_case_list(p)
    ['cju0qkwl35piu0993l0dewei2', 'cju0s690hkp960855tjuaqvv0']
    """
    path = Path(path)
    if path.is_dir():
        folder = path / "images" if (path / "images").is_dir() else path
        entries = [p.name for p in sorted(folder.iterdir()) if p.is_file() and not p.name.startswith(".")]
    elif path.is_file():
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as e:
            raise ConversionError(f"cannot read the case list {path}: {e}") from None
        entries = [line.split("#", 1)[0].strip() for line in text.splitlines()]
    else:
        raise ConversionError(f"missing file: expected a case list (text file or folder) at {path}")
    ids = []
    for entry in entries:
        if not entry:
            continue
        for ending in _LIST_ENDINGS:
            if entry.lower().endswith(ending):
                entry = entry[:-len(ending)]
                break
        if entry not in ids:
            ids.append(entry)
    if not ids:
        raise ConversionError(f"the case list {path} names no case")
    return ids


def split_by_list(cases: Sequence[str], test_cases: Sequence[str], source: PathLike) -> Tuple[List[str], List[str]]:
    """(train, test) with ``test_cases`` as the test side; every listed case must exist, and some must remain.

    Raises:
        ConversionError: a listed case is not among ``cases`` (named with ``source``), or fewer than 2
            training cases remain.

    >>> split_by_list(["a", "b", "c", "d"], ["c"], "test.txt")
    (['a', 'b', 'd'], ['c'])
    """
    known = set(cases)
    unknown = [c for c in test_cases if c not in known]
    if unknown:
        more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
        raise ConversionError(f"the test list {source} names cases that are not in the source dataset: "
                              f"{', '.join(unknown[:5])}{more}")
    test = set(test_cases)
    train = [c for c in cases if c not in test]
    if len(train) < 2:
        raise ConversionError(f"the test list {source} leaves {len(train)} training case(s); nnU-Net needs at least 2")
    return train, [c for c in cases if c in test]


def seeded_test_split(cases: Sequence[str], test_fraction: float, seed: int,
                      groups: Optional[Mapping[str, Optional[str]]] = None) -> Tuple[List[str], List[str]]:
    """(train, test): ``round(test_fraction * n)`` cases of each group drawn as test, reproducibly.

    Args:
        cases: case ids; their order does not matter (they are sorted first).
        test_fraction: in (0, 1); 0.1 gives Kvasir-SEG's 900/100, 0.4 gives MSSEG-2016's 9/6 (2 of 5 per centre).
        seed: seed of ``numpy.random.default_rng``.
        groups: case -> group (e.g. the scanner centre); the split is stratified over groups. None: one group.

    Returns: the training and the test case ids, each sorted.

    Raises:
        ValueError: ``test_fraction`` is not in (0, 1).
        ConversionError: the split leaves fewer than 2 training or no test case.

    >>> train, test = seeded_test_split([f"k{i:04d}" for i in range(1000)], 0.1, seed=12345)
    >>> len(train), len(test)
    (900, 100)
    """
    if not 0 < float(test_fraction) < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    rng = np.random.default_rng(seed)
    by_group: Dict[str, List[str]] = {}
    for c in sorted(cases):
        by_group.setdefault(str((groups or {}).get(c)), []).append(c)
    test: List[str] = []
    for g in sorted(by_group):
        members = by_group[g]
        n_test = int(round(test_fraction * len(members)))
        test += [members[i] for i in rng.permutation(len(members))[:n_test]]
    train = sorted(set(cases) - set(test))
    if len(train) < 2 or not test:
        raise ConversionError(f"a test fraction of {test_fraction} of {len(cases)} case(s) leaves {len(train)} "
                              f"training and {len(test)} test case(s); need at least 2 and 1")
    return train, sorted(test)


def cross_validation_folds(train_cases: Sequence[str], num_folds: int = DEFAULT_NUM_FOLDS,
                           seed: int = DEFAULT_SEED) -> List[Dict[str, List[str]]]:
    """nnU-Net's own k-fold split (``generate_crossval_split``) of the sorted training ids.

    With the defaults (5 folds, seed 12345) this is exactly the split nnU-Net would make itself on the
    same training cases; written down, it no longer depends on nnU-Net's defaults.

    Raises:
        ValueError: fewer than 2 training cases.

    >>> [len(f["val"]) for f in cross_validation_folds([f"c{i}" for i in range(12)])]
    [3, 3, 2, 2, 2]
    """
    from nnunetv2.utilities.crossval_split import generate_crossval_split
    if len(train_cases) < 2:
        raise ValueError(f"need at least 2 training cases for a validation fold, got {len(train_cases)}")
    folds = generate_crossval_split(sorted(train_cases), seed=seed, n_splits=min(num_folds, len(train_cases)))
    return [{"train": [str(c) for c in f["train"]], "val": [str(c) for c in f["val"]]} for f in folds]


def write_split_files(folder: Path, name: str, splits: List[Dict[str, List[str]]], test_cases: Sequence[str],
                      how: str) -> None:
    """Writes ``splits_final.json`` and ``splits_README.md`` (what the split is, how to install it) into ``folder``."""
    write_json(folder / "splits_final.json", splits, indent=1)
    folds = "\n".join(f"- fold {i}: {len(s['train'])} train / {len(s['val'])} validation cases"
                      for i, s in enumerate(splits))
    write_text(folder / "splits_README.md",
        f"# The split of {name}\n\n{how}\n\n"
        f"- test: {len(test_cases)} cases in imagesTs/labelsTs (nnU-Net never reads them)\n{folds}\n\n"
        "## Installing the training folds\n\n"
        "nnU-Net reads the folds from `$nnUNet_preprocessed/" + name + "/splits_final.json` (without it, it\n"
        "makes its own 5-fold split). The converter installs it there when `nnUNet_preprocessed` is set;\n"
        "otherwise, before training (from this folder):\n\n"
        "```bash\n"
        f"mkdir -p \"$nnUNet_preprocessed/{name}\"\n"
        f"cp splits_final.json \"$nnUNet_preprocessed/{name}/\"\n"
        "```\n\n"
        "`nnUNetv2_plan_and_preprocess` keeps the file. To train on all training cases at once (no\n"
        "validation), use nnU-Net's fold `all`.\n")


def install_splits(dataset_folder: Path, preprocessed_root: Optional[Path]) -> Optional[Path]:
    """Copies ``splits_final.json`` to ``preprocessed_root/<dataset>/`` (atomically); returns the path or None."""
    if preprocessed_root is None:
        return None
    return write_text(preprocessed_root / dataset_folder.name / "splits_final.json",
                      (dataset_folder / "splits_final.json").read_text(encoding="utf-8"))


# ------------------------------------------------------------------------------------------ dataset.json

def write_dataset_json(folder: Path, channel_names: Dict[int, str], labels: Dict[str, int], num_training: int,
                       file_ending: str, name: str, reference: str, description: str, reader_writer: str,
                       **extra) -> None:
    """nnU-Net's ``generate_dataset_json`` with the converter's provenance.

    nnunetv2 2.8.1's ``citation`` argument writes the ``release`` value instead, so the dataset's
    citation goes in ``reference`` and extra keys through ``**extra``.
    """
    from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json
    from .. import __version__
    generate_dataset_json(str(folder), dict(channel_names), dict(labels), num_training, file_ending,
                          dataset_name=name, reference=reference, description=description,
                          overwrite_image_reader_writer=reader_writer,
                          license="see the terms of use of the source dataset (reference)",
                          converted_by=f"nnunet-pmdice {__version__}", **extra)


def write_record(folder: Path, record: dict) -> None:
    """``conversion.json``: the source, the options and every case's origin, for provenance."""
    write_json(folder / "conversion.json", record, indent=1)


# -------------------------------------------------------------------------------------------- execution

def resolve_num_processes(num_processes: Optional[int]) -> int:
    """``num_processes`` checked (an int >= 1), or when None nnU-Net's default (``nnUNet_def_n_proc``, else 8)
    capped at the CPU count.

    Raises:
        ValueError: ``num_processes`` is not an int >= 1.

    >>> resolve_num_processes(2)
    2
    """
    if num_processes is None:
        from nnunetv2.configuration import default_num_processes as nnunet_default
        return max(1, min(int(nnunet_default), os.cpu_count() or 1))
    if isinstance(num_processes, bool) or not isinstance(num_processes, (int, np.integer)) or num_processes < 1:
        raise ValueError(f"num_processes must be an int >= 1, got {num_processes!r}")
    return int(num_processes)


def parallel_map(function: Callable, items: Sequence, num_processes: Optional[int], desc: str, progress: bool = True) -> list:
    """``[function(x) for x in items]`` with a tqdm bar, in a spawn pool of ``num_processes`` when > 1.

    ``function`` must be picklable (a module-level function or a ``functools.partial`` of one). The first
    exception raised by any item is re-raised here (a ConversionError keeps its message).

    >>> parallel_map(abs, [-1, 2, -3], num_processes=1, desc="abs", progress=False)
    [1, 2, 3]
    """
    from tqdm import tqdm
    num_processes = resolve_num_processes(num_processes)
    items = list(items)
    bar = dict(total=len(items), desc=desc, unit="case", disable=not progress)
    if num_processes == 1 or len(items) <= 1:
        return [function(x) for x in tqdm(items, **bar)]
    import multiprocessing
    with multiprocessing.get_context("spawn").Pool(min(num_processes, len(items))) as pool:
        return list(tqdm(pool.imap(function, items), **bar))


@dataclass
class ConversionResult:
    """What a converter wrote.

    Attributes:
        path: the raw dataset folder ``Dataset<id>_<Name>``.
        train_cases / test_cases: case ids in imagesTr / imagesTs.
        splits: the folds written to ``splits_final.json``.
        installed_splits: where ``splits_final.json`` was installed in nnUNet_preprocessed, or None.
        notes: things the user should know (printed by the command).
    """

    path: Path
    train_cases: List[str]
    test_cases: List[str]
    splits: List[Dict[str, List[str]]]
    installed_splits: Optional[Path] = None
    notes: List[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.path.name

    def summary(self) -> str:
        """The lines the ``convert`` command prints."""
        folds = ", ".join(f"{len(s['train'])}/{len(s['val'])}" for s in self.splits)
        lines = [f"wrote {self.path}",
                 f"  {len(self.train_cases)} training cases (imagesTr), {len(self.test_cases)} test cases (imagesTs)",
                 f"  {len(self.splits)} fold(s) train/val: {folds}"]
        if self.installed_splits is not None:
            lines.append(f"  splits_final.json installed in {self.installed_splits}")
        else:
            lines.append(f"  nnUNet_preprocessed not set: install {self.path / 'splits_final.json'} before training "
                         f"(see {self.path / 'splits_README.md'})")
        lines += [f"  note: {n}" for n in self.notes]
        dataset_id = dataset_id_of(self.name)
        lines.append(f"next: nnUNetv2_plan_and_preprocess -d {dataset_id} --verify_dataset_integrity")
        return "\n".join(lines)


def stale_preprocessed_note(preprocessed_root: Optional[Path], name: str) -> List[str]:
    """A note when nnUNet_preprocessed already holds preprocessed data of this dataset (now out of date)."""
    if preprocessed_root is None:
        return []
    folder = preprocessed_root / name
    if (folder / "dataset_fingerprint.json").exists() or any(folder.glob("nnUNetPlans*")):
        return [f"{folder} holds preprocessed data of an earlier conversion: re-run nnUNetv2_plan_and_preprocess"]
    return []


@dataclass
class Destination:
    """Where a converter writes, checked before any work (:func:`destination`), and the steps every
    converter ends with: :meth:`staged` (build the dataset in a hidden folder), :meth:`write_metadata`
    (``dataset.json``, the split files, ``conversion.json``), :meth:`result` (install the split, report).

    Attributes:
        name: ``Dataset<id>_<Name>``.
        target: the raw dataset folder.
        preprocessed: where ``splits_final.json`` gets installed, or None.
        overwrite: whether an existing dataset may be replaced.
        notes: things the user should know (printed by the command).
    """

    name: str
    target: Path
    preprocessed: Optional[Path]
    overwrite: bool
    notes: List[str] = field(default_factory=list)

    def staged(self):
        """:func:`staged_dataset` of :attr:`target`."""
        return staged_dataset(self.target, self.overwrite)

    def write_metadata(self, folder: Path, *, dataset_json: dict, splits: List[Dict[str, List[str]]],
                       test_cases: Sequence[str], how: str, record: dict, infos: Sequence[dict]) -> None:
        """Writes ``dataset.json`` (:func:`write_dataset_json` with ``dataset_json`` as its arguments and
        ``how`` as ``nnunet_pmdice_split``), ``splits_final.json`` + ``splits_README.md``, and
        ``conversion.json`` (``record`` with every case's info from ``infos`` under ``cases``) into ``folder``."""
        write_dataset_json(folder, name=self.name, nnunet_pmdice_split=how, **dataset_json)
        write_split_files(folder, self.name, splits, test_cases, how)
        cases = {i["case"]: {k: v for k, v in i.items() if k != "case"} for i in infos}
        write_record(folder, {**record, "cases": cases})

    def result(self, train_cases: Sequence[str], test_cases: Sequence[str],
               splits: List[Dict[str, List[str]]]) -> ConversionResult:
        """Installs ``splits_final.json`` (when :attr:`preprocessed` is set) and returns the result."""
        installed = install_splits(self.target, self.preprocessed)
        return ConversionResult(self.target, list(train_cases), list(test_cases), splits, installed, self.notes)


def destination(raw_root: Optional[PathLike], preprocessed_root: Optional[PathLike], install_split: bool,
                dataset_id: int, dataset_name: str, overwrite: bool) -> Destination:
    """Where a converter writes, checked before any work (see :func:`prepare_target`); the notes start with
    :func:`stale_preprocessed_note`.

    Raises:
        FileExistsError, ValueError: as :func:`prepare_target`; ValueError also when there is no raw folder.
    """
    raw = resolve_raw_root(raw_root)
    preprocessed = resolve_preprocessed_root(preprocessed_root, install_split)
    name = dataset_folder_name(dataset_id, dataset_name)
    target = prepare_target(raw, name, overwrite, preprocessed)
    return Destination(name, target, preprocessed, overwrite, stale_preprocessed_note(preprocessed, name))


def iter_sorted_dirs(folder: Path) -> Iterable[Path]:
    """The visible sub-folders of ``folder``, sorted by name."""
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
