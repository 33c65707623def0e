#!/usr/bin/env python
"""Times ``convert_kvasir`` on a synthetic Kvasir-SEG-sized source (JPEG images and masks) for several process counts.

Example: ``python scripts/bench_convert_kvasir.py --cases 200 --height 530 --width 622 -np 1 2``
Prints one line per process count: seconds and cases per second (with and without resizing to 320x320).
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np


def make_source(root: Path, cases: int, height: int, width: int) -> Path:
    from PIL import Image
    rng = np.random.default_rng(0)
    base = root / "Kvasir-SEG"
    (base / "images").mkdir(parents=True)
    (base / "masks").mkdir()
    yy, xx = np.mgrid[:height, :width]
    for i in range(cases):
        cy, cx = rng.uniform(0.3, 0.7) * height, rng.uniform(0.3, 0.7) * width
        inside = ((yy - cy) / (0.2 * height)) ** 2 + ((xx - cx) / (0.2 * width)) ** 2 <= 1
        img = np.stack([120 + 80 * inside, 70 + 20 * inside, 60 + 10 * inside], -1) + rng.normal(0, 10, inside.shape + (3,))
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(base / "images" / f"case{i:05d}.jpg", quality=90)
        Image.fromarray((inside * 255).astype(np.uint8)).save(base / "masks" / f"case{i:05d}.jpg", quality=75)
    return base


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cases", type=int, default=200)
    parser.add_argument("--height", type=int, default=530)
    parser.add_argument("--width", type=int, default=622)
    parser.add_argument("-np", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    from nnunet_pmdice.conversion import convert_kvasir
    with tempfile.TemporaryDirectory() as tmp:
        src = make_source(Path(tmp), args.cases, args.height, args.width)
        print(f"{args.cases} cases of {args.height}x{args.width}")
        print("processes | size     | seconds | cases/s")
        for size in (None, 320):
            for n in args.np:
                t = time.perf_counter()
                convert_kvasir(src, 999, Path(tmp) / "raw", size=size, num_processes=n, overwrite=True,
                               progress=False, install_split=False)
                dt = time.perf_counter() - t
                print(f"{n:9d} | {'original' if size is None else f'{size}x{size}':8s} | {dt:7.1f} | {args.cases / dt:7.1f}")


if __name__ == "__main__":
    main()
