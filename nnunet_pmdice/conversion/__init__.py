"""Converters for the paper's three datasets into nnU-Net raw format, with the paper's splits.

- :func:`convert_kvasir`: Kvasir-SEG (2D RGB polyps), 90/10 test split (a given list or seeded);
- :func:`convert_acdc`: ACDC (3D cine-MRI ED/ES frames), TransUNet's 70/10/20 patient split;
- :func:`convert_msseg`: MSSEG-2016 (challenge or 2021 flat layout; seeded 9/6 split stratified by centre)
  and MSSEG-2 (a second dataset).

Each writes ``Dataset<id>_<Name>`` (imagesTr/labelsTr, imagesTs/labelsTs, ``dataset.json`` from nnU-Net's
``generate_dataset_json``), ``splits_final.json`` with a note on how to install it, and ``conversion.json``
(provenance); the dataset is built in a hidden temporary folder and moved into place when complete
(:func:`nnunet_pmdice.fileio.staged_folder`). Every input file is read completely or refused: bad input
raises :class:`ConversionError` naming the case and the file. Command line:
``nnunet-pmdice convert kvasir|acdc|msseg``; reference: ``docs/conversion.md``.
"""
from .common import ConversionError, ConversionResult
from .kvasir import convert_kvasir
from .acdc import TRANSUNET_TEST, TRANSUNET_TRAIN, TRANSUNET_VAL, convert_acdc
from .msseg import convert_msseg

__all__ = ["ConversionError", "ConversionResult", "convert_kvasir", "convert_acdc", "convert_msseg",
           "TRANSUNET_TRAIN", "TRANSUNET_VAL", "TRANSUNET_TEST"]
