"""`sdift evaluate`: score a posterior against the true field (JSON on stdout)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from . import HelpFormatter

ARGUMENT_NAMES = {"index": "--trajectory"}
HELP = "score a posterior file against a true trajectory: VRMSE, RMSE, coverage, CRPS (JSON)"


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "evaluate", help=HELP,
        description="Compare the posterior of `sdift reconstruct` with trajectory I of a field collection; "
                    "prints JSON with vrmse (of the posterior mean), rmse, coverage_50, coverage_90 and crps.",
        formatter_class=HelpFormatter,
    )
    p.add_argument("posterior", metavar="POSTERIOR.nc", help="posterior file written by `sdift reconstruct`")
    p.add_argument("--truth", required=True, metavar="DATA.nc", help="field collection holding the true field")
    p.add_argument("--trajectory", type=int, required=True, metavar="I", help="position of the trajectory (0-based)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from inference.report import evaluate, load_posterior

    from ..data.fields import load_fields
    from ..data.observations import select_trajectory

    idata = load_posterior(args.posterior)
    truth = select_trajectory(load_fields(args.truth), args.trajectory)
    print(json.dumps(evaluate(idata, truth), indent=2))
    return 0
