import argparse

import jax
import numpy as np
import pytest

from sdift_prob.commands import observe
from sdift_prob.data import (
    Normalizer,
    ObservationSet,
    assign_split,
    make_field_dataset,
    sample_observations,
    save_fields,
    select_trajectory,
)
from sdift_prob.errors import FormatError, InputError


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    rng = np.random.default_rng(0)
    ds = make_field_dataset(
        20.0 + 3.0 * rng.normal(size=(3, 5, 6, 4)), np.linspace(0.0, 4.0, 5),
        {"x": np.linspace(0.0, 5.0, 6), "z": np.array([0.0, 5.0, 20.0, 50.0])},
        units="degC", long_name="temperature", coord_units={"time": "day", "x": "km", "z": "m"},
        provenance={"simulator": "toy", "parameters": {"a": 1}, "seed": 11},
    )
    ds = assign_split(ds, n_test=1, key=jax.random.key(0))
    path = tmp_path_factory.mktemp("data") / "fields.nc"
    save_fields(ds, path)
    return path, ds


def parse(argv):
    parser = argparse.ArgumentParser(prog="sdift")
    observe.register(parser.add_subparsers(dest="command"))
    return parser.parse_args(["observe", *argv])


def test_observe_writes_the_sampled_set(tmp_path, data_file, capsys):
    path, ds = data_file
    out = tmp_path / "obs.nc"
    args = parse([str(path), "--trajectory", "2", "--rho", "0.25", "--setting", "2", "--noise", "gaussian",
                  "--noise-scale", "0.5", "--noise-scale-normalised", "--seed", "4", "--out", str(out)])
    assert args.func(args) == 0
    obs = ObservationSet.load(out)
    scale = 0.5 * Normalizer.from_fields(ds).std
    expected = sample_observations(jax.random.key(4), select_trajectory(ds, 2), rho=0.25, setting=2,
                                   noise_scale=scale)
    np.testing.assert_array_equal(obs.value, expected.value)
    np.testing.assert_array_equal(obs.coords, expected.coords)
    np.testing.assert_allclose(obs.noise_scale, scale)
    np.testing.assert_array_equal(obs.counts(ds["time"].values), [6, 0, 6, 0, 6])
    assert obs.attrs["trajectory"] == 2 and obs.attrs["seed"] == 4 and obs.attrs["source_seed"] == 11
    assert obs.attrs["trajectory_split"] == str(ds["split"].values[2])
    printed, err = capsys.readouterr()
    assert printed == "" and err.startswith(f"wrote {out}: ")  # the human summary goes to stderr
    with pytest.raises(InputError, match="^--out: expected a path that does not exist yet"):  # refused before work
        args.func(args)
    args = parse([str(path), "--trajectory", "2", "--rho", "0.5", "--seed", "4", "--out", str(out), "--overwrite"])
    assert args.func(args) == 0
    assert ObservationSet.load(out).n_points == 5 * 12


def test_observe_errors(tmp_path, data_file):
    path, _ = data_file
    out = tmp_path / "o.nc"
    with pytest.raises(InputError, match="index"):
        observe.run(parse([str(path), "--trajectory", "3", "--rho", "0.1", "--seed", "0", "--out", str(out)]))
    with pytest.raises(InputError, match="rho"):
        observe.run(parse([str(path), "--trajectory", "0", "--seed", "0", "--out", str(out)]))
    with pytest.raises(InputError, match="seed"):
        observe.run(parse([str(path), "--trajectory", "0", "--rho", "0.1", "--seed", "-1", "--out", str(out)]))
    foreign = tmp_path / "foreign.nc"
    foreign.write_bytes(b"not netcdf")
    with pytest.raises(FormatError, match="foreign.nc"):
        observe.run(parse([str(foreign), "--trajectory", "0", "--rho", "0.1", "--seed", "0", "--out", str(out)]))
    assert not out.exists()
    with pytest.raises(SystemExit):
        parse([str(path), "--trajectory", "0", "--rho", "0.1", "--seed", "0", "--out", str(out), "--noise", "x"])
