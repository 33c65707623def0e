"""Synthetic datasets in nnU-Net raw format, deterministic by seed, with the paper's two problems built in.

Four kinds, one per dataset of the paper plus the situation of its Figure 2:

- ``polyp2d`` (like Kvasir-SEG): 2D RGB PNG, textured background, one large easy object with a soft
  boundary plus small objects of lower contrast. Labels background / polyp.
- ``faintpolyp2d`` (the paper's Figure 2, the demo's task): the same images with 2-4 small objects whose
  contrast is below the background's texture: large easy pixels beside small hard ones (difficulty
  imbalance). Settings in :data:`POLYP_PARAMS`, changeable with ``params``.
- ``cardiac3d`` (like ACDC): 3D NIfTI with anisotropic spacing (slices 5 mm apart, 1.5 mm in plane),
  a cavity (LV) inside a ring (MYO) plus a crescent beside them (RV): nested structures of unequal
  size. Labels background / RV / MYO / LV. ``regions=True`` writes it as an nnU-Net region dataset
  (heart = 1+2+3, LV+MYO = 2+3, LV = 3) trained with sigmoid outputs.
- ``lesion3d`` (like MSSEG): 3D NIfTI with several input channels (FLAIR-, T1- and T2-like), a
  brain-like ellipsoid and a few small lesions, under 1% of the voxels (severe class imbalance).

Every kind writes ``imagesTr``/``labelsTr`` (training cases), ``imagesTs``/``labelsTs`` (held-out
test cases, never read by nnU-Net), and ``dataset.json`` through nnU-Net's ``generate_dataset_json``,
building in a temporary folder and moving it into place when complete. The same arguments (seed
included) give the same images and labels; ``dataset.json`` records them under ``synthetic``, with
the measured foreground fraction of every class over all cases and the objects of every class counted
by size (:func:`count_objects`).

Foreground fractions at the default sizes (seed 0, 50 cases; ``generate(kind, out, 100,
num_train=40, num_test=10)``, read from ``dataset.json``):

============  =================  ====================================================================
kind          size               foreground fraction of the voxels
============  =================  ====================================================================
polyp2d       96 x 96            polyp 11.4% (2-4 objects per image; the small ones hold ~10% of it)
faintpolyp2d  64 x 64            polyp 12.5% (160 objects of 10-99 pixels, 50 of 100-999)
cardiac3d     10 x 48 x 48       RV 4.6%, MYO 3.9%, LV 3.6%
lesion3d      24 x 48 x 48       lesion 0.04% (MSSEG-like severe imbalance)
============  =================  ====================================================================
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict, Optional, Tuple

import numpy as np

from .fileio import building_folder

KINDS = ("polyp2d", "faintpolyp2d", "cardiac3d", "lesion3d")
KINDS_2D = ("polyp2d", "faintpolyp2d")


DEFAULT_SIZES = {"polyp2d": (96, 96), "faintpolyp2d": (64, 64), "cardiac3d": (10, 48, 48), "lesion3d": (24, 48, 48)}


def _smooth_noise(rng: np.random.Generator, shape, scale: int) -> np.ndarray:
    """Low-frequency texture: coarse noise upsampled by linear interpolation, in [0, 1]."""
    from scipy.ndimage import zoom
    coarse_shape = tuple(max(2, s // scale) for s in shape)
    coarse = rng.random(coarse_shape)
    out = zoom(coarse, [s / c for s, c in zip(shape, coarse_shape)], order=1)
    out = out[tuple(slice(0, s) for s in shape)]
    return (out - out.min()) / max(out.max() - out.min(), 1e-8)


def _grid(shape):
    return np.meshgrid(*[np.arange(s, dtype=np.float64) for s in shape], indexing="ij")


#: settings of the two polyp kinds: ``polyp2d`` (small objects easy to find) and ``faintpolyp2d`` (small, faint
#: objects beside one large easy object: the difficulty imbalance of the paper's Figure 2). Radii are
#: fractions of the shorter image side; contrasts are added to the red channel in [0, 1] units (the large
#: object adds 0.35 at its centre), against texture of range ~0.25 and pixel noise of sd ``noise``.
POLYP_PARAMS: Dict[str, Dict] = {
    "polyp2d": dict(n_small=(1, 3), small_radius=(0.03, 0.06), small_contrast=0.08, noise=0.03),
    "faintpolyp2d": dict(n_small=(2, 4), small_radius=(0.035, 0.055), small_contrast=0.045, noise=0.03),
}


def _polyp2d(rng: np.random.Generator, size, n_small=(1, 3), small_radius=(0.03, 0.06), small_contrast=0.08,
             noise=0.03) -> Tuple[np.ndarray, np.ndarray]:
    H, W = size
    yy, xx = _grid((H, W))
    texture = 0.6 * _smooth_noise(rng, (H, W), 8) + 0.4 * _smooth_noise(rng, (H, W), 3)
    base = np.stack([0.55 + 0.25 * texture, 0.35 + 0.2 * texture, 0.3 + 0.15 * texture], 0)
    label = np.zeros((H, W), np.uint8)
    # one large, easy object with a soft boundary
    cy, cx = rng.uniform(0.3, 0.7) * H, rng.uniform(0.3, 0.7) * W
    ry, rx = rng.uniform(0.14, 0.22) * H, rng.uniform(0.14, 0.22) * W
    r = np.sqrt(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2)
    soft = 1 / (1 + np.exp((r - 1) * 8))
    label[r <= 1] = 1
    img = base + soft[None] * np.array([0.35, -0.05, -0.1])[:, None, None]
    # small, low-contrast objects: the hard pixels
    for _ in range(rng.integers(n_small[0], n_small[1] + 1)):
        for _try in range(20):
            sy, sx = rng.uniform(0.1, 0.9) * H, rng.uniform(0.1, 0.9) * W
            rad = rng.uniform(*small_radius) * min(H, W)
            d = np.sqrt((yy - sy) ** 2 + (xx - sx) ** 2)
            if not np.any(label[d <= rad + 2]):
                break
        label[d <= rad] = 1
        img = img + (d <= rad)[None] * (small_contrast * np.array([1.0, 0.0, -0.375]))[:, None, None]
    img = img + rng.normal(0, noise, img.shape)
    img = np.clip(img * 255, 0, 255).astype(np.uint8)
    return img, label


def _cardiac3d(rng: np.random.Generator, size) -> Tuple[np.ndarray, np.ndarray]:
    Z, H, W = size
    zz, yy, xx = _grid((Z, H, W))
    label = np.zeros((Z, H, W), np.uint8)
    cy, cx = rng.uniform(0.42, 0.58) * H, rng.uniform(0.42, 0.58) * W
    r_lv = rng.uniform(0.12, 0.16) * min(H, W)
    wall = rng.uniform(0.05, 0.07) * min(H, W)
    # the heart narrows towards the apex (higher slices)
    taper = 1 - 0.5 * (zz / max(Z - 1, 1))
    d = np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2)
    lv = d <= r_lv * taper
    myo = (d <= (r_lv + wall) * taper) & ~lv
    ry_c, rx_c = cy, cx + (r_lv + wall) * 1.1
    d_rv = np.sqrt(((yy - ry_c) / 1.4) ** 2 + (xx - rx_c) ** 2)
    rv = (d_rv <= r_lv * 1.1 * taper) & ~(d <= (r_lv + wall * 1.5) * taper)
    label[rv] = 1
    label[myo] = 2
    label[lv] = 3
    means = np.array([0.2, 0.75, 0.45, 0.8])
    img = means[label] + 0.15 * _smooth_noise(rng, (Z, H, W), 6) + rng.normal(0, 0.06, (Z, H, W))
    return (img * 1000).astype(np.float32)[None], label


def _lesion3d(rng: np.random.Generator, size) -> Tuple[np.ndarray, np.ndarray]:
    Z, H, W = size
    zz, yy, xx = _grid((Z, H, W))
    brain = (((zz - Z / 2) / (0.45 * Z)) ** 2 + ((yy - H / 2) / (0.42 * H)) ** 2
             + ((xx - W / 2) / (0.38 * W)) ** 2) <= 1
    label = np.zeros((Z, H, W), np.uint8)
    inside = np.argwhere(brain)
    budget = 0.006 * brain.sum()
    for _ in range(rng.integers(2, 6)):
        if label.sum() >= budget:
            break
        c = inside[rng.integers(len(inside))]
        rad = rng.uniform(0.8, 2.0)
        d = np.sqrt(((zz - c[0]) * 2) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2)
        label[(d <= rad) & brain] = 1
    tissue = 0.5 + 0.2 * _smooth_noise(rng, (Z, H, W), 5)
    les = label.astype(np.float64)
    flair = brain * tissue + 0.45 * les + rng.normal(0, 0.05, label.shape)
    t1 = brain * (1 - 0.5 * tissue) - 0.15 * les + rng.normal(0, 0.05, label.shape)
    t2 = brain * (0.3 + 0.4 * tissue) + 0.25 * les + rng.normal(0, 0.05, label.shape)
    return (np.stack([flair, t1, t2]) * 1000).astype(np.float32), label


_MAKERS: Dict[str, Callable] = {"polyp2d": _polyp2d, "faintpolyp2d": _polyp2d, "cardiac3d": _cardiac3d,
                                 "lesion3d": _lesion3d}
_SPACING = {"cardiac3d": (5.0, 1.5, 1.5), "lesion3d": (1.0, 1.0, 1.0)}  # (z, y, x) in mm
_CHANNELS = {"polyp2d": {0: "R", 1: "G", 2: "B"}, "faintpolyp2d": {0: "R", 1: "G", 2: "B"}, "cardiac3d": {0: "MRI"},
             "lesion3d": {0: "FLAIR", 1: "T1", 2: "T2"}}
_LABELS = {"polyp2d": {"background": 0, "polyp": 1}, "faintpolyp2d": {"background": 0, "polyp": 1},
           "cardiac3d": {"background": 0, "RV": 1, "MYO": 2, "LV": 3},
           "lesion3d": {"background": 0, "lesion": 1}}
_REGIONS = {"background": 0, "heart": [1, 2, 3], "LV_MYO": [2, 3], "LV": [3]}
_NAMES = {"polyp2d": "SynthPolyp2D", "faintpolyp2d": "SynthFaintPolyp2D", "cardiac3d": "SynthCardiac3D",
          "lesion3d": "SynthLesion3D"}


def _write_case(kind: str, folder_img: Path, folder_lab: Path, case: str, img: np.ndarray, lab: np.ndarray):
    if kind in KINDS_2D:
        from PIL import Image
        Image.fromarray(np.moveaxis(img, 0, -1)).save(folder_img / f"{case}_0000.png")
        Image.fromarray(lab).save(folder_lab / f"{case}.png")
        return
    import SimpleITK as sitk
    spacing = _SPACING[kind][::-1]  # SimpleITK wants (x, y, z)
    for c in range(img.shape[0]):
        im = sitk.GetImageFromArray(img[c])
        im.SetSpacing(spacing)
        sitk.WriteImage(im, str(folder_img / f"{case}_{c:04d}.nii.gz"))
    seg = sitk.GetImageFromArray(lab)
    seg.SetSpacing(spacing)
    sitk.WriteImage(seg, str(folder_lab / f"{case}.nii.gz"))


def dataset_name(dataset_id: int, kind: str, regions: bool = False) -> str:
    """nnU-Net's folder name of a synthetic dataset; nnU-Net's ``convert_dataset_name_to_id`` reads the id back.

    >>> dataset_name(7, "faintpolyp2d")
    'Dataset007_SynthFaintPolyp2D'

    Raises:
        ValueError: unknown kind or an id outside 1-999.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown synthetic dataset kind {kind!r}; choose one of {KINDS}")
    if not 1 <= int(dataset_id) <= 999:
        raise ValueError(f"dataset id must be 1..999 (nnU-Net's three digits), got {dataset_id}")
    return f"Dataset{int(dataset_id):03d}_{_NAMES[kind]}{'Regions' if regions else ''}"


def polyp_params(kind: str, params: Optional[Dict] = None) -> Dict:
    """The object settings of a polyp kind: :data:`POLYP_PARAMS` of ``kind`` updated with ``params``.

    >>> polyp_params("faintpolyp2d", {"small_contrast": 0.05})["small_contrast"]
    0.05

    Raises:
        ValueError: ``params`` for a kind other than the polyp kinds, or an unknown setting.
    """
    if kind not in POLYP_PARAMS:
        if params:
            raise ValueError(f"object settings (params) apply to the kinds {tuple(POLYP_PARAMS)}, not {kind!r}")
        return {}
    out = dict(POLYP_PARAMS[kind])
    unknown = set(params or {}) - set(out)
    if unknown:
        raise ValueError(f"unknown {kind} setting(s) {sorted(unknown)}; known: {sorted(out)}")
    out.update(params or {})
    return {k: list(v) if isinstance(v, (tuple, list)) else float(v) for k, v in out.items()}


def synth_record(kind: str, num_train: int = 20, num_test: int = 6, size: Optional[Tuple[int, ...]] = None,
                 seed: int = 0, regions: bool = False, ignore_label: bool = False,
                 params: Optional[Dict] = None) -> Dict:
    """The settings that determine a synthetic dataset (written into its dataset.json under ``synthetic``).

    >>> synth_record("faintpolyp2d", 4, 2)["params"]["n_small"]
    [2, 4]
    """
    record = {"kind": kind, "num_train": int(num_train), "num_test": int(num_test),
              "size": list(size if size is not None else DEFAULT_SIZES[kind]), "seed": int(seed),
              "regions": bool(regions), "ignore_label": bool(ignore_label)}
    if kind in POLYP_PARAMS:
        record["params"] = polyp_params(kind, params)
    return record


#: object size bins (pixels in 2D, voxels in 3D) of the object counts in dataset.json
OBJECT_SIZE_BINS = ((1, 9), (10, 99), (100, 999), (1000, None))


def _bin_name(lo: int, hi: Optional[int]) -> str:
    return f"{lo}-{hi}" if hi is not None else f">={lo}"


def count_objects(label: np.ndarray, values: Dict[str, int]) -> Dict[str, Dict[str, int]]:
    """Connected components (cc3d; 8-connected in 2D, 26 in 3D) of each class, counted by size bin.

    >>> lab = np.zeros((20, 20), np.uint8); lab[1:3, 1:3] = 1; lab[5:17, 5:17] = 1; lab[18, 18] = 1
    >>> count_objects(lab, {"polyp": 1})
    {'polyp': {'1-9': 2, '10-99': 0, '100-999': 1, '>=1000': 0}}
    """
    import cc3d
    out = {}
    for name, value in values.items():
        comps = cc3d.connected_components(np.ascontiguousarray(label == value))
        sizes = np.bincount(comps.ravel())[1:]
        out[name] = {_bin_name(lo, hi): int(np.sum((sizes >= lo) & (sizes <= (hi if hi is not None else np.inf))))
                     for lo, hi in OBJECT_SIZE_BINS}
    return out


def generate(kind: str, raw_root, dataset_id: int, num_train: int = 20, num_test: int = 6,
             size: Optional[Tuple[int, ...]] = None, seed: int = 0, regions: bool = False,
             ignore_label: bool = False, overwrite: bool = False, progress: bool = False,
             params: Optional[Dict] = None) -> Path:
    """Writes ``Dataset<id>_<Name>`` under ``raw_root`` and returns its path.

    ``ignore_label=True`` adds an ``ignore`` label covering a border strip of every training case
    (to exercise nnU-Net's ignore-label training). ``regions`` is for ``cardiac3d`` only. ``params``
    overrides object settings of the polyp kinds (see :data:`POLYP_PARAMS`).

    ``dataset.json`` records, under ``synthetic``: the settings (:func:`synth_record`), the foreground
    fraction of every class over all cases (``foreground_fraction``) and the objects of every class
    counted by size, over all cases and over the test cases (``objects``, ``objects_test``; see
    :func:`count_objects`).

    Raises:
        ValueError: unknown kind, id outside 1-999, too few cases, a size of the wrong length or under 8,
            ``regions`` for a kind other than ``cardiac3d``, unknown ``params``.
        FileExistsError: the dataset folder exists and ``overwrite`` is false.
    """
    from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json

    name = dataset_name(dataset_id, kind, regions)
    if regions and kind != "cardiac3d":
        raise ValueError("regions=True is available for kind 'cardiac3d' (nested structures)")
    if num_train < 2 or num_test < 0:
        raise ValueError(f"need num_train >= 2 and num_test >= 0, got {num_train} and {num_test}")
    size = tuple(size) if size is not None else DEFAULT_SIZES[kind]
    maker_params = polyp_params(kind, params)
    ndim = 2 if kind in KINDS_2D else 3
    if len(size) != ndim or min(size) < 8:
        raise ValueError(f"size for {kind} must be {ndim} numbers >= 8, got {size}")
    raw_root = Path(raw_root)
    target = raw_root / name
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} exists; pass overwrite=True (--overwrite) to replace it")
    if raw_root.is_dir():
        from batchgenerators.utilities.file_and_folder_operations import subdirs
        # nnU-Net's convert_id_to_dataset_name needs one name per id (the same prefix search)
        others = [d for d in subdirs(str(raw_root), prefix=f"Dataset{int(dataset_id):03d}", join=False) if d != name]
        if others:
            raise ValueError(f"dataset id {dataset_id} is already used by {', '.join(others)} in {raw_root}; "
                             f"nnU-Net needs one name per id")
    with building_folder(target) as tmp:
        folders = {k: tmp / k for k in ("imagesTr", "labelsTr", "imagesTs", "labelsTs")}
        for f in folders.values():
            f.mkdir()
        rng = np.random.default_rng(seed)
        cases = [(f"{_NAMES[kind].lower()}_{i:03d}", "Tr" if i < num_train else "Ts")
                 for i in range(num_train + num_test)]
        it = cases
        if progress:
            from tqdm import tqdm
            it = tqdm(cases, desc=f"synth {kind}", unit="case")
        labels = dict(_REGIONS) if regions else dict(_LABELS[kind])
        if ignore_label:
            labels["ignore"] = max(v if isinstance(v, int) else max(v) for v in labels.values()) + 1
        num_labels = len(_LABELS[kind])
        counts = np.zeros(num_labels, np.int64)
        class_values = {k: v for k, v in _LABELS[kind].items() if v > 0}
        objects = {split: {k: dict.fromkeys(map(lambda b: _bin_name(*b), OBJECT_SIZE_BINS), 0)
                           for k in class_values} for split in ("Tr", "Ts")}
        for case, split in it:
            img, lab = _MAKERS[kind](np.random.default_rng(rng.integers(2 ** 63)), size, **maker_params)
            counts += np.bincount(lab.ravel(), minlength=num_labels)[:num_labels]
            for cls, bins in count_objects(lab, class_values).items():
                for b, n in bins.items():
                    objects[split][cls][b] += n
            if ignore_label and split == "Tr":
                lab = lab.copy()
                lab[..., :2] = labels["ignore"]
            _write_case(kind, folders[f"images{split}"], folders[f"labels{split}"], case, img, lab)
        file_ending = ".png" if kind in KINDS_2D else ".nii.gz"
        record = synth_record(kind, num_train, num_test, size, seed, regions, ignore_label, params)
        names = {v: k for k, v in _LABELS[kind].items()}
        record["foreground_fraction"] = {names[v]: float(counts[v] / counts.sum()) for v in range(1, num_labels)}
        record["objects"] = {cls: {b: objects["Tr"][cls][b] + objects["Ts"][cls][b] for b in bins}
                             for cls, bins in objects["Tr"].items()}
        record["objects_test"] = objects["Ts"]
        generate_dataset_json(str(tmp), _CHANNELS[kind], labels, num_train, file_ending, dataset_name=name,
                              regions_class_order=(1, 2, 3) if regions else None,
                              description=f"nnunet-pmdice synthetic '{kind}' dataset, seed {seed}, size {size}",
                              overwrite_image_reader_writer="NaturalImage2DIO" if kind in KINDS_2D
                              else "SimpleITKIO", synthetic=record)
    return target
