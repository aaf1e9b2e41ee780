"""Encoding full-grid trajectories through a fixed FTM basis (`encode_grid`, `sdift encode`)."""

from __future__ import annotations

import argparse
import json

import jax
import numpy as np
import pytest

from sdift_prob.commands import encode as encode_cmd
from sdift_prob.data.fields import Normalizer, assign_split, make_field_dataset, save_fields
from sdift_prob.data.observations import ObservationSet
from sdift_prob.errors import InputError
from sdift_prob.ftm import FTMConfig, FTMFit, FunctionalTucker, core_provenance, encode, encode_grid, load_run, save_run
from sdift_prob.ftm.encode import decode_grid_numpy
from sdift_prob.run import MANIFEST, add_artifact

GRIDS = (np.linspace(0.0, 1.0, 9), np.linspace(-1.0, 2.0, 7), np.linspace(10.0, 30.0, 6))
NORM = Normalizer(mean=5.0, std=2.0)


@pytest.fixture(scope="module")
def model3():
    return FunctionalTucker((3, 4, 2), domain_lo=(0.0, -1.0, 10.0), domain_hi=(1.0, 2.0, 30.0),
                            space_dims=("a", "b", "c"), width=16, key=jax.random.key(3))


def test_grid_encoder_recovers_known_cores_exactly(model3):
    cores = np.asarray(jax.random.normal(jax.random.key(4), (2, 3, 3, 4, 2)), np.float64)
    field = decode_grid_numpy(model3, cores, GRIDS, normalizer=NORM)
    est = encode_grid(model3, field, GRIDS, normalizer=NORM)
    assert est.shape == cores.shape and est.dtype == np.float64
    np.testing.assert_allclose(est, cores, rtol=0, atol=1e-8)
    # one frame alone, no leading axes
    np.testing.assert_allclose(encode_grid(model3, field[1, 2], GRIDS, normalizer=NORM), cores[1, 2], atol=1e-8)


def test_grid_encoder_matches_the_generic_encoder(model3):
    """Same objective as `encode` (ridge, no smoothness) on noisy full-grid data: same cores."""
    rng = np.random.default_rng(0)
    cores = rng.normal(size=(3, 3, 4, 2))
    field = decode_grid_numpy(model3, cores, GRIDS, normalizer=NORM) + rng.normal(scale=0.5, size=(3, 9, 7, 6))
    times = np.array([0.0, 0.5, 2.0])
    pts = np.array(np.meshgrid(*GRIDS, indexing="ij")).reshape(3, -1).T
    obs = ObservationSet(value=field.reshape(-1), time=np.repeat(times, len(pts)), coords=np.tile(pts, (3, 1)),
                         space_dims=("a", "b", "c"))
    for ridge in (1e-3, 5.0):
        generic = np.asarray(encode(model3, obs, times=times, normalizer=NORM, ridge=ridge))
        grid = encode_grid(model3, field, GRIDS, normalizer=NORM, ridge=ridge)
        np.testing.assert_allclose(grid, generic, rtol=0, atol=2e-4 * np.abs(generic).max())


def test_grid_encoder_pseudo_inverse_on_a_rank_deficient_basis():
    """More ranks than grid points: the minimum-norm least-squares cores, which still fit exactly."""
    m = FunctionalTucker((4, 2), domain_lo=(0.0, 0.0), domain_hi=(1.0, 1.0), space_dims=("x", "y"), width=16,
                         key=jax.random.key(1))
    grids = (np.linspace(0, 1, 3), np.linspace(0, 1, 5))
    field = np.random.default_rng(1).normal(size=(2, 3, 5))
    basis = decode_grid_numpy(m, np.eye(8).reshape(8, 4, 2), grids, normalizer=Normalizer(0.0, 1.0))
    a = basis.reshape(8, -1).T  # the Kronecker design of one frame
    want = np.linalg.lstsq(a, field.reshape(2, -1).T, rcond=None)[0].T.reshape(2, 4, 2)
    est = encode_grid(m, field, grids, normalizer=Normalizer(0.0, 1.0))
    np.testing.assert_allclose(est, want, atol=1e-6)


def test_grid_encoder_names_bad_arguments(model3):
    field = np.zeros((2, 9, 7, 6))
    with pytest.raises(InputError, match="^fields:"):
        encode_grid(model3, field[..., :5], GRIDS, normalizer=NORM)
    bad = field.copy()
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(InputError, match="^fields:.*non-finite"):
        encode_grid(model3, bad, GRIDS, normalizer=NORM)
    with pytest.raises(InputError, match="^ridge:"):
        encode_grid(model3, field, GRIDS, normalizer=NORM, ridge=-1.0)
    with pytest.raises(InputError, match="^normalizer:"):
        encode_grid(model3, field, GRIDS, normalizer=None)
    with pytest.raises(InputError, match="^grids"):
        encode_grid(model3, field, GRIDS[:2], normalizer=NORM)


# ---- the `sdift encode` command ------------------------------------------------------------------


def _known_run(tmp_path, n_traj: int = 7, fitted=(0, 1, 2), fitted_scale: float = 1.0):
    """A run whose basis is a known network, and a collection whose fields are exact decodes of
    known cores, so every encoded core is known."""
    m = FunctionalTucker((3, 2), domain_lo=(0.0, -1.0), domain_hi=(2.0, 1.0), space_dims=("x", "y"), width=16,
                         key=jax.random.key(7))
    grids = (np.linspace(0.0, 2.0, 10), np.linspace(-1.0, 1.0, 8))
    times = np.linspace(0.0, 1.0, 5)
    cores = np.asarray(jax.random.normal(jax.random.key(8), (n_traj, 5, 3, 2)), np.float32)
    values = decode_grid_numpy(m, cores, grids, normalizer=NORM)
    ds = make_field_dataset(values, times, {"x": grids[0], "y": grids[1]}, units="K", long_name="f",
                            coord_units={"time": "s", "x": "m", "y": "m"},
                            provenance={"simulator": "test", "parameters": {}, "seed": 0})
    ds = assign_split(ds, n_test=2, key=jax.random.key(0))
    data = save_fields(ds, tmp_path / "data.nc")
    idx = list(fitted)
    fit = FTMFit(model=m, cores=cores[idx] * fitted_scale, times=times, normalizer=NORM, time_domain=(0.0, 1.0),
                 trajectory_ids=np.asarray(ds["trajectory"].values)[idx], config=FTMConfig(ranks=(3, 2), width=16),
                 grids=grids)
    run = save_run(tmp_path / "run", fit)
    return run, data, ds, cores


def _command(argv):
    parser = argparse.ArgumentParser()
    encode_cmd.register(parser.add_subparsers())
    args = parser.parse_args(["encode", *argv])
    return args.func(args)


def test_encode_command_appends_known_cores_with_provenance(tmp_path, capsys):
    run, data, ds, cores = _known_run(tmp_path)
    before = load_run(run)
    assert core_provenance(run) == [{"method": "fit", "n": 3, "ids": [0, 1, 2]}]
    assert _command([str(run), "--data", str(data), "--ids", "all", "--skip-existing", "--chunk", "3",
                     "--ridge", "0"]) == 0
    after = load_run(run)
    np.testing.assert_array_equal(after.trajectory_ids, np.arange(7))
    np.testing.assert_array_equal(np.asarray(after.cores[:3]), np.asarray(before.cores))  # fitted cores untouched
    np.testing.assert_allclose(np.asarray(after.cores[3:]), cores[3:], atol=1e-5)
    prov = core_provenance(run)
    assert [p["method"] for p in prov] == ["fit", "encode_grid"]
    assert prov[1]["ids"] == [3, 4, 5, 6] and prov[1]["data"] == str(data) and prov[1]["vrmse_max"] < 1e-5
    info = json.loads((run / MANIFEST).read_text())["sections"]["ftm"]["info"]
    assert info["n_trajectories"] == 7 and info["cores_shape"] == [7, 5, 3, 2]
    # the model file is the same bytes; a rerun has nothing left to do
    assert _command([str(run), "--data", str(data), "--ids", "0-6", "--skip-existing"]) == 0
    assert "nothing to encode" in capsys.readouterr().err
    assert load_run(run).cores.shape[0] == 7


def test_encode_command_never_overwrites_and_names_arguments(tmp_path, monkeypatch):
    run, data, ds, _ = _known_run(tmp_path)
    manifest = (run / MANIFEST).read_bytes()
    with pytest.raises(InputError, match="^--ids:.*already in the run: 1, 2"):
        _command([str(run), "--data", str(data), "--ids", "1-4"])
    with pytest.raises(InputError, match="^--ids:.*unknown 99"):
        _command([str(run), "--data", str(data), "--ids", "3,99"])
    with pytest.raises(InputError, match="^--ids:"):
        _command([str(run), "--data", str(data), "--ids", "5-3"])
    with pytest.raises(InputError, match="^--chunk:"):
        _command([str(run), "--data", str(data), "--chunk", "0"])
    with pytest.raises(InputError, match="^--ridge:"):
        _command([str(run), "--data", str(data), "--ridge", "-1"])
    with pytest.raises(InputError, match="^RUN_DIR:"):
        _command([str(tmp_path / "nope"), "--data", str(data)])
    other = save_fields(ds.isel(time=slice(0, 4)), tmp_path / "short.nc")
    with pytest.raises(InputError, match="^--data:.*time stamps"):
        _command([str(run), "--data", str(other), "--ids", "3"])
    # a failure while writing leaves the run as it was
    import sdift_prob.ftm.bundle as bundle

    def broken(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(bundle, "add_artifact", broken)
    with pytest.raises(OSError, match="disk full"):
        _command([str(run), "--data", str(data), "--ids", "3"])
    monkeypatch.undo()
    assert (run / MANIFEST).read_bytes() == manifest and load_run(run).cores.shape[0] == 3
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".run")) == []
    # a run with a prior: its cores are not changed under it
    add_artifact(run, "prior", {"prior.eqx": lambda p: p.write_bytes(b"x")}, {})
    with pytest.raises(InputError, match="^RUN_DIR:.*train-prior"):
        _command([str(run), "--data", str(data), "--ids", "3"])


def test_encode_command_warns_about_two_kinds_of_core_and_replaces_on_request(tmp_path, capsys):
    # fitted cores 10x the encoded ones' spread: the gauge mismatch a near-singular basis gives
    run, data, ds, cores = _known_run(tmp_path, fitted_scale=10.0)
    assert _command([str(run), "--data", str(data), "--ids", "3,4", "--ridge", "0"]) == 0
    err = capsys.readouterr().err
    assert "WARNING: the encoded cores' std" in err and "--replace-fitted" in err
    assert "warning" in core_provenance(run)[1]
    assert _command([str(run), "--data", str(data), "--ids", "all", "--replace-fitted", "--ridge", "0"]) == 0
    after = load_run(run)
    np.testing.assert_array_equal(after.trajectory_ids, [0, 1, 2, 3, 4, 5, 6])
    np.testing.assert_allclose(np.asarray(after.cores), cores, atol=1e-5)  # every core from the encoder now
    prov = core_provenance(run)
    assert prov[2]["replaced"] == [0, 1, 2, 3, 4] and prov[2]["ids"] == list(range(7))
