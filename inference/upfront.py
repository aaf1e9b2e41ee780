"""Checks before any work (issue 16): PRNG key, untested step counts, units guard, memory
estimate, times far outside the training range.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import math
from typing import Any

import numpy as np

from sdift_prob.data.observations import ObservationSet
from sdift_prob.errors import InputError, UntestedSettingWarning, bad_input, warn_untested_steps
from sdift_prob.validation import check_key

from . import self_checks
from .guided import GuidedConfig
from .run import Run
from .samplers import DEFAULT_SAMPLER


# Observation values further than this many training stds from the training mean are refused as
# a units mistake unless the caller raises it (`max_abs_zscore`): km/s for m/s is 64 stds away on
# the ocean run (issue 16), while its training fields span -1.4 .. 1.6 stds.
DEFAULT_MAX_ABS_ZSCORE = 20.0
# Memory the two big arrays of a reconstruction may need (`memory_estimate`) before it is refused
# up front (`max_memory_gb`); below what a laptop has, far above what the shipped examples need.
DEFAULT_MAX_MEMORY_GB = 8.0


# --- checks before any work (issue 16), kept apart from `reconstruct`'s body, which calls
# `_check_before_work` first ---------------------------------------------------------------------


def _check_before_work(key: Any, sampler: str, config: Any) -> None:
    """What can be checked without the run or the data: a typed PRNG key (an int seed gives
    the usual one-line `InputError`, not a TypeError from inside JAX), and a loud
    `UntestedSettingWarning` for fewer sampler steps than tested (`gp` takes no steps)."""
    check_key(key)
    if sampler != "gp" and isinstance(config, GuidedConfig):
        warn_untested_steps(config.num_steps, "num_steps", stacklevel=3)


def _check_settings(checks: Any, max_abs_zscore: Any, max_memory_gb: Any) -> None:
    """The self-check mode and the limits of the up-front checks, before any work."""
    self_checks.check_mode(checks)
    for name, v in (("max_abs_zscore", max_abs_zscore), ("max_memory_gb", max_memory_gb)):
        if isinstance(v, bool) or not isinstance(v, (int, float, np.number)) or not (v > 0):
            raise bad_input(name, "a positive number (math.inf turns the check off)", v)


def units_hint(values: np.ndarray, mean: float, std: float) -> str:
    """What the units of `values` look like next to the training field (mean, std): a power of
    ten away (a unit prefix: km/s for m/s), 273.15 away (kelvin and degrees Celsius), or just
    their median against the training mean."""
    med = float(np.median(values))
    ratio = med / mean if mean != 0 else 0.0
    if math.isfinite(ratio) and ratio > 0:  # a subnormal median gives 0 (found by the hostile suite)
        decades = math.log10(ratio)
        k = round(decades)
        if k != 0 and abs(decades - k) < 0.1:  # within 25% of an exact power of ten
            return (f"their median {med:.4g} is about 1e{k:+d} times the training mean {mean:.4g}: "
                    "a unit prefix (e.g. km/s for m/s)?")
    for shift in (273.15, -273.15):
        if abs(med + shift - mean) < 3 * std:
            return (f"their median {med:.4g} is about {-shift:+g} away from the training mean {mean:.4g}: "
                    "degrees Celsius for kelvin (or back)?")
    return f"their median is {med:.4g}; the training mean is {mean:.4g}, its std {std:.4g}"


def _check_observation_values(obs: ObservationSet, normalizer: Any, max_abs_zscore: float, units: str) -> None:
    """Observation values further than `max_abs_zscore` training stds from the training mean
    are a units mistake (issue 16: km/s for m/s, 64 stds away, gave VRMSE 65 and exit 0), named
    with how many, the extreme and what the units look like."""
    if obs.n_points == 0:
        return
    z = np.abs(obs.value - normalizer.mean) / normalizer.std
    beyond = z > max_abs_zscore
    if not beyond.any():
        return
    extreme = float(obs.value[int(np.argmax(z))])
    raise bad_input(
        "obs.value", f"values within {max_abs_zscore:g} training stds ({normalizer.std:.4g} {units}) of the training "
        f"mean ({normalizer.mean:.4g} {units}); check the units, or pass max_abs_zscore (CLI: --max-zscore) "
        "if such values are real",
        f"{int(beyond.sum())} of {obs.n_points} values beyond, e.g. {extreme:.4g} ({float(z.max()):.3g} stds); "
        f"{units_hint(obs.value, normalizer.mean, normalizer.std)}")


# Copies of each big float32 array that `reconstruct` holds at once (peak RSS on the ocean run,
# docs/RELIABILITY.md): the decoded field in normalised and physical units and in the
# InferenceData (measured: 3.0-3.4 field sizes); the design rows as NumPy and JAX arrays, in the
# guided sampler and the predictive / log-likelihood batches (measured: 5.6 with mmps, 10^5
# points; issue 16's 12.8 GB for 10^6 points with mpdps is 6.2).
FIELD_COPIES = 4
DESIGN_COPIES = 6
# The exact `gp` sampler works in float64 on the rows of every point against every frame's
# cores, (N, M x D) matrices, several at once (models.gp_prior's parameter-space solve):
# measured 7.5 GB for 2e4 points on the ocean run, 37 bytes per entry.
GP_BYTES_PER_ENTRY = 40


def memory_estimate(n_draws: int, n_out_times: int, n_grid: int, n_frames: int, n_slots: int,
                    n_basis: int, *, n_points: int = 0, sampler: str = DEFAULT_SAMPLER) -> dict[str, float]:
    """Bytes `reconstruct` needs for its big arrays: the field draws (draws x output times x grid
    points, float32) and the observations' design rows (sampler frames x padded points per frame
    x basis functions, float32; for `gp`, points x frames x basis functions, float64, twice),
    times the copies held at once."""
    field = 4.0 * n_draws * n_out_times * n_grid * FIELD_COPIES
    design = 4.0 * n_frames * n_slots * n_basis * DESIGN_COPIES
    if sampler == "gp":
        design += float(GP_BYTES_PER_ENTRY) * n_points * n_frames * n_basis
    return {"field": field, "observations": design, "total": field + design}


def _check_memory(estimate: Mapping[str, float], max_memory_gb: float, *, draws: int, chains: int,
                  n_out_times: int, n_grid: int, n_points: int) -> None:
    """Refuse, before sampling, a run whose estimate exceeds `max_memory_gb`, saying which part
    is large and what to change."""
    if estimate["total"] <= max_memory_gb * 1e9:
        return
    gb = {k: v / 1e9 for k, v in estimate.items()}
    raise InputError(
        f"max_memory_gb: this reconstruction needs about {gb['total']:.3g} GB ({gb['field']:.3g} GB for "
        f"{chains} x {draws} field draws of {n_out_times} times x {n_grid} grid points, {gb['observations']:.3g} GB "
        f"for {n_points} observed points), more than the limit of {max_memory_gb:g} GB; use fewer draws, output "
        "times (times) or a coarser output grid (resolution, grids), fewer observations, or pass a larger "
        "max_memory_gb (CLI: --max-memory-gb) if the machine has the memory"
    )


# Times further than this many training spans outside the training time range: the prior and
# the basis were never shown anything like them (issue 16: t = 100 on a model trained on 0-38).
FAR_TIME_SPANS = 1.0


def spans_outside(times: np.ndarray, time_domain: tuple[float, float]) -> float:
    """How far `times` reach outside `time_domain`, in training spans (0 inside it)."""
    t = np.asarray(times, dtype=np.float64)
    if t.size == 0:
        return 0.0
    t0, t1 = time_domain
    span = (t1 - t0) if t1 != t0 else 1.0
    return float(max(0.0, (t0 - t.min()) / span, (t.max() - t1) / span))


def _warn_far_times(out_times: np.ndarray, obs: ObservationSet, time_domain: tuple[float, float]) -> None:
    """An `UntestedSettingWarning` naming `times` or `obs.time` when they reach more than
    `FAR_TIME_SPANS` training spans outside the training time range."""
    import warnings

    for name, t in (("times", out_times), ("obs.time", obs.time)):
        far = spans_outside(t, time_domain)
        if far > FAR_TIME_SPANS:
            warnings.warn(
                f"{name}: reaches {float(np.min(t)):.4g} .. {float(np.max(t)):.4g}, {far:.3g} training spans outside "
                f"the training time range [{time_domain[0]:.4g}, {time_domain[1]:.4g}]; the model has never seen "
                "such times and the result there is an extrapolation of unknown quality",
                UntestedSettingWarning, stacklevel=4,
            )


def _before_sampling(run: Run, obs: ObservationSet, *, out_times: np.ndarray, out_grids: Sequence[np.ndarray],
                     grid_times: np.ndarray, n_slots: int, draws: int, chains: int, max_abs_zscore: float,
                     max_memory_gb: float, sampler: str) -> None:
    """The up-front checks that need the run and the data (issue 16): units guard, memory
    estimate, times far outside the training range."""
    units = str(run.provenance.get("units") or "field units")
    _check_observation_values(obs, run.ftm.normalizer, max_abs_zscore, units)
    n_grid = int(np.prod([g.size for g in out_grids]))
    estimate = memory_estimate(draws * chains, out_times.size, n_grid, grid_times.size, n_slots,
                               int(np.prod(run.core_shape)), n_points=obs.n_points, sampler=sampler)
    _check_memory(estimate, max_memory_gb, draws=draws, chains=chains, n_out_times=out_times.size, n_grid=n_grid,
                  n_points=obs.n_points)
    _warn_far_times(out_times, obs, run.ftm.time_domain)
