"""Kvasir-SEG (1000 colonoscopy RGB images with binary polyp masks) -> nnU-Net raw dataset.

Source layout (``kvasir-seg.zip`` unpacked; ``source`` may be ``Kvasir-SEG/`` or the folder holding it)::

    Kvasir-SEG/images/<id>.jpg      RGB JPEG, 332x487 .. 1920x1072
    Kvasir-SEG/masks/<id>.jpg       the polyp mask, a lossy JPEG: gray values other than 0/255, some 3-channel
    Kvasir-SEG/kavsir_bboxes.json   (sic) bounding boxes; not needed

Output: ``imagesTr/<id>_0000.png`` (RGB PNG: nnU-Net's ``NaturalImage2DIO`` reads it as 3 channels R, G, B),
``labelsTr/<id>.png`` (uint8, 0 background / 1 polyp), the test cases in ``imagesTs``/``labelsTs``.

Masks: converted to gray (ITU-R 601 luma for 3-channel ones) and thresholded at > 127. A mask with more
than :data:`MAX_MIDGRAY_FRACTION` of mid-gray pixels (64..191) is rejected as not binary: JPEG noise sits
on the edges only. ``size``: images resized bilinearly, masks resized bilinearly as gray and then
thresholded (smoother than nearest-neighbour on a jagged JPEG edge); the paper uses 320 x 320.

Split: the paper's 90 % / 10 % train/test (Galdran et al., the PraNet 900/100 protocol, whose list is not
published as text). ``test_list`` (a text file of ids, or PraNet's ``TestDataset/Kvasir`` folder) gives
the test cases; without it a seeded random 10 % is drawn (:func:`~.common.seeded_test_split`). The
training cases get nnU-Net's own seeded 5-fold cross-validation (identical to nnU-Net's default).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence, Tuple, Union

import numpy as np

from .common import (DEFAULT_SEED, ConversionError, ConversionResult, PathLike, case_error, check_case_id,
                     cross_validation_folds, destination, resolve_num_processes, install_splits, parallel_map,
                     read_case_list, seeded_test_split, split_by_list, staged_dataset, write_dataset_json,
                     write_record, write_split_files)

NAME = "KvasirSEG"
IMAGE_ENDINGS = (".jpg", ".jpeg", ".png")
#: masks with more mid-gray pixels than this fraction are not binary masks
MAX_MIDGRAY_FRACTION = 0.25
#: the paper's input size
PAPER_SIZE = (320, 320)
REFERENCE = ("Jha et al., Kvasir-SEG: A Segmented Polyp Dataset, MMM 2020. https://datasets.simula.no/kvasir-seg/")


def find_kvasir_root(source: PathLike) -> Path:
    """The folder holding ``images/`` and ``masks/``: ``source`` itself or ``source/Kvasir-SEG``."""
    source = Path(source)
    if not source.is_dir():
        raise ConversionError(f"missing folder: expected the unpacked Kvasir-SEG archive at {source}")
    for root in (source, source / "Kvasir-SEG", source / "kvasir-seg"):
        if (root / "images").is_dir() or (root / "masks").is_dir():
            for sub in ("images", "masks"):
                if not (root / sub).is_dir():
                    raise ConversionError(f"missing folder: expected Kvasir-SEG's {sub}/ at {root / sub}")
            return root
    raise ConversionError(f"missing folder: expected Kvasir-SEG's images/ and masks/ in {source} or "
                          f"{source / 'Kvasir-SEG'}")


def _files_by_id(folder: Path) -> dict:
    out = {}
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.suffix.lower() in IMAGE_ENDINGS and not p.name.startswith("."):
            if p.stem in out:
                raise ConversionError(f"two files for case {p.stem} in {folder}: {out[p.stem].name} and {p.name}")
            out[p.stem] = p
    return out


def list_kvasir_cases(root: Path) -> dict:
    """``{case id: (image path, mask path)}``; every image needs a mask of the same name and vice versa."""
    images, masks = _files_by_id(root / "images"), _files_by_id(root / "masks")
    if not images:
        raise ConversionError(f"no images (*.jpg) in {root / 'images'}")
    for case in images:
        if case not in masks:
            raise case_error(case, f"missing mask: expected {case}.jpg in {root / 'masks'}", images[case])
    for case in masks:
        if case not in images:
            raise case_error(case, f"missing image: expected {case}.jpg in {root / 'images'}", masks[case])
    return {check_case_id(c, images[c]): (images[c], masks[c]) for c in images}


def _open(path: Path, case: str):
    from PIL import Image, UnidentifiedImageError
    try:
        im = Image.open(path)
        im.load()
        return im
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise case_error(case, f"unreadable image file: {e}", path) from None


def binarize_mask(mask_gray: np.ndarray) -> np.ndarray:
    """0/1 uint8 from a gray mask: ``> 127``."""
    return (mask_gray > 127).astype(np.uint8)


def convert_kvasir_case(case: str, image_path: Path, mask_path: Path, image_out: Path, label_out: Path,
                        size: Optional[Tuple[int, int]]) -> dict:
    """Converts one case; returns ``{"case", "original_size": [h, w], "polyp_fraction"}``.

    ``size`` is (height, width) or None (keep). Module-level so that a spawn pool can run it.
    """
    from PIL import Image
    image = _open(image_path, case)
    mask = _open(mask_path, case)
    if image.size != mask.size:
        raise case_error(case, f"image is {image.size[1]}x{image.size[0]} (h x w) but its mask is "
                               f"{mask.size[1]}x{mask.size[0]}; expected the same size", mask_path)
    image = image.convert("RGB")
    gray = mask.convert("L")
    values = np.asarray(gray)
    midgray = float(np.mean((values >= 64) & (values <= 191)))
    if midgray > MAX_MIDGRAY_FRACTION:
        raise case_error(case, f"mask is not binary: {100 * midgray:.0f}% of its pixels are mid-gray (64..191); "
                               f"expected black (0) and white (255) up to JPEG noise", mask_path)
    original = [image.size[1], image.size[0]]
    if size is not None:
        wh = (size[1], size[0])
        image = image.resize(wh, Image.BILINEAR)
        gray = gray.resize(wh, Image.BILINEAR)
    label = binarize_mask(np.asarray(gray))
    image.save(image_out)
    Image.fromarray(label).save(label_out)
    return {"case": case, "original_size": original, "polyp_fraction": round(float(label.mean()), 6)}


def _run_case(task):
    return convert_kvasir_case(*task)


def _parse_size(size) -> Optional[Tuple[int, int]]:
    if size is None:
        return None
    size = (int(size), int(size)) if np.isscalar(size) else tuple(int(s) for s in size)
    if len(size) == 1:
        size = size * 2
    if len(size) != 2 or min(size) < 8:
        raise ValueError(f"size must be one or two integers >= 8 (height, width), got {size}")
    return size


def convert_kvasir(source: PathLike, dataset_id: int, raw_root: Optional[PathLike] = None, *,
                   size: Union[None, int, Sequence[int]] = None, test_list: Optional[PathLike] = None,
                   test_fraction: float = 0.1, seed: int = DEFAULT_SEED, overwrite: bool = False,
                   num_processes: Optional[int] = None, progress: bool = True, install_split: bool = True,
                   preprocessed_root: Optional[PathLike] = None) -> ConversionResult:
    """Writes ``Dataset<id>_KvasirSEG`` (2D, RGB PNG, labels background/polyp) and its split.

    Args:
        source: the unpacked archive (``Kvasir-SEG/`` or its parent).
        dataset_id: nnU-Net dataset id, 1..999.
        raw_root: where to write the dataset (default ``$nnUNet_raw``).
        size: resize to (height, width) (one int: square); None keeps the original sizes. Paper: 320.
        test_list: text file of test case ids, or a folder of test files (PraNet ``TestDataset/Kvasir``).
        test_fraction, seed: the seeded random test split used without ``test_list`` (default 10 %).
        overwrite: replace an existing dataset (and installed split) of the same name.
        num_processes: worker processes (default: nnU-Net's ``nnUNet_def_n_proc`` / 8, capped at the CPUs).
        progress: show a progress bar.
        install_split: copy ``splits_final.json`` to ``preprocessed_root`` (default ``$nnUNet_preprocessed``).

    Returns: a :class:`~.common.ConversionResult`.

    Example:
        >>> convert_kvasir("~/data/Kvasir-SEG", 501, size=320)  # doctest: +SKIP
    """
    size = _parse_size(size)
    num_processes = resolve_num_processes(num_processes)
    root = find_kvasir_root(Path(source).expanduser())
    cases = list_kvasir_cases(root)
    if test_list is not None:
        train, test = split_by_list(sorted(cases), read_case_list(test_list), test_list)
        how = f"Test cases: the {len(test)} cases listed in `{test_list}`."
    else:
        train, test = seeded_test_split(sorted(cases), test_fraction, seed)
        how = (f"Test cases: a seeded random {test_fraction:g} of the {len(cases)} cases (numpy default_rng, "
               f"seed {seed}), following the paper's 90/10 split.")
    splits = cross_validation_folds(train)
    how += (f" Training folds: nnU-Net's own seeded 5-fold cross-validation over the {len(train)} training cases "
            "(`generate_crossval_split`, seed 12345), the split nnU-Net would make itself.")

    name, target, preprocessed, notes = destination(raw_root, preprocessed_root, install_split, dataset_id,
                                                    NAME, overwrite)
    with staged_dataset(target, overwrite) as tmp:
        tasks = []
        for part, ids in (("Tr", train), ("Ts", test)):
            (tmp / f"images{part}").mkdir()
            (tmp / f"labels{part}").mkdir()
            tasks += [(c, *cases[c], tmp / f"images{part}" / f"{c}_0000.png", tmp / f"labels{part}" / f"{c}.png",
                       size) for c in ids]
        infos = parallel_map(_run_case, tasks, num_processes, desc="convert Kvasir-SEG", progress=progress)
        write_dataset_json(tmp, {0: "R", 1: "G", 2: "B"}, {"background": 0, "polyp": 1}, len(train), ".png",
                           name=name, reference=REFERENCE, reader_writer="NaturalImage2DIO",
                           description=f"Kvasir-SEG polyps, {'resized to %dx%d' % size if size else 'original sizes'}, "
                                       f"masks thresholded at >127",
                           nnunet_pmdice_split=how)
        write_split_files(tmp, name, splits, test, how)
        write_record(tmp, {"dataset": "Kvasir-SEG", "source": str(root.resolve()), "size": size,
                           "test_list": str(test_list) if test_list is not None else None,
                           "test_fraction": None if test_list is not None else test_fraction,
                           "seed": None if test_list is not None else seed, "test": test,
                           "cases": {i["case"]: {k: v for k, v in i.items() if k != "case"} for i in infos}})
    installed = install_splits(target, preprocessed)
    return ConversionResult(target, train, test, splits, installed, notes)
