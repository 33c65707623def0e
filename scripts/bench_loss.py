#!/usr/bin/env python
"""Loss cost benchmark: ``python scripts/bench_loss.py [--device cuda] [--quick] [--out DIR]``.

Same as ``nnunet-pmdice bench-loss``; see ``nnunet_pmdice.benchmark.loss_cost`` and docs/loss_cost.md for
what is measured.
"""
import sys

from nnunet_pmdice.benchmark.loss_cost import main

if __name__ == "__main__":
    sys.exit(main())
