"""What a reconstruction did, for its attrs and `inference.summary.run_summary` (issue 16), and
the output's own checks (`inference.self_checks`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from models.noise_models import NoiseModel
from models.likelihoods import Likelihood
from sdift_prob.data.observations import ObservationSet, PaddedObservations

from . import self_checks
from .run import Run
from .upfront import spans_outside


def _noise_source(noise: NoiseModel | None, likelihood: Likelihood, conditioned: bool) -> dict[str, str]:
    """Where the noise level came from (`given` / `per point` / `inferred` / ...) and why."""
    if not conditioned or noise is None:
        return {"source": "none", "reason": "no observations: prior draws"}
    if not likelihood.has_sigma:
        return {"source": likelihood.name,
                "reason": f"likelihood={likelihood.name!r}: the counts' own variance (obs.attrs)"}
    return {"source": noise.source, "reason": noise.reason}


def _run_facts(run: Run, obs: ObservationSet, *, noise: NoiseModel | None, likelihood: Likelihood,
               conditioned: bool, sigma_y: Any, sigma_norm_draws: Any, padded: PaddedObservations,
               out_times: np.ndarray, grid_times: np.ndarray) -> dict[str, Any]:
    """The attrs entries `noise`, `data`, `time_range` and `observations` (the observation
    set's provenance, e.g. `sdift observe`'s source file and trajectory) of a reconstruction."""
    std = float(run.ftm.normalizer.std)
    source = _noise_source(noise, likelihood, conditioned)
    entry: dict[str, Any] = dict(source)
    if entry["source"] == "inferred" and sigma_norm_draws is not None:
        entry["std"] = float(np.mean(sigma_norm_draws)) * std  # posterior mean of sigma
    elif entry["source"] == "per point":
        per_point = np.asarray(padded.noise_scale)[np.asarray(padded.mask)] * std
        entry.update(std=float(np.median(per_point)), std_min=float(per_point.min()), std_max=float(per_point.max()))
    elif entry["source"] == "given":
        entry["std"] = float(sigma_y) * std
    if entry["source"] in ("given", "per point"):
        entry["includes_representation_error"] = True
    dropped = obs.attrs.get("dropped", {})
    n_dropped = (sum(int(v) for v in dropped.values()) if isinstance(dropped, Mapping) else 0) \
        + int(obs.attrs.get("dropped_missing", 0) or 0)
    with_data = int(np.asarray(padded.mask).any(axis=1).sum()) if conditioned else 0
    t0, t1 = run.ftm.time_domain
    all_times = np.concatenate([out_times, obs.time])
    beyond = spans_outside(all_times, (t0, t1))
    provenance = {k: obs.attrs[k] for k in ("source", "trajectory", "trajectory_split", "source_simulator",
                                            "source_seed", "seed") if k in obs.attrs}
    return {
        "noise": entry,
        "data": {"points_used": int(obs.n_points), "points_dropped_before": n_dropped,
                 "frames": int(grid_times.size), "frames_with_data": with_data,
                 "frames_without_data": int(grid_times.size) - with_data},
        "time_range": {"output": [float(out_times.min()), float(out_times.max())],
                       "observations": [float(obs.time.min()), float(obs.time.max())] if obs.n_points else None,
                       "training": [float(t0), float(t1)], "spans_outside_training": beyond,
                       "extrapolated": bool(beyond > 0)},
        "observations": provenance,
    }


# --- the output's own checks (issue 16; the checks themselves are in `inference.self_checks`) ---


def _self_check(run: Run, field_norm: Any, core_draws: np.ndarray, design: np.ndarray,
                padded: PaddedObservations, *, sigma_y: Any, sigma_norm_draws: Any, likelihood: Likelihood,
                conditioned: bool, noise: Mapping[str, Any], checks: str,
                basis_error_known: bool = True) -> list[dict[str, Any]]:
    """Run `inference.self_checks.run_checks` on a decoded reconstruction and `enforce` the
    result (`checks="raise"`: a `NumericalError`; `"warn"`: a `SelfCheckWarning`); returns the
    results for the attrs. The residual uses the noise std the sampler used (normalised, with
    the representation error where it was added; `basis_error_known`: whether the run recorded
    that error); it is left out without a noise std (Poisson)."""
    normalizer = run.ftm.normalizer
    mask = np.asarray(padded.mask)
    scale: Any = None
    if conditioned and likelihood.has_sigma:
        if sigma_y == "metadata":
            scale = np.asarray(padded.noise_scale)[mask]
        elif sigma_norm_draws is not None:
            scale = float(np.mean(sigma_norm_draws))
        elif sigma_y is not None:
            scale = float(sigma_y)
    predicted = observed = None
    if scale is not None:
        predicted = self_checks.predicted_at_observations(core_draws, np.asarray(design), mask)
        observed = np.asarray(padded.values)[mask]
    units = str(run.provenance.get("units") or "field units")
    source = noise.get("source", "")
    if "std" in noise:
        source = f"{source}, {'median ' if source == 'per point' else ''}{noise['std']:.4g} {units}"
    results = self_checks.run_checks(
        field_norm=np.asarray(field_norm), train_range=run.training_range, mean=normalizer.mean, std=normalizer.std,
        units=units, predicted=predicted, observed=observed, noise=scale, noise_source=source,
        robust=likelihood.robust, basis_error_known=basis_error_known or sigma_norm_draws is not None)
    self_checks.enforce(results, checks, stacklevel=3)
    return results
