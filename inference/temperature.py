"""Posterior temperature τ: `apply_temperature` tempers an ensemble about its mean (variance times
τ), `temper_posterior` a whole InferenceData (field, cores, posterior predictive,
log-likelihood).
"""

from __future__ import annotations

from collections.abc import Sequence
import json
import math
from typing import Any

import arviz as az
import jax
import jax.numpy as jnp
from jaxtyping import ArrayLike, Float
import numpy as np

from sdift_prob.errors import bad_input

from .idata import _check_idata, _numeric


def _check_number(value: Any, argument: str, *, positive: bool = False, unit_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not math.isfinite(value):
        raise bad_input(argument, "a finite number", value)
    v = float(value)
    if unit_open and not 0.0 < v < 1.0:
        raise bad_input(argument, "a number in the open interval (0, 1)", value)
    if positive and v <= 0:
        raise bad_input(argument, "a positive number", value)
    return v


def _check_grid(values: Any, argument: str, *, positive: bool, unit_open: bool = False) -> tuple[float, ...]:
    if isinstance(values, (str, bytes)) or not isinstance(values, (Sequence, np.ndarray)) or len(values) == 0:
        raise bad_input(argument, "a non-empty sequence of numbers", values)
    out = tuple(_check_number(v, argument, positive=positive, unit_open=unit_open) for v in values)
    if not positive and not unit_open and any(v < 0 for v in out):
        raise bad_input(argument, "numbers >= 0", values)
    if len(set(out)) != len(out):
        raise bad_input(argument, "distinct values", values)
    return out


def apply_temperature(
    draws: Float[ArrayLike, "S *rest"], tau: float, *, axis: int | tuple[int, ...] = 0
) -> Float[ArrayLike, "S *rest"]:
    """Temper an ensemble: `mean + sqrt(tau) * (draws - mean)`, mean over the draw axis.

    The ensemble mean is unchanged and the variance is multiplied by `tau`; every empirical
    quantile moves to `mean + sqrt(tau) (q - mean)`.

    **Arguments:**

    - `draws`: draws along `axis` (at least 2 there), e.g. `(S, N)` or `(chain, draw, ...)`
      with `axis=(0, 1)`. NumPy or JAX; the result has the same kind.
    - `tau`: temperature > 0.
    - `axis`: the draw axis or axes.

    **Returns:** the tempered draws, same shape as `draws`.
    """
    tau = _check_number(tau, "tau", positive=True)
    xp = jnp if isinstance(draws, jax.Array) else np
    try:
        x = xp.asarray(draws)
    except Exception as exc:  # noqa: BLE001 - anything that is not array-like
        raise bad_input("draws", "an array of numbers", type(draws).__name__) from exc
    if x.dtype.kind not in "iuf":
        raise bad_input("draws", "a numeric array", f"dtype {x.dtype}")
    axes = (axis,) if isinstance(axis, (int, np.integer)) and not isinstance(axis, bool) else axis
    if not isinstance(axes, tuple) or not axes or not all(
        isinstance(a, (int, np.integer)) and not isinstance(a, bool) and -x.ndim <= a < x.ndim for a in axes
    ):
        raise bad_input("axis", f"an axis or tuple of axes of an array with {x.ndim} dims", axis)
    n_draws = int(np.prod([x.shape[a] for a in axes]))
    if n_draws < 2:
        raise bad_input("draws", f"at least 2 draws along axis {axis} (one draw has no spread to temper)",
                        f"shape {x.shape}")
    if x.dtype.kind in "iu":
        x = x.astype(xp.float64 if xp is np else jnp.float32)
    mean = x.mean(axis=axes, keepdims=True)
    return mean + math.sqrt(tau) * (x - mean)


# -- tempering a whole posterior -----------------------------------------------------------------
def _check_temper_args(idata: Any, tau: Any, log_lik_fn: Any) -> None:
    """The arguments of `temper_posterior`: an untempered InferenceData, a finite τ > 0, a callable or None."""
    _check_idata(idata)
    if isinstance(tau, bool) or not isinstance(tau, (int, float, np.number)) or not (0 < tau < np.inf):
        raise bad_input("tau", "a finite temperature > 0", tau)
    if "tempering" in idata.posterior.attrs:
        raise bad_input("idata", "an untempered posterior (temper the original with the product of the two tau)",
                        idata.posterior.attrs["tempering"])
    if log_lik_fn is not None and not callable(log_lik_fn):
        raise bad_input("log_lik_fn", "a callable f (chain, draw, N) -> log-likelihood (chain, draw, N), or None",
                        log_lik_fn)


def _stamp_tempering(out: Any, info: str) -> None:
    """Every group's attrs get `tempering` (JSON), listed among the JSON-encoded attrs."""
    for group in out.groups():
        attrs = out[group].attrs
        attrs["tempering"] = info
        encoded = set(json.loads(attrs.get("json_attrs", "[]")))
        attrs["json_attrs"] = json.dumps(sorted(encoded | {"tempering"}))


def temper_posterior(
    idata: az.InferenceData,
    tau: float,
    *,
    field_at_obs: Float[ArrayLike, "chain draw N"] | None = None,
    log_lik_fn: Any = None,
) -> az.InferenceData:
    """Apply a posterior temperature τ (e.g. from `inference.calibrate.calibrate_kfold`) to every
    group of `idata` that depends on the draws, and say in the attrs what was done.

    - `posterior.field` and `posterior.cores`: `apply_temperature(., tau)` over (chain, draw)
      pooled: the mean is kept and the spread about it scaled by `sqrt(tau)`. The field is linear in
      the cores, so the tempered cores decode to the tempered field.
    - `posterior.sigma` (the noise level) is left as it is: τ tempers the field's share only.
    - `posterior_predictive.y`: with `field_at_obs` (the field of each draw at the observation
      points, `(chain, draw, N)` physical units), each replicate keeps its own noise realisation:
      `y_rep' = y_rep - f + f'` with `f'` the tempered `field_at_obs`. Without it the group is
      **removed** (its draws would be those of the untempered posterior).
    - `log_likelihood.y`: recomputed as `log_lik_fn(f')` -> `(chain, draw, N)` when both
      `field_at_obs` and `log_lik_fn` are given; otherwise **removed**.
    - `observed_data`, `sample_stats`: unchanged.

    Every group's attrs get `tempering` (JSON, decoded by `posterior_attrs`): `{"tau": ..,
    "tempered": [group.var, ..], "removed": [group, ..], "unchanged": [..]}`.

    **Returns:** a new InferenceData (the input is not changed). A posterior that was tempered
    already is refused (temper the original with the product of the two τ).
    """
    _check_temper_args(idata, tau, log_lik_fn)
    out = idata.copy()
    tempered, removed = [], []
    for name in ("field", "cores"):
        if name in out.posterior:
            var = out.posterior[name]
            out.posterior[name] = var.copy(data=np.asarray(
                apply_temperature(np.asarray(var.values, dtype=np.float64), float(tau), axis=(0, 1)),
                dtype=var.dtype))
            tempered.append(f"posterior.{name}")
    groups = out.groups()
    if "posterior_predictive" in groups:
        y = out.posterior_predictive["y"]
        if field_at_obs is None:
            removed.append("posterior_predictive")
        else:
            f = _numeric(field_at_obs, "field_at_obs").astype(np.float64)
            if f.shape != y.shape:
                raise bad_input("field_at_obs", f"shape (chain, draw, N) = {y.shape} like posterior_predictive.y",
                                f"shape {f.shape}")
            if not np.isfinite(f).all():
                raise bad_input("field_at_obs", "finite values", "NaN or infinite entries")
            f_t = np.asarray(apply_temperature(f, float(tau), axis=(0, 1)))
            out.posterior_predictive["y"] = y.copy(data=(np.asarray(y.values, dtype=np.float64) - f + f_t)
                                                   .astype(y.dtype))
            tempered.append("posterior_predictive.y")
            if "log_likelihood" in groups:
                if log_lik_fn is None:
                    removed.append("log_likelihood")
                else:
                    ll = _numeric(log_lik_fn(f_t), "log_lik_fn(field)").astype(np.float64)
                    old = out.log_likelihood["y"]
                    if ll.shape != old.shape or not np.isfinite(ll).all():
                        raise bad_input("log_lik_fn", f"finite values of shape {old.shape}", f"shape {ll.shape}")
                    out.log_likelihood["y"] = old.copy(data=ll.astype(old.dtype))
                    tempered.append("log_likelihood.y")
    if "log_likelihood" in groups and "log_likelihood" not in removed and "log_likelihood.y" not in tempered:
        removed.append("log_likelihood")
    for group in removed:
        del out[group]
    unchanged = [g for g in out.groups() if g not in {t.split(".")[0] for t in tempered}]
    if "sigma" in out.posterior:
        unchanged.append("posterior.sigma")
    info = json.dumps({"tau": float(tau), "tempered": tempered, "removed": removed, "unchanged": unchanged},
                      sort_keys=True)
    _stamp_tempering(out, info)
    return out
