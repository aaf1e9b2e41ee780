"""Model comparison by expected log predictive density: K-fold cross-validated elpd from held-out
predictions (`kfold_elpd`, `compare_elpd`), and `elpd`, which takes PSIS-LOO only behind its
Pareto-k gate and falls back to K-fold otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping
import dataclasses
import math
from typing import Any
import warnings

import numpy as np
import pandas as pd
from scipy.special import logsumexp
import xarray as xr

from sdift_prob.errors import NumericalError, bad_input

from .calibrate import FoldPredictions
from .loo import LOO_K_THRESHOLD, LOO_MAX_BAD_FRACTION, UnreliableLOOWarning, loo


# -- K-fold cross-validated elpd -------------------------------------------------------------------
@dataclasses.dataclass(frozen=True, eq=False)
class KFoldELPD:
    """K-fold cross-validated expected log predictive density of the observations.

    **Fields:** `elpd` (sum over observations of `log mean_s p(y_i | draw s of the reconstruction
    without i's fold)`), `se` (`sqrt(N var(elpd_i))`), `pointwise` DataArray `elpd_i (obs_id)`,
    `n_folds`, `n_draws`, `likelihood`.
    """

    elpd: float
    se: float
    pointwise: xr.DataArray
    n_folds: int
    n_draws: int
    likelihood: str

    def __repr__(self) -> str:
        return (f"KFoldELPD(elpd={self.elpd:.2f}, se={self.se:.2f}, n={self.pointwise.size}, "
                f"n_folds={self.n_folds}, n_draws={self.n_draws}, likelihood={self.likelihood!r})")


def kfold_elpd(predictions: FoldPredictions) -> KFoldELPD:
    """K-fold cross-validated elpd from `inference.calibrate.predict_folds`' held-out predictions.

    Each observation is scored by the reconstruction that did not see it: `elpd_i = log (1/S) Σ_s
    p(y_i | θ_s^(−fold(i)))`, a Monte Carlo estimate of the log predictive density (biased low by
    O(1/S) per point: compare models at the same draw count). Unlike PSIS-LOO it needs no importance
    weights, so it works at 8-32 draws where every Pareto k is large; it costs K reconstructions.

    **What it can detect:** which observation model / prior predicts held-out observations better
    (a difference several `dse` of `compare_elpd` is meaningful). **What it cannot:** it scores
    observations (noise included), not the field, so a model whose field is over-confident but whose
    noise level absorbs the error can still score well; the held-out reconstructions see (K−1)/K of
    the data, so the figure is slightly pessimistic for the full-data fit.
    """
    if not isinstance(predictions, FoldPredictions):
        raise bad_input("predictions", "a FoldPredictions from inference.calibrate.predict_folds",
                        type(predictions).__name__)
    ll = predictions.log_lik
    if not np.isfinite(ll).all():
        raise bad_input("predictions", "finite log_lik", f"{int((~np.isfinite(ll)).sum())} non-finite entries")
    s = ll.shape[0]
    point = logsumexp(ll, axis=0) - math.log(s)
    n = point.size
    return KFoldELPD(
        elpd=float(point.sum()), se=float(math.sqrt(n * point.var())) if n > 1 else math.nan,
        pointwise=xr.DataArray(point, dims=("obs_id",), coords={"obs_id": np.arange(n),
                                                                "fold": ("obs_id", predictions.fold)},
                               name="elpd_kfold"),
        n_folds=predictions.n_folds, n_draws=s, likelihood=predictions.likelihood,
    )


def compare_elpd(results: Mapping[str, KFoldELPD]) -> pd.DataFrame:
    """Rank models by K-fold elpd (higher is better): columns `elpd`, `se`, `elpd_diff` (to the best),
    `dse` (standard error of the pointwise difference: `sqrt(N var(elpd_i − elpd_best,i))`),
    `n_folds`, `n_draws`. All models must score the same observations."""
    if not isinstance(results, Mapping) or len(results) < 1 or not all(
            isinstance(k, str) and isinstance(v, KFoldELPD) for k, v in results.items()):
        raise bad_input("results", "a non-empty dict name -> KFoldELPD", type(results).__name__)
    sizes = {v.pointwise.size for v in results.values()}
    if len(sizes) != 1:
        raise bad_input("results", "results over the same observations", f"sizes {sorted(sizes)}")
    best = max(results, key=lambda k: results[k].elpd)
    rows = {}
    for name, r in results.items():
        d = r.pointwise.values - results[best].pointwise.values
        rows[name] = {"elpd": r.elpd, "se": r.se, "elpd_diff": float(d.sum()),
                      "dse": float(math.sqrt(d.size * d.var())), "n_folds": r.n_folds, "n_draws": r.n_draws}
    return pd.DataFrame(rows).T.sort_values("elpd", ascending=False)


def elpd(idata: Any, predictions: FoldPredictions | None = None, *, var_name: str = "y",
         k_threshold: float = LOO_K_THRESHOLD,
         max_bad_fraction: float = LOO_MAX_BAD_FRACTION) -> tuple[str, Any]:
    """PSIS-LOO when its Pareto-k gate passes, K-fold otherwise.

    **Returns:** `("psis-loo", ELPDData)` when at most `max_bad_fraction` of the observations have
    k > `k_threshold`; else, with a `report.UnreliableLOOWarning` saying so, `("kfold",
    kfold_elpd(predictions))` when `predictions` (from `predict_folds` on the same observations) are
    given, and a `NumericalError` naming the count when they are not.
    """
    result = loo(idata, var_name=var_name, k_threshold=k_threshold, max_bad_fraction=max_bad_fraction,
                        on_unreliable="ignore")
    if result["loo_reliable"]:
        return "psis-loo", result
    n, n_bad = len(result["pareto_k"]), result["n_bad_k"]
    if predictions is None:
        raise NumericalError(f"elpd: PSIS-LOO is unreliable (Pareto k > {k_threshold:g} at {n_bad} of {n} "
                             "observations) and no K-fold predictions were given: pass predictions="
                             "inference.calibrate.predict_folds(...)")
    if not isinstance(predictions, FoldPredictions) or predictions.fold.size != n:
        raise bad_input("predictions", f"FoldPredictions over the same {n} observations",
                        getattr(getattr(predictions, "fold", None), "size", type(predictions).__name__))
    warnings.warn(f"PSIS-LOO is unreliable (Pareto k > {k_threshold:g} at {n_bad} of {n} observations); "
                  f"using the {predictions.n_folds}-fold cross-validated elpd instead",
                  UnreliableLOOWarning, stacklevel=2)
    return "kfold", kfold_elpd(predictions)
