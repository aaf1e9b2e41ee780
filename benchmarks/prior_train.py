"""Benchmark of the GPSD prior (not a timed test).

Speed, on synthetic cores of the default core shapes (ocean 8x8x8, fluid2d 16x16)::

    python -m benchmarks.prior_train --out prior_speed.json

reports per shape the default network's parameter count, the first training step (compilation
included), training steps/s after it, and unconditional sampling time for one draw and for 16
vmapped draws (20 Heun steps, compilation reported separately).

Quality, on a run directory with a trained prior and the field collection it came from::

    python -m benchmarks.prior_train --run RUN_DIR --data DATA.nc --draws 64 --out prior_quality.json

compares decoded unconditional samples with the test trajectories: per-point mean and std,
lag-1..3 temporal autocorrelation and the spatial power spectrum (relative errors).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import time
from collections.abc import Sequence

import jax
import numpy as np

from sdift_prob.gpsd import PriorConfig, count_parameters
from sdift_prob.gpsd.prior import GPSDPrior
from sdift_prob.gpsd.train import train_prior
from sdift_prob.io import atomic_file
from sdift_prob.run import package_versions

SHAPES = {"ocean": (8, 8, 8), "fluid2d": (16, 16)}


def synthetic_cores(core_shape: Sequence[int], *, n: int = 32, T: int = 20, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Smooth random core sequences (a few random-phase sinusoids per entry), `(n, T, *core)`."""
    rng = np.random.default_rng(seed)
    t = np.linspace(0.0, 1.0, T)
    size = int(np.prod(core_shape))
    freq = rng.uniform(0.5, 2.0, (1, 1, size))
    phase = rng.uniform(0, 2 * np.pi, (n, 1, size))
    amp = rng.normal(size=(1, 1, size))
    x = amp * np.sin(2 * np.pi * freq * t[None, :, None] + phase) + 0.05 * rng.normal(size=(n, T, size))
    return x.reshape(n, T, *core_shape).astype(np.float32), t


def _timed(fn, *args, **kwargs):
    t0 = time.perf_counter()
    out = jax.block_until_ready(fn(*args, **kwargs))
    return out, time.perf_counter() - t0


def speed(name: str, steps: int, config: PriorConfig) -> dict:
    core_shape = SHAPES[name]
    cores, t = synthetic_cores(core_shape)
    cfg = dataclasses.replace(config, steps=steps, warmup_steps=min(config.warmup_steps, steps))
    prior, report = train_prior(cores, t, cfg, key=jax.random.key(0), progress=False)
    out = {
        "core_shape": list(core_shape),
        "num_parameters": count_parameters(prior.net),
        "batch_size": cfg.batch_size,
        "seq_len": report["seq_len"],
        "train_first_step_s": report["first_step_s"],
        "train_steps_per_s": report["steps_per_s_after_first"],
        "train_steps_timed": steps - 1,
    }
    key = jax.random.key(1)
    for draws in (1, 16):
        _, first = _timed(prior.sample, key, t, draws)
        _, again = _timed(prior.sample, jax.random.fold_in(key, 1), t, draws)
        out[f"sample_{draws}_first_s"] = first
        out[f"sample_{draws}_s"] = again
        out[f"sample_{draws}_per_draw_s"] = again / draws
    out["sampler_steps"] = prior.config.num_steps
    out["sample_frames"] = int(t.size)
    return out


# ---- quality of decoded samples --------------------------------------------------------------------


def _autocorr(x: np.ndarray, lag: int) -> float:
    """Pooled lag-`lag` autocorrelation over axis 1 of anomalies `x (n, T, ...)`."""
    a = x - x.mean(axis=0, keepdims=True)
    num = (a[:, lag:] * a[:, :-lag]).mean()
    return float(num / (a**2).mean())


def _spectrum(x: np.ndarray, space_axes: tuple[int, ...]) -> np.ndarray:
    a = x - x.mean(axis=0, keepdims=True)
    power = np.abs(np.fft.fftn(a, axes=space_axes)) ** 2
    return power.mean(axis=(0, 1))


def compare(samples: np.ndarray, test: np.ndarray) -> dict:
    """Relative errors of sample statistics vs test trajectories, both `(n, T, *space)` physical."""
    mu_s, mu_t = samples.mean(axis=0), test.mean(axis=0)
    sd_s, sd_t = samples.std(axis=0), test.std(axis=0)
    rms = lambda v: float(np.sqrt(np.mean(v**2)))  # noqa: E731
    out = {
        "mean_rel_error": rms(mu_s - mu_t) / rms(sd_t),  # in units of the test spread
        "std_rel_error": rms(sd_s - sd_t) / rms(sd_t),
    }
    for lag in (1, 2, 3):
        if test.shape[1] > lag:
            a_s, a_t = _autocorr(samples, lag), _autocorr(test, lag)
            out[f"autocorr_lag{lag}"] = {"samples": a_s, "test": a_t, "abs_error": abs(a_s - a_t)}
    axes = tuple(range(2, test.ndim))
    p_s, p_t = _spectrum(samples, axes), _spectrum(test, axes)
    out["power_spectrum_rel_error"] = float(np.abs(p_s - p_t).sum() / np.abs(p_t).sum())
    return out


def quality(run_dir: str, data: str, draws: int, seed: int) -> dict:
    from sdift_prob.data.fields import load_fields, test_part
    from sdift_prob.ftm import decode_grid, load_run
    from sdift_prob.gpsd import load_prior

    fit = load_run(run_dir)
    prior: GPSDPrior = load_prior(run_dir)
    test = test_part(load_fields(data))["field"]
    t0, t1 = fit.time_domain
    times = np.asarray(test["time"].values, np.float64)
    t_norm = (times - t0) / (t1 - t0)
    cores, secs = _timed(prior.sample, jax.random.key(seed), t_norm, draws, batch_size=min(draws, 16))
    fields = np.asarray(fit.normalizer.inverse(np.asarray(decode_grid(fit.model, cores, fit.grids))))
    test_vals = np.asarray(test.values, np.float64)
    if fields.shape[1:] != test_vals.shape[1:]:
        raise SystemExit(f"decoded samples {fields.shape[1:]} and test trajectories {test_vals.shape[1:]} differ in shape")
    return {"run": run_dir, "data": data, "draws": draws, "n_test": int(test_vals.shape[0]),
            "sampling_s": secs, **compare(fields.astype(np.float64), test_vals)}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES), help="core shapes to time")
    p.add_argument("--steps", type=int, default=30, help="training steps to time (the first one compiles)")
    p.add_argument("--run", default=None, help="run directory with a trained prior (quality mode)")
    p.add_argument("--data", default=None, help="field collection of the run (quality mode; its test split)")
    p.add_argument("--draws", type=int, default=64, help="draws for the quality comparison")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="write the JSON report here too")
    args = p.parse_args(argv)
    result = {"platform": platform.platform(), "python": sys.version.split()[0], "device": str(jax.devices()[0]),
              "versions": package_versions()}
    if args.run:
        if not args.data:
            p.error("--run needs --data")
        result["quality"] = quality(args.run, args.data, args.draws, args.seed)
    else:
        config = PriorConfig()
        result["config"] = config.to_dict()
        result["speed"] = {name: speed(name, args.steps, config) for name in args.shapes}
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        with atomic_file(args.out, overwrite=True) as tmp:
            tmp.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
