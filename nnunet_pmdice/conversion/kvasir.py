"""Kvasir-SEG (1000 colonoscopy RGB images with binary polyp masks) -> nnU-Net raw dataset.

Source layout (``kvasir-seg.zip`` unpacked; ``source`` may be ``Kvasir-SEG/`` or the folder holding it)::

    Kvasir-SEG/images/<id>.jpg      RGB JPEG, 332x487 .. 1920x1072
    Kvasir-SEG/masks/<id>.jpg       the polyp mask, a lossy JPEG: gray values other than 0/255, some 3-channel
    Kvasir-SEG/kavsir_bboxes.json   (sic) bounding boxes; not needed

PNG re-releases store the masks as ``masks/<id>.png`` (lossless, 0/1 or 0/255) beside ``images/<id>.jpg``:
images and masks are paired by name whatever their endings (.jpg, .jpeg, .png).

Output: ``imagesTr/<id>_0000.png`` (RGB PNG: nnU-Net's ``NaturalImage2DIO`` reads it as 3 channels R, G, B),
``labelsTr/<id>.png`` (uint8, 0 background / 1 polyp), the test cases in ``imagesTs``/``labelsTs``.

Masks (:func:`decode_mask`): converted to gray (ITU-R 601 luma for 3-channel ones); a lossless (PNG, BMP,
TIFF) mask holding only 0 and 1 is read as 0/1, every other mask on the 0/255 scale and thresholded at > 127.
A lossless mask that fits neither (values 0, 1 and 255, or a largest value between 2 and 127) is refused as
ambiguous, and so is a mask with more than :data:`MAX_MIDGRAY_FRACTION` of mid-gray pixels (64..191): JPEG
noise sits on the edges only. Every image holds a polyp, so a dataset whose masks all come out empty (0/1
masks saved as JPEG, say) is refused too. Every file is read completely or refused: a JPEG or PNG cut short
raises a ConversionError naming it. ``size``: images resized bilinearly, masks resized bilinearly as gray and then
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
                     cross_validation_folds, destination, parallel_map, read_case_list, resolve_num_processes,
                     seeded_test_split, split_by_list)

NAME = "KvasirSEG"
IMAGE_ENDINGS = (".jpg", ".jpeg", ".png")
#: PIL formats that store exact values (a mask in one of them is read without a noise margin)
LOSSLESS_FORMATS = ("PNG", "BMP", "TIFF")
#: masks with more mid-gray pixels than this fraction are not binary masks
MAX_MIDGRAY_FRACTION = 0.25
#: the paper's input size
PAPER_SIZE = (320, 320)
REFERENCE = ("Jha et al., Kvasir-SEG: A Segmented Polyp Dataset, MMM 2020. https://datasets.simula.no/kvasir-seg/")


def find_kvasir_root(source: PathLike) -> Path:
    """The folder holding ``images/`` and ``masks/``: ``source`` itself or ``source/Kvasir-SEG``.

    Raises:
        ConversionError: ``source`` or one of the two folders is missing.
    """
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
    """``{case id: (image path, mask path)}``; every image needs a mask of the same name and vice versa
    (endings may differ: ``<id>.jpg`` with ``<id>.png``).

    Raises:
        ConversionError: no image, an image without a mask or a mask without an image, two files of one
            case in a folder, or a name that is not usable as an nnU-Net case id.
    """
    images, masks = _files_by_id(root / "images"), _files_by_id(root / "masks")
    if not images:
        raise ConversionError(f"no images (*.jpg) in {root / 'images'}")
    for case in images:
        if case not in masks:
            raise case_error(case, f"missing mask: expected {case}.jpg or {case}.png in {root / 'masks'}",
                             images[case])
    for case in masks:
        if case not in images:
            raise case_error(case, f"missing image: expected {case}.jpg or {case}.png in {root / 'images'}",
                             masks[case])
    return {check_case_id(c, images[c]): (images[c], masks[c]) for c in images}


def _open(path: Path, case: str):
    """The image at ``path``, decoded completely; a ConversionError naming the file when it is cut short or
    unreadable (PIL's ``verify`` checks a PNG's chunk checksums, which its decoder skips)."""
    from PIL import Image, ImageFile, UnidentifiedImageError
    strict = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file raises instead of being padded
    try:
        with Image.open(path) as im:
            if im.format == "PNG":
                im.verify()
        im = Image.open(path)
        im.load()
        if im.format == "PNG" and b"IEND" not in Path(path).read_bytes()[-64:]:
            raise OSError("the PNG ends before its IEND chunk")
        return im
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        kind = "truncated file" if "truncated" in str(e).lower() or "IEND" in str(e) else "unreadable image file"
        raise case_error(case, f"{kind}: {e}", path) from None
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = strict


def decode_mask(gray: np.ndarray, lossless: bool, case: str = "?", path: Optional[PathLike] = None):
    """(the mask on the 0/255 scale, its encoding: ``"0/1"``, ``"0/255"`` or ``"empty"``) from a gray mask.

    Args:
        gray: the mask as uint8 gray values (2D).
        lossless: whether the file stores exact values (PNG, BMP, TIFF), or is lossy (JPEG: noise allowed).

    Raises:
        ConversionError: the encoding is ambiguous (a lossless mask with values 0, 1 and 255, or whose
            largest value is 2..127), or more than :data:`MAX_MIDGRAY_FRACTION` of the pixels are mid-gray.

    >>> decode_mask(np.array([[0, 1]], np.uint8), lossless=True)
    (array([[  0, 255]], dtype=uint8), '0/1')
    >>> decode_mask(np.array([[3, 250]], np.uint8), lossless=False)[1]
    '0/255'
    >>> decode_mask(np.array([[0, 1, 255]], np.uint8), lossless=True, case="c1")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    nnunet_pmdice.conversion.common.ConversionError: case c1: ambiguous mask encoding: values [0, 1, 255]; ...
    """
    top = int(gray.max()) if gray.size else 0
    if top == 0:
        return gray, "empty"
    if lossless:
        values = np.unique(gray)
        if top == 1:
            return (gray * 255).astype(np.uint8), "0/1"
        if top < 128 or (values[:2].tolist() == [0, 1] and len(values) == 3):
            shown = values.tolist() if len(values) <= 6 else values[:3].tolist() + ["..."] + values[-2:].tolist()
            raise case_error(case, f"ambiguous mask encoding: values {shown}; expected 0/1 or 0/255 (a PNG mask is "
                                   "lossless)", path)
    midgray = float(np.mean((gray >= 64) & (gray <= 191)))
    if midgray > MAX_MIDGRAY_FRACTION:
        raise case_error(case, f"mask is not binary: {100 * midgray:.0f}% of its pixels are mid-gray (64..191); "
                               f"expected black (0) and white (255) up to JPEG noise", path)
    return gray, "0/255"


def binarize_mask(mask_gray: np.ndarray) -> np.ndarray:
    """0/1 uint8 from a gray mask on the 0/255 scale: ``> 127``.

    >>> binarize_mask(np.array([0, 127, 128, 255], np.uint8)).tolist()
    [0, 0, 1, 1]
    """
    return (mask_gray > 127).astype(np.uint8)


def convert_kvasir_case(case: str, image_path: Path, mask_path: Path, image_out: Path, label_out: Path,
                        size: Optional[Tuple[int, int]]) -> dict:
    """Converts one case; returns ``{"case", "original_size": [h, w], "mask_encoding", "polyp_fraction", "mask"}``.

    ``size`` is (height, width) or None (keep). Module-level so that a spawn pool can run it.

    Raises:
        ConversionError: an image or mask cut short or unreadable, a mask of another size than its image, a
            mask of ambiguous encoding or not binary (:func:`decode_mask`).
    """
    from PIL import Image
    image = _open(image_path, case)
    mask = _open(mask_path, case)
    if image.size != mask.size:
        raise case_error(case, f"image is {image.size[1]}x{image.size[0]} (h x w) but its mask is "
                               f"{mask.size[1]}x{mask.size[0]}; expected the same size", mask_path)
    image = image.convert("RGB")
    values, encoding = decode_mask(np.asarray(mask.convert("L")), mask.format in LOSSLESS_FORMATS, case, mask_path)
    gray = Image.fromarray(values)
    original = [image.size[1], image.size[0]]
    if size is not None:
        wh = (size[1], size[0])
        image = image.resize(wh, Image.BILINEAR)
        gray = gray.resize(wh, Image.BILINEAR)
    label = binarize_mask(np.asarray(gray))
    image.save(image_out)
    Image.fromarray(label).save(label_out)
    return {"case": case, "original_size": original, "mask_encoding": encoding,
            "polyp_fraction": round(float(label.mean()), 6), "mask": str(mask_path)}


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

    Raises:
        ConversionError: the source cannot be converted as it is (a missing, truncated or unreadable file,
            a case off its grid, unexpected label values ...): one line naming the case and the file.
        FileExistsError: the dataset (or its installed split) exists and ``overwrite`` is False.
        ValueError: a bad argument, no raw folder, or the dataset id used by another dataset name.
        ConversionError: also when every mask comes out empty.

    Example:
        (on your downloaded data, not run as a test)::

            convert_kvasir("~/data/Kvasir-SEG", 501, size=320)
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

    dest = destination(raw_root, preprocessed_root, install_split, dataset_id, NAME, overwrite)
    with dest.staged() as tmp:
        tasks = []
        for part, ids in (("Tr", train), ("Ts", test)):
            (tmp / f"images{part}").mkdir()
            (tmp / f"labels{part}").mkdir()
            tasks += [(c, *cases[c], tmp / f"images{part}" / f"{c}_0000.png", tmp / f"labels{part}" / f"{c}.png",
                       size) for c in ids]
        infos = parallel_map(_run_case, tasks, num_processes, desc="convert Kvasir-SEG", progress=progress)
        empty = sorted(i["case"] for i in infos if i["polyp_fraction"] == 0)
        if len(empty) == len(infos):
            first = min(infos, key=lambda i: i["case"])["mask"]
            raise ConversionError(f"all {len(infos)} masks are empty after conversion (every Kvasir-SEG image holds a "
                                  f"polyp): no pixel above 127, nor a lossless 0/1 mask, e.g. in {first}")
        if empty:
            dest.notes.append(f"{len(empty)} case(s) with an empty mask: {', '.join(empty[:10])}")
        encodings = sorted({i["mask_encoding"] for i in infos} - {"empty"})
        resized = "resized to %dx%d" % size if size else "original sizes"
        dest.write_metadata(
            tmp, splits=splits, test_cases=test, how=how, infos=infos,
            dataset_json=dict(channel_names={0: "R", 1: "G", 2: "B"}, labels={"background": 0, "polyp": 1},
                              num_training=len(train), file_ending=".png", reference=REFERENCE,
                              reader_writer="NaturalImage2DIO",
                              description=f"Kvasir-SEG polyps, {resized}, masks read as {' and '.join(encodings)}"
                                          + (" (thresholded at >127)" if "0/255" in encodings else "")),
            record={"dataset": "Kvasir-SEG", "source": str(root.resolve()), "size": size,
                    "test_list": str(test_list) if test_list is not None else None,
                    "test_fraction": None if test_list is not None else test_fraction,
                    "seed": None if test_list is not None else seed, "test": test})
    return dest.result(train, test, splits)
