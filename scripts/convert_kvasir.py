#!/usr/bin/env python
"""Same as `nnunet-pmdice convert kvasir ...`; run with -h for the options."""
import sys

from nnunet_pmdice.cli import main

if __name__ == "__main__":
    sys.exit(main(["convert", "kvasir", *sys.argv[1:]]))
