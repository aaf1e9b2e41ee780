"""A range constraint on the shipped ocean trajectory: does it hurt, and does it remove out-of-range values?

    python -m benchmarks.ocean_bounds --draws 32 --out benchmarks/results/ocean_bounds.json

The range is what the training data span, depth by depth: the shipped run's training cores
decoded on the training grid give, per depth, the lowest and highest sound speed over every
trajectory, time and horizontal point (the training fields themselves are not shipped; their
FTM reconstructions are, with the FTM's own error of ~0.6 m/s). A posterior value outside that
band is "out of range". For each setting (1: every time stamp observed, 2: every other one) and
noise treatment (σ known / inferred) the shipped trajectory is reconstructed by the default
sampler without and with `Bounds(lo, hi, scale)`, same key, and the bench reports VRMSE, 90%
coverage (quantile intervals), the fraction of draw values out of range and the largest
excursion, and the wall time of each.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from inference.constraints import Bounds, FieldDecoder
from inference.reconstruct import open_run, reconstruct
from inference.report import evaluate
from sdift_prob import pretrained
from sdift_prob.data import load_fields, select_trajectory
from sdift_prob.data.sampling import sample_observations
from sdift_prob.io import write_json


def training_range(run: Any) -> tuple[np.ndarray, np.ndarray, str]:
    """Per-depth min and max (physical units) of the decoded training cores, shaped to broadcast
    against a frame `(I_1, .., I_K)`, and the name of the depth dim."""
    decoder = FieldDecoder.from_ftm(run.ftm.model, run.ftm.grids, run.ftm.normalizer)
    dims = run.space_dims
    depth = dims.index("depth")
    others = tuple(a + 1 for a in range(len(dims)) if a != depth)  # time and the horizontal axes
    lo = hi = None
    for cores in np.asarray(run.ftm.cores):  # one trajectory decoded at a time: a running min and max
        frames = np.asarray(decoder(jnp.asarray(cores)))
        t_lo, t_hi = frames.min(axis=(0, *others)), frames.max(axis=(0, *others))
        lo = t_lo if lo is None else np.minimum(lo, t_lo)
        hi = t_hi if hi is None else np.maximum(hi, t_hi)
    shape = [1] * len(dims)
    shape[depth] = -1
    return lo.reshape(shape), hi.reshape(shape), dims[depth]


def measure(run: Any, obs: Any, truth: Any, *, draws: int, sigma: Any, constraints: Any, lo: np.ndarray,
            hi: np.ndarray) -> dict[str, Any]:
    t0 = time.perf_counter()
    idata = reconstruct(run, obs, key=jax.random.key(0), draws=draws, sigma=sigma, constraints=constraints)
    seconds = time.perf_counter() - t0
    ev = evaluate(idata, truth)
    field = idata.posterior["field"].transpose("chain", "draw", "time", *run.space_dims).values
    below, above = np.maximum(lo - field, 0.0), np.maximum(field - hi, 0.0)
    out = {k: ev[k] for k in ("vrmse", "coverage_90", "coverage_90_quantile", "crps", "n_draws") if k in ev}
    out.update(out_of_range_fraction=float(np.mean((below > 0) | (above > 0))),
               max_excursion=float(max(below.max(), above.max())), seconds=seconds)
    return out


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--draws", type=int, default=32)
    p.add_argument("--scale", type=float, default=0.1, help="the bound's model error std (m/s)")
    p.add_argument("--settings", type=int, nargs="+", default=[1, 2], choices=(1, 2))
    p.add_argument("--sigma", nargs="+", default=["known", "infer"], choices=("known", "infer"))
    args = p.parse_args(argv)

    bundle = pretrained.path("ocean")
    run = open_run(bundle / "run", require_prior=True)
    truth = select_trajectory(load_fields(bundle / "test_trajectory.nc"), 0)
    lo, hi, depth_dim = training_range(run)
    bounds = [Bounds(lo=lo, hi=hi, scale=args.scale)]
    results: dict[str, Any] = {"draws": args.draws, "scale": args.scale, "range_from": "decoded training cores",
                               "range_lo": lo.ravel().tolist(), "range_hi": hi.ravel().tolist(),
                               "depth_dim": depth_dim, "cells": {}}
    truth_vals = truth.transpose("time", *run.space_dims).values
    results["truth_out_of_range_fraction"] = float(np.mean((truth_vals < lo) | (truth_vals > hi)))
    for setting in args.settings:
        obs = sample_observations(jax.random.key(setting), truth, rho=0.01, setting=setting, noise="gaussian",
                                  noise_scale=0.1 * run.ftm.normalizer.std)
        true_sigma = float(0.1 * run.ftm.normalizer.std)
        for how in args.sigma:
            sigma = true_sigma if how == "known" else "infer"
            cell = {name: measure(run, obs, truth, draws=args.draws, sigma=sigma, constraints=cons, lo=lo, hi=hi)
                    for name, cons in (("without", None), ("with_bounds", bounds))}
            cell["vrmse_ratio"] = cell["with_bounds"]["vrmse"] / cell["without"]["vrmse"]
            results["cells"][f"setting{setting}_sigma_{how}"] = cell
            print(f"setting {setting}, sigma {how}: " + "; ".join(
                f"{n}: vrmse {c['vrmse']:.4f} cov90q {c.get('coverage_90_quantile', float('nan')):.3f} "
                f"out-of-range {c['out_of_range_fraction']:.2e} (max {c['max_excursion']:.2f}) {c['seconds']:.0f} s"
                for n, c in cell.items() if isinstance(c, dict)) + f"; ratio {cell['vrmse_ratio']:.4f}", flush=True)
            write_json(args.out, results)


if __name__ == "__main__":
    main()
