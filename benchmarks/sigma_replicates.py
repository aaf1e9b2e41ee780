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

from inference.guided import union_times
from inference.reconstruct import _pad_slots, open_run
from inference.sigma_marginal import sigma_posterior
from sdift_prob import pretrained
from sdift_prob.data import load_fields, sample_observations, select_trajectory
from sdift_prob.ftm import design_rows
from sdift_prob.gp import gram_float64
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
    ftm, nz = run.ftm, run.ftm.normalizer
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
                grid_times, _, _ = union_times(np.asarray(ftm.times), obs.time_stamps())
                padded = _pad_slots(obs.to_padded(grid_times))
                M, P = padded.mask.shape
                centre = 0.5 * (np.asarray(ftm.model.domain_lo) + np.asarray(ftm.model.domain_hi))
                coords = np.where(padded.mask[..., None], np.asarray(padded.coords, np.float64), centre)
                design = np.asarray(design_rows(ftm.model, coords.reshape(-1, coords.shape[-1]))).reshape(M, P, -1)
                gram = gram_float64(run.gp_params.kernel, run.normalise_time(grid_times))
                post = sigma_posterior(jax.random.key(r), design, np.asarray(nz.forward(np.asarray(padded.values))),
                                       padded.mask, gram + run.gp_params.jitter * np.eye(M), *run.core_moments,
                                       representation_error=rep_error)
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
