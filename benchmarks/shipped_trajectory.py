"""The shipped ocean test trajectory reconstructed by sampler variants: accuracy and calibration.

    python -m benchmarks.shipped_trajectory --draws 32 --sigma infer --variants mmps mpdps \
        --out benchmarks/results/shipped_ocean.json

What an analyst sees on the bundle of `README.md` (1% of the grid, noise std 2.36 m/s): VRMSE,
coverage of the true field from Student-t, quantile and HDI intervals of the draws (`evaluate`),
CRPS, σ when inferred, and the warm wall time of `reconstruct` (the second of two calls, keys 0
and 1; the figures are from the second).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from benchmarks.variants import parse_variant, sampler_name
from inference.reconstruct import open_run, reconstruct
from inference.report import evaluate
from sdift_prob import pretrained
from sdift_prob.data import ObservationSet, load_fields, select_trajectory
from sdift_prob.io import write_json


def measure(variant: str, draws: int, sigma: Any) -> dict[str, Any]:
    bundle = pretrained.path("ocean")
    run = open_run(bundle / "run")
    obs = ObservationSet.load(bundle / "obs_rho1pct.nc")
    truth = select_trajectory(load_fields(bundle / "test_trajectory.nc"), 0)
    config = parse_variant(variant)
    for seed in (0, 1):  # the first call compiles
        started = time.perf_counter()
        idata = reconstruct(run, obs, key=jax.random.key(seed), sampler=sampler_name(config), config=config,
                            draws=draws, sigma=sigma)
        wall = time.perf_counter() - started
    out: dict[str, Any] = {"variant": variant, "draws": draws, "sigma": sigma, "warm_seconds": wall,
                           **evaluate(idata, truth)}
    if "sigma" in idata.posterior:
        s = idata.posterior["sigma"].values.ravel()
        out.update(sigma_mean=float(s.mean()), sigma_sd=float(s.std()),
                   sigma_90=[float(np.quantile(s, 0.05)), float(np.quantile(s, 0.95))],
                   sigma_true=float(obs.attrs.get("noise_scale", np.nan)))
    return out


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--draws", type=int, default=32)
    p.add_argument("--sigma", default="infer", help="'infer', 'metadata' or a number (m/s)")
    p.add_argument("--variants", nargs="+", default=["mmps", "mpdps"], help="names of benchmarks.variants")
    args = p.parse_args(argv)
    sigma: Any = args.sigma if args.sigma in ("infer", "metadata") else float(args.sigma)
    rows = []
    for v in args.variants:
        rows.append(measure(v, args.draws, sigma))
        print(json.dumps(rows[-1]), flush=True)
        write_json(args.out, {"rows": rows, "command": "python -m benchmarks.shipped_trajectory "
                              + " ".join(argv if argv is not None else sys.argv[1:])})


if __name__ == "__main__":
    main()
