#!/usr/bin/env python
"""Same as `nnunet-pmdice convert acdc ...`; run with -h for the options."""
import sys

from nnunet_pmdice.cli import main

if __name__ == "__main__":
    sys.exit(main(["convert", "acdc", *sys.argv[1:]]))
