"""Physical constraints as guidance (issue 19), on tiny linear-Gaussian problems (no trained model).

- a zero-weight constraint (or none) changes nothing, bitwise;
- a linear-Gaussian constraint gives the exact conjugate update (as tests/test_exactness.py checks
  for observations) and the exact posterior mean over draws;
- the dynamics term's gradient (through the decoder) matches finite differences, irregular gaps
  take the right number of solver steps;
- bad inputs give an `InputError` naming the argument.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks.exactness import GaussianPrior, gaussian_rows, make_replicate
from inference.constraints import (
    Bounds,
    Dynamics,
    FieldDecoder,
    Monotone,
    Residual,
    constraint_factor,
    log_potential,
)
from inference.guidance import Fisher, MomentMatching
from inference.guided import GuidedConfig, init, prepare, sample_posterior, step
from sdift_prob.errors import InputError

M, D, I, M_OFFSET, S = 6, 4, 5, 0.05, 0.8


@pytest.fixture(scope="module")
def prior():
    return GaussianPrior.build(M, D)


@pytest.fixture(scope="module")
def decoder():
    rng = np.random.default_rng(7)
    basis = jnp.asarray(rng.normal(size=(I, D)) / np.sqrt(D), jnp.float32)
    return FieldDecoder(bases=(basis,), coords=(jnp.linspace(0.0, 1.0, I),), offset=0.3, scale=2.0, dims=("x",))


@pytest.fixture(scope="module")
def rep(prior):
    observed = np.arange(M) % 2 == 0
    return make_replicate(prior, gaussian_rows(D), points=2, observed=observed, sigma_y=0.1, m=M_OFFSET, s=S,
                          seed=3, n_exact=2)


C_ROWS = np.asarray([[1.0, -0.5, 0.0, 0.2, 0.0], [0.0, 0.3, 1.0, 0.0, -0.7]], np.float32)
TARGET = np.asarray([0.4, -0.2], np.float32)


def _linear_fn(frames, times, coords):
    """A linear residual on frames 1 and 4 (one without, one with observations)."""
    return frames[jnp.asarray([1, 4])] @ jnp.asarray(C_ROWS).T - jnp.asarray(TARGET)


def _draws(prior, rep, cfg, **kw):
    W, _ = sample_posterior(jax.random.key(0), prior.denoiser, rep.design, rep.padded, core_mean=M_OFFSET,
                            core_std=S, times_norm=prior.times, noise_chol=prior.noise_chol, config=cfg, num_draws=2,
                            **kw)
    return np.asarray(W)


def test_zero_weight_or_no_constraint_changes_nothing_bitwise(prior, rep, decoder):
    # Zero-weight constraints are dropped when the problem is prepared, so the sampler's program
    # and inputs are those of the unconstrained problem: the draws are bitwise the same.
    cfg = GuidedConfig(sigma_y=0.1, num_steps=4)
    base = _draws(prior, rep, cfg)
    zero = ([], [Residual(_linear_fn, scale=0.1, weight=0.0)], [Dynamics(lambda f, dt: f, dt=0.1, scale=0.5, weight=0.0)])
    for constraints in zero:
        got = _draws(prior, rep, cfg, constraints=constraints, decoder=decoder)
        assert np.array_equal(got, base), constraints
    for rule in ("mmps", "fisher"):
        c = GuidedConfig(sigma_y=0.1, num_steps=4, guidance=rule)
        kw = dict(core_mean=M_OFFSET, core_std=S, times_norm=prior.times, noise_chol=prior.noise_chol, config=c)
        plain = prepare(rep.design, rep.padded, **kw)
        for constraints in zero:
            assert eqx.tree_equal(prepare(rep.design, rep.padded, constraints=constraints, decoder=decoder, **kw),
                                  plain)
        weighted = prepare(rep.design, rep.padded, constraints=[Residual(_linear_fn, scale=0.1)], decoder=decoder, **kw)
        assert len(weighted.constraints) == 1 and weighted.decoder is decoder


def test_fisher_rule_takes_the_exact_gauss_newton_step_along_the_gradient(prior, rep, decoder):
    from inference.guided import _constraint_gauss_newton

    cfg = GuidedConfig(sigma_y=0.1, num_steps=4, guidance="fisher")
    prob = prepare(rep.design, rep.padded, core_mean=M_OFFSET, core_std=S, times_norm=prior.times,
                   noise_chol=prior.noise_chol, config=cfg, constraints=[Residual(_linear_fn, scale=0.1)],
                   decoder=decoder)
    x1 = jax.random.normal(jax.random.key(2), (M, D))
    r2 = 0.3
    delta = np.asarray(_constraint_gauss_newton(x1, jnp.asarray(r2), prob), np.float64)

    def objective(d):  # ½‖δ‖²/r² − log φ(x1 + δ)
        W = M_OFFSET + S * (x1 + d)
        return 0.5 * jnp.sum(d**2) / r2 - prob.constraints[0].log_potential(decoder(W), None, ())

    g = -np.asarray(jax.grad(objective)(jnp.zeros((M, D))), np.float64).ravel()  # the step's direction
    assert np.abs(delta.ravel() @ g) / (np.linalg.norm(delta) * np.linalg.norm(g)) > 1 - 1e-5
    # the step minimises the (quadratic) objective along its direction
    along = np.asarray(jax.grad(objective)(jnp.asarray(delta, jnp.float32)), np.float64)
    assert abs(along.ravel() @ g) < 1e-3 * (g @ g)


def _exact_terms(prior, rep, decoder, scale):
    """The observations and the linear constraint as rows over the flattened state x (M D):
    `y_all = A_all x + N(0, diag(noise²))` (offsets moved to the left)."""
    mask = np.asarray(rep.padded.mask)
    frame, point = np.nonzero(mask)
    rows, ys, var = [], [], []
    for f, p in zip(frame, point):
        a = np.zeros(M * D)
        a[f * D:(f + 1) * D] = S * rep.design[f, p]
        rows.append(a)
        ys.append(float(rep.padded.values[f, p]) - M_OFFSET * rep.design[f, p].sum())
        var.append(0.1**2)
    B = np.asarray(decoder.bases[0], np.float64)
    for j_i, j in enumerate((1, 4)):
        for c, t in zip(C_ROWS.astype(np.float64), TARGET.astype(np.float64)):
            # c·(off + sc B (m + s x_j)) - t = 0
            a = np.zeros(M * D)
            a[j * D:(j + 1) * D] = decoder.scale * S * (c @ B)
            rows.append(a)
            ys.append(t - c @ (decoder.offset + decoder.scale * B @ np.full(D, M_OFFSET)))
            var.append(scale**2)
    return np.asarray(rows), np.asarray(ys), np.asarray(var)


def test_linear_gaussian_constraint_step_is_the_exact_conjugate_update(prior, rep, decoder):
    # With the exact Gaussian denoiser the moment-matched estimate with the constraint as an extra
    # observation group is E[x0 | x, y, constraint]; at the last step the Euler step returns it.
    scale = 0.05
    A, y, var = _exact_terms(prior, rep, decoder, scale)
    cfg = GuidedConfig(method="dps", guidance=MomentMatching(cg_steps=len(y)), num_steps=3, sigma_y=0.1)
    prob = prepare(rep.design, rep.padded, core_mean=M_OFFSET, core_std=S, times_norm=prior.times,
                   noise_chol=prior.noise_chol, config=cfg, constraints=[Residual(_linear_fn, scale=scale)],
                   decoder=decoder)
    state = init(jax.random.key(0), prob)._replace(step=jnp.asarray(2, jnp.int32))
    state = state._replace(x=jax.random.normal(jax.random.key(5), state.x.shape))
    new, _ = eqx.filter_jit(step)(jax.random.key(1), state, prior.denoiser, prob, cfg)

    sigma = float(prob.sigmas[2])
    K = np.kron(prior.k_time, np.diag(prior.lam))
    noise = sigma**2 * np.kron(prior.noise_chol @ prior.noise_chol.T, np.eye(D))
    x = np.asarray(state.x, np.float64).ravel()
    gain = K @ np.linalg.inv(K + noise)
    x0, V = gain @ x, K - gain @ K
    expected = x0 + V @ A.T @ np.linalg.solve(np.diag(var) + A @ V @ A.T, y - A @ x0)
    np.testing.assert_allclose(np.asarray(new.x).ravel(), expected, rtol=2e-3, atol=2e-3 * np.abs(expected).max())


def _toy_step(f, dt):
    """A nonlinear periodic 1-D step (diffusion, cubic damping, advection by roll)."""
    lap = jnp.roll(f, 1) - 2 * f + jnp.roll(f, -1)
    return f + dt * (0.5 * lap - f**3 + 0.3 * (jnp.roll(f, 1) - f))


def test_dynamics_steps_per_gap_and_gradient_match_finite_differences(decoder):
    times = np.asarray([0.0, 0.1, 0.35, 0.4, 0.41])  # irregular; the last gap is below dt/2
    dyn = Dynamics(_toy_step, dt=0.05, scale=0.3)
    assert dyn.step_counts(times).tolist() == [2, 5, 1, 0]
    rng = np.random.default_rng(0)
    frames = jnp.asarray(rng.normal(size=(5, I)), jnp.float32)
    r = np.asarray(dyn.residual(frames, jnp.asarray(times), ()))
    for j, n in enumerate([2, 5, 1, 0]):
        f = frames[j]
        for _ in range(n):
            f = _toy_step(f, 0.05)
        np.testing.assert_allclose(r[j], np.asarray(frames[j + 1] - f), rtol=1e-5, atol=1e-6)
    bound = dyn.bind(frames, times)
    assert bound.max_steps == 5 and bound.to_dict()["solver_steps_per_gap"] == [2, 5, 1, 0]

    # gradient w.r.t. the cores, through the decoder (the chain rule the sampler uses), in float64
    with jax.enable_x64(True):
        dec = FieldDecoder(bases=(jnp.asarray(decoder.bases[0], jnp.float64),),
                           coords=(jnp.asarray(decoder.coords[0], jnp.float64),), offset=0.3, scale=2.0)
        W = jnp.asarray(rng.normal(size=(5, D)) * 0.3, jnp.float64)
        t = jnp.asarray(times)

        @jax.jit
        def potential(w):
            return bound.log_potential(dec(w), t, ())

        g = np.asarray(jax.grad(potential)(W))
        eps, fd = 1e-6, np.zeros((5, D))
        for idx in np.ndindex(5, D):
            e = np.zeros((5, D))
            e[idx] = eps
            fd[idx] = (float(potential(W + e)) - float(potential(W - e))) / (2 * eps)
        np.testing.assert_allclose(g, fd, rtol=1e-5, atol=1e-7 * np.abs(fd).max())


def test_potentials_are_numpyro_factors_and_bounds_are_zero_inside():
    import numpyro
    from numpyro.infer.util import log_density

    frames = jnp.asarray([[0.0, 0.5, 1.2], [-0.3, 0.9, 0.1]])
    times = jnp.asarray([0.0, 1.0])
    cons = [Bounds(lo=0.0, hi=1.0, scale=0.1), Residual(lambda f, t, c: f.sum(axis=1) - 1.0, scale=0.5, weight=2.0)]
    np.testing.assert_allclose(np.asarray(cons[0].residual(frames, times, ())), [[0, 0, 0.2], [-0.3, 0, 0]],
                               atol=1e-6)

    def model():
        constraint_factor(cons, frames, times, name="physics")

    lp, _ = log_density(model, (), {}, {})
    expected = -0.5 * (0.2**2 + 0.3**2) / 0.01 - 0.5 * 2.0 * ((0.7**2 + 0.3**2) / 0.25)
    np.testing.assert_allclose(float(lp), expected, rtol=1e-5)
    np.testing.assert_allclose(float(log_potential(cons, frames, times)), expected, rtol=1e-5)
    with numpyro.handlers.trace() as tr:
        cons[0].factor(frames, times, name="range")
    assert "range" in tr


def test_monotone_follows_the_coordinate_and_pulls_draws_into_order(prior, rep, decoder):
    frames = jnp.asarray([[[0.0, 1.0, 0.5], [2.0, 3.0, 4.0]]])  # (M=1, 2, 3): axis 1 has one drop
    up = Monotone(axis=1, scale=0.1).bind(frames, np.zeros(1), (jnp.arange(2.0), jnp.arange(3.0)))
    np.testing.assert_allclose(np.asarray(up.residual(frames, None, ())), [[[0.0, -0.5], [0.0, 0.0]]])
    # the same grid stored with a decreasing coordinate: "increasing" now means decreasing index
    flipped = Monotone(axis=1, scale=0.1).bind(frames, np.zeros(1), (jnp.arange(2.0), -jnp.arange(3.0)))
    np.testing.assert_allclose(np.asarray(flipped.residual(frames, None, ())), [[[-1.0, 0.0], [-1.0, -1.0]]])
    down = Monotone(axis=0, increasing=False, scale=0.1)
    assert float(jnp.sum(down.residual(frames, None, ()) ** 2)) == 20.25  # axis 0 rises by 2, 2 and 3.5
    for bad, match in ((dict(axis=-1), "axis"), (dict(axis=0, increasing="yes"), "increasing"),
                       (dict(axis=0, scale=0.0), "scale")):
        with pytest.raises(InputError, match=match):
            Monotone(**bad)
    with pytest.raises(InputError, match="axis"):
        Monotone(axis=3, scale=1.0).bind(frames, np.zeros(1), ())
    with pytest.raises(InputError, match="axis"):
        Monotone(axis=0, scale=1.0).bind(frames, np.zeros(1), (jnp.asarray([0.0, 0.0]), jnp.arange(3.0)))
    # in the sampler: a tight monotonicity constraint leaves fewer and smaller violations
    cfg = GuidedConfig(sigma_y=0.1, num_steps=8)

    def violation(constraints):
        W = _draws(prior, rep, cfg, constraints=constraints, decoder=decoder)
        f = np.asarray(decoder(jnp.asarray(W)))
        return np.sum(np.minimum(np.diff(f, axis=-1), 0.0) ** 2)

    free, tight = violation(None), violation([Monotone(axis=0, scale=0.01)])
    assert tight < 0.2 * free, (tight, free)


def test_bad_constraint_inputs_name_the_argument(prior, rep, decoder):
    cfg = GuidedConfig(sigma_y=0.1, num_steps=4)

    def prep(constraints, dec=decoder, config=cfg):
        return prepare(rep.design, rep.padded, core_mean=M_OFFSET, core_std=S, times_norm=prior.times,
                       noise_chol=prior.noise_chol, config=config, constraints=constraints, decoder=dec)

    with pytest.raises(InputError, match="step_fn.*finite"):
        prep([Dynamics(lambda f, dt: f / 0.0, dt=0.1, scale=0.5)])
    with pytest.raises(InputError, match="step_fn.*shape"):
        prep([Dynamics(lambda f, dt: f[:-1], dt=0.1, scale=0.5)])
    with pytest.raises(InputError, match="step_fn.*differentiable"):
        prep([Dynamics(lambda f, dt: jnp.asarray(np.asarray(f) * 0.9), dt=0.1, scale=0.5)])
    with pytest.raises(InputError, match="step_fn.*callable"):
        Dynamics("euler", dt=0.1, scale=0.5)
    with pytest.raises(InputError, match="scale"):
        Dynamics(_toy_step, dt=0.1, scale=-1.0)
    with pytest.raises(InputError, match="dt"):
        Dynamics(_toy_step, dt=0.0, scale=1.0)
    with pytest.raises(InputError, match="weight"):
        Residual(_linear_fn, scale=1.0, weight=-0.5)
    with pytest.raises(InputError, match="fn.*callable"):
        Residual(3.0, scale=1.0)
    with pytest.raises(InputError, match="fn.*finite"):
        prep([Residual(lambda f, t, c: jnp.log(f - 1e3), scale=1.0)])
    with pytest.raises(InputError, match="lo/hi"):
        Bounds(lo=2.0, hi=1.0, scale=1.0)
    with pytest.raises(InputError, match="hi"):
        prep([Bounds(hi=np.ones(I + 1), scale=1.0)])
    with pytest.raises(InputError, match="constraints"):
        prep(Bounds(lo=0.0, scale=1.0))
    with pytest.raises(InputError, match=r"constraints\[1\]"):
        prep([Bounds(lo=0.0, scale=1.0), "positive"])
    with pytest.raises(InputError, match="decoder"):
        prep([Bounds(lo=0.0, scale=1.0)], dec=None)
    with pytest.raises(InputError, match="constraints"):
        prep([Bounds(lo=0.0, scale=1.0)], config=GuidedConfig(sigma_y=0.1, num_steps=4, guidance="reference"))
    # a Fisher-rule config accepts them
    assert len(prep([Bounds(lo=0.0, scale=1.0)], config=GuidedConfig(sigma_y=0.1, guidance=Fisher())).constraints) == 1


def test_cli_dynamics_reads_the_recorded_physics_or_says_where_it_is_missing(tmp_path, monkeypatch, capsys):
    import importlib

    import xarray as xr

    from sdift_prob import cli, pretrained
    from sdift_prob.data.simulate.fluid2d import KolmogorovStep, fluid2d_dynamics

    bundle = pretrained.path("fluid2d")
    seen = {}

    def fake_reconstruct(run, obs, *, constraints, **kwargs):
        seen["constraints"] = constraints
        raise InputError("MARKER: reached the sampler")

    rec = importlib.import_module("inference.reconstruct")
    monkeypatch.setattr(rec, "open_run", lambda *a, **k: None)
    monkeypatch.setattr(rec, "reconstruct", fake_reconstruct)
    args = ["reconstruct", str(bundle / "run"), str(bundle / "obs_rho3pct.nc"), "--out", str(tmp_path / "p.nc")]
    # the shipped observation set records no source collection
    assert cli.main(args + ["--dynamics", "fluid2d", "--dynamics-scale", "0.4"]) == 1
    assert "--dynamics-source" in capsys.readouterr().err
    assert cli.main(args + ["--dynamics-scale", "0.4"]) == 1
    err = capsys.readouterr().err
    assert "--dynamics-scale" in err and "only with --dynamics" in err
    assert cli.main(args + ["--dynamics", "fluid2d", "--dynamics-scale", "0.4", "--dynamics-source",
                            str(bundle / "test_trajectory.nc")]) == 1
    assert "MARKER" in capsys.readouterr().err
    (dyn,) = seen["constraints"]
    assert isinstance(dyn.step_fn, KolmogorovStep) and dyn.scale == 0.4 and dyn.dt == 0.01
    with pytest.raises(InputError, match="collection"):
        fluid2d_dynamics(xr.Dataset(attrs={"simulator": "fluid2d"}), 0, scale=1.0)
    with pytest.raises(InputError, match="collection"):
        fluid2d_dynamics(xr.Dataset(attrs={"simulator": "ocean"}), 0, scale=1.0)
