"""The report step of `reconstruct`: sampler draws of a prepared problem -> `az.InferenceData`.

Decodes the core draws on the output grid, records what the run did (`inference.run_facts`), runs
the output's own checks, builds the posterior predictive and pointwise log-likelihood from the
observation model (`inference.predictive`) and assembles everything (`inference.idata`).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jaxtyping import PRNGKeyArray
import numpy as np

from models.noise_models import Fixed, NoiseModel
from sdift_prob import __version__
from sdift_prob.ftm import decode_grid

from .idata import observation_order, to_inference_data
from .predictive import pointwise_log_likelihood, posterior_predictive
from .problem import Problem
from .run import Run
from .run_facts import _run_facts, _self_check
from .samplers import SamplerDraws


def _observation_groups(key: PRNGKeyArray, problem: Problem, core_draws: np.ndarray, sigma_y: Any,
                        sigma_norm: Any, normalizer: Any, chunk_size: Any, chains: int,
                        draws: int) -> tuple[np.ndarray, np.ndarray]:
    """`(y_rep, log_lik)`, each `(chain, draw, N)` in observation order (N = 0 without data)."""
    if not problem.conditioned:
        return np.zeros((chains, draws, 0)), np.zeros((chains, draws, 0))
    obs_order = observation_order(problem.obs, problem.grid_times, problem.padded_phys.mask.shape[1])
    common = dict(likelihood=problem.likelihood, sigma_draws=sigma_norm, sigma=sigma_y if sigma_norm is None else None,
                  normalizer=normalizer, batch_size=chunk_size)
    pad_j = jax.tree.map(np.asarray, problem.padded)
    y_rep = posterior_predictive(jax.random.fold_in(key, 1), core_draws, problem.design, pad_j, obs_order, **common)
    log_lik = pointwise_log_likelihood(core_draws, problem.design, pad_j, obs_order, **common)
    return y_rep, log_lik


def _attrs(run: Run, problem: Problem, out: SamplerDraws, *, key: PRNGKeyArray, sampler: str, sigma: Any,
           elapsed: float, n_total: int, checks: str, check_results: Any, facts: dict[str, Any]) -> dict[str, Any]:
    std = float(run.ftm.normalizer.std)
    field_units = str(run.provenance.get("units") or "field units")
    coord_units = {k: v for k, v in run.provenance.get("coord_units", {}).items() if v}
    settings = {"sampler": sampler, **out.settings}
    return {
        "sampler": sampler,
        "conditioned": int(problem.conditioned),
        "likelihood": problem.likelihood.name,
        "settings": settings,
        "sigma_input": sigma if isinstance(sigma, (str, type(None))) else _sigma_input(sigma),
        "representation_error": {"std": problem.rep_error * std, "source": problem.rep_source,
                                 "applied": problem.rep_applied},
        "seed_key": np.asarray(jax.random.key_data(key)).tolist(),
        "run_dir": str(run.path) if run.path is not None else "",
        "sdift_prob_version": __version__,
        "wall_time_s": elapsed,
        "wall_time_per_draw_s": elapsed / n_total,
        "constraints": ({**settings["constraints"], "wall_time_per_draw_s": elapsed / n_total}
                        if "constraints" in settings else {"terms": []}),
        "units": {"field": field_units, "y": field_units, **coord_units},
        "self_checks": {"mode": checks, "results": check_results}, **facts,  # issue 16
    }


def _sigma_input(sigma: Any) -> Any:
    """The `sigma` argument as recorded: a noise object by its source, a number as a float."""
    if isinstance(sigma, Fixed):
        return float(sigma.sigma)
    if isinstance(sigma, NoiseModel):
        return type(sigma).__name__
    return float(sigma)


def to_reconstruction(run: Run, problem: Problem, out: SamplerDraws, *, key: PRNGKeyArray, sampler: str, sigma: Any,
                      chains: int, draws: int, elapsed: float, checks: str, chunk_size: Any) -> Any:
    """The `az.InferenceData` of a reconstruction (see `reconstruct`)."""
    ftm, normalizer = run.ftm, run.ftm.normalizer
    n_total = int(draws) * int(chains)
    M = problem.grid_times.size
    core_draws = np.asarray(out.cores, dtype=np.float32).reshape(chains, draws, M, *run.core_shape)
    sigma_norm = None if out.sigma_norm is None else np.asarray(out.sigma_norm).reshape(chains, draws)
    sigma_noise = None if out.sigma_noise is None else np.asarray(out.sigma_noise).reshape(chains, draws)
    field_norm = decode_grid(ftm.model, jnp.asarray(core_draws[:, :, problem.out_idx]), problem.out_grids)
    field_draws = np.asarray(normalizer.inverse(np.asarray(field_norm)), dtype=np.float32)
    # issue 16: what the run did, and its output's own checks (raise or warn, before the predictive)
    facts = _run_facts(run, problem.obs, noise=problem.noise, likelihood=problem.likelihood,
                       conditioned=problem.conditioned, sigma_y=out.sigma_y, sigma_norm_draws=sigma_noise,
                       padded=problem.padded, out_times=problem.out_times, grid_times=problem.grid_times)
    if problem.sigma_before:
        facts["noise"].update(out.settings["sigma_inference"],
                              representation_error_added=problem.rep_error * normalizer.std)
    check_results = _self_check(run, field_norm, core_draws, problem.design, problem.padded, sigma_y=out.sigma_y,
                                sigma_norm_draws=sigma_norm, likelihood=problem.likelihood,
                                conditioned=problem.conditioned, noise=facts["noise"], checks=checks,
                                basis_error_known=not problem.rep_source.startswith("unknown"))
    y_rep, log_lik = _observation_groups(key, problem, core_draws, out.sigma_y, sigma_norm, normalizer, chunk_size,
                                         chains, draws)
    sample_stats = {"wall_time_per_draw": np.full((chains, draws), elapsed / n_total)}
    if "residual_rms" in out.info:
        sample_stats["final_residual_rms"] = np.asarray(out.info["residual_rms"])[:, -1].reshape(chains, draws)
        sample_stats["guidance_rms_mean"] = np.asarray(out.info["guidance_rms"]).mean(axis=1).reshape(chains, draws)
    attrs = _attrs(run, problem, out, key=key, sampler=sampler, sigma=sigma, elapsed=elapsed, n_total=n_total,
                   checks=checks, check_results=check_results, facts=facts)
    return to_inference_data(
        core_draws=core_draws, field_draws=field_draws, field_times=problem.out_times,
        field_coords=dict(zip(run.space_dims, problem.out_grids)), space_dims=run.space_dims, obs=problem.obs,
        y_rep=y_rep, log_lik=log_lik, sigma_draws=None if sigma_noise is None else sigma_noise * normalizer.std,
        sample_stats=sample_stats, attrs=attrs, core_times=problem.grid_times,
    )
