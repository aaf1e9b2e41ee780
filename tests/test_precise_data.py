"""Clean data and tiny noise through every sampler: a sane posterior or a clear error, never a
diverged field returned without a word (the paper-era default returned VRMSE 3-98 on precise data)."""

import dataclasses

import jax
import numpy as np
import pytest

from inference.reconstruct import open_run, reconstruct, sampler_config
from inference.report import evaluate
from sdift_prob import pretrained
from sdift_prob.data import load_fields, select_trajectory
from sdift_prob.data.sampling import sample_observations
from sdift_prob.errors import InputError, NumericalError


@pytest.fixture(scope="module")
def shipped():
    bundle = pretrained.path("ocean")
    run = open_run(bundle / "run")
    truth = select_trajectory(load_fields(bundle / "test_trajectory.nc"), 0)
    return run, truth


@pytest.mark.parametrize("sampler", ["mmps", "mpdps", "dps", "gp"])
@pytest.mark.parametrize("level", [1e-3, 0.3])
def test_precise_or_noisy_data_give_a_sane_posterior_or_a_clear_error(shipped, sampler, level):
    run, truth = shipped
    std = run.ftm.normalizer.std
    obs = sample_observations(jax.random.key(4), truth, rho=0.01, setting=1, noise="gaussian",
                              noise_scale=level * std)
    config = None if sampler == "gp" else dataclasses.replace(sampler_config(sampler), num_steps=8)
    try:
        idata = reconstruct(run, obs, key=jax.random.key(0), sampler=sampler, draws=2, sigma=level * std,
                            config=config)
    except (NumericalError, InputError) as exc:  # a clear refusal is an acceptable outcome ...
        assert sampler != "mmps", f"the default sampler must not fail here: {exc}"
        return
    # ... a returned posterior must be sane: finite and, for the diffusion samplers, better than
    # the training-mean field, which scores 0.168 on this trajectory (`sdift demo`; the training
    # data are not shipped). The exact FTM + GP baseline's weak prior is worse than that at
    # noise 0.3 (0.145 / 0.168 in settings 1 / 2 of the noise sweep, benchmarks/RESULTS.md) but
    # not diverged.
    assert np.isfinite(idata.posterior["field"].values).all()
    assert evaluate(idata, truth)["vrmse"] < (0.168 if sampler != "gp" else 0.3), (sampler, level)
