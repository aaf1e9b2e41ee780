"""Posterior-exactness bench: guided samplers on linear-Gaussian problems with a known posterior.

The prior over normalised core sequences is Gaussian, `x ~ N(0, K_t ⊗ diag(λ))` (a GP over
time with a spatially decaying spectrum), the diffusion noise is GP-correlated in time as in the
shipped priors (`Σ_t`: RBF ℓ = 0.1 plus jitter 1e-5), and the denoiser is the exact posterior
mean `E[x0 | x; σ] = K (K + σ² Σ)⁻¹ x`. Observations are linear in the cores,
`y = A (m + s x) + e`, so the posterior is Gaussian and known in closed form (computed in the
observation space; exact reference draws by Matheron's rule). Every sampler is scored against it:

- `mean_error`: `|mean − exact mean| / |exact mean − prior mean|` over all core entries;
- `sd_ratio`: median over entries of the draws' sd / the exact sd;
- `cover50`, `cover90`: coverage of the *true* cores by central *quantile* intervals of the
  draws (what `az.summary`/`np.quantile` give), and the exact posterior's own figure from the
  same number of exact draws;
- `z2`: mean of `((truth − mean) / sd)²` with the draws' mean and sd (1 + 1/n when calibrated);
- `sbc`: the rank of the truth among the draws, a histogram over entries and replicates
  (simulation-based calibration: flat when the draws come from the posterior), and its
  chi-square statistic per degree of freedom;
- with σ inferred (`infer` variants): the mean σ draw over the true σ and over the exact
  marginal posterior's mean (`sigma_posterior`), and whether the central 90% interval covers
  the true σ (and the exact posterior's own figure).

Run (production sizes: 20 frames, 8×8×8 cores, ~92 points per observed frame, design rows of the
shipped ocean FTM at random points):

    python -m benchmarks.exactness --out benchmarks/results/exactness.json

Small problems of the same construction are the exactness tests (`tests/test_exactness.py`).
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array

from benchmarks.variants import parse_variant
from inference import sigma_marginal
from inference.guided import GuidedConfig, sample_posterior
from inference.preconditioners import PriorSpectrum
from sdift_prob.data.observations import PaddedObservations
from sdift_prob.errors import NumericalError
from sdift_prob.gp import TemporalKernel
from sdift_prob.io import write_json

NOISE_KERNEL = TemporalKernel("rbf", lengthscale=0.1, variance=1.0)  # the shipped priors' noise kernel
NOISE_JITTER = 1e-5


class ExactGaussianDenoiser(eqx.Module):
    """`D(x; σ) = K (K + σ² Σ)⁻¹ x` for `K = K_t ⊗ diag(λ)`, `Σ = Σ_t ⊗ I`, through the generalised
    eigenbasis `B` of `(K_t, Σ_t)`: `K_t = B diag(κ) Bᵀ`, `Σ_t = B Bᵀ`, so that
    `D(x) = B [λκ / (λκ + σ²)] ⊙ (B⁻¹ x)` per spatial entry."""

    basis: Array  # B (M, M)
    basis_inv: Array  # B⁻¹
    kappa: Array  # (M,)
    lam: Array  # (D,)

    def __call__(self, x: Array, sigma: Array, t: Array) -> Array:
        del t
        shape = x.shape
        z = self.basis_inv @ x.reshape(shape[0], -1)
        lk = self.kappa[:, None] * self.lam[None, :]
        return (self.basis @ (lk / (lk + sigma**2) * z)).reshape(shape)


@dataclasses.dataclass(frozen=True)
class GaussianPrior:
    """`x ~ N(0, K_t ⊗ diag(lam))` over `M` frames at `times`, with the diffusion noise kernel's
    Cholesky factor `noise_chol` and its exact denoiser."""

    times: np.ndarray
    lam: np.ndarray
    k_time: np.ndarray
    noise_chol: np.ndarray
    denoiser: ExactGaussianDenoiser

    @classmethod
    def build(cls, M: int, D: int, *, lengthscale: float = 0.2, decay: float = 1.0, variance: float = 0.25
              ) -> GaussianPrior:
        t = np.linspace(0.0, 1.0, M)
        k_time = np.asarray(TemporalKernel("rbf", lengthscale, 1.0).gram(jnp.asarray(t)), np.float64)
        k_time = k_time + 1e-6 * np.eye(M)
        lam = (1.0 + np.arange(D)) ** (-decay)
        lam = variance * lam / lam.mean()
        sigma_t = np.asarray(NOISE_KERNEL.gram(jnp.asarray(t)), np.float64) + NOISE_JITTER * np.eye(M)
        L = np.linalg.cholesky(sigma_t)
        Li = np.linalg.inv(L)
        kappa, U = np.linalg.eigh(Li @ k_time @ Li.T)
        B = L @ U
        den = ExactGaussianDenoiser(
            jnp.asarray(B, jnp.float32), jnp.asarray(U.T @ Li, jnp.float32),
            jnp.asarray(np.maximum(kappa, 0.0), jnp.float32), jnp.asarray(lam, jnp.float32),
        )
        return cls(times=t, lam=lam, k_time=k_time, noise_chol=L, denoiser=den)

    @property
    def spectrum(self) -> PriorSpectrum:
        """The per-frame covariance `diag(lam)` as the sampler's preconditioner takes it."""
        return PriorSpectrum.from_covariance(np.diag(self.lam))

    def draw(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """`n` prior draws `(n, M, D)`."""
        C = np.linalg.cholesky(self.k_time)
        z = rng.normal(size=(n, len(self.times), len(self.lam)))
        return np.einsum("ij,njd->nid", C, z) * np.sqrt(self.lam)


@dataclasses.dataclass(frozen=True)
class Replicate:
    """One simulated dataset: true normalised cores, design rows, observations, exact posterior."""

    truth: np.ndarray  # (M, D)
    design: np.ndarray  # (M, P, D)
    padded: PaddedObservations
    exact_mean: np.ndarray  # (M, D)
    exact_sd: np.ndarray  # (M, D)
    exact_draws: np.ndarray  # (n, M, D)
    sigma_posterior: tuple[float, float, float]  # exact marginal posterior of σ: mean, 5% and 95% quantiles


def exact_posterior(prior: GaussianPrior, design: np.ndarray, padded: PaddedObservations, sigma_y: float,
                    m: float, s: float, rng: np.random.Generator, n_draws: int
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Conjugate posterior of `x` given `y = A (m + s x) + N(0, σ_y²)`, in the observation space:
    mean, marginal sd and `n_draws` exact draws (Matheron's rule), all float64."""
    mask = np.asarray(padded.mask)
    frame, point = np.nonzero(mask)
    a = design[frame, point]  # (N, D)
    y = np.asarray(padded.values, np.float64)[frame, point]
    kt = prior.k_time
    c_yy = s**2 * kt[np.ix_(frame, frame)] * ((a * prior.lam) @ a.T) + sigma_y**2 * np.eye(len(y))
    c_xy = s * np.einsum("jn,nd->jdn", kt[:, frame], a * prior.lam)  # (M, D, N)
    chol = np.linalg.cholesky(c_yy)

    def solve(b: np.ndarray) -> np.ndarray:
        return np.linalg.solve(chol.T, np.linalg.solve(chol, b))

    gain_t = solve(c_xy.reshape(-1, len(y)).T)  # S⁻¹ C_yx (N, M D)
    mean = (gain_t.T @ (y - m * a.sum(1))).reshape(kt.shape[0], -1)
    var = np.repeat(np.diag(kt)[:, None], len(prior.lam), 1) * prior.lam
    var = var - np.einsum("kn,nk->k", c_xy.reshape(-1, len(y)), gain_t).reshape(var.shape)
    x0 = prior.draw(rng, n_draws)
    y0 = np.einsum("nd,snd->sn", a, m + s * x0[:, frame]) + sigma_y * rng.normal(size=(n_draws, len(y)))
    draws = x0 + ((y[None] - y0) @ gain_t).reshape(x0.shape)
    return mean, np.sqrt(np.maximum(var, 0.0)), draws


def make_replicate(prior: GaussianPrior, rows: Callable[[np.random.Generator, int], np.ndarray], *, points: int,
                   observed: np.ndarray, sigma_y: float, m: float, s: float, seed: int, n_exact: int) -> Replicate:
    """A dataset with `points` observations in every frame where `observed` is True."""
    rng = np.random.default_rng(seed)
    M = len(prior.times)
    truth = prior.draw(rng, 1)[0]
    design = rows(rng, M * points).reshape(M, points, -1)
    mask = np.repeat(np.asarray(observed, bool)[:, None], points, 1)
    y = np.einsum("mpd,md->mp", design, m + s * truth) + sigma_y * rng.normal(size=mask.shape)
    padded = PaddedObservations(times=prior.times, values=np.where(mask, y, 0.0), coords=np.zeros((M, points, 1)),
                                noise_scale=np.ones((M, points)), mask=mask)
    mean, sd, draws = exact_posterior(prior, design, padded, sigma_y, m, s, rng, n_exact)
    return Replicate(truth, design, padded, mean, sd, draws, sigma_posterior(prior, design, padded, m, s))


def sigma_posterior(prior: GaussianPrior, design: np.ndarray, padded: PaddedObservations, m: float, s: float,
                    prior_scale: float = 0.1) -> tuple[float, float, float]:
    """Exact marginal posterior of σ (mean, 5%, 95%) on a grid: `y ~ N(A m, σ² I + C)` with `C`
    the prior predictive covariance of the observations, and the sampler's prior
    σ² ~ InvGamma(1, s²). Where the observations cannot tell noise from signal it is the
    reference for an inferred σ, not the true σ."""
    mask = np.asarray(padded.mask)
    frame, point = np.nonzero(mask)
    a = design[frame, point]
    y = np.asarray(padded.values, np.float64)[frame, point] - m * a.sum(1)
    c = s**2 * prior.k_time[np.ix_(frame, frame)] * ((a * prior.lam) @ a.T)
    ev, U = np.linalg.eigh(c)
    proj2 = (U.T @ y) ** 2
    grid = np.exp(np.linspace(np.log(1e-4), np.log(10.0), 2000))
    var = grid[:, None] ** 2 + np.maximum(ev, 0.0)[None]
    lp = -0.5 * np.sum(proj2 / var + np.log(var), axis=1) - 3 * np.log(grid) - prior_scale**2 / grid**2
    w = np.exp(lp - lp.max()) * grid  # the grid is uniform in log σ
    w /= w.sum()
    cdf = np.cumsum(w)
    return float(np.sum(w * grid)), float(grid[np.searchsorted(cdf, 0.05)]), float(grid[np.searchsorted(cdf, 0.95)])


def scores(draws: np.ndarray, rep: Replicate, bins: int = 10, sigma_draws: np.ndarray | None = None,
           sigma_true: float | None = None) -> dict[str, Any]:
    """The bench's figures for `draws (n, M, D)` (normalised, x-space) against one replicate;
    with `sigma_draws` (σ inferred) also whether the central 90% interval of σ covers `sigma_true`."""
    mean, sd = draws.mean(0), draws.std(0, ddof=1)
    out: dict[str, Any] = {}
    if sigma_draws is not None:
        lo, hi = np.quantile(sigma_draws, [0.05, 0.95])
        ex_mean, ex_lo, ex_hi = rep.sigma_posterior
        out.update(sigma_mean=float(np.mean(sigma_draws)) / sigma_true,
                   sigma_over_exact=float(np.mean(sigma_draws)) / ex_mean,
                   sigma_cover90=float(lo <= sigma_true <= hi), exact_sigma_cover90=float(ex_lo <= sigma_true <= ex_hi))
    out = {**out,
        "mean_error": float(np.linalg.norm(mean - rep.exact_mean) / np.linalg.norm(rep.exact_mean)),
        "sd_ratio": float(np.median(sd / rep.exact_sd)),
        "z2": float(np.mean(((rep.truth - mean) / sd) ** 2)),
    }
    for level in (0.5, 0.9):
        lo, hi = np.quantile(draws, [0.5 - level / 2, 0.5 + level / 2], axis=0)
        out[f"cover{int(level * 100)}"] = float(np.mean((rep.truth >= lo) & (rep.truth <= hi)))
    rank = (draws < rep.truth[None]).sum(0).ravel()  # 0..n
    out["sbc_hist"] = np.histogram(rank, bins=bins, range=(0, draws.shape[0] + 1))[0].tolist()
    return out


def summarise(per_rep: Sequence[dict[str, Any]]) -> dict[str, Any]:
    keys = ("mean_error", "sd_ratio", "z2", "cover50", "cover90")
    keys += tuple(k for k in ("sigma_mean", "sigma_over_exact", "sigma_cover90", "exact_sigma_cover90")
                  if k in per_rep[0])
    out = {k: [float(np.mean([r[k] for r in per_rep])), float(np.min([r[k] for r in per_rep])),
               float(np.max([r[k] for r in per_rep]))] for k in keys}
    hist = np.sum([r["sbc_hist"] for r in per_rep], axis=0)
    expected = hist.sum() / len(hist)
    out["sbc_hist"] = hist.tolist()
    out["sbc_chi2_per_dof"] = float(np.sum((hist - expected) ** 2 / expected) / (len(hist) - 1))
    return out


def run_sampler(config: GuidedConfig, prior: GaussianPrior, rep: Replicate, *, m: float, s: float, draws: int,
                seed: int, chunk_size: int | None = None, sigma_before: bool = False
                ) -> tuple[np.ndarray, np.ndarray | None]:
    """Guided draws in x-space `(draws, M, D)` and the σ draws when σ is inferred: inside the
    sampler (`config.infer_sigma`), or with `sigma_before` drawn first from the Gaussian model's
    marginal likelihood (`inference.sigma_marginal`, as `reconstruct` does), one σ per draw."""
    sigma_draws = None
    if sigma_before:
        D = rep.truth.shape[1]
        post = sigma_marginal.sigma_posterior(
            jax.random.key(seed + 1), rep.design, rep.padded.values, rep.padded.mask, prior.k_time,
            np.full(D, m), s**2 * np.diag(prior.lam), prior_scale=config.sigma_prior_scale)
        sigma_draws = post.draw(jax.random.key(seed + 2), draws)
        config = dataclasses.replace(config, sigma_y=float(np.median(sigma_draws)), infer_sigma=False)
    W, info = sample_posterior(
        jax.random.key(seed), prior.denoiser, rep.design, rep.padded, core_mean=m, core_std=s,
        times_norm=prior.times, noise_chol=prior.noise_chol, config=config, num_draws=draws, chunk_size=chunk_size,
        prior_spectrum=prior.spectrum, sigma_draws=sigma_draws,
    )
    x = (np.asarray(W, np.float64).reshape(draws, *rep.truth.shape) - m) / s
    return x, (sigma_draws if sigma_before else np.asarray(info["sigma_y"]) if config.infer_sigma else None)


def gaussian_rows(D: int) -> Callable[[np.random.Generator, int], np.ndarray]:
    """Random design rows `N(0, I/D)`."""
    return lambda rng, n: rng.normal(size=(n, D)) / np.sqrt(D)


def ftm_rows(name: str = "ocean") -> tuple[Callable[[np.random.Generator, int], np.ndarray], int]:
    """Design rows of a shipped FTM at uniformly random points of its domain, and `D`."""
    from inference.reconstruct import open_run
    from sdift_prob import pretrained
    from sdift_prob.ftm import design_rows

    run = open_run(pretrained.path(name) / "run")
    lo, hi = np.asarray(run.ftm.model.domain_lo), np.asarray(run.ftm.model.domain_hi)

    def rows(rng: np.random.Generator, n: int) -> np.ndarray:
        return np.asarray(design_rows(run.ftm.model, lo + (hi - lo) * rng.random((n, len(lo)))), np.float64)

    return rows, int(np.prod(run.core_shape))


DEFAULT_VARIANTS = ("mpdps", "dps", "dps_through", "mmps_cg1", "mmps_cg3", "mmps_cg5", "mmps_cg10",
                    "mmps_cg3_plain", "mmps_cg5_msg")


def configs(sigma_y: float, names: Sequence[str] = DEFAULT_VARIANTS) -> dict[str, GuidedConfig]:
    """The samplers compared (names: `benchmarks.variants`), at noise level `sigma_y` (inferred
    from the data, starting at their std, for names with the token `infer`; names with the token
    `marg` get a placeholder level, σ being drawn before sampling — `run_sampler(sigma_before=True)`)."""
    def parse(name: str) -> GuidedConfig:
        tokens = name.split("_")
        if MARGINAL in tokens:
            return parse_variant("_".join(t for t in tokens if t != MARGINAL), sigma_y=sigma_y)
        return parse_variant(name, **({} if "infer" in tokens else {"sigma_y": sigma_y}))

    return {name: parse(name) for name in names}


# Variant token of the bench: σ drawn from its marginal posterior before sampling.
MARGINAL = "marg"


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="JSON file for the results")
    p.add_argument("--replicates", type=int, default=10)
    p.add_argument("--draws", type=int, default=200)
    p.add_argument("--points", type=int, default=92, help="observed points per observed frame")
    p.add_argument("--frames", type=int, default=20)
    p.add_argument("--noise", type=float, nargs="+", default=[0.1, 0.03, 0.01], help="σ_y (field std units)")
    p.add_argument("--samplers", nargs="*", default=list(DEFAULT_VARIANTS),
                   help="sampler variants (benchmarks.variants), e.g. mmps_cg3_s10_lan1")
    p.add_argument("--design", choices=("ftm", "gaussian"), default="ftm")
    p.add_argument("--dim", type=int, default=512, help="core size D for --design gaussian")
    p.add_argument("--decay", type=float, default=1.0, help="prior spectrum λ_d ∝ (1 + d)^-decay (0: isotropic)")
    args = p.parse_args(argv)

    rows, D = ftm_rows() if args.design == "ftm" else (gaussian_rows(args.dim), args.dim)
    prior = GaussianPrior.build(args.frames, D, decay=args.decay)
    # Scale s so that the prior predictive std of an observation is 1 (σ_y in field-std units).
    probe = rows(np.random.default_rng(123), 4000)
    s = float(1.0 / np.sqrt(np.mean((probe**2) @ prior.lam)))
    m = 0.05
    M = args.frames
    settings = {"setting1": np.ones(M, bool), "setting2": np.arange(M) % 2 == 0}
    results: dict[str, Any] = {"config": {**vars(args), "D": D, "s": s, "m": m, "prior_lengthscale": 0.2,
                                          "noise_kernel": NOISE_KERNEL.to_dict()}, "cells": {}}
    for noise in args.noise:
        cfgs = configs(noise, args.samplers)
        names = list(cfgs)
        for setting, observed in settings.items():
            cell = f"{setting}_noise{noise:g}"
            reps = [make_replicate(prior, rows, points=args.points, observed=observed, sigma_y=noise, m=m, s=s,
                                   seed=1000 * r + 7, n_exact=args.draws) for r in range(args.replicates)]
            per = {"exact": [scores(r.exact_draws, r) for r in reps]}
            timing = {}
            diverged: dict[str, list[str]] = {}
            for name in names:
                per[name], started = [], time.perf_counter()
                for r, rep in enumerate(reps):
                    try:
                        draws, sig = run_sampler(cfgs[name], prior, rep, m=m, s=s, draws=args.draws, seed=r,
                                                 sigma_before=MARGINAL in name.split("_"))
                    except NumericalError as exc:  # a sampler that diverges is a result, not a crash
                        diverged.setdefault(name, []).append(f"replicate {r}: {exc}")
                        continue
                    per[name].append(scores(draws, rep, sigma_draws=sig, sigma_true=noise))
                timing[name] = (time.perf_counter() - started) / args.replicates
            results["cells"][cell] = {k: {**(summarise(v) if v else {}), "seconds_per_replicate": timing.get(k),
                                          "diverged": diverged.get(k, [])} for k, v in per.items()}
            print(cell, flush=True)
            for k, v in results["cells"][cell].items():
                if "mean_error" not in v:
                    print(f"  {k:22s} diverged in every replicate: {v['diverged'][0]}", flush=True)
                    continue
                print(f"  {k:22s} mean_err {v['mean_error'][0]:.3f} sd_ratio {v['sd_ratio'][0]:.3f} "
                      f"cover50 {v['cover50'][0]:.3f} cover90 {v['cover90'][0]:.3f} z2 {v['z2'][0]:.2f} "
                      f"sbc {v['sbc_chi2_per_dof']:.1f}"
                      + (f" sigma/true {v['sigma_mean'][0]:.3f} sigma/exact {v['sigma_over_exact'][0]:.3f} "
                         f"sigma_cover90 {v['sigma_cover90'][0]:.2f} (exact {v['exact_sigma_cover90'][0]:.2f})"
                         if "sigma_mean" in v else ""), flush=True)
            write_json(args.out, results)


if __name__ == "__main__":
    main()
