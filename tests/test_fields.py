import json

import jax
import numpy as np
import pytest
import xarray as xr

from sdift_prob.data import (
    Normalizer,
    assign_split,
    load_fields,
    make_field_dataset,
    save_fields,
    space_dims,
    test_part,
    train_part,
    validate_field_dataset,
)
from sdift_prob.errors import FormatError, InputError

PROV = {"simulator": "toy", "parameters": {"nu": 0.01, "shape": [3, 2]}, "seed": 7}
UNITS = {"time": "s", "x": "m", "z": "m"}


def toy(dtype=np.float32, b=6, seed=0):
    rng = np.random.default_rng(seed)
    values = (10.0 + rng.normal(size=(b, 4, 3, 2))).astype(dtype)
    return make_field_dataset(
        values, np.array([0.0, 0.5, 1.25, 2.0]), {"x": np.array([0.0, 1.0, 2.5]), "z": [-10.0, 0.0]},
        units="K", long_name="temperature", coord_units=UNITS, provenance=PROV,
    )


def test_make_field_dataset_layout():
    ds = toy()
    assert ds["field"].dims == ("trajectory", "time", "x", "z")
    assert space_dims(ds) == ("x", "z")
    assert ds["x"].attrs == {"units": "m", "long_name": "x"}
    assert ds["time"].dtype == np.float64
    assert ds.attrs["sdift_kind"] == "field_collection" and ds.attrs["sdift_format_version"] == 1
    assert json.loads(ds.attrs["parameters"]) == PROV["parameters"]
    assert ds.attrs["seed"] == 7 and ds.attrs["simulator"] == "toy"
    assert "split" not in ds.coords


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_round_trip_is_exact(tmp_path, dtype):
    ds = assign_split(toy(dtype), n_test=2, key=jax.random.key(3))
    # Simulators may add companion variables (e.g. temperature beside sound speed).
    ds["other"] = ds["field"].dims, (ds["field"].values * 2).astype(dtype), {"units": "K", "long_name": "o"}
    path = save_fields(ds, tmp_path / "f.nc")
    back = load_fields(path)
    assert back.identical(ds)
    assert back["field"].dtype == dtype
    np.testing.assert_array_equal(back["field"].values, ds["field"].values)
    assert back.attrs == ds.attrs and back["time"].attrs == ds["time"].attrs
    assert list(back["split"].values) == list(ds["split"].values)


def test_save_refuses_existing_and_failed_write_leaves_nothing(tmp_path):
    ds = assign_split(toy(), n_test=1, key=jax.random.key(0))
    path = tmp_path / "f.nc"
    save_fields(ds, path)
    before = path.read_bytes()
    with pytest.raises(InputError, match="already exists"):
        save_fields(ds, path)
    save_fields(ds, path, overwrite=True)
    # A dataset that fails validation is refused before anything is written.
    bad = ds.copy()
    bad.attrs["sdift_kind"] = "other"
    with pytest.raises(InputError, match="sdift_kind"):
        save_fields(bad, tmp_path / "g.nc")
    assert not (tmp_path / "g.nc").exists()
    # A failure while writing leaves no file (and no temporary) behind.
    weird = ds.copy()
    weird.attrs["note"] = {"nested": "dict"}  # netCDF cannot store a dict attr
    with pytest.raises(Exception):
        save_fields(weird, tmp_path / "h.nc")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.nc"]
    assert len(before) > 0


def test_load_rejects_foreign_and_corrupt_files(tmp_path):
    foreign = tmp_path / "foreign.nc"
    xr.Dataset({"a": ("x", np.arange(3.0))}).to_netcdf(foreign, engine="h5netcdf")
    with pytest.raises(FormatError, match="not an sdift field collection"):
        load_fields(foreign)
    ds = assign_split(toy(), n_test=1, key=jax.random.key(0))
    good = save_fields(ds, tmp_path / "good.nc")
    truncated = tmp_path / "truncated.nc"
    truncated.write_bytes(good.read_bytes()[:500])
    with pytest.raises(FormatError, match="truncated.nc"):
        load_fields(truncated)
    text = tmp_path / "text.nc"
    text.write_text("hello")
    with pytest.raises(FormatError, match="not a readable netCDF"):
        load_fields(text)
    with pytest.raises(InputError, match="path"):
        load_fields(tmp_path / "missing.nc")


def test_assign_split_disjoint_covering_deterministic():
    ds = toy(b=10)
    a = assign_split(ds, n_test=3, key=jax.random.key(5))
    b = assign_split(ds, n_test=3, key=jax.random.key(5))
    c = assign_split(ds, n_test=3, key=jax.random.key(6))
    np.testing.assert_array_equal(a["split"].values, b["split"].values)
    assert (a["split"].values == "test").sum() == 3
    train_ids = set(train_part(a)["trajectory"].values.tolist())
    test_ids = set(test_part(a)["trajectory"].values.tolist())
    assert train_ids.isdisjoint(test_ids) and train_ids | test_ids == set(range(10))
    # Different keys give (for this pair) different splits: the key is what decides.
    assert not np.array_equal(a["split"].values, c["split"].values)
    with pytest.raises(InputError, match="n_test"):
        assign_split(ds, n_test=10, key=jax.random.key(0))
    with pytest.raises(InputError, match="key"):
        assign_split(ds, n_test=1, key=5)
    with pytest.raises(InputError, match="test"):
        test_part(assign_split(ds, n_test=0, key=jax.random.key(0)))


def test_normalizer_train_only_and_inverse():
    ds = assign_split(toy(np.float64), n_test=2, key=jax.random.key(1))
    ds["field"].values[np.asarray(ds["split"].values) == "test"] += 1000.0  # test data must not leak
    norm = Normalizer.from_fields(ds)
    train = train_part(ds)["field"].values
    assert norm.mean == pytest.approx(train.mean(), rel=1e-12)
    assert norm.std == pytest.approx(train.std(), rel=1e-12)
    x = ds["field"].values
    np.testing.assert_allclose(norm.inverse(norm.forward(x)), x, rtol=1e-14, atol=1e-12)
    z = norm.forward(train)
    assert abs(z.mean()) < 1e-12 and z.std() == pytest.approx(1.0, rel=1e-12)
    assert Normalizer.from_dict(json.loads(json.dumps(norm.to_dict()))) == norm
    with pytest.raises(InputError, match="std"):
        Normalizer(mean=0.0, std=0.0)
    with pytest.raises(InputError, match="mean"):
        Normalizer(mean=float("nan"), std=1.0)
    with pytest.raises(InputError, match="'mean' and 'std'"):
        Normalizer.from_dict({"mean": 1.0})


def _fresh():
    return toy(np.float64)


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda ds: ds.rename({"field": "temp"}), "'field'"),
        (lambda ds: ds.transpose("time", "trajectory", "x", "z"), r"field'\]\.dims"),
        (lambda ds: ds.assign_coords(x=[0.0, 2.0, 1.0]), r"coords\['x'\].*increasing.*decreasing"),
        (lambda ds: ds.assign_coords(x=[0.0, 1.0, 1.0]), r"coords\['x'\].*duplicate"),
        (lambda ds: ds.drop_vars("z"), "coordinate for dim 'z'"),
        (lambda ds: ds.assign_attrs(sdift_kind="observation_set"), "sdift_kind"),
        (lambda ds: ds.assign_attrs(parameters="{not json"), "JSON"),
        (lambda ds: ds.drop_attrs(deep=False), "sdift_kind"),
    ],
)
def test_validate_rejects(change, match):
    with pytest.raises(InputError, match=match):
        validate_field_dataset(change(_fresh()), require_split=False)


def test_validate_nan_split_and_units():
    ds = _fresh()
    ds["field"].values[0, 1, 2, 0] = np.nan
    ds["field"].values[1, 1, 2, 0] = np.inf
    with pytest.raises(InputError, match=r"field'\].*2 NaN/inf"):
        validate_field_dataset(ds, require_split=False)
    with pytest.raises(InputError, match="split"):
        validate_field_dataset(_fresh())
    bad = _fresh().assign_coords(split=("trajectory", ["train", "valid", "test", "test", "train", "train"]))
    with pytest.raises(InputError, match="valid"):
        validate_field_dataset(bad)
    no_units = _fresh()
    no_units["x"].attrs = {}
    with pytest.raises(InputError, match="units"):
        validate_field_dataset(no_units, require_split=False)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"values": np.zeros((2, 4, 3))}, "values"),
        ({"values": np.zeros((2, 4, 3, 2), dtype=bool)}, "values"),
        ({"time": np.array([0.0, 1.0, 1.0, 2.0])}, "time.*duplicate"),
        ({"time": np.arange(5.0)}, "time.*length 4"),
        ({"space_coords": {"x": np.arange(3.0), "z": np.arange(3.0)}}, r"space_coords\['z'\]"),
        ({"space_coords": {"time": np.arange(3.0), "z": np.arange(2.0)}}, "space_coords"),
        ({"coord_units": {"time": "s", "x": "m"}}, "coord_units.*missing.*'z'"),
        ({"provenance": {"simulator": "toy", "parameters": {}}}, "provenance.*seed"),
        ({"provenance": {"simulator": "toy", "parameters": {"f": object()}, "seed": 1}}, "parameters"),
        ({"provenance": {**PROV, "units": "x"}}, "provenance"),
        ({"provenance": {**PROV, "seed": 1.5}}, "seed"),
    ],
)
def test_make_field_dataset_rejects(kwargs, match):
    base = dict(
        values=np.zeros((2, 4, 3, 2)), time=np.arange(4.0), space_coords={"x": np.arange(3.0), "z": np.arange(2.0)},
        units="K", long_name="t", coord_units=UNITS, provenance=PROV,
    )
    base.update(kwargs)
    with pytest.raises(InputError, match=match):
        make_field_dataset(**base)


def test_nonfinite_values_counted():
    v = np.zeros((2, 4, 3, 2))
    v[0, 0, 0, 0] = np.nan
    with pytest.raises(InputError, match="values.*1 NaN/inf"):
        make_field_dataset(v, np.arange(4.0), {"x": np.arange(3.0), "z": np.arange(2.0)}, units="K",
                           long_name="t", coord_units=UNITS, provenance=PROV)
