"""Corrupted, truncated and edited files: every mutation gives a clear sdift error or a valid load.

A few hundred mutations (byte flips, random overwrites, zeroed blocks, truncation, appended
garbage, deleted files, edited manifest JSON, wrong checksums) of a field collection, an
observation set, a posterior and a run directory. Outcomes are counted per artefact; set
SDIFT_FUZZ_REPORT=path.json to write the counts.

What "valid load" means: the loader's own validation passed. netCDF files carry no checksum of
their own, so a flipped byte in an uncompressed data payload (observation files) can load as a
different but well-formed value; it is counted as `loaded_changed`. Compressed payloads (fields,
posteriors) fail their zlib check instead. Run directories are checksummed (files and manifest),
so any change to them is an error unless the manifest is deliberately re-sealed.
"""

from __future__ import annotations

import collections
import json
import os
import shutil
import warnings
from pathlib import Path

import jax
import numpy as np
import pytest
import xarray as xr

import reliability_helpers as rh
from inference.reconstruct import Run, open_run, reconstruct
from inference.report import load_posterior, save_posterior
from sdift_prob.data.fields import assign_split, load_fields, save_fields
from sdift_prob.data.observations import ObservationSet
from sdift_prob.errors import SdiftError
from sdift_prob.ftm import save_run
from sdift_prob.gpsd import save_prior
from sdift_prob.run import MANIFEST, manifest_digest
from sdift_prob.streaming import TrajectoryReader, open_fields_lazy

COUNTS: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
# h5netcdf's File.close raises (and Python ignores) on some corrupted files after the sdift error
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


@pytest.fixture(scope="module", autouse=True)
def short_probe_timeout():
    """Mutated files that hang the HDF5 library are cut off after 10 s instead of 30 s."""
    old = os.environ.get("SDIFT_PROBE_TIMEOUT")
    os.environ["SDIFT_PROBE_TIMEOUT"] = "10"
    yield
    if old is None:
        os.environ.pop("SDIFT_PROBE_TIMEOUT")
    else:
        os.environ["SDIFT_PROBE_TIMEOUT"] = old


@pytest.fixture(scope="module")
def artefacts(tmp_path_factory, short_probe_timeout):
    root = tmp_path_factory.mktemp("pristine")
    ds = assign_split(rh.collection(), n_test=1, key=jax.random.key(0))
    save_fields(ds, root / "fields.nc")
    obs = rh.simple_obs(ds, trajectory=5)
    obs.save(root / "obs.nc")
    fit, _ = rh.tiny_fit(ds.isel(trajectory=slice(0, 5)))
    prior = rh.untrained_prior(fit)  # untrained is enough
    save_run(root / "run", fit)
    save_prior(root / "run", prior)
    idata = reconstruct(Run(ftm=fit, prior=None), obs, key=jax.random.key(2), sampler="gp", draws=2)
    save_posterior(idata, root / "posterior.nc")
    yield root
    report = os.environ.get("SDIFT_FUZZ_REPORT")
    if report:
        Path(report).write_text(json.dumps({k: dict(v) for k, v in COUNTS.items()}, indent=2, sort_keys=True))


# -- mutations ---------------------------------------------------------------------------------
def mutate_bytes(data: bytes, rng: np.random.Generator) -> tuple[str, bytes]:
    kind = rng.choice(["flip", "overwrite", "zero", "truncate", "append"], p=[0.35, 0.2, 0.15, 0.2, 0.1])
    buf = bytearray(data)
    n = len(buf)
    if kind == "flip":
        for _ in range(int(rng.integers(1, 5))):
            i = int(rng.integers(0, n))
            buf[i] ^= int(rng.integers(1, 256))
    elif kind in ("overwrite", "zero"):
        size = int(rng.integers(8, 257))
        i = int(rng.integers(0, max(1, n - size)))
        block = rng.integers(0, 256, size, dtype=np.uint8).tobytes() if kind == "overwrite" else bytes(size)
        buf[i:i + size] = block[: n - i]
    elif kind == "truncate":
        buf = buf[: int(rng.integers(0, n))]
    else:
        buf += rng.integers(0, 256, int(rng.integers(1, 512)), dtype=np.uint8).tobytes()
    return str(kind), bytes(buf)


def classify(load, check=None) -> str:
    """Run a loader on a mutated file: `error` (an sdift error; `error_hang` when the HDF5 probe
    caught a file the HDF5 library loops on), `loaded` or `loaded_changed`."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            result = load()
        except SdiftError as exc:
            assert str(exc).strip(), "an error must carry a message"
            return "error_hang" if "did not finish" in str(exc) else "error"
    return "loaded" if check is None or check(result) else "loaded_changed"


def run_fuzz(name: str, pristine: Path, tmp: Path, n: int, seed: int, load, check=None) -> None:
    rng = np.random.default_rng(seed)
    data = pristine.read_bytes()
    for i in range(n):
        kind, mutated = mutate_bytes(data, rng)
        target = tmp / f"{i}{pristine.suffix}"
        target.write_bytes(mutated)
        try:
            outcome = classify(lambda: load(target), check)
        except Exception as exc:  # noqa: BLE001 - the point of the test
            pytest.fail(f"{name}: mutation {i} ({kind}) raised a raw {type(exc).__name__}: {exc}")
        COUNTS[name][f"{kind}:{outcome}"] += 1
        target.unlink()


# -- netCDF files ------------------------------------------------------------------------------
def test_field_file_mutations(artefacts, tmp_path):
    pristine = load_fields(artefacts / "fields.nc")

    def same(ds):
        return ds["field"].equals(pristine["field"])

    run_fuzz("fields", artefacts / "fields.nc", tmp_path, 40, 1, load_fields, same)

    def lazy_load(path):
        with open_fields_lazy(path) as ds:
            values = TrajectoryReader(ds["field"]).read(np.arange(ds.sizes["trajectory"]))
        return values

    run_fuzz("fields_lazy", artefacts / "fields.nc", tmp_path, 20, 2, lazy_load,
             lambda v: np.array_equal(v, pristine["field"].values))


def test_observation_file_mutations(artefacts, tmp_path):
    pristine = ObservationSet.load(artefacts / "obs.nc")

    def same(o):
        return (np.array_equal(o.value, pristine.value) and np.array_equal(o.time, pristine.time)
                and np.array_equal(o.coords, pristine.coords))

    run_fuzz("observations", artefacts / "obs.nc", tmp_path, 70, 3, ObservationSet.load, same)  # 61: a hang


def test_posterior_file_mutations(artefacts, tmp_path):
    pristine = load_posterior(artefacts / "posterior.nc")

    def same(idata):
        return sorted(idata.groups()) == sorted(pristine.groups()) and all(
            idata[g].equals(pristine[g]) for g in pristine.groups())

    run_fuzz("posterior", artefacts / "posterior.nc", tmp_path, 25, 4, load_posterior, same)


# -- run directories ---------------------------------------------------------------------------
def _fresh_run(artefacts: Path, tmp: Path, i: int) -> Path:
    target = tmp / f"run{i}"
    shutil.copytree(artefacts / "run", target)
    return target


def _fingerprint(run) -> tuple:
    return (np.asarray(run.ftm.cores).tobytes(), run.ftm.normalizer, tuple(run.ftm.time_domain),
            run.prior.core_mean, run.prior.core_std)


def _random_value(rng: np.random.Generator):
    options = [None, -1, 0, 10**9, 1.5e308, "x", "", [], {}, [1, 2], {"a": 1}, True]
    return options[int(rng.integers(0, len(options)))]


def _json_paths(obj, prefix=()):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield (*prefix, k)
            yield from _json_paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for j, v in enumerate(obj):
            yield (*prefix, j)
            yield from _json_paths(v, (*prefix, j))


def _edit(manifest: dict, rng: np.random.Generator) -> str:
    paths = [p for p in _json_paths(manifest) if p[0] != "manifest_sha256"]
    path = paths[int(rng.integers(0, len(paths)))]
    parent = manifest
    for part in path[:-1]:
        parent = parent[part]
    last = path[-1]
    if rng.random() < 0.25 and isinstance(parent, dict):
        del parent[last]
        return "delete_key"
    parent[last] = _random_value(rng)
    return "replace_value"


def test_run_directory_mutations(artefacts, tmp_path):
    pristine = _fingerprint(open_run(artefacts / "run"))
    rng = np.random.default_rng(5)
    files = sorted(p.name for p in (artefacts / "run").iterdir())
    assert files == ["cores.npz", "ftm.eqx", MANIFEST, "prior.eqx"]

    def outcome_of(run_dir: Path, kind: str, allow_changed: bool = False) -> None:
        try:
            outcome = classify(lambda: open_run(run_dir), lambda r: _fingerprint(r) == pristine)
        except Exception as exc:  # noqa: BLE001
            pytest.fail(f"run dir: mutation {kind} raised a raw {type(exc).__name__}: {exc}")
        if outcome == "loaded_changed" and not allow_changed:
            pytest.fail(f"run dir: mutation {kind} loaded with changed content although it is checksummed")
        COUNTS["run_dir"][f"{kind}:{outcome}"] += 1

    i = 0
    # bytes of each file (the manifest included)
    for _ in range(50):
        run_dir = _fresh_run(artefacts, tmp_path, i := i + 1)
        name = files[int(rng.integers(0, len(files)))]
        kind, mutated = mutate_bytes((run_dir / name).read_bytes(), rng)
        (run_dir / name).write_bytes(mutated)
        outcome_of(run_dir, f"{name}:{kind}")
    # deleted files
    for name in files:
        run_dir = _fresh_run(artefacts, tmp_path, i := i + 1)
        (run_dir / name).unlink()
        outcome_of(run_dir, f"{name}:deleted")
    # manifest JSON edited by hand (its own checksum no longer matches)
    for _ in range(30):
        run_dir = _fresh_run(artefacts, tmp_path, i := i + 1)
        manifest = json.loads((run_dir / MANIFEST).read_text())
        kind = _edit(manifest, rng)
        (run_dir / MANIFEST).write_text(json.dumps(manifest, allow_nan=True))
        outcome_of(run_dir, f"manifest:{kind}")
    # manifest edited and re-sealed (a consistent manifest with wrong content): the deeper
    # checks must still give clear errors; content that nothing validates may load changed
    for _ in range(40):
        run_dir = _fresh_run(artefacts, tmp_path, i := i + 1)
        manifest = json.loads((run_dir / MANIFEST).read_text())
        kind = _edit(manifest, rng)
        try:
            manifest["manifest_sha256"] = manifest_digest(manifest)
        except (TypeError, ValueError):
            continue
        (run_dir / MANIFEST).write_text(json.dumps(manifest))
        outcome_of(run_dir, f"sealed_manifest:{kind}", allow_changed=True)
    # wrong checksums for a file (re-sealed, so only the file check can catch it)
    for name in ("cores.npz", "ftm.eqx", "prior.eqx"):
        run_dir = _fresh_run(artefacts, tmp_path, i := i + 1)
        manifest = json.loads((run_dir / MANIFEST).read_text())
        section = "prior" if name == "prior.eqx" else "ftm"
        manifest["sections"][section]["files"][name] = "0" * 64
        manifest["manifest_sha256"] = manifest_digest(manifest)
        (run_dir / MANIFEST).write_text(json.dumps(manifest))
        outcome_of(run_dir, f"{name}:wrong_checksum")
        assert COUNTS["run_dir"][f"{name}:wrong_checksum:error"] == 1
    total = sum(COUNTS["run_dir"].values())
    assert total >= 120


def test_every_artefact_was_fuzzed(artefacts):
    # runs after the tests above (pytest keeps definition order): the mutations happened, and
    # truncation (which no reader can survive) was always caught
    for name in ("fields", "fields_lazy", "observations", "posterior", "run_dir"):
        counts = COUNTS[name]
        assert sum(counts.values()) > 0, name
        assert sum(v for k, v in counts.items() if ":error" in k) > 0, (name, dict(counts))
        assert not any(k.startswith("truncate:loaded") for k in counts), (name, dict(counts))


def test_hostile_observation_files_through_the_cli(artefacts, tmp_path, capsys):
    """Malformed observation files given to `sdift reconstruct` fail with one line, exit code 1."""
    from sdift_prob import cli

    obs = ObservationSet.load(artefacts / "obs.nc")
    good = obs.to_dataset()
    variants = {
        "nan_values": good.assign(value=("obs", np.where(np.arange(obs.n_points) == 2, np.nan, obs.value))),
        "missing_time": good.drop_vars("time"),
        "string_values": good.assign(value=("obs", np.asarray(["a"] * obs.n_points))),
        "wrong_kind": good.assign_attrs(sdift_kind="field_collection"),
        "bad_dims_json": good.assign_attrs(space_dims="[lat"),
        "unknown_dim": good.assign_attrs(space_dims=json.dumps(["lat", "depth"])),
        "future_version": good.assign_attrs(sdift_format_version=99),
        "off_domain": good.assign(lat=("obs", obs.coords[:, 0] + 100.0)),
    }
    seen = 0
    for name, ds in variants.items():
        path = tmp_path / f"{name}.nc"
        ds.to_netcdf(path, engine="h5netcdf")
        rc = cli.main(["reconstruct", str(artefacts / "run"), str(path), "--sampler", "gp", "--draws", "1",
                       "--out", str(tmp_path / f"{name}-post.nc")])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 1, name
        assert len(err) == 1 and err[0].startswith("sdift reconstruct: error:"), (name, err)
        assert "Traceback" not in err[0]
        seen += 1
        COUNTS["cli_observation_files"]["error"] += 1
    assert seen == len(variants)
    xr.Dataset().to_netcdf(tmp_path / "empty.nc", engine="h5netcdf")
    assert cli.main(["reconstruct", str(artefacts / "run"), str(tmp_path / "empty.nc"), "--out",
                     str(tmp_path / "e.nc")]) == 1
    assert capsys.readouterr().err.startswith("sdift reconstruct: error:")
