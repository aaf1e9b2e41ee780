"""σ inferred on replicate observation sets of the shipped ocean test trajectory: does its 90% interval cover the true noise?

    python -m benchmarks.sigma_replicates --replicates 20 --noise 0.1 0.03 --out benchmarks/results/sigma_replicates.json

`reconstruct(sigma="infer")` draws σ before sampling from the Gaussian FTM + GP model's marginal
likelihood (`inference.sigma_marginal`); this bench calls that same step (no sampling: σ never
sees the sampler) on fresh observation sets (ρ 1%, settings 1 and 2, noise std = the given
fractions of the trajectory's std, one PRNG key per replicate) and reports the coverage of the
true σ by the central 90% interval and the posterior median over the truth.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import jax
import numpy as np

from inference.reconstruct import open_run, prepare_problem
from inference.sigma_marginal import sigma_posterior
from sdift_prob import pretrained
from sdift_prob.data import load_fields, sample_observations, select_trajectory
from sdift_prob.io import write_json


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--replicates", type=int, default=20)
    p.add_argument("--noise", type=float, nargs="+", default=[0.1, 0.03], help="noise std / trajectory std")
    p.add_argument("--rho", type=float, default=0.01)
    args = p.parse_args(argv)

    bundle = pretrained.path("ocean")
    run = open_run(bundle / "run")
    nz = run.ftm.normalizer
    truth = select_trajectory(load_fields(bundle / "test_trajectory.nc"), 0)
    std = float(np.std(truth.values))
    rep_error = run.representation_error[0]
    out = {"config": {**vars(args), "trajectory_std": std, "representation_error": rep_error * float(nz.std)},
           "cells": {}}
    for frac in args.noise:
        for setting in (1, 2):
            rows = []
            for r in range(args.replicates):
                noise = frac * std
                obs = sample_observations(jax.random.key(100 + r), truth, rho=args.rho, setting=setting,
                                          noise_scale=noise)
                # the same padded observations, design rows and time Gram as `reconstruct`
                problem = prepare_problem(run, obs, sigma="infer")
                post = sigma_posterior(jax.random.key(r), problem.design, problem.padded.values, problem.mask,
                                       problem.time_gram(run), *run.core_moments, representation_error=rep_error)
                lo, med, hi = post.quantile([0.05, 0.5, 0.95]) * float(nz.std)
                rows.append({"sigma_true": noise, "lo": lo, "median": med, "hi": hi,
                             "covers": bool(lo <= noise <= hi)})
            cell = f"setting{setting}_noise{frac:g}"
            ratio = [x["median"] / x["sigma_true"] for x in rows]
            out["cells"][cell] = {"cover90": float(np.mean([x["covers"] for x in rows])),
                                  "median_over_true": [float(np.mean(ratio)), float(np.std(ratio))],
                                  "replicates": rows}
            print(cell, "cover90", out["cells"][cell]["cover90"], "median/true",
                  np.round(out["cells"][cell]["median_over_true"], 3), flush=True)
    write_json(args.out, out)


if __name__ == "__main__":
    main()
