"""`sdift demo`: reconstruct a sparse, noisy ocean observation set with the shipped model."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .. import pretrained
from ..errors import bad_input
from . import HelpFormatter, check_seed, report, reserved

HELP = "reconstruct a sparse noisy ocean sound-speed observation set with the embedded pretrained model"
DESCRIPTION = (
    "Reconstruct the shipped ocean sound-speed observation set (1% of the grid, noisy) with the embedded "
    "pretrained model and MPDPS; write the posterior (netCDF) and figures into --out and print the VRMSE of "
    "the posterior mean, the 90% coverage, the calibrated noise level and the wall time. A few minutes on "
    "2 CPU cores."
)


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("demo", help=HELP, description=DESCRIPTION, formatter_class=HelpFormatter)
    p.add_argument("--out", default="demo-output",
                   help="output folder (posterior netCDF, figures); created if missing, in an existing folder")
    p.add_argument("--draws", type=int, default=8, help="posterior draws")
    p.add_argument("--seed", type=int, default=0, help="random seed of the sampler")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    check_seed(args.seed)
    with reserved(args.out):  # a second demo writing into the same --out is refused here
        if Path(args.out).exists() and not Path(args.out).is_dir():
            raise bad_input("--out", "a folder (or a path that does not exist yet)", str(args.out))
        if not pretrained.available("ocean"):
            report(args, {"available": False}, "sdift demo: not yet available: no pretrained ocean model is shipped "
                                               "with this version")
            return 0
        from ..demo import run_demo

        summary, text = run_demo(out=args.out, draws=args.draws, seed=args.seed, progress=not args.no_progress)
    report(args, {"available": True, **summary}, text)
    return 0
