"""``nnunet-pmdice convert kvasir|acdc|msseg``: the argument handling of the converters.

``scripts/convert_*.py`` run the same code (``nnunet_pmdice.cli.main(["convert", <dataset>, ...])``).
"""
from __future__ import annotations

import argparse
from typing import Callable


def _common(p: argparse.ArgumentParser, example_id: int) -> None:
    p.add_argument("-d", type=int, required=True, metavar="ID", help=f"nnU-Net dataset id, 1-999 (e.g. {example_id})")
    p.add_argument("--out", metavar="DIR", help="raw folder to write into (default: $nnUNet_raw)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing dataset of the same name (and its installed splits_final.json)")
    p.add_argument("-np", "--num-processes", type=int, default=None, metavar="N",
                   help="worker processes (default: $nnUNet_def_n_proc or 8, at most the CPU count)")
    p.add_argument("--no-install-split", action="store_true",
                   help="do not copy splits_final.json into $nnUNet_preprocessed/DatasetXXX_Name/")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _seeded_split(p: argparse.ArgumentParser, fraction: float, what: str) -> None:
    from .common import DEFAULT_SEED
    p.add_argument("--test-list", metavar="PATH",
                   help="test cases: a text file of case ids (one per line; file names accepted)" + what)
    p.add_argument("--test-fraction", type=float, default=fraction,
                   help=f"without --test-list: the fraction drawn as test cases (default {fraction})")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED, help=f"seed of that draw (default {DEFAULT_SEED})")


def _run(convert: Callable, args, **options) -> int:
    result = convert(args.source, args.d, args.out, overwrite=args.overwrite, num_processes=args.num_processes,
                     progress=not args.no_progress, install_split=not args.no_install_split, **options)
    print(result.summary())
    return 0


def _cmd_kvasir(args) -> int:
    from .kvasir import convert_kvasir
    return _run(convert_kvasir, args, size=args.size, test_list=args.test_list, test_fraction=args.test_fraction,
                seed=args.seed)


def _cmd_acdc(args) -> int:
    from .acdc import convert_acdc
    return _run(convert_acdc, args, include_testing=args.include_testing)


def _cmd_msseg(args) -> int:
    from .msseg import convert_msseg
    return _run(convert_msseg, args, layout=args.layout, test_list=args.test_list, test_fraction=args.test_fraction,
                seed=args.seed)


def add_convert_parser(sub) -> None:
    """Registers ``convert`` with its sub-commands on the ``nnunet-pmdice`` sub-parsers."""
    conv = sub.add_parser("convert", help="convert Kvasir-SEG, ACDC or MSSEG into an nnU-Net raw dataset with the "
                                          "paper's split",
                          description="Convert one of the paper's datasets (unpacked as downloaded) into nnU-Net "
                                      "raw format, with the paper's train/test split and splits_final.json.")
    datasets = conv.add_subparsers(dest="dataset", required=True)

    p = datasets.add_parser("kvasir", help="Kvasir-SEG -> DatasetXXX_KvasirSEG (2D RGB PNG)",
                            description="Kvasir-SEG/images/*.jpg + masks/*.jpg -> RGB PNG images and 0/1 PNG masks; "
                                        "test split from --test-list or a seeded 10%.")
    p.add_argument("source", help="the unpacked kvasir-seg.zip (Kvasir-SEG/ or its parent)")
    _common(p, 501)
    p.add_argument("--size", type=int, nargs="+", metavar="N",
                   help="resize to N x N (or H W); the paper uses 320 (default: keep the original sizes)")
    _seeded_split(p, 0.1, ", or a folder of test files such as PraNet's TestDataset/Kvasir")
    p.set_defaults(func=_cmd_kvasir)

    p = datasets.add_parser("acdc", help="ACDC -> DatasetXXX_ACDC (3D, ED+ES frames, TransUNet split)",
                            description="ACDC database/training -> ED and ES frames with ground truth; TransUNet "
                                        "split: 70 train + 10 validation patients (one fold), 20 test patients.")
    p.add_argument("source", help="ACDC's database/ folder (or its parent)")
    _common(p, 502)
    p.add_argument("--include-testing", action="store_true",
                   help="also convert database/testing (patients 101-150) into imagesTsOfficial/labelsTsOfficial")
    p.set_defaults(func=_cmd_acdc)

    p = datasets.add_parser("msseg", help="MSSEG-2016 -> DatasetXXX_MSSEG2016, or MSSEG-2 -> DatasetXXX_MSSEG2",
                            description="MSSEG-2016 training data (challenge layout or the 2021 flat layout; 5 "
                                        "modalities + consensus) or MSSEG-2 (two FLAIR time points); seeded test "
                                        "split stratified by centre (9/6 for the 15 MSSEG-2016 scans).")
    p.add_argument("source", help="the unpacked data (e.g. the MSSEG-2016 Training/ folder)")
    _common(p, 503)
    from .msseg import LAYOUTS
    p.add_argument("--layout", choices=LAYOUTS, default="auto", help="source layout (default: detect)")
    _seeded_split(p, 0.4, "")
    p.set_defaults(func=_cmd_msseg)
