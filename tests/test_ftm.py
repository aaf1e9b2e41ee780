"""Functional Tucker Model: decoding identities, recovery of a Tucker field, TV, encode, bundles."""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sdift_prob.commands import fit_ftm as fit_ftm_cmd
from sdift_prob.data.fields import Normalizer, assign_split, make_field_dataset, save_fields
from sdift_prob.data.observations import ObservationSet
from sdift_prob.errors import FormatError, InputError
from sdift_prob.ftm import (
    CoordinateNet,
    ExtrapolationWarning,
    FTMConfig,
    FunctionalTucker,
    decode_grid,
    decode_points,
    design_rows,
    encode,
    fit_ftm,
    load_run,
    save_run,
)
from sdift_prob.ftm.encode import _solve_coupled
from sdift_prob.metrics import vrmse
from sdift_prob.run import MANIFEST

# --- helpers -------------------------------------------------------------------------------


def tucker_collection(n_traj: int = 4, n_time: int = 6, sizes=(20, 16), seed: int = 0):
    """A field exactly of Tucker form, ranks (3, 3), with smooth known factors."""
    rng = np.random.default_rng(seed)
    x = np.linspace(0.0, 2.0, sizes[0])
    y = np.linspace(-1.0, 1.0, sizes[1])
    f1 = np.stack([np.ones_like(x), np.sin(np.pi * x / 2), np.cos(np.pi * x / 2)], axis=1)
    f2 = np.stack([np.ones_like(y), y, y**2 - 0.3], axis=1)
    t = np.linspace(0.0, 1.0, n_time)
    cores = np.empty((n_traj, n_time, 3, 3))
    for b in range(n_traj):
        a, c, phase = rng.normal(size=(3, 3)), rng.normal(size=(3, 3)), rng.uniform(0, 2 * np.pi)
        cores[b] = a[None] + c[None] * np.sin(2 * np.pi * t[:, None, None] + phase)
    values = 10.0 + 2.0 * np.einsum("btpq,ip,jq->btij", cores, f1, f2)
    return make_field_dataset(
        values, t, {"x": x, "y": y}, units="K", long_name="tucker field",
        coord_units={"time": "s", "x": "m", "y": "m"},
        provenance={"simulator": "test-tucker", "parameters": {}, "seed": seed},
    )


def grid_points(grids):
    return np.array(list(itertools.product(*grids)))


def full_grid_observations(ds, b: int) -> ObservationSet:
    """Every entry of trajectory `b` as an observation set."""
    dims = ("x", "y")
    grids = [ds[d].values for d in dims]
    pts = grid_points(grids)
    times = ds["time"].values
    frames = ds["field"].values[b]
    value = np.concatenate([frames[i].reshape(-1) for i in range(times.size)])
    time = np.repeat(times, pts.shape[0])
    coords = np.tile(pts, (times.size, 1))
    return ObservationSet(value=value, time=time, coords=coords, space_dims=dims, noise_model="none")


FAST = FTMConfig(lr=3e-3, lr_cores=0.3, width=64, epochs=600, batch_trajectories=4, beta_tv=0.0,
                 train_fraction=0.1, holdout_fraction=0.05, patience=1000)


@pytest.fixture(scope="module")
def tucker_ds():
    return tucker_collection()


@pytest.fixture(scope="module")
def tucker_fit(tucker_ds):
    return fit_ftm(tucker_ds, (3, 3), key=jax.random.key(0), config=FAST, progress=False)


@pytest.fixture(scope="module")
def small_model():
    return FunctionalTucker((3, 4, 2), domain_lo=(0.0, -1.0, 10.0), domain_hi=(1.0, 2.0, 30.0),
                            space_dims=("a", "b", "c"), width=16, key=jax.random.key(3))


# --- networks and decoding -------------------------------------------------------------------


def test_coordinate_net_siren_initialisation_and_range():
    width, omega = 32, 20.0
    net = CoordinateNet(5, width=width, depth=3, omega=omega, key=jax.random.key(1))
    assert float(jnp.abs(net.weights[0]).max()) <= 1.0  # first layer: U(-1/fan_in, 1/fan_in), fan_in = 1
    bound = np.sqrt(6.0 / width) / omega
    for w in net.weights[1:]:
        assert float(jnp.abs(w).max()) <= bound
        assert float(jnp.abs(w).max()) > 0.5 * bound
    out = net(jnp.linspace(0.0, 1.0, 50))
    assert out.shape == (50, 5)
    assert float(jnp.abs(out).max()) < 1.0
    # features must vary with the coordinate, not collapse to a constant
    assert float(out.std(axis=0).min()) > 1e-3


def test_decode_grid_equals_points_and_design_rows(small_model):
    m = small_model
    cores = jax.random.normal(jax.random.key(2), (2, 3, 3, 4, 2))
    # off the training grid and at another resolution
    grids = [np.linspace(0.03, 0.97, 5), np.linspace(-0.9, 1.7, 4), np.linspace(11.0, 29.0, 3)]
    field = np.asarray(decode_grid(m, cores, grids))
    assert field.shape == (2, 3, 5, 4, 3)
    pts = grid_points(grids)
    for b in range(2):
        for t in range(3):
            v = decode_points(m, cores[b], np.full(pts.shape[0], t), pts)
            np.testing.assert_allclose(np.asarray(v), field[b, t].reshape(-1), atol=2e-6)
    a = np.asarray(design_rows(m, pts))
    assert a.shape == (pts.shape[0], 24)
    np.testing.assert_allclose(a @ np.asarray(cores[1, 2]).reshape(-1), field[1, 2].reshape(-1), atol=2e-6)
    # a row is the Kronecker product of the mode features (row-major vec)
    feats = [np.asarray(m.basis(k, pts[:1, k])) for k in range(3)]
    np.testing.assert_allclose(a[0], np.kron(feats[0][0], np.kron(feats[1][0], feats[2][0])), atol=1e-6)


def test_domain_margin_error_and_warning(small_model):
    m = small_model
    inside = np.array([[0.5, 0.0, 20.0]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        design_rows(m, inside)
    mild = np.array([[1.04, 0.0, 20.0]])  # 4% of the width beyond the upper bound
    with pytest.warns(ExtrapolationWarning, match="'a'"):
        design_rows(m, mild)
    far = np.array([[0.5, 0.0, 32.0]])  # 10% beyond
    with pytest.raises(InputError, match="coords.*'c'.*margin"):
        design_rows(m, far)
    with pytest.raises(InputError, match=r"grids\[1\]"):
        decode_grid(m, jnp.zeros((1, 3, 4, 2)), [np.array([0.5]), np.array([-1.5]), np.array([20.0])])
    with pytest.raises(InputError, match="time_index"):
        decode_points(m, jnp.zeros((2, 3, 4, 2)), np.array([2]), inside)


def test_points_on_the_domain_edge_do_not_warn():
    # issue 16 item 8: a periodic 64 x 64 grid on [0, 2 pi] rounds its last point up in float32
    # (6.2831855 > 2 pi), which gave "extend to [0, 6.28319], outside ... [0, 6.28319]"
    two_pi = 2 * np.pi
    m = FunctionalTucker((2, 2), domain_lo=(0.0, 0.0), domain_hi=(two_pi, two_pi), space_dims=("x", "y"),
                         width=8, key=jax.random.key(0))
    grid = np.linspace(0.0, two_pi, 64)
    pts = np.stack(np.meshgrid(grid, grid, indexing="ij"), axis=-1).reshape(-1, 2)
    assert float(np.float32(two_pi)) > two_pi  # the rounding the tolerance is for
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        design_rows(m, pts)
        decode_grid(m, jnp.zeros((1, 2, 2)), [grid, grid])
        design_rows(m, np.array([[-1e-7, two_pi]]))  # float rounding below the lower bound too
    # beyond the rounding, still a warning (a 1e-4 relative overshoot is real extrapolation)
    with pytest.warns(ExtrapolationWarning, match="'x'"):
        design_rows(m, np.array([[two_pi * (1 + 1e-4), 1.0]]))
    with pytest.warns(ExtrapolationWarning, match="'y'"):
        design_rows(m, np.array([[1.0, -1e-4]]))


def test_bad_ranks_are_refused(tucker_ds):
    for ranks, pattern in [((3,), "one rank per space dimension"), ((3, 3, 3), "one rank per space dimension"),
                           ((3, 0), "positive"), ((3, -1), "positive"), ((3, 2.5), "positive")]:
        with pytest.raises(InputError, match=pattern):
            fit_ftm(tucker_ds, ranks, key=jax.random.key(0), config=dataclasses.replace(FAST, epochs=1),
                    progress=False)
    with pytest.raises(InputError, match="ranks"):
        FunctionalTucker((2, 2), domain_lo=(0.0,), domain_hi=(1.0,), space_dims=("x",), key=jax.random.key(0))
    with pytest.raises(InputError, match="config.ranks"):
        fit_ftm(tucker_ds, (3, 3), key=jax.random.key(0), config=FTMConfig(ranks=(2, 2)), progress=False)
    with pytest.raises(InputError, match="cores"):
        decode_grid(FunctionalTucker((2, 2), domain_lo=(0, 0), domain_hi=(1, 1), space_dims=("x", "y"),
                                     key=jax.random.key(0)), jnp.zeros((3, 2, 3)), [np.zeros(2), np.zeros(2)])


def test_config_validation():
    with pytest.raises(InputError, match="train_fraction"):
        FTMConfig(train_fraction=0.0)
    with pytest.raises(InputError, match="holdout_fraction"):
        FTMConfig(holdout_fraction=1.0)
    with pytest.raises(InputError, match="epochs"):
        FTMConfig(epochs=0)
    assert FTMConfig.from_dict(FTMConfig(ranks=(2, 3)).to_dict()) == FTMConfig(ranks=(2, 3))


# --- fitting -----------------------------------------------------------------------------------


def test_recovers_tucker_field_from_ten_percent(tucker_ds, tucker_fit):
    fit, report = tucker_fit
    assert report["n_train_entries"] < 0.1 * tucker_ds["field"].size
    decoded = fit.decode()
    truth = tucker_ds["field"].values
    scores = vrmse(truth, decoded, batched=True)
    assert scores.max() < 0.02, scores
    assert report["full_vrmse"] == pytest.approx(float(scores.mean()), rel=1e-3)
    assert report["loss_curve"][-1] < 0.01 * report["loss_curve"][0]
    assert report["holdout_vrmse"] < 0.02
    # the representation error in normalised units: the VRMSE scaled by each trajectory's spread
    assert 0 < report["holdout_rmse"] < report["holdout_vrmse"] * np.sqrt(np.var(truth / truth.std())) * 2
    assert fit.cores.shape == (4, 6, 3, 3)
    # normaliser from the training entries (a 10% sample): close to the field's mean / std
    assert abs(fit.normalizer.mean - truth.mean()) < 0.1 * truth.std()
    assert fit.normalizer.std == pytest.approx(float(truth.std()), rel=0.1)


def test_masks_and_fit_are_deterministic_in_the_key(tucker_ds, capsys):
    cfg = dataclasses.replace(FAST, epochs=100, holdout_fraction=0.0)  # compiled as in the TV test
    f1, r1 = fit_ftm(tucker_ds, (3, 3), key=jax.random.key(5), config=cfg, progress=True)
    assert "loss=" in capsys.readouterr().err  # the progress bar shows the running loss
    f2, r2 = fit_ftm(tucker_ds, (3, 3), key=jax.random.key(5), config=cfg, progress=False)
    f3, r3 = fit_ftm(tucker_ds, (3, 3), key=jax.random.key(6), config=cfg, progress=False)
    np.testing.assert_array_equal(np.asarray(f1.cores), np.asarray(f2.cores))
    assert r1["loss_curve"] == r2["loss_curve"]
    assert r1["n_train_entries"] != r3["n_train_entries"] or r1["loss_curve"] != r3["loss_curve"]


def _relative_roughness(cores: np.ndarray) -> float:
    flat = cores.reshape(cores.shape[0], cores.shape[1], -1)
    steps = np.linalg.norm(np.diff(flat, axis=1), axis=-1).sum(axis=1)
    size = np.linalg.norm(flat, axis=-1).sum(axis=1)
    return float(np.mean(steps / size))


def test_tv_term_lowers_temporal_roughness(tucker_ds):
    cfg = dataclasses.replace(FAST, epochs=100, holdout_fraction=0.0)
    plain, _ = fit_ftm(tucker_ds, (3, 3), key=jax.random.key(1), config=cfg, progress=False)
    smooth, rep = fit_ftm(tucker_ds, (3, 3), key=jax.random.key(1),
                          config=dataclasses.replace(cfg, beta_tv=0.05), progress=False)
    r_plain = _relative_roughness(np.asarray(plain.cores))
    r_smooth = _relative_roughness(np.asarray(smooth.cores))
    assert r_smooth < 0.7 * r_plain, (r_plain, r_smooth)
    # and the decoded fields change less from one time stamp to the next
    d_plain = np.abs(np.diff(plain.decode(), axis=1)).mean()
    d_smooth = np.abs(np.diff(smooth.decode(), axis=1)).mean()
    assert d_smooth < d_plain


def test_fit_refuses_bad_input(tucker_ds):
    with pytest.raises(InputError, match="key"):
        fit_ftm(tucker_ds, (3, 3), key=0, config=FAST, progress=False)
    with pytest.raises(InputError, match="ds"):
        fit_ftm(tucker_ds["field"], (3, 3), key=jax.random.key(0), progress=False)
    with pytest.raises(InputError, match="config"):
        fit_ftm(tucker_ds, (3, 3), key=jax.random.key(0), config={"epochs": 3}, progress=False)


# --- encoding ------------------------------------------------------------------------------------


def test_encode_recovers_cores_of_a_known_model(small_model):
    """Exact data from a known core sequence: encode returns that core sequence."""
    m = small_model
    cores = jax.random.normal(jax.random.key(4), (3, 3, 4, 2))
    grids = [np.linspace(0, 1, 7), np.linspace(-1, 2, 6), np.linspace(10, 30, 5)]
    field = np.asarray(decode_grid(m, cores, grids))
    norm = Normalizer(mean=5.0, std=2.0)
    pts = grid_points(grids)
    times = np.array([0.0, 0.5, 2.0])
    obs = ObservationSet(value=norm.inverse(field.reshape(3, -1)).reshape(-1), time=np.repeat(times, len(pts)),
                         coords=np.tile(pts, (3, 1)), space_dims=("a", "b", "c"))
    est = encode(m, obs, times=times, normalizer=norm, ridge=1e-8)
    np.testing.assert_allclose(np.asarray(est), np.asarray(cores), atol=2e-3)
    # a time stamp with no observations gets the zero (ridge) solution
    est4 = encode(m, obs, times=np.array([0.0, 0.5, 1.0, 2.0]), normalizer=norm, ridge=1e-8)
    np.testing.assert_array_equal(np.asarray(est4[2]), 0.0)
    np.testing.assert_allclose(np.asarray(est4[3]), np.asarray(cores[2]), atol=2e-3)


def test_encode_recovers_a_training_trajectory(tucker_ds, tucker_fit):
    fit, report = tucker_fit
    b = 1
    obs = full_grid_observations(tucker_ds, b)
    est = encode(fit.model, obs, times=fit.times, normalizer=fit.normalizer, ridge=1e-6)
    dec = fit.normalizer.inverse(np.asarray(decode_grid(fit.model, est, fit.grids)))
    truth = tucker_ds["field"].values[b]
    fitted = fit.decode()[b]
    # the least-squares cores fit the full grid at least as well as the cores fitted on 10%
    assert vrmse(truth, dec) <= report["full_vrmse_per_trajectory"][b] + 1e-4
    # and describe the same field (cores are identifiable only through what they decode to)
    assert vrmse(fitted, dec) < 0.02


def test_encode_smoothness_matches_dense_solve():
    rng = np.random.default_rng(0)
    m_t, d = 5, 4
    a = rng.normal(size=(m_t, 6, d))
    a[2] = 0.0  # one time stamp without observations
    gram = np.einsum("tpi,tpj->tij", a, a)
    rhs = rng.normal(size=(m_t, d))
    ridge, s = 0.1, 0.7
    big = np.zeros((m_t * d, m_t * d))
    for t in range(m_t):
        n_nb = (t > 0) + (t < m_t - 1)
        big[t * d:(t + 1) * d, t * d:(t + 1) * d] = gram[t] + (ridge + s * n_nb) * np.eye(d)
        if t + 1 < m_t:
            big[t * d:(t + 1) * d, (t + 1) * d:(t + 2) * d] = -s * np.eye(d)
            big[(t + 1) * d:(t + 2) * d, t * d:(t + 1) * d] = -s * np.eye(d)
    expected = np.linalg.solve(big, rhs.reshape(-1)).reshape(m_t, d)
    with jax.enable_x64(True):
        got = np.asarray(_solve_coupled(jnp.asarray(gram), jnp.asarray(rhs), jnp.asarray(ridge), jnp.asarray(s)))
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-12)
    assert np.abs(got[2]).max() > 0  # the empty time stamp borrows from its neighbours


def test_encode_noise_scale_equals_rescaled_ridge(small_model):
    m = small_model
    rng = np.random.default_rng(1)
    pts = np.column_stack([rng.uniform(0, 1, 30), rng.uniform(-1, 2, 30), rng.uniform(10, 30, 30)])
    obs = ObservationSet(value=rng.normal(size=30), time=np.repeat([0.0, 1.0], 15), coords=pts,
                         space_dims=("a", "b", "c"))
    norm = Normalizer(mean=0.0, std=2.0)
    a = encode(m, obs, times=[0.0, 1.0], normalizer=norm, ridge=0.3, noise_scale=0.5)
    # s = 0.5 / 2 = 0.25 in normalised units: the objective is the ridge-0.3 * s^2 one times 1/s^2
    b = encode(m, obs, times=[0.0, 1.0], normalizer=norm, ridge=0.3 * 0.25**2)
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)


def test_encode_refuses_bad_input(small_model):
    m = small_model
    norm = Normalizer(mean=0.0, std=1.0)
    pts = np.array([[0.5, 0.0, 20.0], [0.2, 1.0, 15.0]])
    obs = ObservationSet(value=np.ones(2), time=np.array([0.0, 1.0]), coords=pts, space_dims=("a", "b", "c"))
    with pytest.raises(InputError, match="times"):
        encode(m, obs, times=[0.0, 0.5], normalizer=norm)  # t = 1 is not on the grid
    with pytest.raises(InputError, match="ridge"):
        encode(m, obs, times=[0.0, 1.0], normalizer=norm, ridge=0.0)
    with pytest.raises(InputError, match="smoothness"):
        encode(m, obs, times=[0.0, 1.0], normalizer=norm, smoothness=-1.0)
    with pytest.raises(InputError, match="normalizer"):
        encode(m, obs, times=[0.0, 1.0], normalizer={"mean": 0, "std": 1})
    wrong_dims = ObservationSet(value=np.ones(2), time=np.array([0.0, 1.0]), coords=pts, space_dims=("a", "c", "b"))
    with pytest.raises(InputError, match="space dims"):
        encode(m, wrong_dims, times=[0.0, 1.0], normalizer=norm)
    far = ObservationSet(value=np.ones(2), time=np.array([0.0, 1.0]), coords=pts + np.array([0.0, 0.0, 12.0]),
                         space_dims=("a", "b", "c"))
    with pytest.raises(InputError, match="obs.coords"):
        encode(m, far, times=[0.0, 1.0], normalizer=norm)
    with pytest.warns(ExtrapolationWarning):
        mild = ObservationSet(value=np.ones(2), time=np.array([0.0, 1.0]), coords=pts + np.array([0.0, 0.0, 10.5]),
                              space_dims=("a", "b", "c"))
        encode(m, mild, times=[0.0, 1.0], normalizer=norm)


# --- bundles and the command line ------------------------------------------------------------------


def test_save_load_gives_identical_outputs(tmp_path, tucker_ds, tucker_fit):
    fit, _ = tucker_fit
    run_dir = save_run(tmp_path / "run", fit)
    loaded = load_run(run_dir)
    np.testing.assert_array_equal(np.asarray(loaded.cores), np.asarray(fit.cores))
    np.testing.assert_array_equal(loaded.decode(), fit.decode())
    pts = np.array([[0.3, 0.1], [1.7, -0.8]])
    np.testing.assert_array_equal(np.asarray(design_rows(loaded.model, pts)), np.asarray(design_rows(fit.model, pts)))
    assert loaded.config == fit.config
    assert loaded.normalizer == fit.normalizer
    assert loaded.time_domain == fit.time_domain
    np.testing.assert_array_equal(loaded.times, fit.times)
    np.testing.assert_array_equal(loaded.trajectory_ids, fit.trajectory_ids)
    assert loaded.model.space_dims == ("x", "y") and loaded.model.ranks == (3, 3)
    with pytest.raises(InputError, match="run_dir"):
        save_run(run_dir, fit)
    save_run(run_dir, fit, overwrite=True)
    assert load_run(run_dir).normalizer == fit.normalizer


def test_run_records_the_data_units_without_extra(tmp_path, tucker_ds, tucker_fit):
    """fit_ftm carries the field collection's units and names; save_run stores them where
    open_run reads its provenance (sections.ftm.info.extra), and reconstruct labels with them."""
    from inference.reconstruct import open_run

    fit, report = tucker_fit
    expected = {"units": "K", "long_name": "tucker field", "coord_units": {"time": "s", "x": "m", "y": "m"},
                "simulator": "test-tucker",
                # the fit's own error at a point, which reconstruct adds to a given noise
                "representation_error": {"std": report["holdout_rmse"],
                                         "source": "RMSE on held-out entries at fit time"}}
    assert fit.metadata == expected
    run_dir = save_run(tmp_path / "run", fit)
    info = json.loads((run_dir / MANIFEST).read_text())["sections"]["ftm"]["info"]
    assert info["extra"] == expected
    assert open_run(run_dir).provenance == expected
    assert load_run(run_dir).metadata == expected
    # extra= adds provenance and may replace a recorded key
    run_dir = save_run(tmp_path / "run2", fit, extra={"seed": 4, "units": "degC"})
    assert open_run(run_dir).provenance == {**expected, "seed": 4, "units": "degC"}
    # a run saved again from a loaded one keeps them; data without units records ""
    assert open_run(save_run(tmp_path / "run3", load_run(tmp_path / "run"))).provenance == expected
    bare = tucker_ds.copy(deep=True)
    bare["field"].attrs.pop("units")
    bare["x"].attrs.pop("units")
    from sdift_prob.data.fields import field_metadata

    meta = field_metadata(bare)
    assert meta["coord_units"]["x"] == "" and meta["coord_units"]["y"] == "m"


def test_load_run_refuses_tampered_or_incompatible_bundles(tmp_path, tucker_fit):
    fit, _ = tucker_fit
    run_dir = save_run(tmp_path / "run", fit)
    manifest_path = run_dir / MANIFEST
    manifest = json.loads(manifest_path.read_text())
    manifest["sections"]["ftm"]["info"]["ftm_format"] = 99
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(FormatError, match="format 99"):
        load_run(run_dir)
    manifest["sections"]["ftm"]["info"]["ftm_format"] = 1
    manifest_path.write_text(json.dumps(manifest))
    load_run(run_dir)
    with open(run_dir / "cores.npz", "r+b") as fh:
        fh.seek(100)
        byte = fh.read(1)
        fh.seek(100)
        fh.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(FormatError, match="cores.npz.*checksum"):
        load_run(run_dir)


def test_fit_ftm_command(tmp_path, tucker_ds):
    ds = assign_split(tucker_ds, n_test=1, key=jax.random.key(0))
    data = save_fields(ds, tmp_path / "data.nc")
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    fit_ftm_cmd.register(sub)
    out = tmp_path / "run"
    common = ["--width", "16", "--no-progress"]
    args = parser.parse_args(["fit-ftm", str(data), "--ranks", "3", "3", "--out", str(out), "--epochs", "2",
                              "--seed", "3", *common])
    assert args.func(args) == 0
    loaded = load_run(out)
    train_ids = ds["trajectory"].values[ds["split"].values == "train"]
    np.testing.assert_array_equal(loaded.trajectory_ids, train_ids)
    extra = json.loads((out / MANIFEST).read_text())["sections"]["ftm"]["info"]["extra"]
    assert extra["units"] == "K" and extra["coord_units"] == {"time": "s", "x": "m", "y": "m"}
    assert extra["seed"] == 3 and extra["data"] == str(data) and "fit" in extra
    args = parser.parse_args(["fit-ftm", str(data), "--ranks", "3", "--out", str(tmp_path / "r2"), "--epochs", "1",
                              "--no-progress"])
    with pytest.raises(InputError, match="--ranks"):
        args.func(args)
    args = parser.parse_args(["fit-ftm", str(data), "--ranks", "3", "3", "--out", str(out), "--epochs", "1",
                              "--no-progress"])
    with pytest.raises(InputError, match="exist"):
        args.func(args)
    # explicit ids (any split); same shapes as above, so the compiled step is reused
    ids = [int(i) for i in ds["trajectory"].values[:3]]
    args = parser.parse_args(["fit-ftm", str(data), "--ranks", "3", "3", "--out", str(tmp_path / "r3"),
                              "--train", ",".join(map(str, ids)), "--steps", "2", *common])
    assert args.func(args) == 0
    np.testing.assert_array_equal(load_run(tmp_path / "r3").trajectory_ids, ids)
    args = parser.parse_args(["fit-ftm", str(data), "--ranks", "3", "3", "--out", str(tmp_path / "r4"),
                              "--train", "0,9", "--no-progress"])
    with pytest.raises(InputError, match="unknown"):
        args.func(args)
