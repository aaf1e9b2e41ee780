"""Accuracy of the reconstruction against baselines on held-out test trajectories.

    python -m benchmarks.accuracy --data DATA.nc --run RUN_DIR --out FILE.json \
        [--rho 0.01 0.03] [--settings 1 2] [--n-test 10] [--draws 8] [--noise-scale 0.1]

For each test trajectory, observation setting and rho it draws one observation set (Gaussian
noise with std `noise-scale` x the training std), then scores, with VRMSE over all space-time
entries in physical units (mean ± std over test trajectories):

- `mpdps`, `dps` (this project; point estimate = posterior mean over `draws` draws),
- `gp` (FTM + GP temporal prior, exact posterior),
- `linear` (scipy linear interpolation in space per time stamp, nearest filling outside the
  convex hull, nearest observed time stamp for empty time stamps),
- `train_mean` (the mean field of the training trajectories, per time stamp).

Probabilistic methods also get 50/90% coverage and CRPS. Results are reproducible from `--seed`.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import jax
import numpy as np
from scipy.interpolate import LinearNDInterpolator, NearestNDInterpolator

from inference.reconstruct import open_run, reconstruct
from inference.report import evaluate
from sdift_prob.data.fields import load_fields
from sdift_prob.data.observations import ObservationSet, sample_observations, select_trajectory
from sdift_prob.io import atomic_file
from sdift_prob.metrics import summarise, vrmse


def linear_interpolation(obs: ObservationSet, truth) -> np.ndarray:
    """Per time stamp: linear interpolation of the observed values in space (nearest outside the
    hull); time stamps without observations copy the nearest observed time stamp."""
    dims = truth.dims[1:]
    grid = np.stack(np.meshgrid(*[truth[d].values for d in dims], indexing="ij"), axis=-1).reshape(-1, len(dims))
    # Scale each axis to [0, 1] so that distances are comparable across units.
    lo, hi = grid.min(axis=0), grid.max(axis=0)
    scale = np.where(hi > lo, hi - lo, 1.0)
    g = (grid - lo) / scale
    out = np.full((truth.sizes["time"], grid.shape[0]), np.nan)
    observed = []
    for i, t in enumerate(truth.time.values):
        sel = np.isclose(obs.time, t)
        if not sel.any():
            continue
        pts = (obs.coords[sel] - lo) / scale
        vals = obs.value[sel]
        near = NearestNDInterpolator(pts, vals)(g)
        if sel.sum() > len(dims) + 1:
            try:
                lin = LinearNDInterpolator(pts, vals)(g)
                near = np.where(np.isnan(lin), near, lin)
            except Exception:  # degenerate (e.g. coplanar) point sets: nearest only
                pass
        out[i] = near
        observed.append(i)
    if not observed:
        raise ValueError("no observations at any time stamp")
    observed = np.asarray(observed)
    for i in range(out.shape[0]):
        if np.isnan(out[i]).all():
            out[i] = out[observed[np.argmin(np.abs(observed - i))]]
    return out.reshape(truth.shape)


def run_benchmark(args: argparse.Namespace) -> dict:
    ds = load_fields(args.data)
    run = open_run(args.run)
    test_ids = np.where(ds.split.values == "test")[0][: args.n_test]
    train_mean = run.ftm.decode().mean(axis=0) if args.train_mean_from_ftm else (
        ds["field"].values[ds.split.values == "train"].mean(axis=0))
    std = float(run.ftm.normalizer.std)
    methods = [m for m in ("mpdps", "dps", "gp") if m in args.methods]
    results: dict = {"cells": []}
    for setting in args.settings:
        for rho in args.rho:
            scores: dict[str, dict[str, list]] = {}
            for j, i in enumerate(test_ids):
                truth = select_trajectory(ds, int(i))
                obs = sample_observations(jax.random.fold_in(jax.random.key(args.seed), int(i) * 10 + setting),
                                          truth, rho=rho, setting=setting, noise="gaussian",
                                          noise_scale=args.noise_scale * std)
                def add(name, **vals):
                    d = scores.setdefault(name, {})
                    for k, v in vals.items():
                        d.setdefault(k, []).append(float(v))
                add("train_mean", vrmse=vrmse(truth.values, train_mean))
                t0 = time.perf_counter()
                add("linear", vrmse=vrmse(truth.values, linear_interpolation(obs, truth)),
                    seconds=time.perf_counter() - t0)
                for m in methods:
                    t0 = time.perf_counter()
                    idata = reconstruct(run, obs, key=jax.random.key(args.seed + j), sampler=m, draws=args.draws,
                                        sigma=args.noise_scale * std)
                    secs = time.perf_counter() - t0
                    ev = evaluate(idata, truth)
                    add(m, vrmse=ev["vrmse"], coverage_50=ev["coverage_50"], coverage_90=ev["coverage_90"],
                        crps=ev["crps"], seconds=secs)
            cell = {"setting": setting, "rho": rho, "n_test": len(test_ids), "methods": {}}
            for name, d in scores.items():
                cell["methods"][name] = {k: dict(zip(("mean", "std"), map(float, summarise(np.asarray(v)))))
                                         for k, v in d.items()}
            results["cells"].append(cell)
            line = ", ".join(f"{n} {c['vrmse']['mean']:.3f}±{c['vrmse']['std']:.3f}"
                             for n, c in cell["methods"].items())
            print(f"setting {setting} rho {rho}: {line}", flush=True)
    results["config"] = {k: (v if not isinstance(v, Path) else str(v)) for k, v in vars(args).items()}
    results["machine"] = {"platform": platform.platform(), "processor": platform.processor(),
                          "cpu_count": __import__("os").cpu_count(), "jax_backend": jax.default_backend()}
    return results


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--run", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--rho", type=float, nargs="+", default=[0.01, 0.03])
    p.add_argument("--settings", type=int, nargs="+", default=[1, 2])
    p.add_argument("--methods", nargs="+", default=["mpdps", "dps", "gp"])
    p.add_argument("--n-test", type=int, default=10)
    p.add_argument("--draws", type=int, default=8)
    p.add_argument("--noise-scale", type=float, default=0.1, help="noise std as a multiple of the training std")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train-mean-from-ftm", action="store_true")
    args = p.parse_args(argv)
    started = time.perf_counter()
    results = run_benchmark(args)
    results["wall_time_s"] = time.perf_counter() - started
    with atomic_file(args.out, overwrite=True) as tmp:
        tmp.write_text(json.dumps(results, indent=2))
    print(f"wrote {args.out} ({results['wall_time_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
