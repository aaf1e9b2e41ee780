"""The demo behind `make demo` / `sdift demo`: one sparse, noisy ocean reconstruction, end to end."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from . import plots, pretrained
from .baselines import fit_kriging, linear_interpolation
from .data import ObservationSet, load_fields, select_trajectory
from .io import write_json
from .metrics import vrmse


def run_demo(*, out: str | Path = "demo-output", draws: int = 8, seed: int = 0, sampler: str = "mmps",
             progress: bool = True) -> tuple[dict[str, Any], str]:
    """Reconstruct the shipped ocean observation set with the shipped model; write figures.

    Returns the figures (a JSON-ready dict, also written to `out/summary.json`) and their text
    for people: the VRMSE of the posterior mean (and of the training-mean field for scale), the
    90% interval coverage, the inferred noise level and the wall time. `progress` shows a bar
    over the stages (sampling, calibration, baselines, figures) on stderr.
    """
    import jax
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from tqdm.auto import tqdm

    from inference.calibrate import apply_temperature
    from inference.reconstruct import calibrate_reconstruction, open_run, reconstruct
    from inference.report import coverage, posterior_mean, save_posterior, vrmse_of_mean

    started = time.perf_counter()
    bundle = pretrained.path("ocean")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    run = open_run(bundle / "run", require_prior=True)
    truth_ds = load_fields(bundle / "test_trajectory.nc")
    truth = select_trajectory(truth_ds, 0)
    obs = ObservationSet.load(bundle / "obs_rho1pct.nc")
    true_sigma = float(obs.attrs.get("noise_scale", np.nan)) if obs.attrs else np.nan

    stages = tqdm(total=4, desc="sdift demo", unit="stage", disable=not progress,
                  bar_format="{desc}: {n}/{total} stages |{bar}| {elapsed} {postfix}")
    stages.set_postfix_str(f"posterior sampling ({sampler}, {draws} draws)")
    idata = reconstruct(run, obs, key=jax.random.key(seed), sampler=sampler, draws=draws, sigma="infer",
                        progress=progress)
    stages.update(1)
    stages.set_postfix_str("calibration on held-out observations")
    # Posterior temperature from held-out observations (20% of the points), at the default ζ.
    cal = calibrate_reconstruction(run, obs, key=jax.random.key(seed + 1), sampler=sampler, draws=draws,
                                   zetas=(1.0,), sigma="infer")
    stages.update(1)
    stages.set_postfix_str("baselines (linear interpolation, kriging)")
    raw_field = idata.posterior["field"].copy()
    idata.posterior["field"].values = np.asarray(
        apply_temperature(raw_field.values, cal.temperature, axis=(0, 1)), dtype=raw_field.dtype)
    idata.posterior.attrs["calibration_temperature"] = float(cal.temperature)
    posterior_file = out / "posterior.nc"
    save_posterior(idata, posterior_file, overwrite=True)

    field = idata.posterior["field"]
    climatology = run.ftm.decode().mean(axis=0)  # training-mean field (T, *space), physical units
    # Baselines on the same observations, for scale (sdift_prob.baselines).
    grids = [truth[d].values for d in truth.dims[1:]]
    t_base = time.perf_counter()
    linear = linear_interpolation(obs, truth.time.values, grids)
    kriging, _ = fit_kriging(obs, key=jax.random.key(seed + 2)).predict_grid(truth.time.values, grids,
                                                                             return_std=False)
    baseline_seconds = time.perf_counter() - t_base
    stages.update(1)
    stages.set_postfix_str("figures")
    result = {
        "observations": int(obs.n_points),
        "observed_fraction": float(obs.n_points / truth.size),
        "sampler": sampler,
        "draws": int(draws),
        "vrmse_posterior_mean": float(vrmse_of_mean(idata, truth)),
        "vrmse_training_mean_field": float(vrmse(truth.values, climatology)),
        "vrmse_linear_interpolation": float(vrmse(truth.values, linear)),
        "vrmse_kriging": float(vrmse(truth.values, kriging)),
        "baseline_wall_time_s": baseline_seconds,
        "coverage_90": float(coverage(idata, truth, levels=(0.9,))[0.9]),
        "coverage_50": float(coverage(idata, truth, levels=(0.5,))[0.5]),
        "calibration_temperature": float(cal.temperature),
        "heldout_coverage_90_before_after": [float(cal.coverage_before[-1]), float(cal.coverage_after[-1])],
        "sigma_inferred_mean": float(idata.posterior["sigma"].mean()) if "sigma" in idata.posterior else None,
        "sigma_inferred_90": (np.quantile(idata.posterior["sigma"].values, [0.05, 0.95]).tolist()
                              if "sigma" in idata.posterior else None),
        "sigma_true": true_sigma,
        "sampling_wall_time_s": float(idata.posterior.attrs.get("wall_time_s", np.nan)),
    }

    mean = posterior_mean(idata)
    depth0 = float(field.depth[3])
    fig = plots.field_panels(field, truth, fixed={"depth": depth0})
    fig.savefig(out / "fields.png", dpi=110)
    centre = {d: float(field[d][len(field[d]) // 2]) for d in ("lat", "lon")}
    centre["depth"] = depth0
    fig = plots.time_series(field, centre, truth, obs)
    fig.savefig(out / "time_series.png", dpi=110)
    fig = plots.observation_map(field, obs, fixed={"depth": depth0})
    fig.savefig(out / "observations.png", dpi=110)
    fig = plots.calibration(field, truth)
    fig.savefig(out / "calibration.png", dpi=110)
    plt.close("all")
    plots.animation(field, out / "evolution.gif", fixed={"depth": depth0})
    del mean
    stages.update(1)
    stages.close()

    result["total_wall_time_s"] = time.perf_counter() - started
    result["posterior"] = str(posterior_file)
    write_json(out / "summary.json", result)
    lines = [
        f"sdift demo: ocean sound speed, {result['observations']} noisy observations "
        f"({100 * result['observed_fraction']:.1f}% of the space-time grid), {sampler}, {draws} draws",
        f"  VRMSE of the posterior mean   {result['vrmse_posterior_mean']:.3f}   "
        f"(training-mean field {result['vrmse_training_mean_field']:.3f}, linear interpolation "
        f"{result['vrmse_linear_interpolation']:.3f}, kriging {result['vrmse_kriging']:.3f})",
        f"  90% interval coverage         {result['coverage_90']:.3f}   (50%: {result['coverage_50']:.3f}) "
        f"after calibration (temperature {result['calibration_temperature']:.2f}; held-out 90% coverage "
        f"{result['heldout_coverage_90_before_after'][0]:.2f} -> {result['heldout_coverage_90_before_after'][1]:.2f})",
    ]
    if result["sigma_inferred_mean"] is not None:
        # σ is the instrument noise; the FTM's own error at a point is added to it apart
        rep = float(run.representation_error[0] * run.ftm.normalizer.std)
        lo, hi = result["sigma_inferred_90"]
        lines.append(f"  inferred noise std            {result['sigma_inferred_mean']:.3f} m/s   "
                     f"(90% interval {lo:.2f}-{hi:.2f}; true: {result['sigma_true']:.3f} m/s; "
                     f"plus the FTM's own error, {rep:.2f} m/s)")
    lines += [
        f"  wall time                     {result['total_wall_time_s']:.1f} s "
        f"(sampling {result['sampling_wall_time_s']:.1f} s)",
        f"  wrote {posterior_file} and figures (fields.png, time_series.png, observations.png, "
        f"calibration.png, evolution.gif) to {out}/",
    ]
    return result, "\n".join(lines)
