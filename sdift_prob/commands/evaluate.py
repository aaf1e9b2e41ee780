"""`sdift evaluate`: score a posterior against the true field (a table on stderr, JSON on request)."""

from __future__ import annotations

import argparse
from typing import Any

from ..data.fields import load_fields
from ..data.sampling import select_trajectory
from ..errors import InputError
from . import HelpFormatter, report

ARGUMENT_NAMES = {"index": "--trajectory"}
HELP = ("score a posterior file against a true trajectory: VRMSE, RMSE, coverage, CRPS, energy/variogram scores "
        "(JSON with --json-summary)")
# The 400 is metrics.VARIOGRAM_MAX_POINTS (not imported here: it would load JAX for `sdift -h`).
DESCRIPTION = """\
Compare the posterior of `sdift reconstruct` with trajectory I of a field collection; prints the
scores on stderr, and with --json-summary as one JSON object on stdout with these keys:

  vrmse, rmse             of the posterior mean
  coverage_50, coverage_90
                          fraction of true values inside the central 50% / 90% Student-t predictive
                          intervals m +- t(S-1) s sqrt(1 + 1/S): nominal at any draw count when the
                          posterior is calibrated (unchanged meaning of these two keys)
  coverage_50_quantile, coverage_90_quantile
                          the same with equal-tailed quantile intervals of the draws (np.quantile,
                          ArviZ's ETI): below nominal at few draws even when calibrated
  coverage_50_hdi, coverage_90_hdi
                          the same with ArviZ's highest-density intervals (az.hdi)
  n_draws                 number of draws behind every figure (chains x draws)
  crps                    mean CRPS per entry (fair estimator)
  energy_score            fair energy score of whole time frames, mean over frames
  variogram_score         variogram score (p = 0.5) on at most 400 points per frame (drawn with
                          seed 0, the same in every frame), mean over frames

Coverage and CRPS look at one entry at a time; the energy and variogram scores also see a wrong
spatial correlation of the draws. Both depend on the grid: compare them only between posteriors on
the same grid. NaN truth entries (land, gaps) are left out of every figure."""


class EvaluateHelpFormatter(HelpFormatter):
    """Keeps the line breaks of the description: it is a table of the JSON keys."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        return "".join(indent + line for line in text.splitlines(keepends=True))


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "evaluate", help=HELP,
        description=DESCRIPTION, formatter_class=EvaluateHelpFormatter,
    )
    p.add_argument("posterior", metavar="POSTERIOR.nc", help="posterior file written by `sdift reconstruct`")
    p.add_argument("--truth", required=True, metavar="DATA.nc", help="field collection holding the true field")
    p.add_argument("--trajectory", type=int, required=True, metavar="I", help="position of the trajectory (0-based)")
    p.set_defaults(func=run)


def check_provenance(recorded: Any, truth_attrs: Any, trajectory: int) -> None:
    """Refuse scoring a posterior against another trajectory or field collection than the one its
    observations were drawn from, when the posterior records it (`sdift observe` writes the
    trajectory and the collection's simulator and seed; `reconstruct` copies them into the
    posterior's attrs `observations`). The collection is compared by simulator and seed, not by
    path, so a copied or moved file still matches. Posteriors of other observations (user data,
    or written before this was recorded) are not checked."""
    if not isinstance(recorded, dict) or "trajectory" not in recorded:
        return
    source = recorded.get("source", "?")
    if int(recorded["trajectory"]) != int(trajectory):
        raise InputError(
            f"--trajectory: the posterior was reconstructed from observations of trajectory {recorded['trajectory']} "
            f"of {source}, not trajectory {trajectory}; pass --trajectory {recorded['trajectory']} to score it "
            "against the field it estimates")
    for key, truth_key in (("source_simulator", "simulator"), ("source_seed", "seed")):
        if key in recorded and truth_key in truth_attrs and str(recorded[key]) != str(truth_attrs[truth_key]):
            raise InputError(
                f"--truth: the posterior's observations come from {source} ({truth_key} {recorded[key]!r}), but "
                f"this file has {truth_key} {truth_attrs[truth_key]!r}; pass the field collection the observations "
                "were drawn from")


def run(args: argparse.Namespace) -> int:
    import numbers

    from inference.report import evaluate, load_posterior, posterior_attrs

    idata = load_posterior(args.posterior)
    fields = load_fields(args.truth)
    check_provenance(posterior_attrs(idata).get("observations"), dict(fields.attrs), args.trajectory)
    truth = select_trajectory(fields, args.trajectory)
    scores = evaluate(idata, truth)
    width = max(map(len, scores), default=0)
    lines = [f"scores of {args.posterior} against trajectory {args.trajectory} of {args.truth}:"]
    lines += [f"  {k:<{width}}  {v:.6g}" if isinstance(v, numbers.Real) and not isinstance(v, numbers.Integral)
              else f"  {k:<{width}}  {v}" for k, v in scores.items()]
    report(args, scores, "\n".join(lines))
    return 0
