"""Speed and scaling of posterior sampling, decoding and training (figures, not timed tests).

    python -m benchmarks.speed --out benchmarks/results/speed.json [--run RUN_DIR] [--quick]

On the shipped ocean run by default (cores 8x8x8, grid 24x24x16, 20 time stamps). Every
configuration is compiled once (a warm-up call, its time reported as `compile_s`) and then
timed over `--repeats` calls (the minimum is reported). Sections:

- `draws`: guided sampling (the default sampler, MMPS, 20 Heun steps) of 1/4/16/64 vmapped draws; per-draw cost;
  end-to-end `reconstruct` (decode, log-likelihood, predictive, InferenceData) for 1 and 16;
  peak resident memory of a fresh process per draw count.
- `guided_vs_unconditional`: 16 draws of MPDPS, DPS and the prior's unconditional sampler.
- `sampler_cost`: 16 draws of the default sampler (MMPS) at 2/3/5 CG iterations (and 3 with the
  preconditioner along the prior's spectrum, `a4`) beside the
  paper's MPDPS and DPS, one process, side by side (ratios to MPDPS).
- `observations`: 10² … 10⁵ observed points (4 draws), with the one-off `prepare` cost apart.
- `time_stamps`: T, 2T, 4T frames over the same time span (4 draws, same points per frame).
- `resolution`: decoding 16 draws at 1x, 2x, 4x per axis (the sampler does not see it).
- `core_size`: cores 4³, 8³, 12³ with an untrained U-Net of the same architecture (timing does
  not depend on the weights), 4 draws.
- `training`: FTM fit (entries/s) and prior training (steps/s, sequences/s) throughput.

Scaling exponents b of `time ≈ a · size^b` are fitted by least squares on log-log axes and
printed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.variants import parse_variant
from inference.guided import GuidedConfig, sample_posterior
from inference.reconstruct import Run, open_run, reconstruct
from sdift_prob import pretrained
from sdift_prob.data.observations import ObservationSet, PaddedObservations
from sdift_prob.ftm import decode_grid, design_rows
from sdift_prob.io import write_json


SECTIONS = ("draws", "guided_vs_unconditional", "sampler_cost", "observations", "time_stamps", "resolution", "core_size", "training")


def _timed(fn: Callable[[], Any], repeats: int) -> dict[str, float]:
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    best = min(times)
    return {"seconds": best, "compile_s": max(first - best, 0.0), "repeats": repeats}


def synthetic_obs(run: Run, key: jax.Array, n_points: int, times: np.ndarray) -> ObservationSet:
    """`n_points` uniformly random off-grid points spread evenly over `times`, values from a
    decoded training trajectory (plausible magnitudes), Gaussian noise 0.1 x the training std."""
    lo, hi = np.asarray(run.ftm.model.domain_lo), np.asarray(run.ftm.model.domain_hi)
    rng = np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel())
    coords = rng.uniform(lo, hi, (n_points, lo.size))
    t = np.asarray(times)[np.arange(n_points) % len(times)]
    std = run.ftm.normalizer.std
    values = run.ftm.normalizer.mean + std * rng.standard_normal(n_points)
    return ObservationSet(value=values, time=t, coords=coords, space_dims=run.space_dims,
                          noise_scale=np.full(n_points, 0.1 * std), noise_model="gaussian")


def sampler_inputs(run: Run, obs: ObservationSet, times: np.ndarray) -> dict[str, Any]:
    """Normalised padded observations and design rows on the grid `times` (as `reconstruct`)."""
    ftm, norm = run.ftm, run.ftm.normalizer
    pad = obs.to_padded(times)
    mask = np.asarray(pad.mask)
    centre = 0.5 * (np.asarray(ftm.model.domain_lo) + np.asarray(ftm.model.domain_hi))
    coords = np.where(mask[..., None], pad.coords, centre)
    padded = PaddedObservations(times=np.asarray(times), values=np.where(mask, norm.forward(pad.values), 0.0),
                                coords=coords, noise_scale=np.where(mask, pad.noise_scale / norm.std, 1.0),
                                mask=mask)
    M, P = mask.shape
    design = np.asarray(design_rows(ftm.model, coords.reshape(-1, coords.shape[-1]))).reshape(M, P, -1)
    return {"design": design, "padded": padded, "times_norm": run.normalise_time(times)}


def guided(run: Run, prior: Any, inputs: dict[str, Any], key: jax.Array, draws: int, method: str = "mmps",
           core_shape: tuple[int, ...] | None = None) -> Callable[[], Any]:
    """A timed call of the guided sampler `method` (a name of `benchmarks.variants`: `mmps` is
    the default sampler, `mpdps`/`dps` the paper's with the fisher rule)."""
    cfg = parse_variant(method, sigma_y=0.1)
    chol = prior.noise_cholesky(jnp.asarray(inputs["times_norm"]))

    def call() -> Any:
        draws_, _ = sample_posterior(key, prior.denoise, inputs["design"], inputs["padded"],
                                     core_mean=float(prior.core_mean), core_std=float(prior.core_std),
                                     times_norm=inputs["times_norm"], noise_chol=chol, config=cfg,
                                     num_draws=draws, core_shape=core_shape or run.core_shape,
                                     prior_spectrum=run.prior_spectrum if getattr(cfg.guidance, "anchors", 1) > 1 else None)
        return draws_

    return call


def fit_exponent(sizes: list[float], seconds: list[float]) -> float:
    b, _ = np.polyfit(np.log(np.asarray(sizes, float)), np.log(np.asarray(seconds, float)), 1)
    return float(b)


def peak_rss_mb(run_dir: str, draws: int) -> float:
    """Peak resident memory of a fresh process that samples `draws` vmapped draws."""
    code = (
        "import resource, jax, numpy as np\n"
        "from benchmarks.speed import guided, sampler_inputs, synthetic_obs\n"
        "from inference.reconstruct import open_run\n"
        f"run = open_run({run_dir!r}); t = np.asarray(run.ftm.times)\n"
        "obs = synthetic_obs(run, jax.random.key(1), 1840, t)\n"
        f"guided(run, run.prior, sampler_inputs(run, obs, t), jax.random.key(0), {draws})()\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONWARNINGS": "ignore"})
    return float(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--run", default=str(pretrained.path("ocean") / "run"))
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="fewer sizes (a smoke run)")
    p.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS),
                   help="sections to run; with --update, the others are kept from the existing --out")
    p.add_argument("--update", action="store_true", help="merge into an existing --out instead of replacing it")
    args = p.parse_args(argv)
    want = set(args.sections)
    started = time.perf_counter()
    run = open_run(args.run, require_prior=True)
    prior = run.prior
    times = np.asarray(run.ftm.times)
    key = jax.random.key(0)
    res: dict[str, Any] = {}
    if args.update and Path(args.out).exists():
        res = json.loads(Path(args.out).read_text())
    res.update({"run": args.run, "core_shape": run.core_shape, "grid": [len(g) for g in run.ftm.grids],
                "n_times": int(times.size), "num_steps": GuidedConfig().num_steps})

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - started:6.0f} s] {msg}", flush=True)

    def save() -> None:
        res.setdefault("wall_time_s", {})
        if not isinstance(res["wall_time_s"], dict):
            res["wall_time_s"] = {"earlier run": res["wall_time_s"]}
        res["wall_time_s"][" ".join(args.sections)] = time.perf_counter() - started
        res["machine"] = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                          "cpu_count": os.cpu_count(), "jax": jax.__version__, "backend": jax.default_backend(),
                          "devices": [str(d) for d in jax.devices()]}
        write_json(args.out, res)

    n_default = round(0.01 * np.prod([len(g) for g in run.ftm.grids])) * times.size  # 1% per time stamp
    obs = synthetic_obs(run, jax.random.key(1), int(n_default), times)
    inputs = sampler_inputs(run, obs, times)

    # -- draws -----------------------------------------------------------------------------
    draw_counts = [1, 4, 16] if args.quick else [1, 4, 16, 64]
    rows = []
    if "draws" not in want:
        draw_counts = []
    for n in draw_counts:
        r = _timed(guided(run, prior, inputs, key, n), args.repeats if n < 64 else 1)
        r.update(draws=n, per_draw_s=r["seconds"] / n)
        rows.append(r)
        log(f"draws {n}: {r['seconds']:.2f} s ({r['per_draw_s']:.3f} s/draw), compile {r['compile_s']:.1f} s")
    e2e = []
    for n in (1, 16) if draw_counts else ():
        r = _timed(lambda n=n: reconstruct(run, obs, key=key, draws=n, sigma=0.1 * run.ftm.normalizer.std), 1)
        r["draws"] = n
        e2e.append(r)
        log(f"reconstruct end to end, {n} draws: {r['seconds']:.2f} s")
    mem = []
    for n in draw_counts:
        mem.append({"draws": n, "peak_rss_mb": peak_rss_mb(args.run, n)})
        log(f"peak RSS, {n} draws: {mem[-1]['peak_rss_mb']:.0f} MB")
    if draw_counts:
        res["draws"] = {"sampler": rows, "reconstruct": e2e, "memory": mem, "observations": int(n_default),
                        "ratio_16_to_1": rows[2]["seconds"] / rows[0]["seconds"],
                        "exponent": fit_exponent([r["draws"] for r in rows], [r["seconds"] for r in rows])}
        save()

    # -- guided vs unconditional --------------------------------------------------------------
    if "guided_vs_unconditional" in want:
        tn = jnp.asarray(inputs["times_norm"])
        unc = _timed(lambda: prior.sample(key, tn, 16), args.repeats)
        dps = _timed(guided(run, prior, inputs, key, 16, method="dps"), args.repeats)
        mp16 = _timed(guided(run, prior, inputs, key, 16, method="mpdps"), args.repeats)
        res["guided_vs_unconditional"] = {
            "draws": 16, "unconditional_s": unc["seconds"], "dps_s": dps["seconds"], "mpdps_s": mp16["seconds"],
            "mpdps_over_unconditional": mp16["seconds"] / unc["seconds"],
            "dps_over_unconditional": dps["seconds"] / unc["seconds"]}
        log(f"16 draws: unconditional {unc['seconds']:.2f} s, DPS {dps['seconds']:.2f} s, "
            f"MPDPS {mp16['seconds']:.2f} s")
        save()

    if "sampler_cost" in want:
        variants = ("mpdps", "dps", "mmps_cg2", "mmps_cg3", "mmps_cg3_a4", "mmps_cg5")
        costs = {v: _timed(guided(run, prior, inputs, key, 16, method=v), args.repeats) for v in variants}
        res["sampler_cost"] = {"draws": 16, "default": "mmps_cg3", "seconds": {v: c["seconds"] for v, c in costs.items()},
                               "compile_s": {v: c["compile_s"] for v, c in costs.items()},
                               "over_mpdps": {v: c["seconds"] / costs["mpdps"]["seconds"] for v, c in costs.items()}}
        log("16 draws: " + ", ".join(f"{v} {c['seconds']:.2f} s" for v, c in costs.items()))
        save()

    if "observations" in want:
        observation_scaling(run, prior, key, times, res, quick=args.quick, log=log)
        save()
    if "time_stamps" in want:
        time_stamp_scaling(run, prior, key, times, int(n_default), res, log=log)
        save()
    if "resolution" in want:
        resolution_scaling(run, times, res, log=log)
        save()
    if "core_size" in want and len(run.core_shape) == 3:
        core_size_scaling(run, prior, key, inputs, res, log=log)
        save()
    if "training" in want:
        res["training"] = training_throughput(run, quick=args.quick, log=log)
        save()

    print(json.dumps({k: v.get("exponent") for k, v in res.items() if isinstance(v, dict) and "exponent" in v}))
    log(f"wrote {args.out}")
    return 0


def observation_scaling(run: Run, prior: Any, key: jax.Array, times: np.ndarray, res: dict[str, Any], *,
                        quick: bool, log: Callable[[str], None]) -> None:
    counts = [100, 1000, 10000] if quick else [100, 1000, 10000, 100000]
    rows = []
    for n in counts:
        o = synthetic_obs(run, jax.random.key(2), n, times)
        t0 = time.perf_counter()
        inp = sampler_inputs(run, o, times)
        setup = time.perf_counter() - t0
        r = _timed(guided(run, prior, inp, key, 4), 1)
        r.update(observations=n, setup_s=setup)
        rows.append(r)
        log(f"{n} observations: {r['seconds']:.2f} s (+{setup:.2f} s design rows)")
    res["observations"] = {"rows": rows, "draws": 4,
                           "exponent": fit_exponent(counts[1:], [r["seconds"] for r in rows[1:]])}


def time_stamp_scaling(run: Run, prior: Any, key: jax.Array, times: np.ndarray, n_default: int,
                       res: dict[str, Any], *, log: Callable[[str], None]) -> None:
    rows = []
    per_frame = max(1, int(n_default // times.size))
    for factor in (1, 2, 4):
        tt = np.linspace(times[0], times[-1], (times.size - 1) * factor + 1)
        o = synthetic_obs(run, jax.random.key(3), per_frame * tt.size, tt)
        r = _timed(guided(run, prior, sampler_inputs(run, o, tt), key, 4), 1)
        r.update(factor=factor, frames=int(tt.size))
        rows.append(r)
        log(f"{tt.size} time stamps: {r['seconds']:.2f} s")
    res["time_stamps"] = {"rows": rows, "draws": 4, "points_per_frame": per_frame,
                          "exponent": fit_exponent([r["frames"] for r in rows], [r["seconds"] for r in rows])}


def resolution_scaling(run: Run, times: np.ndarray, res: dict[str, Any], *, log: Callable[[str], None]) -> None:
    from inference.reconstruct import refine_grid

    cores = jnp.asarray(np.asarray(run.ftm.cores[:1]).repeat(16, axis=0))  # (16, T, R..)
    rows = []
    for factor in (1, 2, 4):
        grids = tuple(refine_grid(g, factor) for g in run.ftm.grids)
        n_pts = int(np.prod([len(g) for g in grids])) * times.size * 16
        r = _timed(lambda grids=grids: decode_grid(run.ftm.model, cores, grids), 1)
        r.update(factor=factor, decoded_values=n_pts)
        rows.append(r)
        log(f"decode 16 draws at {factor}x: {r['seconds']:.2f} s ({n_pts / 1e6:.1f} M values)")
    res["resolution"] = {"rows": rows, "draws": 16,
                         "exponent": fit_exponent([r["decoded_values"] for r in rows], [r["seconds"] for r in rows])}


def core_size_scaling(run: Run, prior: Any, key: jax.Array, inputs: dict[str, Any], res: dict[str, Any], *,
                      log: Callable[[str], None]) -> None:
    """Cores 4³, 8³, 12³: U-Nets of the shipped architecture with fresh random weights (the
    cost does not depend on the weights) and random design rows of the matching width."""
    from sdift_prob.gpsd.prior import GPSDPrior, prior_header
    from sdift_prob.gpsd.unet import TemporalUNet

    hyper = dict(prior_header(prior)["net"])
    hyper.pop("core_shape", None)
    rows = []
    for shape in ((4, 4, 4), (8, 8, 8), (12, 12, 12)):
        net = TemporalUNet(shape, key=jax.random.key(5), **hyper)
        pr = GPSDPrior(net, prior.config, prior.kernel, float(prior.core_mean), float(prior.core_std))
        D = int(np.prod(shape))
        inp = dict(inputs)
        inp["design"] = np.asarray(jax.random.normal(jax.random.key(4), inputs["design"].shape[:2] + (D,))) / np.sqrt(D)
        r = _timed(guided(run, pr, inp, key, 4, core_shape=shape), 1)
        r.update(core_shape=list(shape), core_size=D)
        rows.append(r)
        log(f"core {shape}: {r['seconds']:.2f} s")
    res["core_size"] = {"rows": rows, "draws": 4, "note": "random-weight U-Nets of the shipped architecture",
                        "exponent": fit_exponent([r["core_size"] for r in rows], [r["seconds"] for r in rows])}


def training_throughput(run: Run, *, quick: bool, log: Callable[[str], None]) -> dict[str, Any]:
    """FTM fit (entries/s) on 8 decoded training trajectories; prior steps/s on the training cores."""
    from sdift_prob.data.fields import assign_split, make_field_dataset
    from sdift_prob.ftm.fit import FTMConfig, fit_ftm
    from sdift_prob.gpsd import PriorConfig
    from sdift_prob.gpsd.train import train_prior

    out: dict[str, Any] = {}
    fields = run.ftm.decode()[:8]  # physical units, (8, T, *space)
    ds = make_field_dataset(fields, np.asarray(run.ftm.times), dict(zip(run.space_dims, run.ftm.grids)),
                            units="1", long_name="decoded training cores",
                            coord_units={d: "1" for d in ("time", *run.space_dims)},
                            provenance={"simulator": "benchmarks.speed", "parameters": {}, "seed": 0})
    ds = assign_split(ds, n_test=0, key=jax.random.key(0))
    # The first call compiles; the per-epoch (per-step) cost is the difference of two warm runs.
    for epochs in ((1, 2, 6) if quick else (1, 5, 25)):
        cfg = FTMConfig(epochs=epochs, holdout_fraction=0.0, batch_trajectories=8)
        t0 = time.perf_counter()
        fit_ftm(ds, run.core_shape, key=jax.random.key(0), config=cfg, progress=False)
        out.setdefault("ftm_runs", []).append({"epochs": epochs, "seconds": time.perf_counter() - t0})
    a, b = out["ftm_runs"][1:]
    per_epoch = (b["seconds"] - a["seconds"]) / (b["epochs"] - a["epochs"])
    out["ftm_entries_per_s"] = fields.size / per_epoch
    out["ftm_seconds_per_epoch_8_trajectories"] = per_epoch
    log(f"FTM fit: {out['ftm_entries_per_s'] / 1e6:.2f} M entries/s")
    cores = np.asarray(run.ftm.cores)
    tn = run.ftm.normalised_times()
    runs = []
    for steps in ((5, 10, 30) if quick else (5, 20, 120)):
        cfg = PriorConfig(steps=steps, batch_size=8, seq_len=12, channels=16, lr=1e-3, warmup_steps=10)
        t0 = time.perf_counter()
        train_prior(cores, tn, cfg, key=jax.random.key(0), progress=False)
        runs.append({"steps": steps, "seconds": time.perf_counter() - t0})
    per_step = (runs[2]["seconds"] - runs[1]["seconds"]) / (runs[2]["steps"] - runs[1]["steps"])
    out["prior_runs"] = runs
    out["prior_steps_per_s"] = 1.0 / per_step
    out["prior_sequences_per_s"] = 8.0 / per_step
    log(f"prior training: {out['prior_steps_per_s']:.2f} steps/s (batch 8 x 12 frames)")
    return out


if __name__ == "__main__":
    raise SystemExit(main())
