"""Likelihood objects (`models.likelihoods`): names, parameters, serialisation, and agreement with
the observation model they replace the string dispatch of."""

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest

from inference.guided import GuidedConfig
from models.likelihoods import (
    LIKELIHOODS,
    SIGMA_LIKELIHOODS,
    Gaussian,
    Laplace,
    Likelihood,
    PoissonExcess,
    StudentT,
    as_likelihood,
)
from models.observation import likelihood_grad
from sdift_prob.data.observations import PaddedObservations
from sdift_prob.errors import InputError

OBJECTS = [Gaussian(), Laplace(), StudentT(5.0), PoissonExcess(-1.0, 0.5)]


def test_names_and_round_trip():
    assert LIKELIHOODS == ("gaussian", "laplace", "student_t", "poisson")
    assert SIGMA_LIKELIHOODS == ("gaussian", "laplace", "student_t")
    for lik in OBJECTS:
        assert Likelihood.from_dict(lik.to_dict()) == lik
        assert as_likelihood(lik.name, **lik.params()) == lik
        assert as_likelihood(lik) is lik
    assert as_likelihood("student_t") == StudentT(4.0)
    assert as_likelihood("gaussian", df=3.0) == Gaussian()  # parameters it does not have are ignored
    assert hash(StudentT(5.0)) == hash(StudentT(5.0))


def test_bad_arguments_name_the_argument():
    with pytest.raises(InputError, match="likelihood"):
        as_likelihood("cauchy")
    with pytest.raises(InputError, match="poisson_offset"):
        as_likelihood("poisson", poisson_scale=1.0)
    with pytest.raises(InputError, match="poisson_scale"):
        PoissonExcess(0.0, -1.0)
    with pytest.raises(InputError, match="df"):
        StudentT(0.0)
    with pytest.raises(InputError, match="likelihood"):
        as_likelihood(StudentT(3.0), df=4.0)


@pytest.mark.parametrize("lik", OBJECTS, ids=lambda lik: lik.name)
def test_score_is_the_observation_models_gradient(lik):
    rng = np.random.default_rng(0)
    u = jnp.asarray(rng.normal(size=(2, 3)), jnp.float32)
    y = jnp.asarray(rng.normal(size=(2, 3)) if lik.has_sigma else -1.0 + 0.5 * rng.integers(0, 6, (2, 3)),
                    jnp.float32)
    sigma = 0.3 if lik.has_sigma else None
    padded = PaddedObservations(times=np.arange(2.0), values=y, coords=np.zeros((2, 3, 1)),
                                noise_scale=np.ones((2, 3)), mask=np.ones((2, 3), bool))
    # design = identity over a (2, 3) core: the "cores" are the predicted means
    design = jnp.broadcast_to(jnp.eye(3), (2, 3, 3))
    want = likelihood_grad(u, design, padded, likelihood=lik, sigma=sigma)
    noise = None if sigma is None else jnp.full((2, 3), sigma, jnp.float32)
    np.testing.assert_allclose(lik.score(u, y, noise), want, rtol=1e-6)


def test_guided_config_takes_names_or_objects_alike():
    pairs = [
        (dict(likelihood="student_t", likelihood_params={"df": 5.0}), dict(likelihood=StudentT(5.0))),
        (dict(likelihood="student_t"), dict(likelihood=StudentT())),
        (dict(likelihood="poisson", likelihood_params={"poisson_offset": -1.0, "poisson_scale": 0.5}),
         dict(likelihood=PoissonExcess(-1.0, 0.5))),
    ]
    for by_name, by_object in pairs:
        sigma = {} if "poisson" in str(by_name) else {"sigma_y": 0.2}
        a, b = GuidedConfig(**by_name, **sigma), GuidedConfig(**by_object, **sigma)
        assert a == b and a.to_dict() == b.to_dict()
        assert isinstance(a.to_dict()["likelihood"], str)
        assert dataclasses.replace(a, method="mpdps").to_dict()["likelihood_params"] == a.to_dict()["likelihood_params"]
    with pytest.raises(InputError, match="likelihood_params"):
        GuidedConfig(likelihood=StudentT(5.0), likelihood_params={"df": 3.0}, sigma_y=0.2)
    with pytest.raises(InputError, match="sigma_y"):
        GuidedConfig(likelihood=PoissonExcess(0.0, 1.0), sigma_y=0.2)
