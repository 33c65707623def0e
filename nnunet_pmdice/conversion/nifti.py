"""NIfTI reading and writing for the 3D converters (ACDC, MSSEG), with SimpleITK.

SimpleITK reads the spacing from the NIfTI qform/pixdim when the sform is inconsistent with it (ACDC's
sform is scaled to identity while the qform has the true spacing; nibabel's ``.affine`` then says
1 x 1 x 1 mm). Outputs are written by SimpleITK, with consistent sform and qform, which is also how
nnU-Net's default ``SimpleITKIO`` reads and writes them.

Geometry checks: a label map (or another channel) must be on the image's grid: the same size, and
spacing, origin and direction equal within :data:`SPACING_RTOL`, :data:`ORIGIN_TOL_VOXELS` of a voxel
and :data:`DIRECTION_ATOL`. Within those tolerances (header round-off) the reference geometry is copied
over, so nnU-Net's strict check sees identical grids; beyond them the case is rejected.

Completeness: SimpleITK fills the missing end of a ``.nii.gz`` cut short (a broken download) with zeros
and reads it without an error. :func:`check_complete` therefore reads every file to its end first: the
gzip stream must end properly (gzip checks its length and CRC) and hold the header and all the voxel bytes
the header announces (nibabel parses the header); an uncompressed ``.nii`` must be as long.
"""
from __future__ import annotations

import gzip
import zlib
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np

from .common import case_error

#: relative tolerance on the voxel spacing
SPACING_RTOL = 1e-3
#: tolerance on the origin, as a fraction of the smallest voxel spacing
ORIGIN_TOL_VOXELS = 1e-2
#: absolute tolerance on the direction cosines
DIRECTION_ATOL = 1e-3

NIFTI_ENDINGS = (".nii.gz", ".nii")


def find_nifti(folder: Path, stem: str) -> Optional[Path]:
    """``folder/stem.nii.gz`` or ``folder/stem.nii``, whichever exists (else None).

    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp()); _ = (d / "Consensus.nii").write_bytes(b"")
    >>> find_nifti(d, "Consensus").name, find_nifti(d, "T1")
    ('Consensus.nii', None)
    """
    for ending in NIFTI_ENDINGS:
        p = folder / (stem + ending)
        if p.is_file():
            return p
    return None


@contextmanager
def _itk_warnings(show: bool):
    import SimpleITK as sitk
    before = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(show)
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(before)


def _expected_nifti_bytes(head: bytes) -> Optional[int]:
    """Header + voxel bytes announced by a NIfTI-1/2 header (its first bytes), or None when it is not one."""
    import nibabel as nib
    for cls in (nib.Nifti1Header, nib.Nifti2Header):
        size = cls.sizeof_hdr
        if len(head) < size:
            continue
        for order in ("<", ">"):
            if int(np.frombuffer(head[:4], order + "i4")[0]) == size:
                try:
                    hdr = cls(head[:size], endianness=order, check=False)
                    shape = hdr.get_data_shape()
                    itemsize = hdr.get_data_dtype().itemsize
                    offset = int(hdr.get_data_offset())
                except Exception:  # not a header nibabel understands: leave it to SimpleITK
                    return None
                return offset + int(np.prod(shape, dtype=np.int64)) * itemsize
    return None


def check_complete(path: Path, case: str) -> None:
    """Reads the NIfTI file ``path`` to its end; ConversionError naming the file when it is cut short.

    A ``.gz`` file must decompress to the end of its gzip stream (length and CRC checked); the data must
    hold the header and all the voxel bytes its header announces.

    Raises:
        ConversionError: ``case <case>: truncated file: ... (<path>)``, or ``unreadable image file`` when it is
            not a gzip stream at all.
    """
    path = Path(path)
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            head = f.read(540)
            length = len(head)
            while True:
                chunk = f.read(1 << 22)
                if not chunk:
                    break
                length += len(chunk)
    except EOFError:
        raise case_error(case, "truncated file: the gzip stream ends early (an incomplete download?)", path) from None
    except (gzip.BadGzipFile, zlib.error) as e:
        raise case_error(case, f"unreadable image file: not a complete gzip stream ({e})", path) from None
    except OSError as e:
        raise case_error(case, f"unreadable image file: {e}", path) from None
    expected = _expected_nifti_bytes(head)
    if expected is not None and length < expected:
        raise case_error(case, f"truncated file: {length} bytes of data where its header announces {expected}", path)


def read_image(path: Path, case: str, ndim: int = 3, itk_warnings: bool = True):
    """A SimpleITK image of ``ndim`` dimensions, read completely (:func:`check_complete`).

    ``itk_warnings=False`` hides ITK's warnings while reading (ACDC: every file warns about the
    "unexpected scales in sform" that this reader handles).

    Raises:
        ConversionError: naming the case and the file, when it is missing, cut short, unreadable, not
            ``ndim``-dimensional or not one value per voxel.
    """
    import SimpleITK as sitk
    if not Path(path).is_file():
        raise case_error(case, "missing file", path)
    check_complete(path, case)
    try:
        with _itk_warnings(itk_warnings):
            image = sitk.ReadImage(str(path))
    except RuntimeError as e:
        detail = str(e).strip().splitlines()[-1] if str(e).strip() else "unknown error"
        raise case_error(case, f"unreadable image file: {detail}", path) from None
    if image.GetDimension() != ndim:
        raise case_error(case, f"expected a {ndim}D image, found {image.GetDimension()}D of size {image.GetSize()}",
                         path)
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise case_error(case, f"expected one value per voxel, found {image.GetNumberOfComponentsPerPixel()}", path)
    return image


def _fmt(values: Iterable[float]) -> str:
    return "(" + ", ".join(f"{v:.6g}" for v in values) + ")"


def match_grid(reference, other, case: str, reference_path: Path, other_path: Path):
    """``other`` on ``reference``'s grid: geometry copied when equal within tolerance.

    Raises:
        ConversionError: size, spacing, origin or direction differ beyond the tolerances (all named).
    """
    problems = []
    if reference.GetSize() != other.GetSize():
        problems.append(f"size {other.GetSize()} != {reference.GetSize()}")
    sp_r, sp_o = np.array(reference.GetSpacing()), np.array(other.GetSpacing())
    if not np.allclose(sp_o, sp_r, rtol=SPACING_RTOL, atol=0):
        problems.append(f"spacing {_fmt(sp_o)} != {_fmt(sp_r)}")
    if not np.allclose(other.GetOrigin(), reference.GetOrigin(), rtol=0, atol=ORIGIN_TOL_VOXELS * sp_r.min()):
        problems.append(f"origin {_fmt(other.GetOrigin())} != {_fmt(reference.GetOrigin())}")
    if not np.allclose(other.GetDirection(), reference.GetDirection(), rtol=0, atol=DIRECTION_ATOL):
        problems.append(f"direction {_fmt(other.GetDirection())} != {_fmt(reference.GetDirection())}")
    if problems:
        raise case_error(case, f"{Path(other_path).name} is not on the grid of {Path(reference_path).name}: "
                               + "; ".join(problems), other_path)
    other.CopyInformation(reference)
    return other


def label_values(image, allowed: Sequence[int], case: str, path: Path) -> np.ndarray:
    """The label map as a uint8 array (z, y, x).

    Raises:
        ConversionError: non-integer values, or values not in ``allowed``.
    """
    import SimpleITK as sitk
    array = sitk.GetArrayViewFromImage(image)
    values = np.unique(array)
    if np.issubdtype(values.dtype, np.floating) and not np.all(np.isfinite(values) & (values == np.round(values))):
        bad = values[~(np.isfinite(values) & (values == np.round(values)))]
        raise case_error(case, f"label map has non-integer values {bad[:5].tolist()}; expected {list(allowed)}", path)
    unexpected = [v for v in values.tolist() if int(v) not in set(allowed)]
    if unexpected:
        raise case_error(case, f"unexpected label values {[int(v) for v in unexpected][:10]}; expected only "
                               f"{list(allowed)}", path)
    return array.astype(np.uint8)


def write_label(array: np.ndarray, reference, path: Path) -> None:
    """Writes a uint8 label map on ``reference``'s grid."""
    import SimpleITK as sitk
    seg = sitk.GetImageFromArray(array.astype(np.uint8, copy=False))
    seg.CopyInformation(reference)
    sitk.WriteImage(seg, str(path), useCompression=True)


def write_image(image, path: Path) -> None:
    """Writes an image as is (pixel type kept), compressed."""
    import SimpleITK as sitk
    sitk.WriteImage(image, str(path), useCompression=True)


def spacing_zyx(image) -> tuple:
    """The spacing in numpy (z, y, x) order."""
    return tuple(float(s) for s in image.GetSpacing()[::-1])


__all__ = ["find_nifti", "check_complete", "read_image", "match_grid", "label_values", "write_label",
           "write_image", "spacing_zyx", "NIFTI_ENDINGS"]
