"""Tiny, deterministic pipeline pieces shared by the reliability tests and their subprocess scripts.

Everything is built from fixed seeds, so a subprocess that calls these functions gets the same
objects as the test process (which the cross-process determinism checks rely on).
"""

from __future__ import annotations

import hashlib

import jax
import numpy as np

from sdift_prob.data.fields import make_field_dataset
from sdift_prob.data.observations import ObservationSet
from sdift_prob.ftm import FTMConfig, fit_ftm
from sdift_prob.gpsd import PriorConfig, train_prior

DIMS = ("lat", "lon")
FTM_CONFIG = FTMConfig(epochs=12, width=8, depth=1, batch_trajectories=2, holdout_fraction=0.1, eval_every=3,
                       warmup=4)
PRIOR_CONFIG = PriorConfig(channels=4, channel_mult=(1,), num_blocks=1, attention=False, time_features=4, steps=4,
                           batch_size=2, seq_len=None, warmup_steps=1, checkpoint_every=100)


def collection(n_traj: int = 6, n_time: int = 5, sizes=(7, 5), seed: int = 0, scale: float = 1.0,
               offset: float = 0.0):
    """A smooth rank-(2, 2) Tucker field over (lat, lon), `offset + scale * (10 + ...)`."""
    rng = np.random.default_rng(seed)
    lat = np.linspace(0.0, 2.0, sizes[0])
    lon = np.linspace(-1.0, 1.0, sizes[1])
    t = np.linspace(0.0, 1.0, n_time)
    f1 = np.stack([np.ones_like(lat), np.sin(np.pi * lat / 2)], 1)
    f2 = np.stack([np.ones_like(lon), lon], 1)
    base = rng.normal(size=(n_traj, 1, 2, 2))
    wave = rng.normal(size=(n_traj, 1, 2, 2)) * np.sin(2 * np.pi * t)[None, :, None, None]
    values = offset + scale * (10.0 + 2.0 * np.einsum("btpq,ip,jq->btij", base + wave, f1, f2))
    return make_field_dataset(
        values, t, {"lat": lat, "lon": lon}, units="K", long_name="test field",
        coord_units={"time": "s", "lat": "deg", "lon": "deg"},
        provenance={"simulator": "reliability-test", "parameters": {"scale": scale}, "seed": seed},
    )


def tiny_fit(ds=None, seed: int = 0, **kw):
    ds = collection() if ds is None else ds
    return fit_ftm(ds, (2, 2), key=jax.random.key(seed), config=FTM_CONFIG, progress=False, **kw)


def tiny_prior(fit, seed: int = 1, **kw):
    return train_prior(np.asarray(fit.cores), fit.normalised_times(), PRIOR_CONFIG, key=jax.random.key(seed),
                       progress=False, **kw)


def untrained_prior(fit, seed: int = 1):
    """A GPSD prior with an untrained network (a valid, uninformed prior; nothing to compile)."""
    from sdift_prob.gp import TemporalKernel
    from sdift_prob.gpsd import GPSDPrior
    from sdift_prob.gpsd.edm import EDMConfig
    from sdift_prob.gpsd.unet import TemporalUNet

    cores = np.asarray(fit.cores)
    net = TemporalUNet(tuple(cores.shape[2:]), key=jax.random.key(seed), **PRIOR_CONFIG.net_kwargs())
    return GPSDPrior(net, EDMConfig(), TemporalKernel("rbf", 0.1, 1.0), float(cores.mean()),
                     float(cores.std()) / 0.5)


def simple_obs(ds, trajectory: int = 0, every: int = 3, noise: float = 0.1, seed: int = 0) -> ObservationSet:
    """Every `every`-th grid entry of one trajectory, with Gaussian noise of known scale."""
    rng = np.random.default_rng(seed)
    field = ds["field"].values[trajectory]
    t = ds["time"].values
    lat, lon = ds["lat"].values, ds["lon"].values
    T, I, J = field.shape
    flat = np.arange(T * I * J)[::every]
    ti, ii, jj = np.unravel_index(flat, (T, I, J))
    values = field[ti, ii, jj] + noise * rng.normal(size=flat.size)
    return ObservationSet(value=values, time=t[ti], coords=np.stack([lat[ii], lon[jj]], 1), space_dims=DIMS,
                          noise_scale=np.full(flat.size, noise), noise_model="gaussian")


def digest(*arrays) -> str:
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(np.asarray(a))
        h.update(str(a.dtype).encode() + str(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def determinism_arrays() -> dict[str, np.ndarray]:
    """FTM fit, and a gp and an mpdps reconstruction from fixed seeds (for bitwise comparisons).

    The prior is an untrained network (training is compared bitwise in-process by the resume
    tests; here it would only add a compilation to every process)."""
    from inference.guided import GuidedConfig
    from inference.reconstruct import Run, reconstruct

    ds = collection()
    fit, _ = tiny_fit(ds)
    run = Run(ftm=fit, prior=untrained_prior(fit))
    obs = simple_obs(ds, trajectory=1)
    out = {"ftm_cores": np.asarray(fit.cores)}
    for sampler in ("gp", "mpdps"):
        idata = reconstruct(run, obs, key=jax.random.key(5), sampler=sampler, draws=4,
                            config=GuidedConfig(method="mpdps", guidance="fisher", num_steps=6))
        out[f"{sampler}_field"] = idata.posterior["field"].values
    return out
