"""Checks that can catch a wrong posterior, with xarray output (issue 18).

The checks at the observed points (posterior predictive, LOO-PIT) reuse the data and are dominated
by the observation noise: an over-confident *field* passes them. The checks here look at the field
itself, or at the posterior's behaviour over many simulated data sets:

- `replicate_checks`: coverage and PIT of the **true field** over replicate simulated data sets
  (the analyst's simulator, or the shipped ones): needs a truth, so it works on simulations only.
- `sbc`: simulation-based calibration: ranks of prior-drawn truths among their posterior draws,
  a rank histogram and a χ² uniformity figure.
- `prior_predictive_check`: prior draws against training data: marginal mean/std per point,
  temporal autocorrelation at lags 1-3, isotropic spatial power spectrum.
- `kfold_elpd`, `compare_elpd`, `elpd`: K-fold cross-validated expected log predictive density over
  observation subsets (from `inference.calibrate.predict_folds`), for model comparison where
  PSIS-LOO's Pareto k says it is unreliable (`inference.report.loo`'s gate).

Multivariate proper scores over whole frames (energy and variogram score, `scoringrules`) are in
`inference.report.evaluate`. Randomness comes from explicit typed JAX keys.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
import xarray as xr
from jaxtyping import PRNGKeyArray
from scipy import stats

from sdift_prob.errors import bad_input
from sdift_prob.validation import check_count, check_key

from . import scores
from .elpd import KFoldELPD as KFoldELPD  # K-fold elpd and model comparison: `inference.elpd`
from .elpd import compare_elpd as compare_elpd
from .elpd import elpd as elpd
from .elpd import kfold_elpd as kfold_elpd

__all__ = [
    "KFoldELPD",
    "compare_elpd",
    "elpd",
    "kfold_elpd",
    "prior_predictive_check",
    "rank_histogram",
    "replicate_checks",
    "sbc",
]


def _replicates(replicates: Any, n_replicates: Any, key: Any) -> list[tuple[Any, Any]]:
    """The (truth, idata) pairs: as given, or from `replicates(key_r)` for r < n_replicates."""
    if callable(replicates):
        if isinstance(n_replicates, bool) or not isinstance(n_replicates, (int, np.integer)) or n_replicates < 1:
            raise bad_input("n_replicates", "an int >= 1 when replicates is a callable", n_replicates)
        check_key(key)
        pairs = []
        for r in range(int(n_replicates)):
            out = replicates(jax.random.fold_in(key, r))
            if not isinstance(out, tuple) or len(out) != 2:
                raise bad_input("replicates", "a callable key -> (truth, idata)", type(out).__name__)
            pairs.append(out)
        return pairs
    if isinstance(replicates, (str, bytes)) or not isinstance(replicates, Sequence) or len(replicates) == 0:
        raise bad_input("replicates", "a non-empty sequence of (truth, idata) pairs or a callable key -> (truth, "
                        "idata)", type(replicates).__name__)
    if n_replicates is not None:
        raise bad_input("n_replicates", "None when replicates is a sequence (its length is the count)", n_replicates)
    for i, pair in enumerate(replicates):
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise bad_input(f"replicates[{i}]", "a (truth, idata) pair", type(pair).__name__)
    return [tuple(p) for p in replicates]


def _truth_and_draws(truth: Any, idata: Any, index: int) -> tuple[np.ndarray, np.ndarray]:
    try:
        field = scores._field(idata)
        u = scores._truth_array(field, truth)
        draws = scores._draws(field)
    except Exception as exc:
        raise type(exc)(f"replicates[{index}]: {exc}") from exc
    return u, draws


def rank_histogram(ranks: Any, n_draws: int, n_bins: int | None = None) -> xr.Dataset:
    """Histogram of integer ranks in 0..n_draws and a χ² test of uniformity.

    A rank of the truth among S draws takes S + 1 values, equally likely when the posterior is
    calibrated. Bins group consecutive ranks (`n_bins`, default min(S + 1, 20)); a bin's expected
    count is proportional to how many rank values it holds.

    **Returns:** Dataset with `count (bin)`, `expected (bin)`, coords `rank_low`/`rank_high`, and
    attrs `chi2`, `dof`, `chi2_per_dof`, `p_value`, `n_ranks`, `n_draws`.
    """
    r = np.asarray(ranks)
    if r.dtype.kind not in "iu":
        raise bad_input("ranks", "integer ranks", f"dtype {r.dtype}")
    check_count(n_draws, "n_draws")
    r = r.ravel()
    if r.size == 0 or r.min() < 0 or r.max() > n_draws:
        raise bad_input("ranks", f"a non-empty array of ranks in 0..{n_draws}", f"range {r.min(initial=0)}..{r.max(initial=0)}")
    values = n_draws + 1
    bins = min(values, 20) if n_bins is None else n_bins
    if isinstance(bins, bool) or not isinstance(bins, (int, np.integer)) or not 2 <= bins <= values:
        raise bad_input("n_bins", f"an int in 2..{values} (S + 1 rank values)", n_bins)
    edges = np.floor(np.linspace(0, values, int(bins) + 1)).astype(np.int64)  # rank values [edge_b, edge_b+1)
    which = np.searchsorted(edges, r, side="right") - 1
    count = np.bincount(which, minlength=int(bins)).astype(np.float64)
    expected = r.size * np.diff(edges) / values
    chi2 = float(((count - expected) ** 2 / expected).sum())
    dof = int(bins) - 1
    return xr.Dataset(
        {"count": ("bin", count), "expected": ("bin", expected)},
        coords={"bin": np.arange(int(bins)), "rank_low": ("bin", edges[:-1]), "rank_high": ("bin", edges[1:] - 1)},
        attrs={"chi2": chi2, "dof": dof, "chi2_per_dof": chi2 / dof, "p_value": float(stats.chi2.sf(chi2, dof)),
               "n_ranks": int(r.size), "n_draws": int(n_draws)},
    )


def _ranks(u: np.ndarray, draws: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Rank of each truth entry among the draws, ties broken at random: ints in 0..S."""
    below = (draws < u).sum(axis=0)
    ties = (draws == u).sum(axis=0)
    return below + np.floor(rng.uniform(size=u.shape) * (ties + 1)).astype(np.int64)


def replicate_checks(
    replicates: Sequence[tuple[Any, Any]] | Callable[[PRNGKeyArray], tuple[Any, Any]],
    *,
    n_replicates: int | None = None,
    key: PRNGKeyArray | None = None,
    levels: Sequence[float] = (0.5, 0.9),
    method: str = "quantile",
    n_bins: int = 10,
) -> xr.Dataset:
    """Coverage and PIT of the true field over replicate simulated data sets.

    Each replicate is a true field and the posterior reconstructed from observations simulated from
    it (`(truth, idata)`; `truth (time, *space)` as in `report.evaluate`). Given a callable, it is
    called as `replicates(key_r)` for r < `n_replicates` (`key_r = fold_in(key, r)`), e.g. simulate a
    trajectory, observe it, reconstruct.

    **What it can detect:** field intervals that are too narrow or too wide (coverage below / above
    nominal, a U- or hump-shaped PIT histogram), a biased field (a sloped PIT histogram), and how much
    these vary between data sets: the replicates are independent, so `coverage_se` is an honest
    standard error (the entries inside one field are not independent). **What it cannot:** anything
    about data unlike the simulator's (it checks the posterior under the simulator, not the real
    ocean); a wrong spatial correlation with right marginals (use `evaluate`'s energy / variogram
    scores); and with few draws, quantile intervals are narrow even for a calibrated posterior
    (method "predictive" corrects for that).

    **Arguments:** `replicates`; `n_replicates` (callable only); `key` typed PRNG key (required for a
    callable; also breaks PIT ties, default `jax.random.key(0)`); `levels` in (0, 1); `method` one of
    `report.COVERAGE_METHODS`; `n_bins` of the PIT histogram.

    **Returns:** Dataset with `coverage (replicate, level)`, `coverage_mean (level)`, `coverage_se
    (level)`, `crps (replicate)`, `pit (replicate, entry)` (NaN where a replicate has fewer or missing
    entries), `pit_count (pit_bin)` pooled, and attrs `method`, `n_draws`, `pit_chi2`, `pit_dof`.
    """
    if key is None and callable(replicates):
        raise bad_input("key", "a typed PRNG key when replicates is a callable", key)
    pairs = _replicates(replicates, n_replicates, key)
    key = jax.random.key(0) if key is None else key
    check_key(key)
    scores._check_method(method)
    lv = scores._check_levels(levels)
    check_count(n_bins, "n_bins", minimum=2)
    cov = np.empty((len(pairs), len(lv)))
    crps = np.empty(len(pairs))
    pits, n_draws = [], set()
    for i, (truth, idata) in enumerate(pairs):
        u, draws = _truth_and_draws(truth, idata, i)
        n_draws.add(int(draws.shape[0]))
        c = scores.coverage(idata, truth, lv, method=method)
        cov[i] = [c[level] for level in lv]
        crps[i] = scores.crps(idata, truth)
        pits.append(scores.pit(idata, truth, key=jax.random.fold_in(key, i)).values.ravel())
    width = max(p.size for p in pits)
    pit = np.full((len(pairs), width), np.nan)
    for i, p in enumerate(pits):
        pit[i, : p.size] = p
    flat = pit[~np.isnan(pit)]
    count = np.histogram(flat, bins=int(n_bins), range=(0.0, 1.0))[0].astype(np.float64)
    expected = flat.size / int(n_bins)
    chi2 = float(((count - expected) ** 2 / expected).sum())
    se = cov.std(axis=0, ddof=1) / math.sqrt(len(pairs)) if len(pairs) > 1 else np.full(len(lv), np.nan)
    return xr.Dataset(
        {
            "coverage": (("replicate", "level"), cov),
            "coverage_mean": ("level", cov.mean(axis=0)),
            "coverage_se": ("level", se),
            "crps": ("replicate", crps),
            "pit": (("replicate", "entry"), pit),
            "pit_count": ("pit_bin", count),
        },
        coords={"replicate": np.arange(len(pairs)), "level": list(lv), "pit_bin": np.arange(int(n_bins))},
        attrs={"method": method, "n_draws": sorted(n_draws)[0] if len(n_draws) == 1 else str(sorted(n_draws)),
               "n_replicates": len(pairs), "pit_chi2": chi2, "pit_dof": int(n_bins) - 1,
               "note": "pit_chi2 pools dependent entries of each field: read it as a size of the departure, "
                       "not as a p-value"},
    )


def sbc(
    replicates: Sequence[tuple[Any, Any]] | Callable[[PRNGKeyArray], tuple[Any, Any]],
    *,
    key: PRNGKeyArray,
    n_replicates: int | None = None,
    max_entries: int | None = None,
    n_bins: int | None = None,
) -> xr.Dataset:
    """Simulation-based calibration (Talts et al. 2018): the rank of each true-field entry among its
    posterior draws, pooled over replicates, with a rank histogram and a χ² uniformity figure.

    **Only valid when each truth is a draw from the prior the posterior conditions with** (simulate
    the truth from the prior, observations from the truth, then reconstruct). Then, whatever the
    data, the rank of the truth among S posterior draws is uniform on 0..S for an exact sampler.
    With truths from a simulator that is not the prior (e.g. the shipped simulators under a learned
    diffusion prior) a non-uniform histogram may be the prior's fault, not the sampler's.

    **What it can detect:** over-confidence (U shape: too many ranks at 0 and S), under-confidence
    (a hump), bias (slope), for the sampler + prior as a whole. **What it cannot:** errors that
    cancel across entries (the ranks are pooled), a wrong correlation between entries, and with
    correlated entries the χ² is inflated even for an exact sampler (neighbouring ranks are not
    independent): compare `chi2_per_dof` between samplers, or thin with `max_entries`, rather than
    reading `p_value` literally.

    **Arguments:** `replicates` as `replicate_checks`; `key` typed PRNG key (ties, entry subsets, and
    the replicate keys of a callable); `max_entries` None (all) or a number of entries per replicate
    chosen at random; `n_bins` as `rank_histogram`.

    **Returns:** the `rank_histogram` Dataset plus `rank (replicate, entry)` (-1 where a replicate has
    fewer entries or a missing truth) and attr `n_replicates`.
    """
    check_key(key)
    pairs = _replicates(replicates, n_replicates, jax.random.fold_in(key, 1))
    if max_entries is not None and (isinstance(max_entries, bool) or not isinstance(max_entries, (int, np.integer))
                                    or max_entries < 1):
        raise bad_input("max_entries", "None or an int >= 1", max_entries)
    rng = np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel())
    all_ranks, n_draws = [], set()
    for i, (truth, idata) in enumerate(pairs):
        u, draws = _truth_and_draws(truth, idata, i)
        n_draws.add(int(draws.shape[0]))
        keep = ~np.isnan(u)
        r = _ranks(u[keep], draws[:, keep], rng)
        if max_entries is not None and r.size > max_entries:
            r = r[rng.choice(r.size, int(max_entries), replace=False)]
        all_ranks.append(r)
    if len(n_draws) != 1:
        raise bad_input("replicates", "posteriors with the same number of draws (ranks run over 0..S)", sorted(n_draws))
    s = n_draws.pop()
    out = rank_histogram(np.concatenate(all_ranks), s, n_bins)
    width = max(r.size for r in all_ranks)
    rank = np.full((len(pairs), width), -1, dtype=np.int64)
    for i, r in enumerate(all_ranks):
        rank[i, : r.size] = r
    out["rank"] = (("replicate", "entry"), rank)
    out = out.assign_coords(replicate=np.arange(len(pairs)))
    out.attrs["n_replicates"] = len(pairs)
    return out


# -- prior predictive check ------------------------------------------------------------------------
def _samples(x: Any, argument: str, sample_dim: str | None) -> xr.DataArray:
    """`(sample, time, *space)` DataArray from a posterior/prior InferenceData or a DataArray."""
    import arviz as az

    if isinstance(x, az.InferenceData):
        group = "prior" if "prior" in x.groups() and "field" in x["prior"] else "posterior"
        if group not in x.groups() or "field" not in x[group]:
            raise bad_input(argument, "an InferenceData with a 'field' variable in its prior or posterior group",
                            list(x.groups()))
        da = x[group]["field"].stack(sample=("chain", "draw")).transpose("sample", ...)
        return da.drop_vars([c for c in ("sample", "chain", "draw") if c in da.coords])
    if not isinstance(x, xr.DataArray):
        raise bad_input(argument, "an xarray.DataArray or an arviz.InferenceData", type(x).__name__)
    if "time" not in x.dims:
        raise bad_input(argument, "a DataArray with a 'time' dim", tuple(x.dims))
    if sample_dim is None:
        da = x.expand_dims(sample=1)
    else:
        if sample_dim not in x.dims:
            raise bad_input(f"{argument} sample dim", f"one of {tuple(x.dims)}", sample_dim)
        da = x.rename({sample_dim: "sample"}) if sample_dim != "sample" else x
    return da.transpose("sample", "time", ...)


def _acf(v: np.ndarray, lags: Sequence[int]) -> np.ndarray:
    """`(S, L)`: temporal autocorrelation at each lag, per sample, averaged over the points;
    `v (S, T, P)`. Each point's series is centred and scaled by its own mean and variance."""
    c = v - v.mean(axis=1, keepdims=True)
    var = (c**2).mean(axis=1)  # (S, P)
    out = np.empty((v.shape[0], len(lags)))
    for j, lag in enumerate(lags):
        cov = (c[:, lag:] * c[:, :-lag]).sum(axis=1) / v.shape[1]
        with np.errstate(invalid="ignore", divide="ignore"):
            r = np.where(var > 0, cov / var, np.nan)
        out[:, j] = np.nanmean(r, axis=1)
    return out


def _spectrum(v: np.ndarray, n_k: int) -> np.ndarray:
    """`(S, n_k)` isotropic power spectrum per sample: `v (S, B, *grid)` with 1 or 2 grid axes last,
    B = all other axes (time, depth, ..) averaged. Each map's mean is removed first."""
    grid = v.shape[2:]
    axes = tuple(range(2, v.ndim))
    c = v - v.mean(axis=axes, keepdims=True)
    power = np.abs(np.fft.fftn(c, axes=axes)) ** 2 / np.prod(grid)
    freqs = np.meshgrid(*[np.fft.fftfreq(n) * n for n in grid], indexing="ij")
    k = np.rint(np.sqrt(sum(f**2 for f in freqs))).astype(np.int64).ravel()
    flat = power.mean(axis=1).reshape(v.shape[0], -1)
    out = np.empty((v.shape[0], n_k))
    for i in range(1, n_k + 1):
        out[:, i - 1] = flat[:, k == i].mean(axis=1)
    return out


def prior_predictive_check(
    prior: Any,
    training: xr.DataArray,
    *,
    prior_sample_dim: str | None = "sample",
    training_sample_dim: str | None = None,
    lags: Sequence[int] = (1, 2, 3),
    spectrum_dims: Sequence[str] | None = None,
    band: float = 0.9,
) -> xr.Dataset:
    """Prior draws against the training data: do the prior's fields look like the data it learned from?

    Statistics, each for the prior draws and for the training fields:

    - `mean`, `std (source, *space)`: marginal mean and std per grid point, pooled over samples and
      time stamps;
    - `acf (source, lag)`: temporal autocorrelation at `lags` (each point's series standardised,
      averaged over points and samples), and `acf_prior_band (bound, lag)`: the central `band` range of
      the per-draw values;
    - `power (source, wavenumber)`: isotropic spatial power spectrum over `spectrum_dims` (default: the
      first two space dims, e.g. lat and lon; the only one for 1-D fields), binned by the integer radial
      wavenumber in cycles per domain (grid-index units: it assumes a regular grid), averaged over the
      other dims; `power_prior_band (bound, wavenumber)`.

    Attrs summarise: `std_ratio_median` (median over points of prior std / training std),
    `acf_inside_band`, `power_inside_band` (fraction of lags / wavenumbers where the training value
    lies inside the prior band).

    **What it can detect:** a prior whose amplitude, temporal memory or spatial scales differ from the
    training data's (e.g. a diffusion prior that over-smooths, or a GP prior with the wrong time
    scale). **What it cannot:** anything about the posterior or the data of a new trajectory, higher
    moments, and relations between statistics (two fields with the same spectrum and acf can look
    different). The training data are those the prior was trained on, so agreement is a minimum
    requirement, not a validation.

    **Arguments:** `prior`: an InferenceData with `field` in its prior or posterior group (chains and
    draws pooled; e.g. `reconstruct` with no observations) or a DataArray `(sample, time, *space)`
    (`prior_sample_dim` names the sample dim); `training`: DataArray `(time, *space)` or with a
    trajectory dim named by `training_sample_dim`; same space dims as the prior (grids may differ);
    `lags` ints >= 1 below the number of time stamps; `band` in (0, 1).

    **Returns:** xr.Dataset as above.
    """
    pr = _samples(prior, "prior", prior_sample_dim)
    tr = _samples(training, "training", training_sample_dim)
    space = tuple(d for d in pr.dims if d not in ("sample", "time"))
    if set(space) != set(d for d in tr.dims if d not in ("sample", "time")) or not space:
        raise bad_input("training", f"a field over the prior's space dims {space}", tuple(tr.dims))
    tr = tr.transpose("sample", "time", *space)
    if isinstance(lags, (str, bytes)) or not isinstance(lags, Sequence) or not lags or not all(
            isinstance(g, (int, np.integer)) and not isinstance(g, bool) and g >= 1 for g in lags):
        raise bad_input("lags", "a non-empty sequence of ints >= 1", lags)
    n_t = min(pr.sizes["time"], tr.sizes["time"])
    if max(lags) >= n_t:
        raise bad_input("lags", f"lags below the number of time stamps ({n_t})", list(lags))
    if isinstance(band, bool) or not isinstance(band, (int, float)) or not 0 < band < 1:
        raise bad_input("band", "a number in (0, 1)", band)
    sdims = tuple(space[:2]) if spectrum_dims is None else tuple(spectrum_dims)
    if not 1 <= len(sdims) <= 2 or not set(sdims) <= set(space) or len(set(sdims)) != len(sdims):
        raise bad_input("spectrum_dims", f"one or two of the space dims {space}", spectrum_dims)
    arrays = {}
    for name, da in (("prior", pr), ("training", tr)):
        v = np.asarray(da.values, dtype=np.float64)
        if not np.isfinite(v).all():
            raise bad_input(name, "finite values (missing entries are not supported here)", "NaN or infinite entries")
        arrays[name] = v
    n_k = min(min(pr.sizes[d], tr.sizes[d]) for d in sdims) // 2
    if n_k < 1:
        raise bad_input("spectrum_dims", "dims with at least 2 grid points", sdims)
    q = ((1 - band) / 2, (1 + band) / 2)
    acf, acf_band, power, power_band, mean, std = {}, None, {}, None, {}, {}
    for name, da in (("prior", pr), ("training", tr)):
        v = arrays[name]
        mean[name] = v.mean(axis=(0, 1))
        std[name] = v.std(axis=(0, 1))
        per_acf = _acf(v.reshape(v.shape[0], v.shape[1], -1), lags)
        other = [d for d in ("time", *space) if d not in sdims]
        moved = da.transpose("sample", *other, *sdims).values.astype(np.float64)
        per_pow = _spectrum(moved.reshape(moved.shape[0], -1, *moved.shape[-len(sdims):]), n_k)
        acf[name], power[name] = np.nanmean(per_acf, axis=0), per_pow.mean(axis=0)
        if name == "prior":
            acf_band, power_band = np.nanquantile(per_acf, q, axis=0), np.quantile(per_pow, q, axis=0)
    same_grid = all(pr.sizes[d] == tr.sizes[d] for d in space)
    ds = xr.Dataset(
        {
            "acf": (("source", "lag"), np.stack([acf["prior"], acf["training"]])),
            "acf_prior_band": (("bound", "lag"), acf_band),
            "power": (("source", "wavenumber"), np.stack([power["prior"], power["training"]])),
            "power_prior_band": (("bound", "wavenumber"), power_band),
        },
        coords={"source": ["prior", "training"], "lag": list(lags), "bound": list(q),
                "wavenumber": np.arange(1, n_k + 1)},
    )
    if same_grid:
        ds["mean"] = (("source", *space), np.stack([mean["prior"], mean["training"]]))
        ds["std"] = (("source", *space), np.stack([std["prior"], std["training"]]))
        ds = ds.assign_coords({d: pr.coords[d].values for d in space if d in pr.coords})
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = std["prior"] / std["training"]
        ds.attrs["std_ratio_median"] = float(np.nanmedian(ratio))
    inside = lambda x, b: float(np.mean((x >= b[0]) & (x <= b[1])))  # noqa: E731
    ds.attrs.update({
        "acf_inside_band": inside(acf["training"], acf_band),
        "power_inside_band": inside(power["training"], power_band),
        "n_prior": int(pr.sizes["sample"]), "n_training": int(tr.sizes["sample"]),
        "spectrum_dims": list(sdims), "band": band,
        "mean_std_note": "per point, pooled over samples and time" if same_grid else "left out: different grids",
    })
    return ds


