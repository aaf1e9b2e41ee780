"""PSIS-LOO and LOO-PIT of a posterior with `reff=1` (the draws are independent runs), behind a
Pareto-k gate.
"""

from __future__ import annotations

from typing import Any

import arviz as az
import numpy as np
import xarray as xr

from sdift_prob.errors import NumericalError, bad_input

from .idata import _check_idata


# The guided sampler's draws are independent runs (no Markov chain): their relative efficiency is
# 1. ArviZ otherwise estimates it from the effective sample size of every posterior variable (the
# whole field included) whenever there is more than one chain, which takes tens of seconds and
# adds nothing here.
def _log_likelihood(idata: Any, var_name: str) -> xr.DataArray:
    _check_idata(idata)
    if not isinstance(var_name, str):
        raise bad_input("var_name", "the name of an observed variable (str)", var_name)
    for group in ("log_likelihood", "observed_data", "posterior_predictive"):
        if group not in idata.groups() or var_name not in idata[group]:
            raise bad_input("idata", f"a posterior with observations: group {group!r} holding {var_name!r} "
                            "(reconstructions from zero observations have none)", list(idata.groups()))
    ll = idata.log_likelihood[var_name]
    if not np.isfinite(ll.values).all():
        raise bad_input("idata", f"finite log_likelihood.{var_name}", "NaN or infinite entries")
    return ll


class UnreliableLOOWarning(UserWarning):
    """PSIS-LOO's Pareto k diagnostic exceeds its threshold at too many observations: the elpd
    estimate and any ranking built on it are unreliable (use `inference.checks.kfold_elpd`)."""


# Default gate of `loo`: k above 0.7 at more than 5% of the observations. 0.7 is the threshold of the
# PSIS paper (Vehtari et al.) for any draw count; ArviZ's own min(1 - 1/log10(S), 0.7) is stricter at
# few draws. The 5% is a judgment call: a handful of high-k points biases the elpd little.
LOO_K_THRESHOLD = 0.7
LOO_MAX_BAD_FRACTION = 0.05


def loo(idata: az.InferenceData, *, var_name: str = "y", pointwise: bool = True,
        scale: str | None = None, k_threshold: float = LOO_K_THRESHOLD,
        max_bad_fraction: float = LOO_MAX_BAD_FRACTION, on_unreliable: str = "warn") -> Any:
    """PSIS-LOO of the observations (`az.loo` with `reff=1`: the draws are independent), behind a
    Pareto-k gate.

    At the draw counts of a guided diffusion sampler (8-32 draws) and with each draw following the
    data closely, the importance ratios of PSIS are heavy-tailed: on the ocean test trajectory
    (16 draws) every one of 1,840 observations had k > 1. The estimate is then not an elpd at all,
    and `az.compare` on such estimates can rank models wrongly. The gate counts the observations
    with `pareto_k > k_threshold`; when they are more than `max_bad_fraction` of all, it warns
    (`UnreliableLOOWarning`) or raises (`NumericalError`), naming the count and recommending K-fold
    cross-validation (`inference.checks.kfold_elpd`, K refits over observation subsets; or
    `inference.checks.elpd`, which falls back to it).

    **Arguments:** `idata` from `to_inference_data` / `reconstruct` (with observations);
    `var_name` the observed variable; `pointwise` keep `loo_i` and `pareto_k` per observation
    (forced on while the gate is on); `scale` as `az.loo` (default "log"); `k_threshold` (default 0.7),
    `max_bad_fraction` in [0, 1] (default 0.05); `on_unreliable` "warn" (default), "raise" or "ignore".

    **Returns:** ArviZ's `ELPDData` (`elpd_loo`, `se`, `p_loo`, `pareto_k`, ...), with
    `n_bad_k` and `loo_reliable` added; a dict of them goes into `az.compare` as it is.
    """
    import warnings

    _log_likelihood(idata, var_name)
    if on_unreliable not in ("warn", "raise", "ignore"):
        raise bad_input("on_unreliable", "'warn', 'raise' or 'ignore'", on_unreliable)
    for name, value, hi in (("k_threshold", k_threshold, np.inf), ("max_bad_fraction", max_bad_fraction, 1.0)):
        if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or not 0 <= value <= hi:
            raise bad_input(name, f"a number in [0, {hi}]", value)
    gate = on_unreliable != "ignore"
    with warnings.catch_warnings():
        if gate:  # our message replaces ArviZ's generic one
            warnings.filterwarnings("ignore", message=".*shape parameter of Pareto.*", category=UserWarning)
        result = az.loo(idata, pointwise=pointwise or gate, var_name=var_name, reff=1.0, scale=scale)
    if "pareto_k" in result:
        k = np.asarray(result["pareto_k"])
        n_bad = int((k > k_threshold).sum())
        result["n_bad_k"] = n_bad
        result["loo_reliable"] = bool(n_bad <= max_bad_fraction * k.size)
        if gate and not result["loo_reliable"]:
            message = (f"PSIS-LOO is unreliable here: Pareto k > {k_threshold:g} at {n_bad} of {k.size} observations "
                       f"({n_bad / k.size:.0%}, gate {max_bad_fraction:.0%}) with {int(result['n_samples'])} draws; "
                       "its elpd (and an az.compare ranking built on it) should not be used. Use K-fold "
                       "cross-validation instead: inference.checks.kfold_elpd (K refits over observation subsets), "
                       "or inference.checks.elpd, which falls back to it.")
            if on_unreliable == "raise":
                raise NumericalError(message)
            warnings.warn(message, UnreliableLOOWarning, stacklevel=2)
    return result


def psis_log_weights(idata: az.InferenceData, *, var_name: str = "y") -> tuple[xr.DataArray, xr.DataArray]:
    """Pareto-smoothed leave-one-out importance log weights of the draws (`az.psislw`, `reff=1`).

    **Returns:** `(log_weights, pareto_k)`: `log_weights (obs_id, __sample__)` normalised per
    observation, the draws stacked as `(chain, draw)` like ArviZ's `__sample__` dim (pass it as
    `log_weights=` to `az.loo_pit` / `az.plot_loo_pit`); `pareto_k (obs_id)` (> 0.7: unreliable).
    """
    ll = _log_likelihood(idata, var_name).stack(__sample__=("chain", "draw"))
    log_weights, pareto_k = az.psislw(-ll, reff=1.0)
    return log_weights.transpose(..., "__sample__"), pareto_k


def loo_pit(idata: az.InferenceData, *, var_name: str = "y") -> xr.DataArray:
    """LOO-PIT of each observation: `az.loo_pit` with the PSIS weights of `psis_log_weights`.

    **Returns:** `(obs_id)` values in [0, 1] (uniform when the predictions are calibrated).
    """
    log_weights, _ = psis_log_weights(idata, var_name=var_name)
    return az.loo_pit(idata, y=var_name, log_weights=log_weights)
