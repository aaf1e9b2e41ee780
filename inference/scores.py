"""Scores of a posterior against a truth field: VRMSE of the mean, interval coverage, CRPS, PIT,
exceedance probabilities. NaN truth entries (land, gaps) are left out of every score.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import arviz as az
from jaxtyping import ArrayLike, Float, PRNGKeyArray
import numpy as np
import xarray as xr

from sdift_prob.errors import bad_input
from sdift_prob.metrics import (
    INTERVAL_METHODS,
    _check_levels,
    crps_ensemble,
    energy_score,
    interval_bounds,
    interval_coverage,
    pit_values,
    rmse,
    variogram_score,
    vrmse,
)

from .idata import _check_idata, _numeric


# -- evaluation against a truth field -----------------------------------------------------------
# `truth` may hold NaN (land masks, gaps, e.g. a field read with `sdift_prob.data.from_xarray`):
# those entries are left out of every score (`sdift_prob.metrics`), and `pit` is NaN there.
def _field(idata: Any) -> xr.DataArray:
    _check_idata(idata)
    if "field" not in idata.posterior:
        raise bad_input("idata", "a posterior with a 'field' variable", list(idata.posterior.data_vars))
    return idata.posterior["field"]


def _truth_array(field: xr.DataArray, truth: Any) -> np.ndarray:
    dims = tuple(d for d in field.dims if d not in ("chain", "draw"))
    shape = tuple(field.sizes[d] for d in dims)
    if isinstance(truth, xr.DataArray):
        if set(truth.dims) != set(dims):
            raise bad_input("truth", f"a DataArray with dims {dims}", tuple(truth.dims))
        truth = truth.transpose(*dims)
        if truth.shape != shape:
            raise bad_input("truth", f"shape {shape} = {dims} of the posterior field (same grid)",
                            f"shape {truth.shape}")
        for d in dims:
            if d in truth.coords and not np.allclose(np.asarray(truth.coords[d], dtype=np.float64),
                                                     np.asarray(field.coords[d], dtype=np.float64),
                                                     rtol=1e-9, atol=0.0):
                raise bad_input("truth", f"coords of {d!r} equal to the posterior field's",
                                "different coordinate values")
        arr = _numeric(truth.values, "truth")
    else:
        arr = _numeric(truth, "truth")
    if arr.shape != shape:
        raise bad_input("truth", f"shape {shape} = (time, *space) of the posterior field", f"shape {arr.shape}")
    arr = arr.astype(np.float64)
    # NaN = missing truth (land, gaps): sdift_prob.metrics leaves those entries out of every
    # score. Infinities are errors.
    if np.isinf(arr).any():
        raise bad_input("truth", "finite values or NaN (missing entries)",
                        f"{int(np.isinf(arr).sum())} infinite entries of {arr.size}")
    if arr.size and np.isnan(arr).all():
        raise bad_input("truth", "at least one entry that is not missing (NaN)", f"all {arr.size} entries NaN")
    return arr


def _draws(field: xr.DataArray) -> np.ndarray:
    values = np.asarray(field.values, dtype=np.float64)
    flat = values.reshape((-1,) + values.shape[2:])
    if not np.isfinite(flat).all():
        bad = int((~np.isfinite(flat)).reshape(flat.shape[0], -1).any(axis=1).sum())
        raise bad_input("idata", "finite field draws", f"{bad} of {flat.shape[0]} draws with NaN/inf "
                        "(drop them with idata.sel / isel first)")
    return flat


def posterior_mean(idata: az.InferenceData) -> xr.DataArray:
    """Posterior mean field over chains and draws: `(time, *space)`, physical units and coords."""
    field = _field(idata)
    _draws(field)
    return field.mean(dim=("chain", "draw")).rename("field_mean")


def vrmse_of_mean(idata: az.InferenceData, truth: xr.DataArray | Float[ArrayLike, "T *space"]) -> float:
    """VRMSE (`sdift_prob.metrics.vrmse`) of the posterior mean against `truth (time, *space)`."""
    field = _field(idata)
    return float(vrmse(_truth_array(field, truth), _draws(field).mean(axis=0)))


# Three kinds of central interval, all from the same draws (chains and draws pooled):
# - "predictive": Student-t prediction interval m ± t_{S-1} s sqrt(1 + 1/S) (metrics.interval_bounds),
#   right for a calibrated, roughly Gaussian posterior at any draw count; `evaluate`'s coverage_50/90.
# - "quantile": equal-tailed empirical quantiles (np.quantile, as ArviZ's ETI) — what an analyst
#   computes; too narrow at few draws (8 draws of a calibrated posterior cover ~0.72 at 90%).
# - "hdi": ArviZ's highest-density interval (az.hdi), the narrowest interval holding the level's share
#   of the draws; as narrow as or narrower than the quantile interval, so it covers less at few draws.
COVERAGE_METHODS = (*INTERVAL_METHODS, "hdi")


def _check_method(method: Any) -> None:
    if method not in COVERAGE_METHODS:
        raise bad_input("method", f"one of {COVERAGE_METHODS}", method)


def _covered(u: np.ndarray, draws: np.ndarray, level: float, method: str) -> np.ndarray:
    """`(T, *space)`: 1.0 where the truth lies in the central interval (ends included), 0.0 where
    not, NaN where the truth is missing."""
    observed = ~np.isnan(u)
    if method == "hdi":
        # az.hdi loops over entries in Python: only the entries with a truth are computed.
        bounds = az.hdi(draws[:, observed][None], hdi_prob=level)  # (N, 2) for (chain, draw, N)
        lo, hi = np.full(u.shape, np.nan), np.full(u.shape, np.nan)
        lo[observed], hi[observed] = bounds[:, 0], bounds[:, 1]
    else:
        lo, hi = interval_bounds(draws, level, method)
    inside = ((u >= lo) & (u <= hi)).astype(np.float64)
    return np.where(observed, inside, np.nan)


def coverage(
    idata: az.InferenceData,
    truth: xr.DataArray | Float[ArrayLike, "T *space"],
    levels: Sequence[float] = (0.5, 0.9),
    *,
    method: str = "predictive",
) -> dict[float, float]:
    """Fraction of truth entries inside the central posterior intervals of each level, draws =
    all chains and draws. `method`: `"predictive"` (default) = draw-count-aware Student-t
    intervals (`sdift_prob.metrics.interval_bounds`), `"quantile"` = equal-tailed empirical
    quantiles (ArviZ's ETI), `"hdi"` = `az.hdi` (see `COVERAGE_METHODS`)."""
    _check_method(method)
    field = _field(idata)
    u, draws = _truth_array(field, truth), _draws(field)
    if method != "hdi":
        return dict(interval_coverage(u, draws, levels, method=method))
    return {level: float(np.nanmean(_covered(u, draws, level, method))) for level in _check_levels(levels)}


def coverage_by(
    idata: az.InferenceData,
    truth: xr.DataArray | Float[ArrayLike, "T *space"],
    dim: str,
    levels: Sequence[float] = (0.5, 0.9),
    *,
    method: str = "quantile",
) -> xr.DataArray:
    """Coverage of the true field per value of one dim (per depth level, latitude, time stamp...).

    **Arguments:** `idata` (posterior `field`), `truth (time, *space)` as in `evaluate`; `dim` one
    of the field's dims other than chain/draw; `levels` central interval levels in (0, 1);
    `method` one of `COVERAGE_METHODS` (default `"quantile"`, the equal-tailed intervals an
    analyst computes; see `coverage`).

    **Returns:** `coverage (level, dim)`: the fraction of non-missing truth entries at each value
    of `dim` inside the interval (NaN where there is none), with the coord `n_entries (dim)` (how
    many entries each fraction is over) and attrs `method`, `n_draws`. With n entries the
    fraction's sampling error is about `sqrt(l (1 - l) / n)` if the entries were independent;
    neighbouring points are correlated, so it is larger.
    """
    _check_method(method)
    field = _field(idata)
    dims = tuple(d for d in field.dims if d not in ("chain", "draw"))
    if not isinstance(dim, str) or dim not in dims:
        raise bad_input("dim", f"one of the field's dims {dims}", dim)
    lv = _check_levels(levels)
    u, draws = _truth_array(field, truth), _draws(field)
    axis = dims.index(dim)
    others = tuple(a for a in range(u.ndim) if a != axis)
    n = (~np.isnan(u)).sum(axis=others)
    rows = []
    for level in lv:
        inside = np.nansum(_covered(u, draws, level, method), axis=others)
        rows.append(np.where(n > 0, inside / np.maximum(n, 1), np.nan))
    coord = field.coords[dim]
    return xr.DataArray(
        np.stack(rows), dims=("level", dim),
        coords={"level": list(lv), dim: (dim, coord.values, coord.attrs), "n_entries": (dim, n)},
        name="coverage", attrs={"method": method, "n_draws": int(draws.shape[0])},
    )


def crps(idata: az.InferenceData, truth: xr.DataArray | Float[ArrayLike, "T *space"]) -> float:
    """Mean (fair) ensemble CRPS of the posterior field against `truth` (physical units)."""
    field = _field(idata)
    return float(crps_ensemble(_truth_array(field, truth), _draws(field), fair=True))


def pit(
    idata: az.InferenceData, truth: xr.DataArray | Float[ArrayLike, "T *space"], *, key: PRNGKeyArray | None = None
) -> xr.DataArray:
    """Randomised PIT of each truth entry among the posterior draws (`metrics.pit_values`).

    **Returns:** `(time, *space)` DataArray of values in [0, 1] with the field's coords (NaN
    where the truth is NaN).
    """
    field = _field(idata)
    values = pit_values(_truth_array(field, truth), _draws(field), key=key)
    template = field.isel(chain=0, draw=0, drop=True)
    return xr.DataArray(values, dims=template.dims, coords=template.coords, name="pit")


def evaluate(
    idata: az.InferenceData, truth: xr.DataArray | Float[ArrayLike, "T *space"]
) -> dict[str, float | int]:
    """Accuracy and calibration of the posterior field against `truth (time, *space)`.

    All draws (chains and draws pooled) count; NaN entries of `truth` (missing: land, gaps) are
    left out of every score. Physical units.

    **Returns:** a dict of floats (`n_draws` an int):

    - `vrmse`, `rmse`: of the posterior mean.
    - `coverage_50`, `coverage_90`: fraction of truth entries inside the central 50% / 90%
      **Student-t predictive** intervals `m ± t_{S-1} s sqrt(1 + 1/S)` (`metrics.interval_bounds`,
      method "predictive"): nominal for a calibrated, roughly Gaussian posterior at any draw count.
    - `coverage_50_quantile`, `coverage_90_quantile`: the same with **equal-tailed quantile**
      intervals of the draws (`np.quantile`, ArviZ's ETI) — what an analyst computes; below nominal
      at few draws even for a calibrated posterior (about 0.72 at 90% with 8 draws).
    - `coverage_50_hdi`, `coverage_90_hdi`: with ArviZ's **HDI** (`az.hdi`): at most as wide as
      the quantile interval, so at most its coverage for symmetric posteriors. It is the slowest
      figure here (az.hdi loops over entries in Python: ~2.5 s per level for 32 draws of a
      20 × 24 × 24 × 16 field).
    - `n_draws`: number of draws behind every figure (chains × draws).
    - `crps`: mean ensemble CRPS per entry (fair estimator).
    - `energy_score`: fair energy score of whole frames (all points of a time stamp), mean over
      time stamps (`metrics.energy_score`).
    - `variogram_score`: variogram score, p = 0.5, on at most `metrics.VARIOGRAM_MAX_POINTS`
      points per frame drawn with seed 0 (the same points in every frame and for every posterior
      on the grid), mean over time stamps (`metrics.variogram_score`).

    The two multivariate scores see a wrong spatial correlation of the draws, which coverage and
    CRPS (one entry at a time) cannot; their values depend on the grid size, so compare them only
    between posteriors on the same grid.
    """
    field = _field(idata)
    u = _truth_array(field, truth)
    draws = _draws(field)
    mean = draws.mean(axis=0)
    predictive = interval_coverage(u, draws, (0.5, 0.9), method="predictive")
    quantile = interval_coverage(u, draws, (0.5, 0.9), method="quantile")
    hdi = {level: float(np.nanmean(_covered(u, draws, level, "hdi"))) for level in (0.5, 0.9)}
    return {
        "vrmse": float(vrmse(u, mean)),
        "rmse": float(rmse(u, mean)),
        "coverage_50": float(predictive[0.5]),
        "coverage_90": float(predictive[0.9]),
        "coverage_50_quantile": float(quantile[0.5]),
        "coverage_90_quantile": float(quantile[0.9]),
        "coverage_50_hdi": hdi[0.5],
        "coverage_90_hdi": hdi[0.9],
        "n_draws": int(draws.shape[0]),
        "crps": float(crps_ensemble(u, draws, fair=True)),
        "energy_score": float(energy_score(u, draws)),
        "variogram_score": float(variogram_score(u, draws, p=0.5)),
    }


# -- uncertainty products -------------------------------------------------------------------------
def _threshold(threshold: Any, var: xr.DataArray) -> float | xr.DataArray:
    if isinstance(threshold, xr.DataArray):
        inner = tuple(d for d in var.dims if d not in ("chain", "draw"))
        if not set(threshold.dims) <= set(inner):
            raise bad_input("threshold", f"a DataArray over some of the dims {inner}", tuple(threshold.dims))
        values = _numeric(threshold.values, "threshold")
        if not np.isfinite(values).all():
            raise bad_input("threshold", "finite values", "NaN or infinite entries")
        try:
            # join="exact": a threshold on another grid is an error, not a silent intersection.
            xr.align(var, threshold, join="exact")
        except ValueError as exc:
            raise bad_input("threshold", f"coords equal to those of {var.name!r} on its dims", str(exc)) from exc
        return threshold
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float, np.integer, np.floating)) \
            or not np.isfinite(threshold):
        raise bad_input("threshold", "a finite number (physical units) or a DataArray of them", threshold)
    return float(threshold)


def p_exceed(
    idata: az.InferenceData, threshold: float | xr.DataArray, *, var_name: str = "field"
) -> xr.DataArray:
    """Posterior probability that a variable exceeds a threshold, per entry: the fraction of the
    draws (chains and draws pooled) strictly above `threshold`.

    **Arguments:**

    - `idata`: a posterior from `to_inference_data` / `reconstruct`.
    - `threshold`: a number in the variable's physical units (e.g. a sound speed c₀ in m/s), or a
      DataArray over some of its dims (e.g. one threshold per depth) on the same coords.
    - `var_name`: the posterior variable (default `"field"`; `"sigma"` works too).

    **Returns:** `p_exceed` DataArray over the variable's dims less chain/draw (for the field
    `(time, *space)`, with its coords), values in {0, 1/S, ..., 1} for S draws; attrs
    `n_draws`, `threshold` (when a number), `var_name`, `threshold_units`. It is a Monte Carlo estimate:
    its standard error is about `sqrt(p (1 - p) / S)` (0.09 at p = 0.5 with 32 draws), and it
    is only as calibrated as the posterior is.
    """
    _check_idata(idata)
    names = list(idata.posterior.data_vars)
    if not isinstance(var_name, str) or var_name not in idata.posterior:
        raise bad_input("var_name", f"a posterior variable, one of {names}", var_name)
    var = idata.posterior[var_name]
    if var.dims[:2] != ("chain", "draw"):
        raise bad_input("var_name", "a variable with dims (chain, draw, ...)", tuple(var.dims))
    if not np.isfinite(var.values).all():
        raise bad_input("idata", f"finite draws of {var_name!r}", "NaN or infinite entries "
                        "(drop those draws with idata.sel / isel first)")
    thr = _threshold(threshold, var)
    n_draws = int(var.sizes["chain"] * var.sizes["draw"])
    out = (var > thr).mean(dim=("chain", "draw")).rename("p_exceed")
    out.attrs = {"n_draws": n_draws, "var_name": var_name, "long_name": f"P({var_name} > threshold)"}
    if not isinstance(thr, xr.DataArray):
        out.attrs["threshold"] = thr
    if "units" in var.attrs:
        # Not `units`: the probability has none, and plots label values with `units`.
        out.attrs["threshold_units"] = var.attrs["units"]
    return out


# -- PSIS-LOO and LOO-PIT with independent draws -------------------------------------------------
