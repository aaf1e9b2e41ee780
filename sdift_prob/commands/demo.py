"""`sdift demo`: reconstruct a sparse, noisy ocean observation set with the shipped model."""

from __future__ import annotations

import argparse
from typing import Any

HELP = "reconstruct a sparse noisy ocean sound-speed observation set with the embedded pretrained model"


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("demo", help=HELP, description=HELP,
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", default="demo-output", help="output folder (posterior netCDF, figures)")
    p.add_argument("--draws", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .. import pretrained

    if not pretrained.available("ocean"):
        print("sdift demo: not yet available: no pretrained ocean model is shipped with this version")
        return 0
    from ..demo import run_demo

    return run_demo(out=args.out, draws=args.draws, seed=args.seed)
