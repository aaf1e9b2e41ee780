"""Prior quality as a benchmark: unconditional prior samples vs held-out test trajectories.

    python -m benchmarks.prior_quality RUN_DIR --data DATA.nc --draws 64 --out prior_quality.json

`RUN_DIR` has a fitted FTM and a trained prior; `DATA.nc` is the field collection it was made from
(its `test` split, never seen in training, is the reference). Draws come from the prior's own
unconditional sampler (`GPSDPrior.sample`, what `sdift sample` runs) on the test time stamps and
are decoded on the test grid. Statistics, on decoded frames (physical units) and, where marked,
on the cores (the test trajectories encoded through the run's basis, `encode_grid`):

- `mean_rel_error`, `std_rel_error`: per-point (time x space) marginal mean and std over the
  draws vs over the test trajectories, RMS over points, in units of the test's RMS std (frames
  and cores);
- `autocorr`: pooled temporal autocorrelation of anomalies at lags 1-3 (frames and cores);
- `spectrum_rel_error`: radially averaged spatial power spectrum over the first two space dims
  (averaged over time and the others), `sum |P_s - P_t| / sum P_t`;
- `energy_distance`: per time stamp between the sets of draw frames and test frames (each frame
  one vector, values divided by the test's std), V-statistic (zero for identical sets),
  averaged over time.

The core figures depend on the gauge: along directions the basis barely sees (a near-singular
`U_kᵀU_k`) the fitted cores carry whatever the fit left there and the encoded test cores the
ridge's zero, so the decoded frames are the figures to judge a prior by.

Reference (`reference`): the same statistics between two independent resamples of the test set
(with replacement) of the sizes compared, over `--boot` resamples: what sampling noise alone
gives (mean and 5-95% range). A prior is as good as these sizes can tell when its figures are
within that range. Resampling with replacement repeats trajectories, so the reference of the
energy distance is slightly optimistic.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from jaxtyping import Float

LAGS = (1, 2, 3)
CORE_RIDGE = 1e-3


def _rms(v: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(v))))


def marginal_errors(samples: Float[np.ndarray, "S T *space"], test: Float[np.ndarray, "N T *space"]) -> dict[str, float]:
    """Per-point mean and std errors over the sample axis, in units of the test's RMS std."""
    sd_t = test.std(axis=0)
    scale = max(_rms(sd_t), 1e-300)
    return {"mean_rel_error": _rms(samples.mean(axis=0) - test.mean(axis=0)) / scale,
            "std_rel_error": _rms(samples.std(axis=0) - sd_t) / scale}


def autocorr(x: Float[np.ndarray, "S T *space"], lag: int) -> float:
    """Pooled lag-`lag` autocorrelation along time of the anomalies from the ensemble mean."""
    a = x - x.mean(axis=0, keepdims=True)
    return float((a[:, lag:] * a[:, :-lag]).mean() / max(float((a**2).mean()), 1e-300))


def radial_spectrum(x: Float[np.ndarray, "S T *space"]) -> np.ndarray:
    """Power spectrum over the first two space axes, radially averaged by integer wavenumber
    (grid-index units), averaged over samples, time and any further space axes; `(n_k,)`."""
    a = x - x.mean(axis=0, keepdims=True)
    moved = np.moveaxis(a, (2, 3), (-2, -1)) if a.ndim > 4 else a
    n1, n2 = moved.shape[-2:]
    power = (np.abs(np.fft.fft2(moved)) ** 2).reshape(-1, n1, n2).mean(axis=0)
    f1, f2 = np.meshgrid(np.fft.fftfreq(n1) * n1, np.fft.fftfreq(n2) * n2, indexing="ij")
    k = np.rint(np.sqrt(f1**2 + f2**2)).astype(np.int64)
    n_k = min(n1, n2) // 2
    return np.asarray([power[k == i].mean() for i in range(n_k + 1)])


def energy_distance(a: Float[np.ndarray, "S P"], b: Float[np.ndarray, "N P"]) -> float:
    """V-statistic energy distance `2 E|A-B| - E|A-A'| - E|B-B'|` (zero for identical sets)."""

    def mean_dist(x: np.ndarray, y: np.ndarray) -> float:
        sq = (x**2).sum(1)[:, None] + (y**2).sum(1)[None, :] - 2.0 * x @ y.T
        return float(np.sqrt(np.maximum(sq, 0.0)).mean())

    return max(2.0 * mean_dist(a, b) - mean_dist(a, a) - mean_dist(b, b), 0.0)


def frame_energy_distance(samples: np.ndarray, test: np.ndarray, scale: float) -> float:
    """`energy_distance` per time stamp between draw frames and test frames, averaged over time."""
    s = samples.reshape(samples.shape[0], samples.shape[1], -1) / scale
    t = test.reshape(test.shape[0], test.shape[1], -1) / scale
    return float(np.mean([energy_distance(s[:, i], t[:, i]) for i in range(s.shape[1])]))


def compare(samples: np.ndarray, test: np.ndarray, *, frames: bool = True) -> dict[str, Any]:
    """All statistics of `samples` vs `test` (`(n, T, *space)` each); `frames=False` (cores) leaves
    out the spectrum and the energy distance."""
    if samples.shape[1:] != test.shape[1:]:
        raise ValueError(f"samples {samples.shape[1:]} and test {test.shape[1:]} differ in shape")
    out: dict[str, Any] = marginal_errors(samples, test)
    lags = [g for g in LAGS if g < test.shape[1]]
    out["autocorr"] = {f"lag{g}": {"samples": autocorr(samples, g), "test": autocorr(test, g)} for g in lags}
    for g in lags:
        d = out["autocorr"][f"lag{g}"]
        d["abs_error"] = abs(d["samples"] - d["test"])
    if frames:
        p_s, p_t = radial_spectrum(samples), radial_spectrum(test)
        out["spectrum_rel_error"] = float(np.abs(p_s - p_t).sum() / max(float(p_t.sum()), 1e-300))
        out["spectrum"] = {"samples": p_s.tolist(), "test": p_t.tolist()}
        out["energy_distance"] = frame_energy_distance(samples, test, max(float(test.std()), 1e-300))
    return out


_SCALARS = ("mean_rel_error", "std_rel_error", "spectrum_rel_error", "energy_distance")


def _scalars(stats: dict[str, Any]) -> dict[str, float]:
    out = {k: stats[k] for k in _SCALARS if k in stats}
    for lag, d in stats["autocorr"].items():
        out[f"autocorr_{lag}_abs_error"] = d["abs_error"]
    return out


def bootstrap_reference(test: np.ndarray, n_samples: int, n_boot: int, rng: np.random.Generator, *,
                        frames: bool = True) -> dict[str, dict[str, float]]:
    """Each scalar statistic between two independent with-replacement resamples of `test` (sizes
    `n_samples` and `len(test)`), over `n_boot` resamples: mean, 5% and 95%."""
    rows = []
    for _ in range(n_boot):
        a = test[rng.integers(0, test.shape[0], n_samples)]
        b = test[rng.integers(0, test.shape[0], test.shape[0])]
        rows.append(_scalars(compare(a, b, frames=frames)))
    return {k: {"mean": float(np.mean([r[k] for r in rows])), "p05": float(np.quantile([r[k] for r in rows], 0.05)),
                "p95": float(np.quantile([r[k] for r in rows], 0.95))} for k in rows[0]}


def prior_quality(run_dir: str, data: str, *, draws: int, n_boot: int, seed: int, batch_size: int,
                  num_steps: int | None) -> dict[str, Any]:
    import jax

    from sdift_prob.data.fields import load_fields, test_part
    from sdift_prob.ftm import load_run
    from sdift_prob.ftm.encode import decode_grid_numpy, encode_grid
    from sdift_prob.gpsd import load_prior

    fit = load_run(run_dir)
    prior = load_prior(run_dir)
    test_ds = test_part(load_fields(data))
    dims = tuple(fit.model.space_dims)
    grids = tuple(np.asarray(test_ds[d].values, np.float64) for d in dims)
    test = np.asarray(test_ds["field"].transpose("trajectory", "time", *dims).values, np.float64)
    times = np.asarray(test_ds["time"].values, np.float64)
    t0, t1 = fit.time_domain
    start = time.perf_counter()
    cores = np.asarray(prior.sample(jax.random.key(seed), (times - t0) / (t1 - t0), draws, num_steps,
                                    batch_size=min(batch_size, draws)), np.float64)
    sampling_s = time.perf_counter() - start
    samples = decode_grid_numpy(fit.model, cores, grids, normalizer=fit.normalizer)
    # a small ridge: a near-singular basis leaves some core directions undetermined, and the
    # plain least-squares cores are huge along them (they decode to nothing)
    test_cores = encode_grid(fit.model, test, grids, normalizer=fit.normalizer, ridge=CORE_RIDGE)
    projected = decode_grid_numpy(fit.model, test_cores, grids, normalizer=fit.normalizer)
    rng = np.random.default_rng(seed)
    return {
        "run": str(run_dir), "data": str(data), "draws": int(draws), "n_test": int(test.shape[0]),
        "sampler_steps": int(num_steps or prior.config.num_steps), "sampling_s": round(sampling_s, 2),
        # what the FTM basis itself loses on the test trajectories (a floor for any prior)
        "test_projection_vrmse": float(np.mean(np.sqrt(((projected - test) ** 2).reshape(len(test), -1).mean(1)
                                                       / test.reshape(len(test), -1).var(1)))),
        "frames": compare(samples, test),
        "frames_reference": bootstrap_reference(test, draws, n_boot, rng),
        "cores": compare(cores, test_cores, frames=False),
        "cores_reference": bootstrap_reference(test_cores, draws, n_boot, rng, frames=False),
    }


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", metavar="RUN_DIR", help="run directory with a fitted FTM and a trained prior")
    p.add_argument("--data", required=True, help="the run's field collection (its test split is the reference)")
    p.add_argument("--draws", type=int, default=64, help="unconditional prior draws")
    p.add_argument("--boot", type=int, default=50, help="resamples of the sampling-noise reference")
    p.add_argument("--batch", type=int, default=16, help="draws per vmapped batch")
    p.add_argument("--steps", type=int, default=None, help="sampler steps (default: the prior's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="write the JSON report here (atomically)")
    args = p.parse_args(argv)
    for flag, value, low in (("--draws", args.draws, 2), ("--boot", args.boot, 1), ("--batch", args.batch, 1)):
        if value < low:
            p.error(f"{flag}: expected an integer >= {low}, got {value}")
    import jax

    from sdift_prob.io import write_json
    from sdift_prob.run import package_versions

    result = {"platform": platform.platform(), "python": sys.version.split()[0], "device": str(jax.devices()[0]),
              "versions": package_versions(),
              "quality": prior_quality(args.run_dir, args.data, draws=args.draws, n_boot=args.boot, seed=args.seed,
                                       batch_size=args.batch, num_steps=args.steps)}
    q = result["quality"]
    print(summary_text(q))
    if args.out:
        write_json(args.out, result)
    return 0


def summary_text(q: dict[str, Any]) -> str:
    """A few lines: each figure beside its sampling-noise reference."""
    lines = [f"{q['draws']} draws vs {q['n_test']} test trajectories (test projection VRMSE "
             f"{q['test_projection_vrmse']:.4f}); figure [sampling noise mean, 5-95%]"]
    for part in ("frames", "cores"):
        stats, ref = _scalars(q[part]), q[f"{part}_reference"]
        lines.append(f"{part}: " + "; ".join(
            f"{k} {v:.3f} [{ref[k]['mean']:.3f}, {ref[k]['p05']:.3f}-{ref[k]['p95']:.3f}]" for k, v in stats.items()))
        lines.append(f"{part} autocorr lag1-3 samples/test: " + ", ".join(
            f"{d['samples']:.3f}/{d['test']:.3f}" for d in q[part]["autocorr"].values()))
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
