"""Run in a subprocess with XLA_FLAGS=--xla_force_host_platform_device_count=2 (see
tests/test_multidevice.py): 1 device vs 2 virtual CPU devices for sampling, reconstruction and
data-parallel training. Writes a JSON summary and an npz of arrays to the folder in argv[1].

Usage: python tests/scripts/multidevice_check.py OUT_DIR
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import numpy as np  # noqa: E402

import reliability_helpers as rh  # noqa: E402
from inference.guided import GuidedConfig, sample_posterior  # noqa: E402
from inference.reconstruct import Run, reconstruct  # noqa: E402


def tree_maxdiff(a, b) -> float:
    import equinox as eqx

    la = jax.tree_util.tree_leaves(eqx.filter(a, eqx.is_array))
    lb = jax.tree_util.tree_leaves(eqx.filter(b, eqx.is_array))
    return max(float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64)))) for x, y in zip(la, lb))


def main(out: Path) -> None:
    summary: dict = {"devices": len(jax.devices())}
    arrays: dict = {}
    ds = rh.collection()
    # --- data-parallel FTM fit: batch of 2 trajectories split over 2 devices
    fit1, rep1 = rh.tiny_fit(ds, devices=1)
    fit2, rep2 = rh.tiny_fit(ds, devices=2)
    summary["ftm"] = {
        "devices_reported": [rep1["devices"], rep2["devices"]],
        "cores_maxdiff": float(np.abs(np.asarray(fit1.cores) - np.asarray(fit2.cores)).max()),
        "cores_scale": float(np.abs(np.asarray(fit1.cores)).max()),
        "nets_maxdiff": tree_maxdiff(fit1.model, fit2.model),
        "loss_maxdiff": float(np.max(np.abs(np.subtract(rep1["loss_curve"], rep2["loss_curve"])))),
    }
    arrays["ftm_cores_dev1"] = np.asarray(fit1.cores)
    # --- data-parallel prior training: batch of 2 sequences split over 2 devices
    prior1, prep1 = rh.tiny_prior(fit1, devices=1)
    prior2, prep2 = rh.tiny_prior(fit1, devices=2)
    summary["prior"] = {
        "devices_reported": [prep1["devices"], prep2["devices"]],
        "params_maxdiff": tree_maxdiff(prior1.net, prior2.net),
        "loss_maxdiff": float(np.max(np.abs(np.subtract(prep1["loss_history"], prep2["loss_history"])))),
    }
    # --- posterior draws sharded over the 'draws' mesh axis: bitwise equal to 1 device
    run = Run(ftm=fit1, prior=rh.untrained_prior(fit1))  # the prior of rh.determinism_arrays
    obs = rh.simple_obs(ds, trajectory=1)
    idata = reconstruct(run, obs, key=jax.random.key(5), sampler="mpdps", draws=4,
                        config=GuidedConfig(method="mpdps", guidance="fisher", num_steps=6))  # sample_posterior default: all devices
    arrays["reconstruct_mpdps_field"] = idata.posterior["field"].values
    # sample_posterior on a linear-Gaussian problem with an analytic denoiser (no convolutions):
    # 5 draws over 2 devices (the chunk padded to 6, the extra chain dropped)
    from sdift_prob.data.observations import PaddedObservations

    rng = np.random.default_rng(0)
    M, P, D = 4, 3, 2
    padded = PaddedObservations(times=np.arange(M, dtype=float), values=rng.normal(size=(M, P)),
                                coords=np.zeros((M, P, 1)), noise_scale=np.ones((M, P)), mask=rng.random((M, P)) < 0.7)
    A = rng.normal(size=(M, P, D))

    def white(x, sigma, t):
        return 0.25 / (0.25 + sigma**2) * x

    kw = dict(core_mean=0.3, core_std=2.0, times_norm=np.linspace(0.0, 1.0, M), noise_chol=np.eye(M),
              config=GuidedConfig(method="mpdps", guidance="fisher", num_steps=6, sigma_y=0.3, churn=5.0), num_draws=5)
    d1, _ = sample_posterior(jax.random.key(2), white, A, padded, devices=1, **kw)
    d2, _ = sample_posterior(jax.random.key(2), white, A, padded, devices=2, **kw)
    summary["sampling"] = {"bitwise_1_vs_2": bool(np.array_equal(d1, d2)), "maxdiff": float(np.abs(d1 - d2).max())}
    # three test trajectories at once, split over the 'trajectories' axis (padded to 4)
    from inference.guided import sample_posterior_many

    paddeds = [padded._replace(values=padded.values + b) for b in range(3)]
    many_kw = dict(core_mean=0.3, core_std=2.0, times_norm=[np.linspace(0.0, 1.0, M)] * 3,
                   noise_chols=[np.eye(M)] * 3, config=kw["config"], num_draws=2)
    m1 = sample_posterior_many(jax.random.key(4), white, [A] * 3, paddeds, devices=1, **many_kw)
    m2 = sample_posterior_many(jax.random.key(4), white, [A] * 3, paddeds, devices=2, **many_kw)
    summary["trajectories"] = {"bitwise_1_vs_2": bool(np.array_equal(m1, m2)), "maxdiff": float(np.abs(m1 - m2).max()),
                               "shape": list(m2.shape)}
    # --- automatic device choice warns when the batch does not divide
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        from sdift_prob.parallel import resolve_devices

        summary["auto_odd_batch"] = resolve_devices(None, 3)
    summary["auto_odd_batch_warned"] = any("does not divide" in str(w.message) for w in caught)
    np.savez(out / "arrays.npz", **arrays)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
