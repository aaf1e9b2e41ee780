"""Field collections larger than memory: open a netCDF file lazily, read trajectories by index.

`open_fields_lazy(path)` returns an `xr.Dataset` whose `field` variable is still on disk (no
dask: xarray's own lazy indexing over h5netcdf). `TrajectoryReader` pulls the trajectories of
a minibatch (any order, repeats allowed) as one NumPy array; `fit_ftm` uses it automatically when
it is handed a lazily opened collection, so training reads one minibatch at a time.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import xarray as xr

from .data.fields import FIELD_KIND, validate_field_dataset
from .errors import FormatError, InputError, bad_input
from .io import NETCDF_ENGINE, probe_hdf5

__all__ = ["open_fields_lazy", "is_lazy", "TrajectoryReader"]


def is_lazy(array: xr.DataArray) -> bool:
    """Whether the values of `array` are still on disk (not loaded into memory)."""
    return not bool(getattr(array.variable, "_in_memory", True))


def open_fields_lazy(path: str | os.PathLike) -> xr.Dataset:
    """Open a field collection written by `save_fields` without reading its `field` values.

    Coordinates and attributes are read and checked (as `load_fields` does, on the first
    trajectory); the values of the other trajectories are checked when they are read. Close the
    dataset (`ds.close()` or a `with` block) when done.

    **Raises:** `InputError` when the file does not exist, `FormatError` when it is not a readable
    netCDF field collection.
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(f"path: expected an existing file, got {str(p)!r}")
    probe_hdf5(p)
    try:
        # cache=False: a full read (e.g. `.values`) must not pin the whole field in memory
        ds = xr.open_dataset(p, engine=NETCDF_ENGINE, cache=False)
    except Exception as exc:  # noqa: BLE001 - h5py/h5netcdf raise many types on foreign files
        raise FormatError(f"{p}: not a readable netCDF file ({type(exc).__name__}: {exc})") from exc
    try:
        if ds.attrs.get("sdift_kind") != FIELD_KIND:
            raise FormatError(f"{p}: not an sdift field collection (sdift_kind={ds.attrs.get('sdift_kind')!r})")
        if "split" in ds.coords:
            ds = ds.assign_coords(split=("trajectory", np.asarray(ds.coords["split"].values).astype("<U5")))
        for name in ("seed", "sdift_format_version"):
            if isinstance(ds.attrs.get(name), np.integer):
                ds.attrs[name] = int(ds.attrs[name])
        if "field" not in ds.data_vars or ds["field"].ndim < 3 or ds["field"].dims[0] != "trajectory" \
                or ds.sizes.get("trajectory", 0) < 1:
            raise FormatError(f"{p}: not a valid field collection (no 'field' variable over trajectories)")
        try:
            validate_field_dataset(ds.isel(trajectory=slice(0, 1)).load(), require_split=False)
        except InputError as exc:
            raise FormatError(f"{p}: not a valid field collection: {exc}") from exc
        except Exception as exc:  # noqa: BLE001 - corrupt data chunks surface on the first read
            raise FormatError(f"{p}: cannot read the field values ({type(exc).__name__}: {exc})") from exc
        ids = np.asarray(ds["trajectory"].values) if "trajectory" in ds.coords else None
        if ids is not None and np.unique(ids).size != ids.size:
            raise FormatError(f"{p}: not a valid field collection: duplicate trajectory ids")
    except BaseException:
        ds.close()
        raise
    return ds


class TrajectoryReader:
    """Reads trajectories of a field collection's `field` by position, in memory or from disk.

    **Arguments:**

    - `field`: the `field` DataArray `(trajectory, time, *space)` (lazy or in memory).
    - `argument`: name for error messages.

    `read(idx)` returns float64 `(len(idx), T, *space)` in the order of `idx` (the file is read
    in increasing order, each trajectory once) and raises `InputError` on non-finite values and
    `FormatError` when the file cannot be read.
    """

    def __init__(self, field: xr.DataArray, argument: str = "fields"):
        if not isinstance(field, xr.DataArray) or field.ndim < 3 or field.dims[0] != "trajectory":
            raise bad_input(argument, "a field DataArray of dims (trajectory, time, *space)", type(field).__name__)
        self.field = field
        self.argument = argument
        self.shape = tuple(int(s) for s in field.shape)
        self.lazy = is_lazy(field)

    @property
    def n_trajectories(self) -> int:
        return self.shape[0]

    def read(self, idx) -> np.ndarray:
        idx = np.asarray(idx, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= self.shape[0]):
            raise bad_input("idx", f"trajectory positions in [0, {self.shape[0] - 1}]", idx)
        unique, inverse = np.unique(idx, return_inverse=True)
        try:
            block = np.asarray(self.field.isel(trajectory=unique).values, dtype=np.float64)
        except Exception as exc:  # noqa: BLE001 - h5py raises many types on corrupt chunks
            source = self.field.encoding.get("source", "the file")
            raise FormatError(f"{source}: cannot read trajectories {unique.tolist()[:5]} "
                              f"({type(exc).__name__}: {exc})") from exc
        bad = ~np.isfinite(block)
        if bad.any():
            b = int(unique[np.flatnonzero(bad.reshape(unique.size, -1).any(axis=1))[0]])
            raise bad_input(self.argument, "finite field values", f"{int(bad.sum())} NaN/inf entries (trajectory "
                                                                  f"position {b})")
        return block[inverse]

    def chunks(self, size: int) -> Iterator[tuple[int, int, np.ndarray]]:
        """`(start, stop, values)` over consecutive blocks of at most `size` trajectories."""
        for lo in range(0, self.shape[0], size):
            hi = min(lo + size, self.shape[0])
            yield lo, hi, self.read(np.arange(lo, hi))
