"""The ``nnunet-pmdice`` command: one entry point, one sub-command per job."""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional


def _cmd_ext_path(args) -> int:
    from ._autoregister import EXT_FOLDER
    print(EXT_FOLDER)
    return 0


def _add_ext_path(sub) -> None:
    p = sub.add_parser("ext-path", help="print the folder to put in nnUNet_extTrainer (only needed with "
                                        "NNUNET_PMDICE_NO_AUTOREGISTER=1)")
    p.set_defaults(func=_cmd_ext_path)


def _cmd_synth(args) -> int:
    import os
    from .synthetic import generate
    out = args.out or os.environ.get("nnUNet_raw")
    if not out:
        print("error: give --out or set nnUNet_raw", file=sys.stderr)
        return 2
    path = generate(args.kind, out, args.d, num_train=args.num_train, num_test=args.num_test,
                    size=tuple(args.size) if args.size else None, seed=args.seed, regions=args.regions,
                    ignore_label=args.ignore_label, overwrite=args.overwrite, progress=True)
    print(path)
    return 0


def _add_synth(sub) -> None:
    from .synthetic import KINDS
    p = sub.add_parser("synth", help="write a synthetic dataset in nnU-Net raw format")
    p.add_argument("kind", choices=KINDS)
    p.add_argument("-d", type=int, required=True, metavar="ID", help="dataset id (1-999)")
    p.add_argument("--out", help="raw folder (default: $nnUNet_raw)")
    p.add_argument("--num-train", type=int, default=20)
    p.add_argument("--num-test", type=int, default=6)
    p.add_argument("--size", type=int, nargs="+", help="image size, 2 numbers (2D) or 3 (3D, z y x)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--regions", action="store_true", help="cardiac3d as an nnU-Net region dataset")
    p.add_argument("--ignore-label", action="store_true", help="add an ignore label on a border strip")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=_cmd_synth)


def _add_bench_loss(sub) -> None:
    from .benchmark import loss_cost
    p = sub.add_parser("bench-loss", help="time PM Dice against nnU-Net's own losses (forward+backward, memory)",
                       description=loss_cost.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    loss_cost.add_arguments(p)
    p.set_defaults(func=loss_cost.run)


def _add_convert(sub) -> None:
    from .conversion.cli import add_convert_parser
    add_convert_parser(sub)


def _add_evaluate(sub) -> None:
    from .evaluation.evaluate import add_parser
    add_parser(sub)


def _add_benchmark(sub) -> None:
    from .benchmark.runner import add_parser
    add_parser(sub)


def _add_demo(sub) -> None:
    from .benchmark.demo import add_parser
    add_parser(sub)


def _add_modulation_figure(sub) -> None:
    from .figures.modulation import add_parser
    add_parser(sub)


SUBCOMMANDS = [_add_demo, _add_benchmark, _add_evaluate, _add_synth, _add_convert, _add_bench_loss, _add_ext_path,
               _add_modulation_figure]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nnunet-pmdice", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for add in SUBCOMMANDS:
        add(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileExistsError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
